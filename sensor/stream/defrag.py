"""IP defragmentation (IPv4, RFC 791; IPv6, RFC 8200 4.5), as the receiving host does it.

``Defragmenter.ipv4(...)`` / ``ipv6(...)`` take one fragment (the IP packet's bytes
in a frame) and return the whole datagram as raw IP bytes once its last hole is
filled, else None; ``sensor.stream.packet.decode`` hands those bytes to itself
again (link type raw IP), so a reassembled datagram meets every check a whole one
does.  No clock is read: the caller passes each fragment's time and calls
``expire(now)`` now and then, as with the TCP reassembler.

Datagrams are keyed as the stack keys them: (family, source, destination,
identification, protocol) for IPv4 (RFC 791), (family, source, destination,
identification) for IPv6.

Bounded in memory and time (``DefragLimits``): datagrams in progress, fragment
bytes held, datagrams per source address, fragments per datagram, and a timeout
from the first fragment (Linux's ``ipfrag_time``, 30 s).  Over a bound the
oldest datagram (of that source, or of all) is evicted; each eviction and each
fragment refused is counted and reported.

Overlaps are resolved by ``policy``:

- ``linux`` (the default): what Linux does since 4.19 for IPv4 (the
  FragmentSmack fix) and for IPv6 (RFC 5722): a fragment that lies wholly inside
  one already held is a duplicate and ignored (the first copy stays); any other
  overlap discards the whole datagram.  Also as Linux: a fragment that ends
  before the known end or disagrees with it, or is empty, is dropped alone; an
  IPv6 fragment other than the last whose length is not a multiple of 8
  discards the datagram; an IPv6 first fragment that does not hold the whole
  header chain up to the TCP header is dropped (RFC 8200 4.5; Linux's
  ``ipv6frag_thdr_truncated``).
- ``first`` / ``last``: the bytes that arrived first / last win.
- ``bsd``: the fragment that starts lower wins; at the same offset, the older.
- ``windows``: the older fragment wins unless the newer one starts before it
  and ends after it.
- ``solaris``: as ``windows``, but a newer one that ends where the older ends
  also wins.

(The ``first`` to ``solaris`` policies are Suricata's ``defrag`` policies
(src/defrag.c), which model the stacks of their name; Suricata's ``linux`` is
the pre-4.19 behaviour, ours is today's.)

Every oddity is a ``DefragAnomaly`` in ``pending`` (the caller drains it: an
anomaly record on the flow once the flow is known, else a count): an overlap,
a datagram discarded or evicted, a timeout with holes, too many fragments,
an oversized datagram, an invalid fragment, and a first fragment that does not
hold the whole TCP header (the tiny-fragment trick, RFC 1858: its ports, and so
every filter that reads them, come from a later fragment).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from struct import Struct
from typing import NamedTuple

from sensor.counters import Counters, counter

__all__ = ["Defragmenter", "DefragLimits", "DefragCounters", "DefragAnomaly", "POLICIES", "ANOMALIES",
           "DATAGRAM_OVERHEAD", "FRAGMENT_OVERHEAD"]

POLICIES = ("linux", "first", "last", "bsd", "windows", "solaris")

#: anomaly names (layer "ip"); the IPV4_/IPV6_ ones are Suricata's decoder
#: events of the same meaning where it has one
ANOMALIES = frozenset({
    *(f"IPV{v}_FRAG_{what}" for v in (4, 6) for what in ("OVERLAP", "INVALID", "PKT_TOO_LARGE", "TINY_FIRST")),
    "FRAG_TIMEOUT",     # a datagram still had holes at the timeout
    "FRAG_TOO_MANY",    # more fragments than max_fragments: discarded
    "FRAG_EVICTED",     # a bound made room: the oldest datagram discarded
})

#: bytes charged to ``max_bytes`` for each datagram in progress and each
#: fragment held, besides the bytes they hold (the Python objects; measured by
#: bench/bench_defrag.py)
DATAGRAM_OVERHEAD = 800
FRAGMENT_OVERHEAD = 280

_u16 = Struct("!H").unpack_from
_u32 = Struct("!I").unpack_from
_pack16 = Struct("!H").pack_into
_TCP = 6
_TCP_HEADER = 20
_MAX_DATAGRAM = 65535
_MAX_NOTES = 8          # anomalies kept per datagram until it is done (duplicates add no fragment)
_MAX_ORPHANS = 1024     # datagrams discarded before their first fragment, awaiting its ports


@dataclass(frozen=True)
class DefragLimits:
    """Every limit of the defragmenter, by name."""

    timeout: float = 30.0              # seconds from a datagram's first fragment (ipfrag_time)
    max_datagrams: int = 8192          # datagrams in progress at once
    max_bytes: int = 8 << 20           # bytes held over all datagrams (with the overheads)
    per_source: int = 512              # datagrams in progress per source address
    max_fragments: int = 1024          # fragments per datagram (8-byte fragments of a 8 KB one)


class DefragAnomaly(NamedTuple):
    """Something odd about one datagram. ``sport``/``dport`` are None when the
    fragment with the TCP ports (the first) was not seen."""

    name: str
    family: int
    src: bytes
    dst: bytes
    sport: int | None
    dport: int | None
    detail: str
    ts: float


class DefragCounters(Counters):
    """What the defragmenter did."""

    METRIC_PREFIX = "defrag_"
    fragments = counter("IP fragments seen")
    reassembled = counter("datagrams reassembled from fragments")
    duplicates = counter("fragments wholly inside one already held, ignored")
    dropped = counter("fragments dropped, by reason", by="reason")
    discarded = counter("datagrams discarded before completion, by reason", by="reason")
    anomalies = counter("fragmentation anomalies, by name", by="name")
    unattributed = counter("fragmentation anomalies without a known TCP flow (counted only)")
    notes_dropped = counter("anomalies of a datagram past the first 8 it reports (counted only)")


class _Datagram:
    """One datagram in progress.

    ``frags``: (offset, bytes) per fragment held, by arrival; ``runs``: sorted,
    disjoint [start, end, index] ranges saying which fragment's bytes stand at
    each offset; ``total``: the datagram's length once its last fragment came.
    ``header``: the first fragment's unfragmentable part (IPv4 header; IPv6
    header and the extension headers before the fragment header), with
    ``nh_at`` where its next-header byte is and ``proto`` what follows (IPv6).
    """

    __slots__ = ("key", "family", "src", "dst", "since", "frags", "runs", "starts", "total",
                 "maxend", "header", "nh_at", "proto", "held", "ports", "tiny", "notes")

    def __init__(self, key, family, src, dst, since):
        self.key = key
        self.family = family
        self.src = src
        self.dst = dst
        self.since = since
        self.frags: list = []
        self.runs: list = []
        self.starts: list = []
        self.total = None
        self.maxend = 0
        self.header = None
        self.nh_at = 0
        self.proto = 0
        self.held = DATAGRAM_OVERHEAD
        self.ports = (None, None)
        self.tiny = None
        self.notes: list = []          # (name, detail, ts): reported once the datagram is done


def _beats(policy, new_idx, new_off, new_end, old_idx, old_off, old_end) -> bool:
    """Whether the newer fragment's bytes replace the older's where they overlap."""
    if policy == "last":
        return True
    if policy == "bsd":
        return new_off < old_off
    if policy == "windows":
        return new_off < old_off and new_end > old_end
    if policy == "solaris":
        return new_off < old_off and new_end >= old_end
    return False                                     # first


class Defragmenter:
    """Reassemble IP datagrams; see the module documentation."""

    def __init__(self, limits: DefragLimits | None = None, policy: str = "linux"):
        """``policy``: how overlaps are resolved, one of POLICIES."""
        if policy not in POLICIES:
            raise ValueError(f"defrag policy {policy!r}: expected one of {', '.join(POLICIES)}")
        self.limits = limits or DefragLimits()
        self.policy = policy
        self._table: dict = {}          # key -> _Datagram, oldest first
        self._per_source: dict = {}     # (family, src) -> {key: None} of its datagrams, oldest first
        self._orphans: dict = {}        # key -> (datagram, notes): discarded without ports, oldest first
        self.held = 0                   # bytes charged over all datagrams
        self.pending: list[DefragAnomaly] = []
        self.counters = DefragCounters()

    def __len__(self):
        return len(self._table)

    # ------------------------------------------------------------ input
    def ipv4(self, data, off: int, end: int, ts: float):
        """The IPv4 fragment ``data[off:end]`` (its header's total length says
        where it ends); returns the whole datagram's bytes, or None."""
        ihl = (data[off] & 0x0F) << 2
        frag = _u16(data, off + 6)[0]
        ident = _u16(data, off + 4)[0]
        proto = data[off + 9]
        src = bytes(data[off + 12:off + 16])
        dst = bytes(data[off + 16:off + 20])
        offset = (frag & 0x1FFF) << 3
        more = bool(frag & 0x2000)
        payload = bytes(data[off + ihl:end])
        length = len(payload)
        if more and length & 7:
            length &= ~7                 # as Linux: a middle fragment ends on 8 bytes
            payload = payload[:length]
        if ihl + offset + length > _MAX_DATAGRAM:
            return self._refuse(4, src, dst, None, "too_large", "IPV4_FRAG_PKT_TOO_LARGE",
                                f"fragment at {offset} of {length} bytes ends past 65535", ts)
        key = (4, src, dst, ident, proto)
        header = bytes(data[off:off + ihl]) if offset == 0 else None
        return self._add(key, 4, src, dst, proto, offset, payload, more, header, 9, ts)

    def ipv6(self, data, off: int, frag_at: int, end: int, nh_at: int, ts: float):
        """The IPv6 fragment whose IPv6 header is at ``off`` and whose fragment
        header is at ``frag_at`` (``data[off:end]`` is the packet; ``nh_at``:
        the next-header byte that names the fragment header); returns the whole
        datagram's bytes, or None."""
        src = bytes(data[off + 8:off + 24])
        dst = bytes(data[off + 24:off + 40])
        nxt = data[frag_at]
        fo = _u16(data, frag_at + 2)[0]
        ident = _u32(data, frag_at + 4)[0]
        offset = fo & 0xFFF8
        more = bool(fo & 1)
        payload = bytes(data[frag_at + 8:end])
        length = len(payload)
        if offset + length > _MAX_DATAGRAM:
            return self._refuse(6, src, dst, None, "too_large", "IPV6_FRAG_PKT_TOO_LARGE",
                                f"fragment at {offset} of {length} bytes ends past 65535", ts)
        key = (6, src, dst, ident)
        header = bytes(data[off:frag_at]) if offset == 0 else None
        if more and length & 7:
            # RFC 8200: a parameter problem; Linux discards what it holds of it
            old = self._table.get(key)
            if old is not None:
                self._discard(old, "invalid")
            return self._refuse(6, src, dst, None, "invalid", "IPV6_FRAG_INVALID",
                                f"fragment at {offset} of {length} bytes, not a multiple of 8", ts)
        if offset == 0 and not self._ipv6_chain_whole(nxt, payload):
            ports = (_u16(payload, 0)[0], _u16(payload, 2)[0]) if nxt == _TCP and length >= 4 else None
            return self._refuse(6, src, dst, ports, "truncated_chain", "IPV6_FRAG_TINY_FIRST",
                                f"first fragment of {length} bytes does not hold the headers up to "
                                f"the TCP header: dropped, as Linux does", ts)
        return self._add(key, 6, src, dst, nxt, offset, payload, more, header, nh_at - off, ts)

    @staticmethod
    def _ipv6_chain_whole(nxt: int, payload: bytes) -> bool:
        """Whether the first fragment holds every extension header and the TCP
        header (or one byte of another upper layer), as Linux requires."""
        pos = 0
        for _ in range(16):
            if nxt in (0, 43, 60, 135, 139, 140):
                if len(payload) < pos + 8:
                    return False
                nxt, pos = payload[pos], pos + ((payload[pos + 1] + 1) << 3)
            elif nxt == 51:
                if len(payload) < pos + 8:
                    return False
                nxt, pos = payload[pos], pos + ((payload[pos + 1] + 2) << 2)
            else:
                break
        return len(payload) >= pos + (_TCP_HEADER if nxt == _TCP else 1)

    # ------------------------------------------------------------ time
    def expire(self, now: float) -> None:
        """Discard datagrams older than the timeout (the caller's clock)."""
        timeout = self.limits.timeout
        table = self._table
        while table:
            dg = next(iter(table.values()))
            if now - dg.since < timeout:
                break
            have = sum(e - s for s, e, _ in dg.runs)
            whole = f"of {dg.total}" if dg.total is not None else "of unknown length (no last fragment)"
            self._report(dg, "FRAG_TIMEOUT", f"incomplete after {timeout:g} s: {have} bytes {whole}, "
                                             f"{len(dg.frags)} fragments", now)
            self._discard(dg, "timeout")
        orphans = self._orphans
        while orphans:
            key = next(iter(orphans))
            if now - orphans[key][0].since < timeout:
                break
            self._orphaned(orphans.pop(key))

    def flush(self) -> None:
        """Forget every datagram in progress (end of input): counted, not reported."""
        for dg in list(self._table.values()):
            self._discard(dg, "flush")
        while self._orphans:
            self._orphaned(self._orphans.pop(next(iter(self._orphans))))

    # ------------------------------------------------------------ plumbing
    def _add(self, key, family, src, dst, proto, offset, payload, more, header, nh_at, ts):
        c = self.counters
        c.fragments += 1
        lim = self.limits
        end = offset + len(payload)
        ports = None
        if offset == 0 and proto == _TCP and len(payload) >= 4:
            ports = (_u16(payload, 0)[0], _u16(payload, 2)[0])
        if ports is not None and self._orphans:
            orphan = self._orphans.pop(key, None)
            if orphan is not None:
                self._orphaned(orphan, ports)
        dg = self._table.get(key)
        if dg is None:
            dg = self._new(key, family, src, dst, ts)
        # ends, as Linux checks them: a fragment that contradicts them is dropped alone
        if not more:
            if end < dg.maxend or (dg.total is not None and end != dg.total):
                return self._drop(dg, ports, "invalid", f"last fragment ends at {end}, the datagram "
                                  f"at {dg.total if dg.total is not None else dg.maxend}", ts)
        elif dg.total is not None and end > dg.total:
            return self._drop(dg, ports, "invalid", f"fragment ends at {end}, past the last at {dg.total}", ts)
        if end == offset:
            return self._drop(dg, ports, "invalid", f"empty fragment at {offset}", ts)
        if len(dg.frags) >= lim.max_fragments:
            self._report(dg, "FRAG_TOO_MANY", f"more than {lim.max_fragments} fragments: discarded", ts)
            self._discard(dg, "too_many")
            return None
        if not self._place(dg, offset, end, payload, ts):
            return None
        if not more:
            dg.total = end
        if end > dg.maxend:
            dg.maxend = end
        if header is not None:
            dg.header = header
            dg.nh_at = nh_at
            dg.proto = proto
            if ports is not None:
                dg.ports = ports
            if proto == _TCP:
                doff = (payload[12] >> 4) << 2 if len(payload) > 12 else _TCP_HEADER
                need = max(doff, _TCP_HEADER)
                if len(payload) < need:
                    dg.tiny = (len(payload), need, ts)
        size = len(payload) + FRAGMENT_OVERHEAD + (len(header) if header is not None else 0)
        dg.held += size
        self.held += size
        if self.held > lim.max_bytes:
            self._evict_for(dg, ts)
            if dg.key not in self._table:
                return None
        if dg.total is None or dg.header is None or not self._whole(dg):
            return None
        return self._reassemble(dg, ts)

    def _new(self, key, family, src, dst, ts):
        lim = self.limits
        source = (family, src)
        table = self._table
        mine = self._per_source.get(source)
        if mine is not None and len(mine) >= lim.per_source:
            oldest = table[next(iter(mine))]
            self._report(oldest, "FRAG_EVICTED", f"more than {lim.per_source} datagrams in progress "
                                                 f"from its source: the oldest evicted", ts)
            self._discard(oldest, "source_full")
        if len(table) >= lim.max_datagrams:
            oldest = next(iter(table.values()))
            self._report(oldest, "FRAG_EVICTED", f"more than {lim.max_datagrams} datagrams in progress: "
                                                 f"the oldest evicted", ts)
            self._discard(oldest, "table_full")
        dg = table[key] = _Datagram(key, family, src, dst, ts)
        mine = self._per_source.get(source)
        if mine is None:
            mine = self._per_source[source] = {}
        mine[key] = None
        self.held += dg.held
        return dg

    def _evict_for(self, dg, ts):
        """Over max_bytes: evict the oldest datagrams (this one last)."""
        lim = self.limits
        while self.held > lim.max_bytes and self._table:
            oldest = next(iter(self._table.values()))
            self._report(oldest, "FRAG_EVICTED", f"more than {lim.max_bytes} bytes of fragments held: "
                                                 f"the oldest datagram evicted", ts)
            self._discard(oldest, "bytes_full")
            if oldest is dg:
                break

    def _place(self, dg, off, end, payload, ts) -> bool:
        """Put the fragment's bytes where the policy says; False when the
        datagram is gone or the fragment ignored."""
        runs, starts = dg.runs, dg.starts
        i = bisect_right(starts, off) - 1
        if i < 0 or runs[i][1] <= off:
            i += 1
        j = i
        while j < len(runs) and runs[j][0] < end:
            j += 1
        overlapped = runs[i:j]
        idx = len(dg.frags)
        if not overlapped:
            runs.insert(i, [off, end, idx])
            starts.insert(i, off)
            dg.frags.append((off, payload))
            return True
        frags = dg.frags
        fam = dg.family
        name = f"IPV{fam}_FRAG_OVERLAP"
        policy = self.policy
        if policy == "linux":
            # inside one fragment held: a duplicate, the first copy stays
            for k in {r[2] for r in overlapped}:
                o_off, o_data = frags[k]
                if o_off <= off and end <= o_off + len(o_data):
                    self.counters.duplicates += 1
                    if o_data[off - o_off:end - o_off] != payload:
                        self._report(dg, name, f"bytes {off}-{end} again with other data: "
                                               f"the first copy kept (linux)", ts)
                    return False
            self._report(dg, name, f"bytes {off}-{end} overlap {overlapped[0][0]}-{overlapped[-1][1]}: "
                                   f"datagram discarded (linux)", ts)
            self._discard(dg, "overlap")
            return False
        dg.frags.append((off, payload))
        new = []
        pos = off
        differ = False
        for s, e, k in overlapped:
            if pos < s:
                new.append([pos, s, idx])
            lo, hi = max(s, off), min(e, end)
            o_off, o_data = frags[k]
            if o_data[lo - o_off:hi - o_off] != payload[lo - off:hi - off]:
                differ = True
            if s < lo:
                new.append([s, lo, k])
            if _beats(policy, idx, off, end, k, o_off, o_off + len(o_data)):
                new.append([lo, hi, idx])
            else:
                new.append([lo, hi, k])
            if hi < e:
                new.append([hi, e, k])
            pos = max(pos, hi)
        if pos < end:
            new.append([pos, end, idx])
        # merge neighbours of the same fragment
        merged = []
        for r in new:
            if merged and merged[-1][2] == r[2] and merged[-1][1] == r[0]:
                merged[-1][1] = r[1]
            else:
                merged.append(r)
        runs[i:j] = merged
        starts[i:j] = [r[0] for r in merged]
        self._report(dg, name, f"bytes {off}-{end} overlap {overlapped[0][0]}-{overlapped[-1][1]}"
                               f"{' with other data' if differ else ''}: resolved by policy {policy}", ts)
        return True

    @staticmethod
    def _whole(dg) -> bool:
        pos = 0
        for s, e, _ in dg.runs:
            if s > pos:
                return False
            pos = e
        return pos >= dg.total

    def _reassemble(self, dg, ts):
        body = bytearray(dg.total)
        frags = dg.frags
        for s, e, k in dg.runs:
            o_off, o_data = frags[k]
            body[s:e] = o_data[s - o_off:e - o_off]
        header = bytearray(dg.header)
        if dg.family == 4:
            _pack16(header, 2, len(header) + dg.total)
            header[6] = header[7] = 0          # no longer a fragment; the checksum is not checked
        else:
            _pack16(header, 4, len(header) - 40 + dg.total)
            header[dg.nh_at] = dg.proto
        if dg.tiny is not None:
            have, need, tts = dg.tiny
            self._report(dg, f"IPV{dg.family}_FRAG_TINY_FIRST",
                         f"first fragment holds {have} of the {need} bytes of the TCP header", tts)
        self._forget(dg)
        self.counters.reassembled += 1
        return bytes(header + body)

    def _refuse(self, family, src, dst, ports, reason, name, detail, ts):
        """A fragment dropped before it belongs to a datagram."""
        c = self.counters
        c.fragments += 1
        c.dropped[reason] = c.dropped.get(reason, 0) + 1
        sport, dport = ports if ports is not None else (None, None)
        self._pend(DefragAnomaly(name, family, src, dst, sport, dport, detail, ts))
        return None

    def _drop(self, dg, ports, reason, detail, ts):
        c = self.counters
        c.dropped[reason] = c.dropped.get(reason, 0) + 1
        if ports is not None and dg.ports == (None, None):
            dg.ports = ports
        self._report(dg, f"IPV{dg.family}_FRAG_INVALID", detail, ts)
        if not dg.frags:
            self._forget(dg)
        return None

    def _orphaned(self, entry, ports=(None, None)):
        dg, notes = entry
        for name, detail, ts in notes:
            self._pend(DefragAnomaly(name, dg.family, dg.src, dg.dst, ports[0], ports[1], detail, ts))

    def _report(self, dg, name, detail, ts):
        """An anomaly of a datagram: reported when it is done (reassembled,
        discarded, evicted, timed out), with the ports its first fragment
        brought by then, however late that came."""
        if len(dg.notes) < _MAX_NOTES:
            dg.notes.append((name, detail, ts))
        else:
            self.counters.notes_dropped += 1

    def _pend(self, anomaly):
        anomalies = self.counters.anomalies
        anomalies[anomaly.name] = anomalies.get(anomaly.name, 0) + 1
        self.pending.append(anomaly)

    def _discard(self, dg, reason):
        discarded = self.counters.discarded
        discarded[reason] = discarded.get(reason, 0) + 1
        self._forget(dg)

    def _forget(self, dg):
        if self._table.pop(dg.key, None) is None:
            return
        sport, dport = dg.ports
        if sport is None and dg.notes and dg.frags:
            # discarded before its first fragment came: the notes wait for
            # the ports of a first fragment with the same key (a sender goes on)
            orphans = self._orphans
            if len(orphans) >= _MAX_ORPHANS:
                self._orphaned(orphans.pop(next(iter(orphans))))
            orphans[dg.key] = (dg, dg.notes)
        else:
            for name, detail, ts in dg.notes:
                self._pend(DefragAnomaly(name, dg.family, dg.src, dg.dst, sport, dport, detail, ts))
        self.held -= dg.held
        source = (dg.family, dg.src)
        mine = self._per_source[source]
        del mine[dg.key]
        if not mine:
            del self._per_source[source]
