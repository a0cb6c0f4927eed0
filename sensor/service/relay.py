"""The workers' records into one stream: each worker writes its records as
JSON lines into its own pipe; the supervisor takes whole lines, as they
come, into the one set of outputs (``sensor.outputs``: ``[[output]]`` or
``[sensor] output``; ``RecordLines``), so lines of two workers never
interleave within a line and Zeek's logs or an EVE file have one writer.
"""

from __future__ import annotations

import fcntl
import json
import os
import selectors

__all__ = ["RecordRelay", "RecordLines", "PIPE_SIZE"]

#: bytes a worker's pipe holds (F_SETPIPE_SZ; the kernel's default is 64 KiB)
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031


def widen(fd: int) -> None:
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size: the default size works, with more wakeups


class RecordRelay:
    """Copy whole lines from the workers' pipes to ``out`` (a binary stream)."""

    def __init__(self, out):
        self.out = out
        self.lines = 0
        self._sel = selectors.DefaultSelector()
        self._partial: dict[int, bytes] = {}

    def add(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._partial[fd] = b""
        self._sel.register(fd, selectors.EVENT_READ)

    def fds(self) -> list[int]:
        """The pipes being read (a forked writer closes its copies)."""
        return list(self._partial)

    def pump(self, timeout: float = 0.0) -> list[int]:
        """Copy what the pipes hold now (waiting up to ``timeout`` for some);
        returns the pipes whose writers have closed them (``finish`` them)."""
        ready = self._sel.select(timeout) if self._partial else []
        ended = [key.fd for key, _ in ready if self._read(key.fd) is None]
        if ready:
            self.out.flush()
        return ended

    def finish(self, fd: int) -> None:
        """Copy what is left in ``fd`` (its writer is gone), then close it."""
        if fd not in self._partial:
            return
        os.set_blocking(fd, True)
        while self._read(fd):
            pass
        rest = self._partial.pop(fd)
        if rest:    # a writer killed in the middle of a line: the line is cut, not glued to another
            self.out.write(rest + b"\n")
        self._sel.unregister(fd)
        os.close(fd)
        self.out.flush()

    def _read(self, fd: int) -> bool | None:
        """True: copied some; False: nothing there yet; None: the writer closed it."""
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return False
        if not data:
            return None
        data = self._partial[fd] + data
        end = data.rfind(b"\n") + 1
        if end:
            self.out.write(data[:end])
            self.lines += data.count(b"\n", 0, end)
        self._partial[fd] = data[end:]
        return True

    def close(self) -> None:
        for fd in list(self._partial):
            self.finish(fd)
        self._sel.close()


class RecordLines:
    """The relay's output: whole JSON lines of records, each given to
    ``outputs`` as its record; a line that is not one (a worker killed in the
    middle of writing it) is counted in ``bad_lines`` and left out."""

    def __init__(self, outputs):
        self.outputs = outputs
        self.bad_lines = 0

    def write(self, data: bytes) -> None:
        for line in data.splitlines():
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                self.bad_lines += 1
                continue
            if isinstance(record, dict):
                self.outputs(record)
            else:
                self.bad_lines += 1

    def flush(self) -> None:
        flush = getattr(self.outputs, "flush", None)    # any sink; sensor.outputs.Outputs has one
        if flush is not None:
            flush()
