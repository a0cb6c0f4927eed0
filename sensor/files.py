"""Files the sensor writes: records, logs, content dumps, captures, snapshots.

They hold what clients sent (addresses, subjects, message content, an
attacker's probes), so a file the sensor creates is owner-only: mode 0600,
whatever the umask would have allowed (a umask can only take bits away).  A
file that already exists keeps its mode and owner: an operator who made the
records 0640 for a group of readers (docs/operations.md) keeps that.
"""

from __future__ import annotations

import os

__all__ = ["PRIVATE", "open_private", "write_atomic"]

#: the mode of a file the sensor creates
PRIVATE = 0o600

_FLAGS = {
    "a": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
}


def open_private(path, mode: str = "a", encoding: str | None = None):
    """``open(path, mode)`` for writing ("a", "ab", "w" or "wb"), creating the file 0600."""
    flags = _FLAGS.get(mode.replace("b", ""))
    if flags is None:
        raise ValueError(f"open_private writes only: mode 'a', 'ab', 'w' or 'wb', not {mode!r}")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), PRIVATE)
    try:
        return os.fdopen(fd, mode, encoding=encoding)
    except BaseException:
        os.close(fd)
        raise


def write_atomic(path, data: bytes) -> None:
    """Replace ``path`` by ``data`` so that a crash at any point leaves either
    the old file or the new one whole: ``<path>.tmp`` (0600; one writer at a
    time: the caller's to ensure), fsync, rename over ``path``, fsync of the
    folder.  OSError on failure, the temporary file removed."""
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), PRIVATE)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
