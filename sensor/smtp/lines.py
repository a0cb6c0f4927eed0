"""Line framing for one direction: LF-terminated lines with a length limit.

A line ends at LF; a CR before it is part of the CRLF ending.  Lines ending
in a bare LF are returned too (with ``bare_lf=True``): SMTP clients that end
commands with bare LF exist (the Haka sample capture has them).  A line longer
than the limit keeps its first ``limit`` octets and the rest is discarded up
to the LF, whatever the segmentation; ``overlong`` then says how long it was.
"""

from __future__ import annotations

__all__ = ["LineBuffer"]

_COMPACT = 1 << 16
_EMPTY = b""   # _buf while nothing is buffered (a bytearray only while something is)


class LineBuffer:
    __slots__ = ("_buf", "_pos", "_limit", "_over", "_over_len", "_last", "_resync", "_probe")

    def __init__(self, limit: int) -> None:
        self._buf = _EMPTY                # two line buffers per open flow: no bytearray while empty
        self._pos = 0
        self._limit = max(1, limit)
        self._over: bytes | None = None   # kept prefix of an overlong line being discarded
        self._over_len = 0                # octets of that line so far, then in all
        self._last = 0                    # last octet discarded while in overlong mode
        self._resync = False              # discard up to the next LF (after a gap)
        self._probe = None                # after a gap: does the first line look whole?

    def __len__(self) -> int:
        return len(self._buf) - self._pos

    @property
    def overlong(self) -> int:
        """Octets of the last truncated line take_line returned, its ending included."""
        return self._over_len

    @property
    def partial(self) -> bool:
        """An unterminated line is pending."""
        return len(self) > 0 or self._over is not None

    def feed(self, data: bytes) -> None:
        if self._pos >= len(self._buf):
            buf = bytearray()
            buf += data
            self._buf = buf if buf else _EMPTY
            self._pos = 0
        else:
            self._buf += data

    def _compact(self) -> None:
        if self._pos >= len(self._buf):
            self._buf = _EMPTY
            self._pos = 0
        elif self._pos > _COMPACT and self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0

    def take_line(self) -> tuple[bytes, bool, bool] | None:
        """Next complete line as (line without ending, bare_lf, truncated), or None."""
        while True:
            buf = self._buf
            pos = self._pos
            i = buf.find(b"\n", pos)
            if i < 0:
                n = len(buf) - pos
                if not n:
                    return None       # nothing buffered (and so nothing to compact)
                if self._resync or self._over is not None:
                    self._over_len += n
                    self._last = buf[-1]
                    self._pos = len(buf)
                elif n >= self._limit:
                    self._over = bytes(buf[pos:pos + self._limit])
                    self._over_len = n
                    self._last = buf[-1]
                    self._pos = len(buf)
                self._compact()
                return None
            raw = bytes(buf[pos:i])
            self._pos = i + 1
            self._compact()
            if self._resync:
                self._resync = False
                self._over = None
                probe, self._probe = self._probe, None
                if probe is None or not probe(raw):
                    continue
            if self._over is not None:
                line = self._over
                self._over = None
                bare_lf = (raw[-1:] != b"\r") if raw else (self._last != 13)
                truncated = True
                self._over_len += len(raw) + 1
            else:
                bare_lf = not raw.endswith(b"\r")
                truncated = len(raw) >= self._limit
                line = raw
                if truncated:
                    line = raw[:self._limit]
                    self._over_len = len(raw) + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            return line, bare_lf, truncated

    def take_all(self) -> bytes:
        data = bytes(self._buf[self._pos:])
        self._buf = _EMPTY
        self._pos = 0
        return data

    def take(self, n: int) -> bytes:
        data = bytes(self._buf[self._pos:self._pos + n])
        self._pos += len(data)
        self._compact()
        return data

    def push_front(self, data: bytes) -> None:
        """Put back octets in front of the buffer (the rest after a message end)."""
        if data:
            if self._pos >= len(self._buf):
                self._buf = bytearray(data)
            else:
                self._buf[:self._pos] = b""
                self._buf[0:0] = data
            self._pos = 0

    def gap(self, probe=None) -> None:
        """Octets were lost after the buffered ones: drop the partial line, resync at the next LF.

        ``probe(line)`` may say that the first line after the gap looks whole
        (the gap ended on a line boundary); it is then kept.
        """
        self._buf = _EMPTY
        self._pos = 0
        self._over = None
        self._resync = True
        self._probe = probe

    def clear(self) -> None:
        self._buf = _EMPTY
        self._pos = 0
        self._over = None
        self._resync = False
