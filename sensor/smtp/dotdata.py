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
_BATCH = 256 << 10        # octets scanned for evidence at once


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
    """Decode one message's DATA octets; evidence is read from the attributes
    ``bare_lf``, ``bare_cr``, ``terminators`` and ``long_line``.

    ``feed`` does per call only what its result needs (the end marker, the
    stuffing dots: one memchr for a dot, and two searches when there is one);
    the evidence scan runs over batches of up to ``_BATCH`` octets, and at
    once whenever an attribute is read, so its result is the same as if every
    call had been scanned on its own.
    """

    __slots__ = ("_lb", "_pend", "_bare_lf", "_bare_cr", "_terminators", "_run",
                 "_long_line", "_limit", "_todo", "_todo_len", "_ctx")

    def __init__(self, line_limit: int) -> None:
        self._lb = b"\r\n"
        self._pend = b""
        self._bare_lf = 0
        self._bare_cr = 0
        self._terminators: list[str] = []
        self._run = 0                 # non-LF octets since the last LF
        self._limit = max(2, line_limit)
        self._long_line = False       # a line (LF-delimited, ending included) exceeded the limit
        self._todo: list[bytes] = []  # consecutive raw octets not scanned yet
        self._todo_len = 0
        self._ctx = b""               # the two octets before _todo[0]

    @property
    def bare_lf(self) -> int:
        """LF octets not preceded by CR."""
        self._settle(self._pend)
        return self._bare_lf

    @property
    def bare_cr(self) -> int:
        """CR octets not followed by LF."""
        self._settle(self._pend)
        return self._bare_cr

    @property
    def terminators(self) -> list[str]:
        """Dot lines not delimited by CRLF on both sides ("<LF>.<LF>", ...), in order."""
        self._settle(self._pend)
        return self._terminators

    @property
    def long_line(self) -> bool:
        """A line (LF-delimited, ending included) exceeded the limit."""
        self._settle(self._pend)
        return self._long_line

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Decode raw octets.

        Returns (unstuffed content, rest): ``rest`` is None while the end
        marker has not been seen, else the octets after it (commands again).
        """
        c = self._lb + self._pend + data
        # The end marker and stuffing dots are dots at c[2:] or later; most
        # content (base64) has none at all, which one memchr tells.
        dot = c.find(b".", 2)
        idx = c.find(_END) if dot >= 0 else -1
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
            region = c[2:end]
            if 0 <= dot < end and c.find(b"\r\n.", dot - 2, end) >= 0:
                content = c[:end].replace(b"\r\n.", b"\r\n")[2:]
            else:
                content = region
            todo = self._todo
            if not todo:
                self._ctx = c[:2]
            todo.append(region)
            self._todo_len += end - 2
            if rest is not None:
                self._settle(c[end:end + 2])
            elif self._todo_len >= _BATCH:
                self._settle(c[end:])
        else:
            content = b""
        if rest is None:
            self._lb = c[end - 2:end]
            self._pend = c[end:]
        return content, rest

    def _settle(self, lookahead: bytes) -> None:
        """Scan the octets not scanned yet (``lookahead``: the octets after them)."""
        todo = self._todo
        if todo:
            n = self._todo_len
            todo.insert(0, self._ctx)
            todo.append(lookahead)
            self._todo = []
            self._todo_len = 0
            self._scan(b"".join(todo), 2 + n)

    def _scan(self, c: bytes, end: int) -> None:
        """Evidence in c[2:end] (c[0:2] is context, c[end:] lookahead).

        Whole-buffer searches, never work per line.
        """
        crlf = c.count(b"\r\n", 2, end)
        # Single-octet counts through replace(), which skips with memchr (count()
        # does not), over all of c, less the context's and the lookahead's.
        head, tail = c[:2], c[end:]
        lf = len(c) - len(c.replace(b"\n", b"")) - head.count(b"\n") - tail.count(b"\n")
        cr = len(c) - len(c.replace(b"\r", b"")) - head.count(b"\r") - tail.count(b"\r")
        self._bare_lf += lf - crlf - (c[1:3] == b"\r\n")
        bare_cr = cr - crlf - (c[end - 1:end + 1] == b"\r\n")
        self._bare_cr += bare_cr
        found = []
        if c.find(b".", 2, end) >= 0:
            i = c.find(b"\n.", 1, end)
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
            self._terminators.extend(label for _, label in found)
        if not self._long_line:
            limit = self._limit
            first = c.find(b"\n", 2, end)
            if first < 0:
                self._run += end - 2
            else:
                last = c.rfind(b"\n", 2, end)
                if self._run + (first - 2) + 1 > limit:
                    self._long_line = True
                elif last - first > limit and _long_between(c, first, last, limit):
                    self._long_line = True
                self._run = end - last - 1
            if self._run >= limit:
                self._long_line = True

    def gap(self) -> bytes:
        """Octets were lost: return the undecoded octets (as content) and forget the context."""
        pend = self._pend
        self._settle(pend)
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
        self._settle(self._pend)
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
