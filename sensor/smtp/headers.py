"""Message header extraction with the standard library's ``email`` package.

:class:`HeaderCollector` is fed the (dot-unstuffed) message content as it
arrives, keeps only the header section (up to the first empty line, capped by
``SmtpLimits.header_section``) and parses it with
:class:`email.parser.BytesHeaderParser`.  The body never reaches it.
"""

from __future__ import annotations

import re
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.policy import compat32

__all__ = ["HeaderCollector", "parse_header_section"]

_UNFOLD = re.compile(r"\r?\n(?=[ \t])")
# RFC 5322 3.6: fields that may appear at most once.
_SINGLE = ("from", "sender", "reply-to", "to", "cc", "bcc", "message-id",
           "in-reply-to", "references", "subject", "date")


class HeaderCollector:
    """Accumulates the header section of one message, bounded."""

    __slots__ = ("_buf", "_limit", "done", "truncated", "complete")

    def __init__(self, limit: int) -> None:
        self._buf = bytearray()
        self._limit = max(0, limit)
        self.done = False        #: no more input wanted
        self.truncated = False   #: the section exceeded the limit
        self.complete = False    #: the empty line ending the section was seen

    def feed(self, data: bytes) -> bool:
        """Feed content; return True when the header section just became done."""
        if self.done or not data:
            return False
        start = max(0, len(self._buf) - 3)
        self._buf += data
        buf = self._buf
        end = -1
        if buf[:1] == b"\n":
            end = 0
        elif buf[:2] == b"\r\n":
            end = 0
        else:
            i = buf.find(b"\n\n", start)
            j = buf.find(b"\n\r\n", start)
            cands = [k + 1 for k in (i, j) if k >= 0]
            if cands:
                end = min(cands)
        if end >= 0 and end <= self._limit:
            del buf[end:]
            self.done = self.complete = True
            return True
        # +2: an end marker starting at the limit must still be seen whole.
        if len(buf) > self._limit + 2:
            del buf[self._limit:]
            cut = buf.rfind(b"\n")
            del buf[cut + 1:]
            self.done = self.truncated = True
            return True
        return False

    def finish(self) -> None:
        """The message ended: whatever was collected is the header section."""
        self.done = True

    def fields(self) -> tuple[dict, list[str]]:
        """(keyword arguments of MessageHeaders without ts, duplicated field names)."""
        out, dups = parse_header_section(bytes(self._buf))
        out["truncated"] = self.truncated
        out["complete"] = self.complete
        return out, dups


def _text(value: str) -> str:
    value = _UNFOLD.sub("", value).strip()
    try:
        return value.encode("ascii", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


# RFC 2047 encoded word: =?charset[*language]?B|Q?text?=
_EWORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([BbQq])\?([^?\s]*)\?=")


def _decoded_word(m: re.Match) -> str:
    charset, enc, text = m.groups()     # an RFC 2231 language suffix is dropped
    try:
        return str(make_header(decode_header(f"=?{charset}?{enc}?{text}?=")))
    except Exception:  # unknown charset, bad encoding: keep the raw word
        return m.group(0)


def _decoded(value: str) -> str:
    """RFC 2047 decoding of an unstructured value (the Subject).

    Each encoded word is decoded on its own; white space between two adjacent
    encoded words is dropped (RFC 2047 6.2), all other text is kept as it is.
    (``make_header(decode_header(value))`` as a whole loses where white space
    was and puts a space between plain text and an encoded word that follows
    it directly: ``x:=?UTF-8?Q?=20y?=`` became ``"x:  y"``.)
    """
    if "=?" not in value:
        return value
    out = []
    pos = 0
    after_word = False
    for m in _EWORD.finditer(value):
        between = value[pos:m.start()]
        if not (after_word and not between.strip(" \t")):
            out.append(between)
        out.append(_decoded_word(m))
        pos = m.end()
        after_word = True
    out.append(value[pos:])
    return "".join(out)


def parse_header_section(section: bytes) -> tuple[dict, list[str]]:
    """Parse a header section; never raises."""
    try:
        msg = BytesHeaderParser(policy=compat32).parsebytes(section)
        items = [(name.lower(), _text(value)) for name, value in msg.raw_items()]
    except Exception:
        items = []
    first: dict[str, str] = {}
    every: dict[str, list[str]] = {}
    for name, value in items:
        first.setdefault(name, value)
        every.setdefault(name, []).append(value)
    dups = [name for name in _SINGLE if len(every.get(name, ())) > 1]
    subject = first.get("subject")
    out = dict(
        date=first.get("date"),
        from_=first.get("from"),
        to=tuple(every.get("to", ())),
        cc=tuple(every.get("cc", ())),
        reply_to=first.get("reply-to"),
        message_id=first.get("message-id"),
        in_reply_to=first.get("in-reply-to"),
        subject=_decoded(subject) if subject is not None else None,
        x_originating_ip=first.get("x-originating-ip"),
        received=tuple(every.get("received", ())),
        user_agent=first.get("user-agent", first.get("x-mailer")),
        x_mailer=first.get("x-mailer"),
    )
    return out, dups
