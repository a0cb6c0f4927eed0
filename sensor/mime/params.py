"""The MIME header fields an entity is read by, parsed with the standard
library's ``email`` package: Content-Type (type, boundary, charset, name),
Content-Disposition (type, filename) with RFC 2231 parameter continuations
and charsets (``filename*0*=utf-8''...``) and RFC 2047 encoded words in names
(``=?utf-8?B?...?=``, which mail clients write though RFC 2047 5 forbids it).

The values given here are the unfolded header values, already bounded by
``MimeLimits.header_value``: parsing them costs little and holds nothing.
"""

from __future__ import annotations

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


def parse_entity_headers(fields: dict, default_type: str = "text/plain") -> EntityHeaders:
    """``fields``: lower-case name -> unfolded value (bytes) of the first
    Content-Type, Content-Disposition and Content-Transfer-Encoding."""
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
    cte = fields.get("content-transfer-encoding")
    if cte is not None:
        value = _text(cte).strip().lower()
        if value:
            out.transfer_encoding = value
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
