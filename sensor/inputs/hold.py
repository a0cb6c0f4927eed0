"""The commit hold's userland half: answer each held segment with a release.

The datapath holds (drops, and pushes flagged ``held``) a client segment that
can complete a message until the flow's release point covers it
(bpf/datapath.c, ``ss_hold_verdict``).  After the live feed has dissected a
batch of events, ``CommitHold.answer()`` looks at every flow with a held
segment: once the client's stream has been delivered to the dissector (and
so to the rules and the statistics) up to the held segment's end, it writes
the release point -- the next sequence number the reassembly expects, so
every byte before it has been judged -- unless a verdict dropped the flow
meanwhile (counted: ``dropped_at_commit``); then the kernel's flow drop
keeps the retransmission out and the MTA never commits the message.

While the client is inside a BDAT chunk, the release says "hold all": the
chunk's last octet, where the MTA commits, can be in any segment, so the
kernel holds every segment beyond the release point until the chunk ends.
A held segment beyond a hole waits for the hole to be filled (the release
point only moves over delivered bytes); released frames are put into the stack at once (sensor.kernel.inject), so
the MTA need not wait for the client's retransmission; the kernel releases a hold itself
after ``hold_max_ms`` whatever userland does (fail open), and ``late``
counts the answers that came after that.
"""

from __future__ import annotations

import collections
import time
from typing import NamedTuple

from sensor.counters import Counters, counter, gauge
from sensor.inputs.framecut import cut_payload
from sensor.kernel import abi
from sensor.kernel.maps import monotonic_ns
from sensor.smtp.connection import BDAT

__all__ = ["CommitHold", "HoldCounters", "HoldOutcome", "HOLD_TIME_BUCKETS_MS"]

_MASK = 0xFFFFFFFF
_HALF = 0x80000000

#: upper bounds (ms) of the hold-time buckets: held (kernel time) -> released
HOLD_TIME_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def _bucket(ms: float) -> str:
    for bound in HOLD_TIME_BUCKETS_MS:
        if ms <= bound:
            return str(bound)
    return "+Inf"


def seq_ge(a: int, b: int) -> bool:
    """a is at or after b in sequence space."""
    return ((a - b) & _MASK) < _HALF


class HoldCounters(Counters):
    """What userland did with the kernel's held segments (``owner``: the
    CommitHold; the kernel counts the held packets themselves: ``held``,
    ``released``, ``hold_timeout``)."""

    METRIC_PREFIX = "hold_"
    max_ms = gauge("milliseconds after which the kernel lets a held segment pass by itself",
                   read=lambda hold: hold.hold_max_ns // 1_000_000, combine="max")
    pending = gauge("flows with a held segment waiting for its release", read=lambda hold: len(hold.pending))

    held_events = counter("held segments read from the event ring (first copies and retransmissions)")
    releases = counter("release points written for held segments")
    dropped_at_commit = counter("flows dropped while their end of data was held: the MTA never got it "
                                "(once a flow: its later held copies are the gate's)")
    late = counter("releases written after the kernel's own timeout (hold_max_ms) had let the segment pass")
    gone = counter("held segments of flows that ended before their release")
    release_errors = counter("release points the kernel's map refused")
    hold_time = counter("held segments released, by time from the hold to the release (ms, upper bound)",
                        by="le_ms")
    injected = counter("released frames put into the stack at once, not waiting for the client to resend")
    inject_errors = counter("released frames the kernel would not take (they pass on the client's retransmission)")
    injected_cut = counter("held frames put into the stack cut after their judged octets: the MTA's reply to "
                           "the command they end lets the dissector read the rest")
    released_unread = counter("releases covering client octets the dissector had not read (they wait for a reply "
                              "and no injector can send the MTA a cut copy): judged after the MTA has them")


class HoldOutcome(NamedTuple):
    """How one hold ended: ``released`` after ``ms`` (held -> release written),
    or ``dropped`` (a verdict dropped the flow while it was held)."""

    client: tuple            # (packed address, port) of the client
    outcome: str             # "released" or "dropped"
    ms: float
    injected: bool = False   # the released frames were put into the stack at once


#: held frames kept per flow for the injector (more wait for their retransmission)
FRAMES_KEPT = 8


class _Pending:
    __slots__ = ("key", "end", "since_ns", "written", "frames")

    def __init__(self, key, end, since_ns):
        self.key = key              # abi.FlowKey of the client -> server direction
        self.end = end              # sequence number after the held bytes
        self.since_ns = since_ns    # kernel time of the first held copy
        self.written = None         # the release point last written
        self.frames: list[tuple[int, int, bytes, int]] = []   # (seq, end, frame, ifindex)


class CommitHold:
    """Release the held segments of ``pipeline`` through ``maps`` (KernelMaps)."""

    def __init__(self, pipeline, maps, hold_max_ms: int = abi.HOLD_MAX_MS_DEFAULT, injector=None):
        self.pipeline = pipeline
        self.maps = maps
        #: a sensor.kernel.inject.Injector: released frames into the stack at once
        self.injector = injector
        self.hold_max_ns = hold_max_ms * 1_000_000
        self.counters = HoldCounters(self)
        #: (src, sport, dst, dport) of the client -> server direction -> _Pending
        self.pending: dict[tuple, _Pending] = {}
        #: the last holds' outcomes (for the demo), and how many holds ended in all
        self.recent: collections.deque[HoldOutcome] = collections.deque(maxlen=64)
        self.ended = 0

    def held(self, seg, header, frame: bytes | None = None, gated: bool = False) -> None:
        """The feed dissected the held segment ``seg`` (its event header
        ``header``; ``frame``: its bytes, whole, for the injector); ``gated``:
        the pipeline's gate kept it out instead, a copy still in the ring of a
        flow already dropped: nothing to release, its drop already counted."""
        self.counters.held_events += 1
        if gated:
            return
        end = (seg.seq + seg.wire_paylen) & _MASK
        tup = (seg.src, seg.sport, seg.dst, seg.dport)
        p = self.pending.get(tup)
        if p is None:
            key = abi.FlowKey(family=header.family, sport=header.sport, dport=header.dport)
            key.saddr[:] = header.saddr
            key.daddr[:] = header.daddr
            p = self.pending[tup] = _Pending(key, end, header.ts_ns)
        elif not seq_ge(p.end, end):
            p.end = end
        if (frame is not None and self.injector is not None and len(p.frames) < FRAMES_KEPT
                and not any(f[0] == seg.seq for f in p.frames)):
            p.frames.append((seg.seq, end, frame, header.ifindex))

    def answer(self) -> None:
        """Release what the dissector has judged; forget flows dropped or gone."""
        if not self.pending:
            return
        reassembler = self.pipeline.reassembler
        position = reassembler.position
        gate = self.pipeline.gate
        st = self.counters
        now = time.time()
        done = []
        for tup, p in self.pending.items():
            pos = position(*tup)
            if gate is not None and not gate(_Probe(tup), now):
                st.dropped_at_commit += 1
                self._ended(HoldOutcome(tup[:2], "dropped", (monotonic_ns() - p.since_ns) / 1e6))
                done.append(tup)
                continue
            if pos is None:
                st.gone += 1
                done.append(tup)
                continue
            nxt, at_line = pos
            flow = reassembler.flow_of(*tup)
            conn = flow.ctx.conn if flow is not None and flow.ctx is not None else None
            unread = conn.unread_client_octets if conn is not None else 0
            if unread and self.injector is not None and self.injector.supported:
                # judged up to the command that waits for its reply: the MTA
                # gets that much now (a cut copy) so that it can answer
                nxt, at_line, unread = (nxt - unread) & _MASK, True, 0
            if p.written is not None and not seq_ge(nxt, p.written + 1):
                continue                      # nothing new judged
            in_chunk = conn is not None and conn.state == BDAT
            # the judged frames into the stack before the release is written:
            # a copy with other bytes that the release would let pass then
            # comes after them, and the MTA's TCP keeps what it has
            injected = self._inject(p, nxt)
            try:
                self.maps.release(p.key, nxt, hold_all=in_chunk, at_line=at_line)
            except OSError:
                st.release_errors += 1
                continue
            p.written = nxt
            st.releases += 1
            if unread:
                st.released_unread += 1
            if seq_ge(nxt, p.end):
                waited = monotonic_ns() - p.since_ns
                if waited > self.hold_max_ns:
                    st.late += 1
                bucket = _bucket(waited / 1e6)
                st.hold_time[bucket] = st.hold_time.get(bucket, 0) + 1
                self._ended(HoldOutcome(tup[:2], "released", waited / 1e6, injected))
                done.append(tup)
        for tup in done:
            del self.pending[tup]


    def _inject(self, p: _Pending, released: int) -> bool:
        """The held frames the release covers, into the stack now, and the
        first octets of one it covers in part, cut there; True if all went."""
        if not p.frames:
            return False
        st = self.counters
        keep, ok = [], True
        for f in p.frames:
            seq, end, frame, ifindex = f
            if seq_ge(released, end):
                if self.injector.inject(frame, ifindex):
                    st.injected += 1
                else:
                    st.inject_errors += 1
                    ok = False
                continue
            keep.append(f)
            if seq_ge(seq, released):
                continue
            cut = cut_payload(frame, (released - seq) & _MASK)
            if cut is None or not self.injector.inject(cut, ifindex):
                st.inject_errors += 1
                ok = False
            else:
                st.injected_cut += 1
        p.frames = keep
        return ok

    def _ended(self, outcome: HoldOutcome) -> None:
        self.recent.append(outcome)
        self.ended += 1


class _Probe:
    """What the pipeline's gate reads of a segment (its addresses and ports):
    asks whether a verdict dropped the flow or banned its client."""

    __slots__ = ("src", "sport", "dst", "dport")
    flags = 0         # no SYN, no RST: asks about the flow, not one packet's fate

    def __init__(self, tup):
        self.src, self.sport, self.dst, self.dport = tup
