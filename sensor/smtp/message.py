"""One message's content: header extraction and fixed-size content chunks.

Shared by DATA (fed dot-unstuffed content) and BDAT (fed chunk octets).
Content is emitted as MailContent chunks of exactly ``SmtpLimits.content_chunk``
octets (the last one shorter), and only after the message's MessageHeaders,
so the event sequence is the same however the stream was segmented.  Held
content is bounded by the header limit plus one chunk plus one input segment.
"""

from __future__ import annotations

from sensor.smtp import anomalies as A
from sensor.smtp.events import CLIENT, MailContent, MessageHeaders, SmtpAnomaly
from sensor.smtp.headers import HeaderCollector
from sensor.smtp.limits import SmtpLimits

__all__ = ["MessageAssembler"]


class MessageAssembler:
    __slots__ = ("_limits", "method", "trans_depth", "_hdr", "_pend", "_offset", "size",
                 "headers", "gap")

    def __init__(self, limits: SmtpLimits, method: str, trans_depth: int) -> None:
        self._limits = limits
        self.method = method              # "DATA" or "BDAT": how the message is framed
        self.trans_depth = trans_depth    # of the message's transaction
        self._hdr = HeaderCollector(limits.header_section)
        self._pend = bytearray()
        self._offset = 0
        self.size = 0
        self.headers: MessageHeaders | None = None
        self.gap = False

    def feed(self, data: bytes, ts: float, out: list) -> None:
        if not data:
            return
        self.size += len(data)
        if self.headers is None and self._hdr.feed(data):
            self._emit_headers(ts, out)
        pend = self._pend
        pend += data
        if self.headers is not None and len(pend) >= self._limits.content_chunk:
            self._emit_chunks(ts, out, final=False)

    def finish(self, ts: float, out: list) -> None:
        if self.headers is None:
            self._hdr.finish()
            self._emit_headers(ts, out)
        self._emit_chunks(ts, out, final=True)

    def _emit_headers(self, ts: float, out: list) -> None:
        fields, dups = self._hdr.fields()
        self.headers = MessageHeaders(ts=ts, **fields, trans_depth=self.trans_depth)
        if self._hdr.truncated:
            out.append(SmtpAnomaly(ts, A.HEADER_SECTION_TOO_LONG, CLIENT,
                                   f"header section longer than {self._limits.header_section} octets"))
        if dups:
            out.append(SmtpAnomaly(ts, A.DUPLICATE_HEADER, CLIENT, ", ".join(dups)))
        out.append(self.headers)

    def _emit_chunks(self, ts: float, out: list, final: bool) -> None:
        size = max(1, self._limits.content_chunk)
        pend = self._pend
        start = 0
        with memoryview(pend) as view:          # one copy per piece, not two
            while len(pend) - start >= size or (final and len(pend) > start):
                piece = bytes(view[start:start + size])
                out.append(MailContent(ts, piece, self._offset, trans_depth=self.trans_depth))
                self._offset += len(piece)
                start += len(piece)
        if start:
            del pend[:start]
