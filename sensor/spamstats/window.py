"""The inspection window of the reject statistics: fixed or sliding.

Two strategies with one interface; ``RejectStats`` holds one and never asks
which.  A host's counts live in ``host.counts``, in the shape its window
chooses, and a connection is counted in a *slot* of it:

* ``FixedWindow`` (``window = "fixed"``, the seed's semantics): a window opens
  at a host's first reply and lasts ``period``; the next reply after it opens
  a new one.  Counts ``[total, rejects]``; the slot is None (the one window).
* ``SlidingWindow`` (``window = "sliding"``): the last ``period``, kept as
  ``buckets`` buckets of ``period / buckets`` seconds.  Counts
  ``{bucket number: [total, rejects]}`` in bucket order (times never go back);
  the slot is the bucket of the connection's first reply there.  A bucket is
  evaluated with its ``buckets - 1`` successors just before it slides out, a
  ``period`` after it began.

Times are the statistics' clock.  Window ends are deadlines the statistics
keep in their heap: ``opened`` and ``add`` return the first one of a host,
``slide_out`` the next one.
"""

from __future__ import annotations

import math

__all__ = ["FixedWindow", "SlidingWindow", "window_for"]


class FixedWindow:
    """A window of ``period`` seconds from a host's first reply, ending whole."""

    name = "fixed"

    def __init__(self, period: float):
        self.period = period

    def new_counts(self) -> list:
        return [0, 0]

    def slot(self, t: float) -> None:
        return None

    def opened(self, h, now: float) -> float:
        """A new host at ``now``: its window's end."""
        return now + self.period

    def add(self, h, slot, reject: int) -> None:
        """Count a connection (``reject`` 0) or its reject (1) in ``slot``."""
        h.counts[reject] += 1

    def holds(self, h, slot) -> bool:
        """Is ``slot`` still part of ``h``'s window?"""
        return True

    def counts(self, h, t: float) -> tuple[int, int]:
        """(total, rejects) of the window at ``t``."""
        return h.counts[0], h.counts[1]

    def closing(self, h) -> tuple[int, int, float]:
        """The window that ends at its deadline: (total, rejects, its start)."""
        return h.counts[0], h.counts[1], h.start

    def slide_out(self, h) -> None:
        """Forget what ended; the next deadline, or None when nothing is left."""
        return None

    def start(self, h) -> float:
        """When the counts held began."""
        return h.start

    def end(self, h) -> float:
        """The next deadline of the counts held (a restored host's)."""
        return h.start + self.period

    def check_span(self, h, t: float) -> tuple[float, float]:
        """(start, end) of the window a periodic check at ``t`` judges."""
        return h.start, h.start + self.period

    def export(self, h) -> tuple[int, int, list]:
        """(total, rejects, buckets as [start, total, rejects]) for a snapshot."""
        return h.counts[0], h.counts[1], []

    def restore(self, start: float, total, rejects, buckets):
        """(start, counts) from a snapshot's host, whichever window wrote it (a
        sliding one becomes one window from its oldest bucket)."""
        if buckets:
            start = min(b[0] for b in buckets)
            total = sum(int(b[1]) for b in buckets)
            rejects = sum(int(b[2]) for b in buckets)
        return start, [int(total), int(rejects)]


class SlidingWindow:
    """The last ``period`` seconds, in ``buckets`` steps."""

    name = "sliding"

    def __init__(self, period: float, buckets: int):
        self.period = period
        self.buckets = buckets
        self.width = period / buckets

    def new_counts(self) -> dict:
        return {}

    def slot(self, t: float) -> int:
        return math.floor(t / self.width)

    def opened(self, h, now: float) -> None:
        return None                 # the first deadline comes with the first bucket

    def add(self, h, slot: int, reject: int) -> float | None:
        b = h.counts.get(slot)
        deadline = None
        if b is None:
            b = h.counts[slot] = [0, 0]
            if len(h.counts) == 1:
                deadline = self._bucket_end(slot)
        b[reject] += 1
        return deadline

    def holds(self, h, slot: int) -> bool:
        return slot in h.counts

    def counts(self, h, t: float) -> tuple[int, int]:
        first = self.slot(t) - self.buckets
        total = rejects = 0
        for slot, (tot, rej) in h.counts.items():
            if slot > first:
                total += tot
                rejects += rej
        return total, rejects

    def closing(self, h) -> tuple[int, int, float]:
        # the full window that ends now: the oldest bucket and its successors
        # (computed from bucket numbers: no float arithmetic on timestamps)
        oldest = next(iter(h.counts))
        total = rejects = 0
        for slot, (tot, rej) in h.counts.items():
            if slot < oldest + self.buckets:
                total += tot
                rejects += rej
        return total, rejects, oldest * self.width

    def slide_out(self, h) -> float | None:
        del h.counts[next(iter(h.counts))]
        return self._bucket_end(next(iter(h.counts))) if h.counts else None

    def start(self, h) -> float:
        return next(iter(h.counts), 0) * self.width

    def end(self, h) -> float:
        return self._bucket_end(next(iter(h.counts)))

    def check_span(self, h, t: float) -> tuple[float, float]:
        return t - self.period, t

    def export(self, h) -> tuple[int, int, list]:
        return 0, 0, [[slot * self.width, tot, rej] for slot, (tot, rej) in h.counts.items()]

    def restore(self, start: float, total, rejects, buckets):
        """As ``FixedWindow.restore``; a fixed window becomes one bucket."""
        counts: dict[int, list] = {}
        if buckets:
            for bstart, tot, rej in buckets:
                b = counts.setdefault(self.slot(bstart + self.width / 2), [0, 0])
                b[0] += int(tot)
                b[1] += int(rej)
        else:
            counts[self.slot(start)] = [int(total), int(rejects)]
        return start, dict(sorted(counts.items()))

    def _bucket_end(self, slot: int) -> float:
        return (slot + self.buckets) * self.width


def window_for(config) -> FixedWindow | SlidingWindow:
    """The window a ``SpamStatsConfig`` asks for."""
    if config.window == "sliding":
        return SlidingWindow(config.period, config.sliding_buckets)
    return FixedWindow(config.period)
