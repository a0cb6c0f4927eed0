"""DATA framing: the strict end marker, dot-unstuffing, smuggling evidence.

Only ``<CR><LF>.<CR><LF>`` ends a message (RFC 5321 4.1.1.4), as a strict
server reads it.  Every other dot line (``<LF>.<LF>``, ``<LF>.<CR><LF>``,
``<CR>.<CR>``, ``<CR><LF>.<LF>``, ...) is message content under that
reading; the decoder records them, and bare LF / bare CR octets, so the
connection can report them as smuggling anomalies when the message ends.

The decoder keeps the two octets before its undecoded input (initially a
virtual CRLF: the one ending the DATA command line) and at most four
undecoded octets, so the result does not depend on segmentation.
"""

from __future__ import annotations

import re

__all__ = ["DotDecoder"]

_END = b"\r\n.\r\n"
_DOT_LINE = re.compile(rb"(?<=[\r\n])\.(?=[\r\n])")
_NEUTRAL = b"\0\0"


def _ending(b: bytes) -> str:
    if b == b"\r\n":
        return "<CR><LF>"
    return "<LF>" if b[-1:] == b"\n" else "<CR>"


class DotDecoder:
    __slots__ = ("_lb", "_pend", "bare_lf", "bare_cr", "terminators", "_run",
                 "long_line", "_long_re", "_limit")

    def __init__(self, line_limit: int) -> None:
        self._lb = b"\r\n"
        self._pend = b""
        self.bare_lf = 0
        self.bare_cr = 0
        self.terminators: list[str] = []
        self._run = 0                 # non-LF octets since the last LF
        self._limit = max(2, line_limit)
        self.long_line = False        # a line (LF-delimited, ending included) exceeded the limit
        self._long_re = re.compile(rb"[^\n]{%d}" % self._limit)

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Decode raw octets.

        Returns (unstuffed content, rest): ``rest`` is None while the end
        marker has not been seen, else the octets after it (commands again).
        """
        c = self._lb + self._pend + data
        idx = c.find(_END)
        if idx >= 0:
            end = idx + 2
            rest = c[idx + 5:]
        else:
            if len(c) < 6:
                self._pend = c[2:]
                return b"", None
            end = len(c) - 4
            rest = None
        if end > 2:
            self._scan(c, end)
            content = c[:end].replace(b"\r\n.", b"\r\n")[2:]
        else:
            content = b""
        if rest is None:
            self._lb = c[end - 2:end]
            self._pend = c[end:]
        return content, rest

    def _scan(self, c: bytes, end: int) -> None:
        self.bare_lf += c.count(b"\n", 2, end) - c.count(b"\r\n", 1, end)
        self.bare_cr += c.count(b"\r", 2, end) - c.count(b"\r\n", 2, end + 1)
        if c.find(b".", 2, end) >= 0:
            for m in _DOT_LINE.finditer(c, 2, min(len(c), end + 1)):
                q = m.start()
                if q >= end:
                    break
                before = _ending(c[q - 2:q])
                after = c[q + 1:q + 3]
                after = "<CR><LF>" if after == b"\r\n" else ("<LF>" if after[:1] == b"\n" else "<CR>")
                self.terminators.append(f"{before}.{after}")
        if not self.long_line:
            first = c.find(b"\n", 2, end)
            if first < 0:
                self._run += end - 2
            else:
                if self._run + (first - 2) + 1 > self._limit or \
                        self._long_re.search(c, 2, end) is not None:
                    self.long_line = True
                self._run = end - c.rfind(b"\n", 2, end) - 1
            if self._run >= self._limit:
                self.long_line = True

    def gap(self) -> bytes:
        """Octets were lost: return the undecoded octets (as content) and forget the context."""
        pend = self._pend
        self._pend = b""
        self._lb = _NEUTRAL
        self._run = 0
        return pend

    def flush(self) -> bytes:
        """The connection ended inside the message: the undecoded octets, as content."""
        pend = self._pend
        self._pend = b""
        return pend
