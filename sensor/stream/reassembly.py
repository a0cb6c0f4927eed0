"""TCP reassembly, independent of where segments come from.

``Reassembler.feed(segment, ts)`` takes one ``sensor.stream.packet.Segment`` (a tuple of
those 11 fields; payload as bytes) and returns the events it causes, in order:

    FlowStart(flow, ts)                 a connection was seen for the first time
    Data(flow, direction, data, ts)     the next bytes of one direction, in order
    Gap(flow, direction, length, ts)    ``length`` bytes of that direction are missing
    FlowEnd(flow, reason, ts)           no more events for this flow
    TcpAnomaly(flow, name, detail, ts)  something odd at the TCP level

``direction`` is ``CLIENT`` (octets from the connection's originator) or ``SERVER``
(sensor.stream.direction).
FlowEnd reasons: fin, rst, timeout, evicted (flow table full: the flow with
the oldest last segment goes), reused (a new
SYN on the same 4-tuple), flush (``flush_all`` at the end of the input).
``flow`` is the ``TcpFlow``: uid, community_id, key, orig_h/orig_p, resp_h/resp_p,
partial, and ``ctx``, a free slot for the caller's per-flow state.
Every byte position of a direction is delivered exactly once, as Data or as Gap;
missing bytes are never silently skipped.  ``expire(now)`` ends idle flows
(the caller owns the clock), ``flush_all(ts)`` ends every flow.

Rules, per direction:
- SYN sets the ISN; the SYN's sender is the originator.  A flow whose
  handshake was not seen (the sensor started mid-session) is picked up at its
  first segment with payload; the originator is the side whose peer's port is
  in ``ports`` (default {25, 587}), else the sender.  ``flow.partial`` says so.
- Sequence numbers are compared modulo 2**32 (wrap-around safe); positions
  inside a direction are plain integers from 0.
- The receiver's view (``ReceiverPolicy``; every divergence is a TcpAnomaly):
  a segment with a wrong TCP checksum is ignored (TCP_BAD_CHECKSUM), as the
  receiving stack discards it; so is data or a FIN without ACK
  (TCP_DATA_WITHOUT_ACK: Linux's tcp_validate_incoming).  Urgent data, Linux's
  default (``urgent="linux"``): the byte the urgent pointer names leaves the
  stream (TCP_URGENT_BYTE_REMOVED).
- Out-of-order data is buffered.  Overlapping bytes that differ are resolved by
  the target's policy (``overlap``, Suricata's stream.reassembly policies) and
  reported (TcpAnomaly STREAM_REASSEMBLY_OVERLAP_DIFFERENT_DATA); bytes
  already delivered never change.
- A segment whose payload was cut (``len(payload) < wire_paylen``) delivers its
  bytes, then a Gap for the missing tail.
- Buffered bytes are capped per flow and globally, and buffered chunks per
  direction: over a cap, the hole in front of the buffer becomes a Gap.
- When the peer acknowledges bytes behind which data is already buffered, and
  still does ``ack_gap_delay`` seconds later, the hole was lost by the capture:
  it becomes a Gap (``ReassemblyLimits.ack_gaps``).  The delay lets a segment that was
  only reordered across directions (a SPAN port, two CPUs' rings) arrive.
- FIN in both directions ends the flow ('fin') once everything before the FINs
  is delivered; holes left are waited for ``close_timeout`` then become Gaps.
  An RST is accepted as Linux accepts it (RFC 5961 3.2): at exactly the next
  expected sequence number (or the end of the buffered out-of-order data, the
  SACK case; after a FIN, the FIN's sequence number or the next); it ends the
  flow at once ('rst'): contiguous data, then Gap + buffered data.  Any other
  RST changes nothing (TCP_RST_NOT_EXACT: Linux answers it with a challenge
  ACK).
- Stray segments of a flow that ended with FIN or RST (final ACK, retransmitted
  FIN) are ignored for ``closed_linger`` seconds unless a new SYN starts a new
  flow.  A flow ended by timeout or eviction is picked up again mid-stream if it
  sends more data.  A RST further than ``rst_window`` bytes from the expected
  sequence number is ignored as TcpAnomaly TCP_RST_OUT_OF_WINDOW.
- Positions count sequence numbers: an urgent byte removed still has its
  position (Data is then one byte shorter than the positions it covers).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from operator import itemgetter
from typing import NamedTuple

from sensor.counters import Counters, counter
from sensor.stream.direction import CLIENT, SERVER
from sensor.stream.flowid import FlowUids, community_id
from sensor.stream.packet import ACK, FIN, RST, SYN, URG, addr_str, checksum_ok, urgent_pointer

__all__ = [
    "Reassembler", "ReassemblyCounters", "ReassemblyLimits", "TcpFlow", "FlowStart", "Data", "Gap",
    "FlowEnd", "TcpAnomaly", "DEFAULT_PORTS", "ReceiverPolicy",
    "CHECKSUM_MODES", "URGENT_MODES", "OVERLAP_POLICIES",
    "ANOMALY_OVERLAP", "ANOMALY_BUFFER_FULL", "ANOMALY_ISN_CHANGED", "ANOMALY_RST_OUT_OF_WINDOW",
    "ANOMALY_RST_NOT_EXACT", "ANOMALY_BAD_CHECKSUM", "ANOMALY_NO_ACK", "ANOMALY_URGENT",
]

DEFAULT_PORTS = frozenset((25, 587))

# Anomaly names.  The first is Suricata's stream event of the same meaning.
ANOMALY_OVERLAP = "STREAM_REASSEMBLY_OVERLAP_DIFFERENT_DATA"
ANOMALY_BUFFER_FULL = "TCP_REASSEMBLY_BUFFER_FULL"     # a cap forced a gap
ANOMALY_ISN_CHANGED = "TCP_SYN_DIFFERENT_ISN"          # a new SYN replaced an unused ISN
ANOMALY_RST_OUT_OF_WINDOW = "TCP_RST_OUT_OF_WINDOW"    # RST far from the expected sequence
ANOMALY_RST_NOT_EXACT = "TCP_RST_NOT_EXACT"            # RST in the window, not at rcv_nxt
ANOMALY_BAD_CHECKSUM = "TCP_BAD_CHECKSUM"              # segment ignored: wrong TCP checksum
ANOMALY_NO_ACK = "TCP_DATA_WITHOUT_ACK"                # data or FIN without ACK: ignored
ANOMALY_URGENT = "TCP_URGENT_BYTE_REMOVED"             # the urgent byte left the stream

#: ``[stream] checksum_validation``: "yes" every segment that can be verified
#: is; "no" none is; "auto" (replay): a direction is verified from its first
#: data segment with a right checksum on; data segments with a wrong one that
#: come before it are kept aside, and become the stream only when the receiver
#: acknowledges bytes past what was delivered (it accepted them: the capture
#: was made on the sending host, before checksum offload), when more than
#: ``SUSPECT_MAX`` are kept, or at the end of the flow; a live sensor verifies
#: what XDP sees on ingress as "yes", never what TC sees on egress
CHECKSUM_MODES = ("auto", "yes", "no")
#: ``[stream] urgent``: "linux" (tcp_stdurg 0, no SO_OOBINLINE: the byte before
#: the urgent pointer leaves the stream); "inline": urgent bytes stay in it
URGENT_MODES = ("linux", "inline")
#: ``[stream] overlap_policy``: which copy of overlapping bytes the target keeps
#: (Suricata's stream.reassembly policies; see ``_WINS``)
OVERLAP_POLICIES = ("linux", "bsd", "windows", "first", "last")
#: data segments with a wrong checksum kept aside per undecided direction ("auto")
SUSPECT_MAX = 64

_MASK = 0xFFFFFFFF
_HALF = 0x80000000
_start = itemgetter(0)
_new = tuple.__new__
_NO_CHUNKS = ()     # _HalfStream.chunks while nothing is buffered (a list only while something is)


@dataclass(frozen=True)
class ReceiverPolicy:
    """How the receiving stack treats what it is sent (``[stream]``)."""

    checksums: str = "auto"       # CHECKSUM_MODES
    urgent: str = "linux"         # URGENT_MODES
    overlap: str = "linux"        # OVERLAP_POLICIES

    def __post_init__(self):
        for name, choices in (("checksums", CHECKSUM_MODES), ("urgent", URGENT_MODES),
                              ("overlap", OVERLAP_POLICIES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")


# Whether a new segment's bytes replace buffered bytes of an older segment, by
# policy: (new start, new end, old start, old end) -> bool.  Suricata's
# DoHandleDataOverlap (stream-tcp-list.c): linux keeps the new copy when it
# starts before the old one, or at the same place and ends after it (Linux's
# tcp_data_queue_ofo: a segment covering an out-of-order one replaces it; one
# starting inside it keeps the old bytes; the earlier start is read first);
# bsd and windows when it starts before; first never; last always.
_WINS = {
    "linux": lambda ns, ne, os_, oe: ns < os_ or (ns == os_ and ne > oe),
    "bsd": lambda ns, ne, os_, oe: ns < os_,
    "windows": lambda ns, ne, os_, oe: ns < os_,
    "first": lambda ns, ne, os_, oe: False,
    "last": lambda ns, ne, os_, oe: True,
}


@dataclass(frozen=True)
class ReassemblyLimits:
    """Every limit of the reassembler, by name."""

    idle_timeout: float = 300.0        # seconds without a segment before a flow ends
    close_timeout: float = 10.0        # after both FINs, how long to wait for holes
    closed_linger: float = 30.0        # how long stray segments of an ended flow are ignored
    flow_buffer: int = 4 << 20         # out-of-order bytes buffered per flow
    global_buffer: int = 256 << 20     # out-of-order bytes buffered over all flows
    max_chunks: int = 4096             # out-of-order chunks buffered per direction
    max_flows: int = 200_000           # flows tracked at once; the least recently active is evicted
    ack_gaps: bool = True              # a peer's ACK past a hole makes it a gap ...
    ack_gap_delay: float = 0.2         # ... once the hole has been acked this long (seconds)
    rst_window: int = 1 << 20          # RST further than this from the expected seq: ignored


class FlowStart(NamedTuple):
    flow: "TcpFlow"
    ts: float

    key = property(lambda self: self.flow.key)
    uid = property(lambda self: self.flow.uid)
    community_id = property(lambda self: self.flow.community_id)
    orig = property(lambda self: (self.flow.orig_h, self.flow.orig_p))
    resp = property(lambda self: (self.flow.resp_h, self.flow.resp_p))


class Data(NamedTuple):
    flow: "TcpFlow"
    direction: str
    data: bytes
    ts: float


class Gap(NamedTuple):
    flow: "TcpFlow"
    direction: str
    length: int
    ts: float


class FlowEnd(NamedTuple):
    flow: "TcpFlow"
    reason: str            # fin, rst, timeout, evicted, reused, flush
    ts: float


class TcpAnomaly(NamedTuple):
    flow: "TcpFlow"
    name: str
    detail: str
    ts: float


class _HalfStream:
    """One direction of a flow.

    ``pos`` is the position (from 0) of the next byte to deliver and ``nxt`` its
    TCP sequence number (None until the first SYN or segment is seen).
    ``chunks`` holds buffered out-of-order ranges, sorted and disjoint:
    (start, end, bytes, owner) or (start, end, None, None) for bytes known to
    be missing; ``owner`` is ``[start, end]`` of the segment the bytes came
    from (shared by its pieces; grown when Linux would coalesce the next
    segment into it), what the overlap policy compares;
    a list only while something is buffered, else the shared empty tuple (one
    stream per direction of every open flow: bench/bench_memory.py).
    """

    __slots__ = ("direction", "nxt", "isn", "pos", "chunks", "buffered", "fin",
                 "last", "last_pos", "gaps", "hole_acked", "urg", "csum", "suspect")

    def __init__(self, direction):
        self.direction = direction
        self.nxt = None
        self.isn = None
        self.pos = 0
        self.chunks = _NO_CHUNKS
        self.buffered = 0
        self.fin = None           # position of the FIN, once seen
        self.last = b""           # the last bytes delivered (to check retransmissions)
        self.last_pos = 0         # ... and where they start
        self.gaps = 0             # bytes delivered as Gap
        self.hole_acked = None    # (pos, ts): the hole at pos was first seen acked at ts
        self.urg = None           # position of the urgent byte still to come out, if any
        self.csum = 0             # checksums: 0 undecided (auto), 1 verified, 2 not verified
        self.suspect = ()         # while undecided: (segment, ts) with a wrong checksum, kept aside

    @property
    def delivered(self) -> int:
        """Bytes delivered as Data."""
        return self.pos - self.gaps


class TcpFlow:
    """A TCP connection.  ``ctx`` is free for the caller (e.g. its dissector)."""

    __slots__ = ("key", "uid", "_cid", "family", "orig_addr", "orig_p",
                 "resp_addr", "resp_p", "start_ts", "last_ts", "partial", "orig",
                 "resp", "closing_since", "ended", "ctx", "lost")

    def __init__(self, uid, cid, family, oa, op, ra, rp, ts, partial):
        """``cid``: the Community ID, or its seed (an int): then computed on first use."""
        self.uid = uid
        self._cid = cid
        self.family = family
        self.orig_addr, self.orig_p, self.resp_addr, self.resp_p = oa, op, ra, rp
        a, b = (oa, op), (ra, rp)
        self.key = a + b if a <= b else b + a
        self.start_ts = self.last_ts = ts
        self.partial = partial
        self.orig = _HalfStream(CLIENT)
        self.resp = _HalfStream(SERVER)
        self.closing_since = None
        self.ended = None
        self.ctx = None
        self.lost = 0             # events of the flow the capture lost (the kernel's ring; the caller counts)

    @property
    def community_id(self) -> str:
        cid = self._cid
        if cid.__class__ is not str:
            # made on first use: most open flows have not been written out yet
            cid = self._cid = community_id(self.orig_addr, self.resp_addr, 6, self.orig_p, self.resp_p, cid)
        return cid

    @property
    def orig_h(self) -> str:
        return addr_str(self.orig_addr)

    @property
    def resp_h(self) -> str:
        return addr_str(self.resp_addr)

    @property
    def buffered(self) -> int:
        return self.orig.buffered + self.resp.buffered

    def __repr__(self):
        return (f"<TcpFlow {self.uid} {self.orig_h}:{self.orig_p} -> "
                f"{self.resp_h}:{self.resp_p}{' partial' if self.partial else ''}>")


class ReassemblyCounters(Counters):
    """What the reassembler did, beyond the events it returned."""

    METRIC_PREFIX = "tcp_"
    flows = counter("TCP flows followed")
    not_tracked = counter("segments of neither SMTP port, not followed")
    no_flow = counter("segments that start nothing to follow (a lone RST, ACK or FIN)")
    after_close = counter("stray segments of a flow that ended (ignored)")
    retransmitted = counter("segments holding only bytes already delivered")
    flows_evicted = counter("flows ended because the flow table was full")
    gap_bytes = counter("bytes delivered as gaps")
    buffer_full_flow = counter("gaps forced by a flow's buffer cap")
    buffer_full_global = counter("gaps forced by the global buffer cap")
    ack_gaps = counter("holes acknowledged by the peer, made gaps")
    bad_checksum = counter("segments ignored for a wrong TCP checksum")
    checksum_offload = counter("directions taken as captured before checksum offload (checksum_validation auto)")
    no_ack = counter("segments with data or FIN but no ACK, ignored")
    rst_ignored = counter("RSTs not at the expected sequence number, ignored")
    urgent_removed = counter("urgent bytes taken out of the stream")
    ends = counter("flows ended, by reason", by="reason")
    anomalies = counter("TCP anomalies, by name", by="name")


class Reassembler:
    """Reassemble TCP flows; see the module documentation.

    ``ports``: server ports that decide who is the originator of a flow picked
    up mid-stream, and (with ``only_ports``, the default) which flows are
    tracked at all.  ``uid_seed`` keys the uids (``FlowUids``): reproducible, and
    independent of the other flows and of the clock.
    """

    def __init__(self, ports=DEFAULT_PORTS, limits: ReassemblyLimits | None = None,
                 uid_seed=0, only_ports: bool = True, community_id_seed: int = 0,
                 policy: ReceiverPolicy | None = None):
        self.ports = frozenset(ports)
        self.limits = limits or ReassemblyLimits()
        self.policy = policy = policy or ReceiverPolicy()
        self._verify = policy.checksums != "no"
        self._csum_start = 1 if policy.checksums == "yes" else 0
        self._suspects = 0           # directions with segments kept aside
        self._urgent = policy.urgent == "linux"
        self._wins = _WINS[policy.overlap]
        self._coalesce = policy.overlap == "linux"
        self.only_ports = only_ports
        self.cid_seed = community_id_seed
        self._uids = FlowUids(uid_seed)
        self._ack_gaps = self.limits.ack_gaps
        self._table: dict = {}       # (src, sport, dst, dport) -> (flow, sender, receiver)
        self._flows: dict = {}       # flow.key -> flow, least recently active first
        self._closed: dict = {}      # flow.key -> ts it ended
        self._recent = None          # the flow last moved to the end of _flows
        self.buffered = 0            # out-of-order bytes over all flows
        self.counters = ReassemblyCounters()

    # ------------------------------------------------------------------ API
    def verify_all(self) -> None:
        """Verify every verifiable segment ("auto" becomes "yes"): for a live
        sensor, whose ingress frames are as the NIC received them and whose
        egress frames the caller marks unverifiable (``feed(verify=False)``)."""
        if self._verify:
            self._csum_start = 1

    @property
    def flows(self):
        """The flows being tracked (a view; do not modify)."""
        return self._flows.values()

    def position(self, src: bytes, sport: int, dst: bytes, dport: int) -> tuple[int, bool] | None:
        """Where the direction src:sport -> dst:dport stands: the sequence
        number of the next byte it would deliver (every byte before it is
        delivered or a Gap), and whether the last byte delivered was LF;
        None when no open flow has that direction or it has not started."""
        ent = self._table.get((src, sport, dst, dport))
        if ent is None or ent[1].nxt is None:
            return None
        st = ent[1]
        return st.nxt, st.last[-1:] == b"\n"

    def flow_of(self, src: bytes, sport: int, dst: bytes, dport: int):
        """The open flow with the direction src:sport -> dst:dport, or None."""
        ent = self._table.get((src, sport, dst, dport))
        return None if ent is None else ent[0]

    def feed(self, seg, ts: float, verify: bool = True) -> list:
        """Process one ``Segment`` seen at time ``ts``; return the events it causes.

        ``verify``: False when the segment's checksum cannot mean anything
        (a frame leaving the host through TC: the NIC computes it later)."""
        out = []
        _fam, src, dst, sport, dport, seq, ack, flags, payload, wlen, _wl, _fr, l4 = seg
        ent = self._table.get((src, sport, dst, dport))
        if self._suspects and ent is not None and flags & ACK and ent[2].suspect:
            # first what the peer's segments kept aside became, if this acknowledges them
            self._acked_suspects(ent[0], ent[2], ack, ts, out)
        ok = None
        if l4 >= 0 and verify and self._verify:
            if ent is None:
                ok = checksum_ok(seg)
                if ok is False and self._csum_start:
                    self.counters.bad_checksum += 1     # "yes": it starts nothing
                    return out
            elif ent[1].csum != 2:
                ok = checksum_ok(seg)
                if ok is not None and not self._checksum(ent, seg, ok, ts, out):
                    return out
        if flags & 0x37 != ACK and not flags & 0x16:
            # data or FIN without ACK (and no SYN, no RST): Linux discards it
            # (tcp_validate_incoming, tcp_rcv_state_process)
            if wlen or flags & FIN:
                self.counters.no_ack += 1
                if ent is not None:
                    self._anomaly(ent[0], ANOMALY_NO_ACK, f"{ent[1].direction} segment of {wlen} "
                                  "bytes without ACK ignored", ts, out)
            return out
        if ent is None:
            ent = self._new_flow(seg, ts, out)
            if ent is None:
                return out
            if ok is not None and wlen and not self._checksum(ent, seg, ok, ts, out):
                return out
        flow, st, peer = ent
        flow.last_ts = ts
        if flow is not self._recent:
            # least recently active first: the flow table's order is eviction's
            flows = self._flows
            key = flow.key
            del flows[key]
            flows[key] = flow
            self._recent = flow
        if flags & 0x27:                        # SYN, FIN, RST or URG
            if flags & SYN:
                if st.nxt is None:
                    st.isn = seq
                    st.nxt = (seq + 1) & _MASK
                elif st.isn is not None and seq != st.isn and not flags & ACK:
                    if st.pos or st.chunks or st.fin is not None or peer.nxt is not None:
                        # same 4-tuple, new connection
                        self._end(flow, "reused", ts, out)
                        return out + self.feed(seg, ts)
                    st.isn = seq
                    st.nxt = (seq + 1) & _MASK
                    self._anomaly(flow, ANOMALY_ISN_CHANGED, "SYN with a new ISN", ts, out)
                seq = (seq + 1) & _MASK
            return self._slow(flow, st, peer, seg, seq, flags, ts, out)
        if wlen:
            nxt = st.nxt
            if nxt is None:
                st.nxt = nxt = seq
            if seq == nxt and not st.chunks and len(payload) == wlen and st.urg is None:
                # fast path: the next bytes, nothing buffered, nothing cut
                out.append(_new(Data, (flow, st.direction, payload, ts)))
                st.last = payload
                pos = st.pos
                st.last_pos = pos
                st.pos = pos + wlen
                st.nxt = (nxt + wlen) & _MASK
            else:
                off = st.pos + ((seq - nxt + _HALF) & _MASK) - _HALF
                self._add(flow, st, off, payload, wlen, ts, out)
        if peer.chunks and flags & ACK and self._ack_gaps:
            self._ack(flow, peer, ack, ts, out)
        if flow.closing_since is not None:
            self._maybe_close(flow, ts, out)
        return out

    def expire(self, now: float) -> list:
        """End flows idle for ``idle_timeout`` and closing flows past ``close_timeout``."""
        out = []
        lim = self.limits
        idle = now - lim.idle_timeout
        closing = now - lim.close_timeout
        for flow in list(self._flows.values()):
            if flow.last_ts <= idle:
                self._end(flow, "timeout", now, out)
            elif flow.closing_since is not None and flow.closing_since <= closing:
                self._end(flow, "fin", now, out)
        linger = now - lim.closed_linger
        if self._closed:
            self._closed = {k: t for k, t in self._closed.items() if t > linger}
        return out

    def flush_all(self, ts: float | None = None) -> list:
        """End every flow (e.g. at the end of a capture): 'fin' if both sides had
        sent FIN, else 'flush'."""
        out = []
        for flow in list(self._flows.values()):
            t = flow.last_ts if ts is None else ts
            self._end(flow, "fin" if flow.closing_since is not None else "flush", t, out)
        return out

    # ------------------------------------------------------------ internals
    def _checksum(self, ent, seg, ok, ts, out) -> bool:
        """Judge a verified checksum of a flow's segment; False: not now."""
        flow, st = ent[0], ent[1]
        if st.csum == 0:
            # "auto", undecided: data decides (a capture made on a sending host
            # with checksum offload has wrong checksums on its data segments,
            # often from the first, while its SYN or bare ACKs may be right)
            if ok:
                if seg.wire_paylen:
                    st.csum = 1
                    for kept, kts in st.suspect:
                        self._bad(flow, st, kept, kts, out)
                    self._drop_suspects(st)
                return True
            if seg.flags & RST:             # an RST is never taken on trust
                self._bad(flow, st, seg, ts, out)
                return False
            if not seg.wire_paylen or seg.flags & SYN:
                return True
            if st.nxt is None:
                st.nxt = seg.seq
            if not st.suspect:
                st.suspect = []
                self._suspects += 1
            st.suspect.append((seg, ts))
            if len(st.suspect) > SUSPECT_MAX:
                self._offloaded(flow, st, ts, out)
            return False
        if ok:
            return True
        self._bad(flow, st, seg, ts, out)
        return False

    def _bad(self, flow, st, seg, ts, out) -> None:
        self.counters.bad_checksum += 1
        self._anomaly(flow, ANOMALY_BAD_CHECKSUM, f"{st.direction} segment seq {seg.seq} "
                      f"({seg.wire_paylen} bytes) with a wrong TCP checksum ignored", ts, out)

    def _drop_suspects(self, st) -> None:
        if st.suspect:
            self._suspects -= 1
        st.suspect = ()

    def _acked_suspects(self, flow, st, ack, ts, out) -> None:
        """The receiver of ``st`` acknowledged up to ``ack``: past what was
        delivered, it accepted the segments kept aside."""
        if ((ack - st.nxt + _HALF) & _MASK) - _HALF > 0:
            self._offloaded(flow, st, ts, out)

    def _offloaded(self, flow, st, ts, out) -> None:
        """The direction's wrong checksums are the capture's (before offload):
        not verified from now on; the segments kept aside become its stream."""
        st.csum = 2
        self.counters.checksum_offload += 1
        kept = st.suspect
        self._drop_suspects(st)
        for seg, kts in kept:
            off = st.pos + ((seg.seq - st.nxt + _HALF) & _MASK) - _HALF
            self._add(flow, st, off, seg.payload, seg.wire_paylen, kts, out)

    def _new_flow(self, seg, ts, out):
        sport, dport, flags = seg.sport, seg.dport, seg.flags
        ports = self.ports
        if self.only_ports and sport not in ports and dport not in ports:
            self.counters.not_tracked += 1
            return None
        a, b = (seg.src, sport), (seg.dst, dport)
        key = a + b if a <= b else b + a
        syn_only = flags & (SYN | ACK | RST) == SYN
        if key in self._closed:
            if not syn_only:
                self.counters.after_close += 1
                return None
            del self._closed[key]
        if flags & RST or not (flags & SYN or seg.wire_paylen):
            self.counters.no_flow += 1            # lone RST, pure ACK or FIN: nothing to follow
            return None
        if flags & SYN:
            sender_is_orig = not flags & ACK
            partial = not sender_is_orig
        else:
            partial = True
            sender_is_orig = dport in ports or sport not in ports
        if len(self._flows) >= self.limits.max_flows:
            self._end(next(iter(self._flows.values())), "evicted", ts, out)
            self.counters.flows_evicted += 1
        if sender_is_orig:
            oa, op, ra, rp = seg.src, sport, seg.dst, dport
        else:
            oa, op, ra, rp = seg.dst, dport, seg.src, sport
        # the uid is the flow's own (its endpoints, its first segment's sequence number): not its
        # rank among the flows, nor the clock
        flow = TcpFlow(self._uids.uid(oa, op, ra, rp, seg.seq, sender_is_orig, ts), self.cid_seed,
                       seg.family, oa, op, ra, rp, ts, partial)
        if self._csum_start:
            flow.orig.csum = flow.resp.csum = 1
        # One key object per flow: flow.key is also the table's key of one
        # direction (the one whose endpoints are in order).
        key = flow.key
        self._flows[key] = flow
        self._recent = flow
        fwd = (flow, flow.orig, flow.resp)
        rev = (flow, flow.resp, flow.orig)
        if (oa, op) <= (ra, rp):
            self._table[key] = fwd
            self._table[(ra, rp, oa, op)] = rev
        else:
            self._table[(oa, op, ra, rp)] = fwd
            self._table[key] = rev
        self.counters.flows += 1
        out.append(FlowStart(flow, ts))
        return fwd if sender_is_orig else rev

    def _slow(self, flow, st, peer, seg, seq, flags, ts, out):
        """Segments with SYN, FIN, RST or URG."""
        wlen = seg.wire_paylen
        if st.nxt is None:
            st.nxt = seq
        off = st.pos + ((seq - st.nxt + _HALF) & _MASK) - _HALF
        if flags & RST:
            # RFC 5961 3.2 as Linux does it (tcp_validate_incoming, tcp_reset_check):
            # only an RST at rcv_nxt resets; its payload is never read
            if self._rst_exact(st, off):
                self._end(flow, "rst", ts, out)
                return out
            self.counters.rst_ignored += 1
            if abs(off - st.pos) > self.limits.rst_window:
                self._anomaly(flow, ANOMALY_RST_OUT_OF_WINDOW, f"{st.direction} RST "
                              f"{off - st.pos} bytes from the expected sequence", ts, out)
            else:
                self._anomaly(flow, ANOMALY_RST_NOT_EXACT, f"{st.direction} RST {off - st.pos} "
                              "bytes from the expected sequence ignored (a challenge ACK)", ts, out)
            return out
        if flags & URG and self._urgent and flags & ACK:
            self._urgent_mark(st, off, seg)
        if wlen:
            self._add(flow, st, off, seg.payload, wlen, ts, out)
        if flags & ACK and peer.chunks and self._ack_gaps:
            self._ack(flow, peer, seg.ack, ts, out)
        if flags & FIN and st.fin is None:
            st.fin = max(off + wlen, st.pos)
        if st.fin is not None and peer.fin is not None:
            if flow.closing_since is None:
                flow.closing_since = ts
            self._maybe_close(flow, ts, out)
        return out

    @staticmethod
    def _rst_exact(st, off) -> bool:
        """Whether an RST at position ``off`` of ``st`` is one Linux accepts:
        at rcv_nxt; at the right edge of the out-of-order data (the highest
        SACK block's end); after the peer's FIN, at the FIN or just after it."""
        if off == st.pos:
            return True
        chunks = st.chunks
        if chunks and off == chunks[-1][1]:
            return True
        fin = st.fin
        return fin is not None and (off == fin or off == fin + 1)

    def _urgent_mark(self, st, off, seg) -> None:
        """Linux's tcp_check_urg (tcp_stdurg 0): the urgent byte is the one
        before seq + urgent pointer (the one at seq for a pointer of 0); a
        mark before what was received in order, or not after the pending
        one, is ignored; a later mark replaces a pending one (whose byte then
        stays in the stream)."""
        ptr = urgent_pointer(seg)
        if ptr < 0:
            return
        mark = off + ptr - 1 if ptr else off
        if mark < st.pos or (st.urg is not None and mark <= st.urg):
            return
        st.urg = mark

    def _maybe_close(self, flow, ts, out):
        """Both sides sent FIN: end the flow once everything before the FINs is in."""
        o, r = flow.orig, flow.resp
        if o.pos >= o.fin and r.pos >= r.fin:
            self._end(flow, "fin", ts, out)

    def _add(self, flow, st, off, payload, wlen, ts, out):
        """Put [off, off+wlen) into the buffer (filling holes only), then deliver."""
        end = off + wlen
        pos = st.pos
        if end <= pos:
            self.counters.retransmitted += 1
            self._check_delivered(flow, st, off, payload, ts, out)
            return
        if off < pos:
            self._check_delivered(flow, st, off, payload, ts, out)
        if st.fin is not None and end > st.fin:
            end = max(st.fin, off)       # nothing after a FIN belongs to the stream
            payload = payload[:end - off]
        plen = len(payload)
        self._insert(flow, st, off, off + plen, payload, ts, out, [off, off + wlen])
        if plen < end - off:
            self._insert(flow, st, off + plen, end, None, ts, out, None)
        self._drain(flow, st, ts, out)
        if st.chunks:
            self._enforce_caps(flow, st, ts, out)

    def _check_delivered(self, flow, st, off, payload, ts, out):
        """Compare a retransmission with the last delivered bytes, where they overlap."""
        last, lp = st.last, st.last_pos
        a = max(off, lp)
        b = min(off + len(payload), lp + len(last))
        if a < b and payload[a - off:b - off] != last[a - lp:b - lp]:
            self._anomaly(flow, ANOMALY_OVERLAP, f"{st.direction} bytes {a}-{b} "
                          "retransmitted with different content", ts, out)

    def _insert(self, flow, st, s, e, data, ts, out, owner):
        """Put [s, e) (``data``, or None for missing bytes) into the buffer;
        where buffered bytes are there already, the overlap policy says which
        copy stays (missing bytes stay missing)."""
        if s < st.pos:
            if data is not None:
                data = data[st.pos - s:]
            s = st.pos
        if s >= e:
            return
        chunks = st.chunks
        if chunks is _NO_CHUNKS:
            st.chunks = chunks = []
        if not chunks or chunks[-1][1] <= s:          # common case: append at the end
            if chunks and self._coalesce and data is not None:
                self._coalesce_into(chunks[-1], s, owner)
            chunks.append((s, e, data, owner))
            if data is not None:
                st.buffered += e - s
                self.buffered += e - s
            return
        i = bisect_right(chunks, s, key=_start) - 1
        if i < 0:
            i = 0
        n = len(chunks)
        while i < n and chunks[i][1] <= s:
            i += 1
        if i and self._coalesce and data is not None and owner is not None:
            self._coalesce_into(chunks[i - 1], s, owner)
        wins = self._wins
        new = []
        cur = s
        j = i
        added = 0
        while j < n and chunks[j][0] < e:
            cs, ce, cd, co = chunks[j]
            if cs > cur:
                new.append((cur, cs, None if data is None else data[cur - s:cs - s], owner))
                if data is not None:
                    added += cs - cur
            a = cs if cs > s else s
            b = ce if ce < e else e
            if cs < a:
                new.append((cs, a, None if cd is None else cd[:a - cs], co))
            if data is not None and cd is not None:
                mine = data[a - s:b - s]
                if mine != cd[a - cs:b - cs]:
                    if wins(owner[0], owner[1], co[0], co[1]):
                        new.append((a, b, mine, owner))
                        kept = "the later"
                    else:
                        new.append((a, b, cd[a - cs:b - cs], co))
                        kept = "the earlier"
                    self._anomaly(flow, ANOMALY_OVERLAP, f"{st.direction} bytes {a}-{b} received "
                                  f"twice with different content: kept {kept} copy "
                                  f"({self.policy.overlap} policy)", ts, out)
                else:
                    new.append((a, b, cd[a - cs:b - cs], co))
            else:
                new.append((a, b, None if cd is None else cd[a - cs:b - cs], co))
            if ce > b:
                new.append((b, ce, None if cd is None else cd[b - cs:], co))
            cur = b
            j += 1
        if cur < e:
            new.append((cur, e, None if data is None else data[cur - s:], owner))
            if data is not None:
                added += e - cur
        chunks[i:j] = new
        if added:
            st.buffered += added
            self.buffered += added

    @staticmethod
    def _coalesce_into(prev, s, owner) -> None:
        """Linux's tcp_ooo_try_coalesce: a segment starting exactly where a
        buffered one ends joins it (its bytes then count as starting where that
        one starts, for the next overlap)."""
        po = prev[3]
        if prev[1] == s and po is not None and po[1] == s and owner is not None and owner is not po:
            po[1] = owner[1]
            owner[0] = po[0]

    def _drain(self, flow, st, ts, out):
        """Deliver buffered chunks that start where delivery stands."""
        chunks = st.chunks
        if not chunks or chunks[0][0] != st.pos:
            return
        parts = []
        pos = start = st.pos
        k = 0
        for s, e, d, _owner in chunks:
            if s != pos:
                break
            k += 1
            if d is None:
                if parts:
                    self._deliver(flow, st, start, parts, ts, out)
                    parts = []
                out.append(Gap(flow, st.direction, e - s, ts))
                st.gaps += e - s
                start = e
            else:
                parts.append(d)
                st.buffered -= e - s
                self.buffered -= e - s
            pos = e
        if k == len(chunks):
            st.chunks = _NO_CHUNKS
        else:
            del chunks[:k]
        if parts:
            self._deliver(flow, st, start, parts, ts, out)
        st.nxt = (st.nxt + pos - st.pos) & _MASK
        st.pos = pos
        if st.urg is not None and st.urg < pos:
            st.urg = None          # the urgent byte was in a gap

    def _deliver(self, flow, st, start, parts, ts, out):
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        st.last = data             # as sent: what a retransmission is compared with
        st.last_pos = start
        urg = st.urg
        if urg is not None and urg < start + len(data):
            st.urg = None
            if urg >= start:
                # Linux's tcp_recvmsg skips the byte at urg_seq (no SO_OOBINLINE)
                k = urg - start
                self.counters.urgent_removed += 1
                self._anomaly(flow, ANOMALY_URGENT, f"{st.direction} urgent byte {data[k:k + 1]!r} "
                              f"at {urg} taken out of the stream", ts, out)
                data = data[:k] + data[k + 1:]
                if not data:
                    return
        out.append(Data(flow, st.direction, data, ts))

    def _gap(self, flow, st, length, ts, out):
        out.append(Gap(flow, st.direction, length, ts))
        st.gaps += length
        st.pos += length
        if st.urg is not None and st.urg < st.pos:
            st.urg = None
        st.nxt = (st.nxt + length) & _MASK
        self.counters.gap_bytes += length

    def _skip(self, flow, st, ts, out):
        """Give up on the hole in front of the buffer: Gap up to the first chunk."""
        s = st.chunks[0][0]
        if s > st.pos:
            self._gap(flow, st, s - st.pos, ts, out)
        self._drain(flow, st, ts, out)

    def _enforce_caps(self, flow, st, ts, out):
        lim = self.limits
        if len(st.chunks) > lim.max_chunks:
            self._anomaly(flow, ANOMALY_BUFFER_FULL, f"{st.direction}: more than "
                          f"{lim.max_chunks} out-of-order chunks", ts, out)
            while len(st.chunks) > lim.max_chunks:
                self._skip(flow, st, ts, out)
        if st.buffered + (flow.orig.buffered if st is flow.resp else flow.resp.buffered) \
                > lim.flow_buffer:
            self._anomaly(flow, ANOMALY_BUFFER_FULL, f"more than {lim.flow_buffer} "
                          "out-of-order bytes buffered in the flow", ts, out)
            self.counters.buffer_full_flow += 1
            while flow.buffered > lim.flow_buffer:
                self._skip(flow, st if st.chunks else
                           (flow.orig if flow.orig.chunks else flow.resp), ts, out)
        if self.buffered > lim.global_buffer:
            self.counters.buffer_full_global += 1
            while self.buffered > lim.global_buffer:
                if st.chunks:
                    victim, vs = flow, st
                else:
                    victim = max(self._flows.values(), key=lambda f: f.buffered)
                    vs = victim.orig if victim.orig.buffered >= victim.resp.buffered \
                        else victim.resp
                    if not vs.chunks:
                        break
                self._anomaly(victim, ANOMALY_BUFFER_FULL, f"more than "
                              f"{lim.global_buffer} out-of-order bytes buffered "
                              "over all flows", ts, out)
                self._skip(victim, vs, ts, out)

    def _ack(self, flow, peer, ack, ts, out):
        """The peer's receiver acknowledged up to ``ack``: holes before that,
        with data buffered behind them, were lost by the capture."""
        if peer.nxt is None:
            return
        ack_pos = peer.pos + ((ack - peer.nxt + _HALF) & _MASK) - _HALF
        delay = self.limits.ack_gap_delay
        while peer.chunks and peer.chunks[0][0] <= ack_pos and peer.chunks[0][0] > peer.pos:
            seen = peer.hole_acked
            if seen is None or seen[0] != peer.pos:
                peer.hole_acked = (peer.pos, ts)
                if delay > 0:
                    return
            elif ts - seen[1] < delay:
                return
            self.counters.ack_gaps += 1
            self._skip(flow, peer, ts, out)

    def _flush(self, flow, st, ts, out):
        """Deliver everything buffered, holes becoming Gaps."""
        while st.chunks:
            self._skip(flow, st, ts, out)

    def _end(self, flow, reason, ts, out):
        for st in (flow.orig, flow.resp):
            if st.suspect:
                self._offloaded(flow, st, ts, out)      # nothing said otherwise
        for st in (flow.orig, flow.resp):
            if st.nxt is None:
                continue
            self._flush(flow, st, ts, out)
            if st.fin is not None and st.pos < st.fin:
                self._gap(flow, st, st.fin - st.pos, ts, out)
        flow.ended = reason
        out.append(FlowEnd(flow, reason, ts))
        ends = self.counters.ends
        ends[reason] = ends.get(reason, 0) + 1
        del self._flows[flow.key]
        if self._recent is flow:
            self._recent = None
        self._table.pop((flow.orig_addr, flow.orig_p, flow.resp_addr, flow.resp_p), None)
        self._table.pop((flow.resp_addr, flow.resp_p, flow.orig_addr, flow.orig_p), None)
        if reason in ("fin", "rst", "reused"):
            # the connection is over: its stragglers must not start a new flow
            self._closed[flow.key] = ts

    def _anomaly(self, flow, name, detail, ts, out):
        anomalies = self.counters.anomalies
        anomalies[name] = anomalies.get(name, 0) + 1
        out.append(TcpAnomaly(flow, name, detail, ts))
