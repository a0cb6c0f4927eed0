"""What the reject statistics keep per host and per connection, bounded.

The once-per-connection flags live in the connection's own state
(``ConnState``, in ``session.scratch``: gone with the flow), not in per-host
sets of connection ids.  A host keeps its window counts, at most
``max_recipients`` recipients of its rejected connections and ``max_samples``
distinct reject replies; what does not fit is counted, not kept.
"""

from __future__ import annotations

import functools

from sensor.prefixes import PrefixSet

__all__ = ["Host", "ConnState", "SAMPLE_TEXT", "in_networks"]

#: characters of a reply's text kept in a sample
SAMPLE_TEXT = 200


class ConnState:
    """Per-connection flags (kept in ``session.scratch``): where the connection
    was counted and whether its reject was; the recipients it named."""

    __slots__ = ("counted", "rejected", "recipients")

    def __init__(self):
        self.counted = None      # (host generation, slot of the window)
        self.rejected = None     # the key it was counted as rejected under
        self.recipients: list[str] = []


class Host:
    """One originating host: its window counts (shaped by the window:
    ``sensor.spamstats.window``), the recipients of its rejected connections,
    its sampled reject replies.  ``gen`` tells this host apart from an earlier
    one of the same address (a connection counted there is not counted here)."""

    __slots__ = ("addr", "gen", "start", "last_seen", "counts", "recipients",
                 "recipients_dropped", "samples", "samples_dropped")

    def __init__(self, addr: str, gen: int, start: float, counts):
        self.addr = addr
        self.gen = gen
        self.start = start
        self.last_seen = start
        self.counts = counts
        self.recipients: dict[str, None] = {}
        self.recipients_dropped = 0
        self.samples: dict[tuple, list] = {}   # (code, enhanced, text) -> [count, uid, ts]
        self.samples_dropped = 0

    def add_recipient(self, address: str, cap: int) -> bool:
        """Keep ``address`` (once); False when it is past ``cap`` (counted, not kept)."""
        if address in self.recipients:
            return True
        if len(self.recipients) < cap:
            self.recipients[address] = None
            return True
        self.recipients_dropped += 1
        return False

    def add_sample(self, code: int, enhanced, text: str, uid, now: float, cap: int) -> bool:
        """Count a reject reply; False when it is a new one past ``cap`` distinct ones."""
        key = (code, enhanced, text[:SAMPLE_TEXT])
        s = self.samples.get(key)
        if s is not None:
            s[0] += 1
            return True
        if len(self.samples) < cap:
            self.samples[key] = [1, uid, now]
            return True
        self.samples_dropped += 1
        return False


def in_networks(addr: str, networks) -> bool:
    """Is ``addr`` in one of ``networks`` (a tuple of ``ipaddress`` networks,
    as the configuration holds them)?  Matched through a PrefixSet made once
    per tuple: the cost does not grow with the number of networks."""
    if not networks:
        return False
    return addr in _prefix_set(networks)


@functools.lru_cache(maxsize=32)
def _prefix_set(networks: tuple) -> PrefixSet:
    return PrefixSet(networks)
