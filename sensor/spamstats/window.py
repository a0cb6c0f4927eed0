"""The inspection window of the reject statistics: fixed or sliding.

Two strategies with one interface; ``RejectStats`` holds one and never asks
which.  A host's counts live in ``host.counts``, in the shape its window
chooses, and a connection is counted in a *slot* of it.  A count is one
integer, ``total + (rejects << 48)`` (``pack``): a window's connections and
rejects are held in one object and added in one step, exact up to 2**48
connections per window.

* ``FixedWindow`` (``window = "fixed"``, the seed's semantics): a window opens
  at a host's first reply and lasts ``period``; the next reply after it opens
  a new one.  Counts: one packed integer; the slot is None (the one window).
* ``SlidingWindow`` (``window = "sliding"``): the last ``period``, kept as
  ``buckets`` buckets of ``period / buckets`` seconds.  Counts: a list, the
  number of the oldest bucket held, then the packed counts of it and of each
  bucket after it (0: nothing there), at most ``buckets`` of them; the slot
  is the bucket of the connection's first reply there.  A bucket is
  evaluated with its ``buckets - 1`` successors just before it slides out, a
  ``period`` after it began.

Times are the statistics' clock.  Window ends are deadlines the statistics
keep in their heap: ``opened`` and ``add`` return the first one of a host,
``slide_out`` the next one.
"""

from __future__ import annotations

import math

__all__ = ["FixedWindow", "SlidingWindow", "window_for", "pack", "unpack"]

_REJECTS = 48                               # where the rejects begin in a packed count
_TOTAL = (1 << _REJECTS) - 1
_ONE = (1, 1 << _REJECTS)                   # what a connection (0) or its reject (1) adds


def pack(total, rejects) -> int:
    """(total, rejects) as one count; out-of-range values (a snapshot's) are
    clamped: 0 <= rejects <= total < 2**48."""
    total = max(0, min(int(total), _TOTAL))
    return total + (max(0, min(int(rejects), total)) << _REJECTS)


def unpack(count: int) -> tuple[int, int]:
    """A count as (total, rejects)."""
    return count & _TOTAL, count >> _REJECTS


class FixedWindow:
    """A window of ``period`` seconds from a host's first reply, ending whole."""

    name = "fixed"

    def __init__(self, period: float):
        self.period = period

    def new_counts(self) -> int:
        return 0

    def slot(self, t: float) -> None:
        return None

    def slot_at(self, h, t: float) -> None:
        """The slot of ``h`` a connection first answered at ``t`` is counted in."""
        return None

    def opened(self, h, now: float) -> float:
        """A new host at ``now``: its window's end."""
        return now + self.period

    def add(self, h, slot, reject: int) -> None:
        """Count a connection (``reject`` 0) or its reject (1) in ``slot``."""
        h.counts += _ONE[reject]

    def holds(self, h, slot) -> bool:
        """Is ``slot`` still part of ``h``'s window?"""
        return True

    def counts(self, h, t: float) -> tuple[int, int]:
        """(total, rejects) of the window at ``t``."""
        return unpack(h.counts)

    def closing(self, h) -> tuple[int, int, float]:
        """The window that ends at its deadline: (total, rejects, its start)."""
        return (*unpack(h.counts), h.start)

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

    def buckets_held(self, h) -> int:
        """How many counts ``h`` holds (for the bounds' tests and the benchmark)."""
        return 1

    def export(self, h) -> tuple[int, int, list]:
        """(total, rejects, buckets as [start, total, rejects]) for a snapshot."""
        return (*unpack(h.counts), [])

    def restore(self, start: float, total, rejects, buckets):
        """(start, counts) from a snapshot's host, whichever window wrote it (a
        sliding one becomes one window from its oldest bucket)."""
        if buckets:
            start = min(b[0] for b in buckets)
            total = sum(int(b[1]) for b in buckets)
            rejects = sum(int(b[2]) for b in buckets)
        return start, pack(total, rejects)


class SlidingWindow:
    """The last ``period`` seconds, in ``buckets`` steps."""

    name = "sliding"

    def __init__(self, period: float, buckets: int):
        self.period = period
        self.buckets = buckets
        self.width = period / buckets

    def new_counts(self) -> list:
        return []

    def slot(self, t: float) -> int:
        return math.floor(t / self.width)

    def slot_at(self, h, t: float) -> int:
        # never before the oldest bucket held: times only go back across a
        # restore (a clock set back), and then the oldest bucket takes them
        slot = math.floor(t / self.width)
        return slot if not h.counts or slot >= h.counts[0] else h.counts[0]

    def opened(self, h, now: float) -> None:
        return None                 # the first deadline comes with the first bucket

    def add(self, h, slot: int, reject: int) -> float | None:
        c = h.counts
        if not c:
            c += (slot, _ONE[reject])
            return self._bucket_end(slot)
        i = slot - c[0] + 1          # >= 1: slot_at; < buckets + 1: the ends due ran first
        if i >= len(c):
            c += [0] * (i + 1 - len(c))
        c[i] += _ONE[reject]
        return None

    def holds(self, h, slot: int) -> bool:
        c = h.counts
        i = slot - c[0] + 1 if c else 0
        return 0 < i < len(c) and c[i] != 0

    def counts(self, h, t: float) -> tuple[int, int]:
        c = h.counts
        if not c:
            return 0, 0
        # the buckets after slot(t) - buckets
        return unpack(sum(c[max(1, self.slot(t) - self.buckets - c[0] + 2):]))

    def closing(self, h) -> tuple[int, int, float]:
        # the full window that ends now: the oldest bucket and its successors
        # (computed from bucket numbers: no float arithmetic on timestamps)
        c = h.counts
        return (*unpack(sum(c[1:1 + self.buckets])), c[0] * self.width)

    def slide_out(self, h) -> float | None:
        c = h.counts
        del c[1]
        c[0] += 1
        while len(c) > 1 and c[1] == 0:         # buckets with nothing: gone with it
            del c[1]
            c[0] += 1
        return self._bucket_end(c[0]) if len(c) > 1 else None

    def start(self, h) -> float:
        return h.counts[0] * self.width if h.counts else 0

    def end(self, h) -> float:
        return self._bucket_end(h.counts[0])

    def check_span(self, h, t: float) -> tuple[float, float]:
        return t - self.period, t

    def buckets_held(self, h) -> int:
        return max(0, len(h.counts) - 1)

    def export(self, h) -> tuple[int, int, list]:
        c = h.counts
        return 0, 0, [[(c[0] + i - 1) * self.width, *unpack(n)] for i, n in enumerate(c) if i and n]

    def restore(self, start: float, total, rejects, buckets):
        """As ``FixedWindow.restore``; a fixed window becomes one bucket.  Of
        buckets spread wider than the window (only a foreign snapshot has
        them), the newest ``buckets`` slots are kept."""
        by_slot: dict[int, list] = {}
        if buckets:
            for bstart, tot, rej in buckets:
                b = by_slot.setdefault(self.slot(bstart + self.width / 2), [0, 0])
                b[0] += int(tot)
                b[1] += int(rej)
        else:
            by_slot[self.slot(start)] = [int(total), int(rejects)]
        newest = max(by_slot)
        oldest = max(min(by_slot), newest - self.buckets + 1)
        counts = [oldest] + [pack(*by_slot[s]) if s in by_slot else 0 for s in range(oldest, newest + 1)]
        return start, counts

    def _bucket_end(self, slot: int) -> float:
        return (slot + self.buckets) * self.width


def window_for(config) -> FixedWindow | SlidingWindow:
    """The window a ``SpamStatsConfig`` asks for."""
    if config.window == "sliding":
        return SlidingWindow(config.period, config.sliding_buckets)
    return FixedWindow(config.period)
