"""The ``smtp`` record (``schemas/smtp.json``): one per mail transaction.

Zeek's smtp.log field names and meanings (``id.orig_h`` ...), plus what
neither Zeek nor Suricata logs: every MAIL, RCPT, DATA and BDAT with the reply
it got (``steps``), ``msg_size``, ``delivered``.  Like Zeek's JSON writer, a
field with no value is left out.  With the MIME parser on, Zeek's ``fuids``
(every entity with a body, each a ``files`` record) and Suricata's
``email.attachment``, ``email.url``, ``email.body_md5`` and
``email.subject_md5`` as ``attachments``, ``urls``, ``body_md5``, ``subject_md5``.  The header helpers below are Zeek's ways of
reading address lists and Received headers.
"""

from __future__ import annotations

import ipaddress
import re

from sensor.records.common import conn_fields

__all__ = ["smtp_record", "split_addresses", "extract_ips", "received_path"]


def _step(step) -> dict:
    out = {"verb": step.verb, "parameter": step.parameter}
    if step.code is not None:
        out["code"] = step.code
    if step.enhanced is not None:
        out["enhanced"] = step.enhanced
    if step.text is not None:
        out["text"] = step.text
    return out


def smtp_record(flow, txn, mime=None, auth=None) -> dict:
    """The ``smtp`` record of one ``sensor.smtp.Transaction`` of ``flow``;
    ``mime``: the ``sensor.mime.MimeSummary`` of its message, if parsed;
    ``auth``: the connection's ``AuthTally`` so far (its ``auth_*`` fields)."""
    rec = {"ts": txn.first_ts or txn.ts, "event_type": "smtp"}
    rec.update(conn_fields(flow))
    rec["trans_depth"] = txn.messages_before + 1       # Zeek's: messages before it, plus one
    if txn.helo is not None:
        rec["helo"] = txn.helo
    if txn.mailfrom is not None:
        rec["mailfrom"] = txn.mailfrom
    if txn.rcptto:
        rec["rcptto"] = list(dict.fromkeys(txn.rcptto))   # Zeek: a set, kept in order
    h = txn.headers
    path = [flow.resp_h, flow.orig_h]
    if h is not None:
        _put(rec, "date", h.date)
        _put(rec, "from", h.from_)
        _put(rec, "to", _addresses(h.to))
        _put(rec, "cc", _addresses(h.cc))
        _put(rec, "reply_to", h.reply_to)
        _put(rec, "msg_id", h.message_id)
        _put(rec, "in_reply_to", h.in_reply_to)
        _put(rec, "subject", h.subject)
        _put(rec, "x_originating_ip", _first_ip(h.x_originating_ip))
        # Zeek overwrites first_received with each Received header it reads
        # (top to bottom), so "first" is the bottom one: the first hop.
        if h.received:
            rec["first_received"] = h.received[-1]
            if len(h.received) > 1:
                rec["second_received"] = h.received[-2]
            rec["received"] = list(h.received)        # Suricata's email.received: all, from the top
        path = received_path(path, h.received)
    _put(rec, "last_reply", txn.last_reply)
    rec["path"] = path
    _put(rec, "user_agent", h.user_agent if h is not None else None)
    rec["tls"] = txn.tls
    rec["steps"] = [_step(s) for s in txn.steps]
    if txn.message_size is not None:
        rec["msg_size"] = txn.message_size
    rec["delivered"] = txn.delivered
    if txn.steps_omitted:
        rec["steps_omitted"] = txn.steps_omitted
    if txn.rcptto_omitted:
        rec["rcptto_omitted"] = txn.rcptto_omitted
    # what the sensor lost of the flow before this record: its data may be incomplete
    if getattr(flow, "partial", False):
        rec["partial"] = True           # picked up mid-stream: its beginning was not seen
    lost = getattr(flow, "lost", 0)
    if lost:
        rec["lost_events"] = lost
    orig = getattr(flow, "orig", None)
    if orig is not None:
        gaps = orig.gaps + flow.resp.gaps
        if gaps:
            rec["gap_bytes"] = gaps
    if mime is not None:
        _put(rec, "fuids", list(mime.fuids))
        _put(rec, "attachments", list(mime.attachments))
        _put(rec, "urls", list(mime.urls))
        _put(rec, "body_md5", mime.body_md5)
        _put(rec, "subject_md5", mime.subject_md5)
    if auth is not None:
        rec.update(auth.fields())
    return rec


def _put(rec: dict, key: str, value) -> None:
    if value is not None and value != []:
        rec[key] = value


# ------------------------------------------------------------- header helpers

def split_addresses(value: str) -> list[str]:
    """Split an address-list header value at top-level commas (not inside
    quotes, angle brackets or comments), stripped, empties dropped: Zeek's
    ``split_mime_email_addresses``."""
    parts, cur, depth, quoted, esc = [], [], 0, False, False
    for ch in value:
        if esc:
            esc = False
        elif ch == "\\" and quoted:
            esc = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted and ch in "<(":
            depth += 1
        elif not quoted and ch in ">)" and depth:
            depth -= 1
        elif ch == "," and not quoted and not depth:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _addresses(values) -> list[str]:
    out: dict[str, None] = {}
    for value in values:
        for part in split_addresses(value):
            out[part] = None
    return list(out)


# Zeek's ip_addr_regex (base/utils/addrs.zeek), one pattern per alternative:
# Zeek's matcher takes the longest match at the leftmost position, Python's
# the first alternative that matches, so the longest is picked by hand.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|0[0-9]{2}|[0-9]{2}|[0-9])"
_V4 = rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}"
_HEX = r"[0-9A-Fa-f]{1,4}"
_IP_FORMS = [_V4, rf"(?:{_HEX}:){{7}}{_HEX}", rf"(?:{_HEX}:){{6}}{_V4}",
             rf"::(?:{_HEX}(?::{_HEX}){{0,6}})?", rf"{_HEX}(?::{_HEX}){{6}}::",
             rf"::(?:{_HEX}(?::{_HEX}){{0,4}})?{_V4}", rf"{_HEX}(?::{_HEX}){{4}}::{_V4}"]
_IP_FORMS += [rf"{_HEX}(?::{_HEX}){{{k}}}::(?:{_HEX}(?::{_HEX}){{0,{5 - k}}})?" for k in range(6)]
_IP_FORMS += [rf"{_HEX}(?::{_HEX}){{{k}}}::(?:{_HEX}(?::{_HEX}){{0,{3 - k}}})?{_V4}" for k in range(4)]
_IP_ANY = re.compile("|".join(f"(?:{form})" for form in _IP_FORMS))
_IP_EACH = [re.compile(form) for form in _IP_FORMS]
_WRAPS = {"[": "]", "(": ")", "{": "}", " ": " "}


def extract_ips(text: str, wrapped: bool = False) -> list[str]:
    """IP addresses in ``text``, in order: Zeek's ``extract_ip_addresses``
    (the text split at its ip_addr_regex matches, each valid one kept);
    ``wrapped``: only those between matching brackets, braces, parens or
    spaces, or with nothing around them (its ``check_wrapping``, which Zeek
    uses for the Received headers of ``path``)."""
    spans = []
    pos = 0
    while True:
        m = _IP_ANY.search(text, pos)
        if m is None:
            break
        start = m.start()
        end = max((e for r in _IP_EACH if (mm := r.match(text, start)) and (e := mm.end()) > start),
                  default=m.end())
        spans.append((start, end))
        pos = end if end > start else start + 1
    found = []
    for i, (start, end) in enumerate(spans):
        try:
            ip = str(ipaddress.ip_address(text[start:end]))
        except ValueError:
            continue
        if wrapped:
            before = text[spans[i - 1][1] if i else 0:start]
            after = text[end:spans[i + 1][0] if i + 1 < len(spans) else len(text)]
            if not ((not before and not after)
                    or (before and after and _WRAPS.get(before[-1]) == after[0])):
                continue
        found.append(ip)
    return found


def _first_ip(value: str | None) -> str | None:
    if not value:
        return None
    ips = extract_ips(value)
    return ips[0] if ips else None


def received_path(path: list[str], received) -> list[str]:
    """Zeek's smtp ``path``: the responder, the originator, then for each
    Received header from the top the address it names (of those wrapped in
    brackets, parens or spaces: the second one when it names several, "from
    host [client] by ..."), consecutive repeats dropped."""
    path = list(path)
    for value in received:
        ips = extract_ips(value, wrapped=True)
        if not ips:
            continue
        ip = ips[1] if len(ips) > 1 else ips[0]
        if path[-1] != ip:
            path.append(ip)
    return path
