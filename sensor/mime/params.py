"""The MIME header fields an entity is read by, parsed with the standard
library's ``email`` package: Content-Type (type, boundary, charset, name),
Content-Disposition (type, filename) with RFC 2231 parameter continuations
and charsets (``filename*0*=utf-8''...``) and RFC 2047 encoded words in names
(``=?utf-8?B?...?=``, which mail clients write though RFC 2047 5 forbids it).

The values given here are the unfolded header values, already bounded by
``MimeLimits.header_value``: parsing them costs little and holds nothing.
Values with none of what needs ``email`` (RFC 2231 ``*``, encoded words,
backslash escapes, comments) take a short path that gives the same result
(tests/unit/test_mime_params.py compares the two), at a tenth of the cost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message

__all__ = ["EntityHeaders", "parse_entity_headers"]


@dataclass(slots=True)
class EntityHeaders:
    content_type: str = "text/plain"
    boundary: bytes | None = None
    charset: str | None = None
    filename: str | None = None
    disposition: str | None = None
    transfer_encoding: str = "7bit"


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


_PARAM = re.compile(rb';[ \t\r\n]*([^=; \t\r\n]+)[ \t\r\n]*=[ \t\r\n]*("[^"]*"|[^;]*)')
_HARD = (b"*", b"=?", b"\\", b"(")


def _simple(value: bytes) -> tuple[str, dict]:
    """(lower-case first part, {lower-case name: value}) of ``type; a=b; c="d"``."""
    head, sep, rest = value.partition(b";")
    params = {}
    for m in _PARAM.finditer(sep + rest):
        name = m.group(1).lower().decode("latin-1")
        v = m.group(2)
        v = v[1:-1] if v[:1] == b'"' else v.strip()
        params.setdefault(name, v.decode("utf-8", "surrogateescape"))
    return head.strip().lower().decode("utf-8", "surrogateescape"), params


def parse_entity_headers(fields: dict, default_type: str = "text/plain") -> EntityHeaders:
    """``fields``: lower-case name -> unfolded value (bytes) of the first
    Content-Type, Content-Disposition and Content-Transfer-Encoding."""
    ct, cd = fields.get("content-type"), fields.get("content-disposition")
    if not any(h in v for v in (ct, cd) if v is not None for h in _HARD):
        return _parse_simple(fields, ct, cd, default_type)
    return _parse_email(fields, default_type)


def _parse_simple(fields, ct, cd, default_type) -> EntityHeaders:
    out = EntityHeaders(content_type=default_type)
    name = None
    if ct is not None:
        ctype, params = _simple(ct)
        out.content_type = ctype if ctype.count("/") == 1 else "text/plain"
        b = params.get("boundary")
        if b:
            out.boundary = b.encode("utf-8", "surrogateescape")
        cs = params.get("charset")
        if cs is not None:
            out.charset = cs.lower()
        name = params.get("name")
    if cd is not None:
        disp, params = _simple(cd)
        out.disposition = disp or None
        if "filename" in params:
            name = params["filename"]
    if name is not None:
        out.filename = decode_words(name.strip())
    _transfer_encoding(out, fields)
    return out


def _transfer_encoding(out: EntityHeaders, fields: dict) -> None:
    cte = fields.get("content-transfer-encoding")
    if cte is not None:
        value = _text(cte).strip().lower()
        if value:
            out.transfer_encoding = value


def _parse_email(fields: dict, default_type: str) -> EntityHeaders:
    out = EntityHeaders(content_type=default_type)
    msg = Message()
    msg.set_default_type(default_type)
    ct = fields.get("content-type")
    if ct is not None:
        msg["Content-Type"] = _text(ct)
        out.content_type = msg.get_content_type()
        b = msg.get_param("boundary")
        if b is not None:
            from email.utils import collapse_rfc2231_value
            b = collapse_rfc2231_value(b)
            if b:
                out.boundary = b.encode("utf-8", "surrogateescape")
        cs = msg.get_param("charset")
        if isinstance(cs, str):
            out.charset = cs.lower()
    cd = fields.get("content-disposition")
    if cd is not None:
        msg["Content-Disposition"] = _text(cd)
        disp = msg.get_content_disposition()
        out.disposition = disp
    name = msg.get_filename()          # disposition filename, else Content-Type name
    if name is not None:
        out.filename = decode_words(name)
    _transfer_encoding(out, fields)
    return out


def decode_words(value: str) -> str:
    """RFC 2047 encoded words decoded (invalid ones left as they are);
    undecodable octets kept as backslash escapes, so the text is JSON-safe."""
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value
