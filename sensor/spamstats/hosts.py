"""What the reject statistics keep per host and per connection, bounded.

The once-per-connection flags live in the connection's own state
(``ConnState``, in ``session.scratch``: gone with the flow), not in per-host
sets of connection ids, so the distinct-connection counts are exact at any
number of connections for the cost of one integer per host (a sliding
window: per bucket).  A host keeps
its window counts (packed integers: ``sensor.spamstats.window``), a sample of
at most ``max_recipients`` recipients of its rejected connections and at most
``max_samples`` distinct reject replies, for the notice text (the seed's
"mailto" and Zeek's SumStats ``sample``); what does not fit is counted, not
kept.  Recipients and reply texts are held as UTF-8 octets, cut at a
character boundary to ``RECIPIENT_OCTETS`` and ``SAMPLE_OCTETS``, so what one
host holds does not depend on what its clients send: a hostile address as
long as the dissector's line buffer (4 KiB) costs what a 256-octet one costs.

At the caps a host holds its address, two times, a generation, its counts
(one integer; a sliding window: one per bucket, at most ``sliding_buckets``),
at most ``max_recipients`` recipients of at most ``RECIPIENT_OCTETS`` octets
and at most ``max_samples`` samples of at most ``SAMPLE_OCTETS`` octets of
text; the statistics add an entry in their host table, at most two deadlines
and one suppression entry.  What that costs in bytes (per host, at the caps,
against the number of hosts) is in ``docs/operations.md`` ("Under attack")
and ``docs/benchmarks.md``; ``tests/unit/test_spamstats_bounds.py`` pins the
caps under hostile input.  A reload that lowers a cap bounds what is added
from then on; what a host holds already goes with its window.
"""

from __future__ import annotations

import functools

from sensor.prefixes import PrefixSet

__all__ = ["Host", "ConnState", "HeldSample", "SAMPLE_OCTETS", "RECIPIENT_OCTETS", "held_text", "in_networks"]

#: UTF-8 octets of a reply's text kept in a sample
SAMPLE_OCTETS = 200
#: UTF-8 octets of a recipient kept (RFC 5321 4.5.3.1.3: a path is at most 256 octets)
RECIPIENT_OCTETS = 256

_NOTHING = ()       # the recipients and samples of a host that has none yet: shared


def held_text(text: str, limit: int) -> bytes:
    """``text`` as the statistics hold it: UTF-8, at most ``limit`` octets,
    cut at a character boundary (any str encodes: lone surrogates pass)."""
    octets = text.encode("utf-8", "surrogatepass")
    if len(octets) <= limit:
        return octets
    cut = limit
    while cut > 0 and octets[cut] & 0xC0 == 0x80:      # not inside a character
        cut -= 1
    return octets[:cut]


def shown_text(octets: bytes) -> str:
    """A held text back as a str (for the notice, the report, the snapshot)."""
    return octets.decode("utf-8", "surrogatepass")


class ConnState:
    """Per-connection flags (kept in ``session.scratch``): where the connection
    was counted and whether its reject was; the recipients it named, held as
    a host holds them (``held_text``), so a reject hands them over uncopied."""

    __slots__ = ("counted", "rejected", "recipients")

    def __init__(self):
        self.counted = None      # (host generation, slot of the window)
        self.rejected = None     # the key it was counted as rejected under
        self.recipients: list[bytes] = []


class HeldSample:
    """A distinct reject reply a host got: (code, enhanced, text) tell it
    apart; how often, the first connection that got it, and when."""

    __slots__ = ("code", "enhanced", "text", "count", "uid", "ts")

    def __init__(self, code: int, enhanced, text: bytes, count: int, uid, ts: float):
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.count = count
        self.uid = uid
        self.ts = ts


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
        self.recipients: list[bytes] | tuple = _NOTHING      # held_text, in order seen
        self.recipients_dropped = 0
        self.samples: list[HeldSample] | tuple = _NOTHING
        self.samples_dropped = 0

    def add_recipient(self, address: bytes, cap: int) -> bool:
        """Keep ``address`` (held, once); False when it is past ``cap`` (counted, not kept)."""
        if address in self.recipients:
            return True
        if len(self.recipients) < cap:
            if self.recipients is _NOTHING:
                self.recipients = []
            self.recipients.append(address)
            return True
        self.recipients_dropped += 1
        return False

    def add_sample(self, code: int, enhanced, text: str, uid, now: float, cap: int, count: int = 1) -> bool:
        """Count a reject reply (``count`` times: a snapshot's); False when it
        is a new one past ``cap`` distinct ones."""
        held = held_text(text, SAMPLE_OCTETS)
        for s in self.samples:       # at most max_samples: a few
            if s.text == held and s.code == code and s.enhanced == enhanced:
                s.count += count
                return True
        if len(self.samples) < cap:
            if self.samples is _NOTHING:
                self.samples = []
            self.samples.append(HeldSample(code, enhanced, held, count, uid, now))
            return True
        self.samples_dropped += 1
        return False

    def recipient_texts(self) -> list[str]:
        return [shown_text(r) for r in self.recipients]


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
