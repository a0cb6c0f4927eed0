"""The statistics' hook (``RejectStats(hook=...)``): the fleet's counts of a
host next to this sensor's.

The shared window is cut in buckets of ``period / sliding_buckets`` seconds
aligned on the Unix epoch (every sensor cuts them the same way); a window
``[start, end]`` of the local statistics is judged on the fleet's buckets
that overlap it (so with a fixed window the shared one can reach one bucket
further back than the local one).  The fleet's counts come from the
shipper's answers (``update``): what the host's buckets held when this
sensor last wrote them.  The counts judged are the larger of the local and
the fleet's (a count not flushed yet is in the local ones), so a lone
sensor, or one cut off from Redis, judges what it saw itself.
"""

from __future__ import annotations

import math
from collections import OrderedDict

__all__ = ["SharedStats"]


class SharedStats:
    """The hook ``RejectStats`` calls (in the loop's thread, no I/O):
    ``counted`` when it counts a connection (``reject`` 0) or its reject (1),
    ``changed`` for the hosts to judge again, ``counts`` for what to judge."""

    def __init__(self, config, shipper):
        self.shipper = shipper
        self.buckets = config.sliding_buckets
        self.width = config.period / config.sliding_buckets
        self.max_hosts = config.max_hosts
        self.fleet: OrderedDict[str, dict] = OrderedDict()   # host -> {slot: (total, rejects)}
        self._changed: dict[str, None] = {}

    def slot(self, ts: float) -> int:
        return math.floor(ts / self.width)

    def counted(self, host: str, ts: float, reject: int) -> None:
        self.shipper.count(host, self.slot(ts), reject)

    def update(self, host: str, buckets: dict) -> None:
        """The fleet's buckets of ``host``, read back after a flush."""
        if self.fleet.get(host) != buckets:
            self._changed[host] = None
        self.fleet[host] = buckets
        self.fleet.move_to_end(host)
        if len(self.fleet) > self.max_hosts:
            self.fleet.popitem(last=False)

    def changed(self) -> list[str]:
        """Hosts whose fleet counts changed since the last call."""
        out = list(self._changed)
        self._changed.clear()
        return out

    def counts(self, host: str, start: float, end: float, total: int, rejects: int) -> tuple[int, int]:
        buckets = self.fleet.get(host)
        if not buckets:
            return total, rejects
        lo, hi = self.slot(start), math.ceil(end / self.width) - 1
        fleet_total = fleet_rejects = 0
        for slot, (t, r) in buckets.items():
            if lo <= slot <= hi:
                fleet_total += t
                fleet_rejects += r
        total = max(total, fleet_total)
        return total, min(total, max(rejects, fleet_rejects))

    def fleet_counts(self, host: str, now: float) -> tuple[int, int]:
        """The fleet's (total, rejects) of the ``period`` up to ``now``, as last read."""
        return self.counts(host, now - self.width * self.buckets, now, 0, 0)
