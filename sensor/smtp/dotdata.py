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

__all__ = ["DotDecoder"]

_END = b"\r\n.\r\n"
_NEUTRAL = b"\0\0"


def _ending(b: bytes) -> str:
    if b == b"\r\n":
        return "<CR><LF>"
    return "<LF>" if b[-1:] == b"\n" else "<CR>"


def _label(c: bytes, q: int, after: bytes) -> str:
    """Name of the dot line whose dot is c[q] (``after``: the two octets after it)."""
    after = "<CR><LF>" if after == b"\r\n" else ("<LF>" if after[:1] == b"\n" else "<CR>")
    return f"{_ending(c[q - 2:q])}.{after}"


def _long_between(c: bytes, p: int, last: int, limit: int) -> bool:
    """Are two consecutive LFs in c[p:last + 1] (both ends LFs) more than ``limit`` apart?

    Jumps from LF to the last LF within ``limit`` octets: about one rfind
    per ``limit`` octets, however short the lines are.
    """
    while last - p > limit:
        q = c.rfind(b"\n", p + 1, p + limit + 1)
        if q < 0:
            return True
        p = q
    return False


class DotDecoder:
    __slots__ = ("_lb", "_pend", "bare_lf", "bare_cr", "terminators", "_run",
                 "long_line", "_limit")

    def __init__(self, line_limit: int) -> None:
        self._lb = b"\r\n"
        self._pend = b""
        self.bare_lf = 0
        self.bare_cr = 0
        self.terminators: list[str] = []
        self._run = 0                 # non-LF octets since the last LF
        self._limit = max(2, line_limit)
        self.long_line = False        # a line (LF-delimited, ending included) exceeded the limit

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
            content = self._scan(c, end)
            if content is None:
                content = c[:end].replace(b"\r\n.", b"\r\n")[2:]
        else:
            content = b""
        if rest is None:
            self._lb = c[end - 2:end]
            self._pend = c[end:]
        return content, rest

    def _scan(self, c: bytes, end: int) -> bytes | None:
        """Evidence in c[2:end] (c[0:2] is context, c[end:] lookahead).

        Returns c[2:end] when it has nothing to unstuff (no LF followed by a
        dot in c[1:end]), else None.  A few whole-buffer searches per call,
        never work per line: this runs for every segment of every message.
        """
        seg = c[2:end]
        crlf = seg.count(b"\r\n")
        # Single-octet counts through replace(), which skips with memchr (count() does not).
        lf = len(seg) - len(seg.replace(b"\n", b""))
        cr = len(seg) - len(seg.replace(b"\r", b""))
        self.bare_lf += lf - crlf - (c[1:3] == b"\r\n")
        bare_cr = cr - crlf - (c[end - 1:end + 1] == b"\r\n")
        self.bare_cr += bare_cr
        found = []
        dot = c.find(b"\n.", 1, end)
        i = dot
        while i >= 0:
            q = i + 1
            after = c[q + 1:q + 3]
            if after[:1] in (b"\r", b"\n"):
                found.append((q, _label(c, q, after)))
            i = c.find(b"\n.", q, end)
        # "<CR>." inside c[2:end] has a bare CR (counted above); else only c[1] can be one.
        if bare_cr or c[1:2] == b"\r":
            i = c.find(b"\r.", 1, end)
            while i >= 0:
                q = i + 1
                after = c[q + 1:q + 3]
                if after[:1] in (b"\r", b"\n"):
                    found.append((q, _label(c, q, after)))
                i = c.find(b"\r.", q, end)
        if found:
            found.sort()
            self.terminators.extend(label for _, label in found)
        if not self.long_line:
            limit = self._limit
            first = c.find(b"\n", 2, end)
            if first < 0:
                self._run += end - 2
            else:
                last = c.rfind(b"\n", 2, end)
                if self._run + (first - 2) + 1 > limit:
                    self.long_line = True
                elif last - first > limit and _long_between(c, first, last, limit):
                    self.long_line = True
                self._run = end - last - 1
            if self._run >= limit:
                self.long_line = True
        return seg if dot < 0 else None

    def gap(self) -> bytes:
        """Octets were lost: return the undecoded octets (as content) and forget the context."""
        pend = self._pend
        self._pend = b""
        self._lb = _NEUTRAL
        self._run = 0
        return pend

    def flush(self) -> bytes:
        """The connection ended inside the message: the undecoded octets, as content.

        They are decoded like any other content: dot-unstuffed and scanned
        for smuggling evidence.  (``feed`` holds back up to four octets as
        lookahead, so a capture ending in ``<CR><LF>.<LF>`` -- a terminator
        a lenient server accepts -- or in a stuffed ``..<CR><LF>`` line would
        otherwise lose that evidence and count the stuffing dot as content.)
        Only a dot that is the very last octet is left as it came.
        """
        c = self._lb + self._pend
        self._pend = b""
        if len(c) <= 2:
            return b""
        self._scan(c, len(c))
        self._lb = c[-2:]
        if c.endswith(b"\r\n."):
            # A line cut right after its first dot: stuffing or the start of
            # the end marker, undecidable; it is kept as it came.
            return c[:-1].replace(b"\r\n.", b"\r\n")[2:] + b"."
        return c.replace(b"\r\n.", b"\r\n")[2:]
