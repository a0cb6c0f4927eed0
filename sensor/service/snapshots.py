"""Periodic statistics snapshots written by a forked child: the loop never
waits for one.

A snapshot of 100 000 hosts (the default ``max_hosts``) costs ~0.35 s of
interpreter time (bench/bench_lifecycle.py); taken every few seconds in the
loop, it would stall the event ring, the verdicts and the commit hold that
long each time.  So, like Redis's BGSAVE, the loop forks: the child holds the
statistics as they were at the fork (copy-on-write; consistent without a
lock), encodes and writes them (``write``: atomically, 0600), and exits; the
loop reaps it at its next turns (``poll``).  The child first closes every
descriptor it inherited: the BPF programs and maps among them, so that a
child outliving a SIGKILLed sensor is not taken for a running one
(sensor.kernel.takeover), and the control socket.  It takes the default
action for the signals the sensor handles (a SIGTERM for the whole unit ends
it; the previous snapshot is left whole), and never logs (the logging locks
may have been held by another thread at the fork).

One child at a time: a snapshot due while the previous one is still being
written is skipped (counted).  ``finish`` (shutdown) ends a child still
writing, so that the final snapshot, written by the caller, is the last.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from typing import Callable

from sensor.counters import Counters, counter

__all__ = ["SnapshotWriter", "SnapshotCounters"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


class SnapshotCounters(Counters):
    METRIC_PREFIX = "snapshots_"
    written = counter("statistics snapshots written (periodic, by a child process)")
    failed = counter("periodic statistics snapshots that failed (logged)")
    skipped = counter("periodic statistics snapshots skipped: the previous one was still being written")


class SnapshotWriter:
    """``write()`` in a forked child, one at a time; ``log``: where failures go."""

    def __init__(self, write: Callable[[], None], log):
        self.write = write
        self.log = log
        self.counters = SnapshotCounters()
        self.pid: int | None = None
        self._pipe: int | None = None     # the child's error line comes through it
        self._since = 0.0

    @property
    def busy(self) -> bool:
        return self.pid is not None

    def start(self) -> bool:
        """Fork a child that writes a snapshot; False when one still runs."""
        self.poll()
        if self.pid is not None:
            self.counters.skipped += 1
            return False
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:                                   # the child: never returns
            self._child(write_end)
        os.close(write_end)
        self.pid, self._pipe, self._since = pid, read_end, time.monotonic()
        return True

    def _child(self, report: int) -> None:
        status = 1
        try:
            for signum in _SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            gc.disable()                               # short-lived: nothing to collect for
            _close_inherited(keep=report)
            self.write()
            status = 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, whatever it is
            try:
                os.write(report, (str(exc) or type(exc).__name__).encode(errors="replace")[:1000])
            except OSError:
                pass
        finally:
            os._exit(status)

    def poll(self) -> None:
        """Reap the child if it has ended (no wait); log its failure."""
        if self.pid is None:
            return
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:                      # reaped by someone else
            pid, status = self.pid, 0
        if pid == 0:
            return
        self._reaped(status)

    def finish(self) -> None:
        """End a child still writing (its temporary file is replaced by the next write)."""
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        self._close()

    def _reaped(self, status: int) -> None:
        message = self._read_report()
        took = round(time.monotonic() - self._since, 3)
        self._close()
        if os.waitstatus_to_exitcode(status) == 0:
            self.counters.written += 1
            return
        self.counters.failed += 1
        self.log.error("statistics snapshot not written", error=message or f"the writer ended ({status})",
                       seconds=took)

    def _read_report(self) -> str:
        try:
            return os.read(self._pipe, 1000).decode(errors="replace").strip()
        except OSError:
            return ""

    def _close(self) -> None:
        if self._pipe is not None:
            os.close(self._pipe)
        self.pid = self._pipe = None


def _close_inherited(keep: int) -> None:
    """Close every descriptor above stderr but ``keep``."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass            # the listing's own descriptor, already gone
