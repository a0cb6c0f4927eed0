"""Live input: the datapath's events through the same pipeline as a capture.

    kernel (XDP ingress / TC egress) --event ring--> EventReader.poll()
      -> LiveFeed.step(): each event's frame, timestamp and wire length
      -> Pipeline.feed_frame(LINKTYPE_ETHERNET, ...)

Kernel timestamps are CLOCK_MONOTONIC (bpf_ktime_get_ns); records carry wall
clock time, so the offset between the two clocks is taken once at start.
Idle flows are expired on the wall clock, so a quiet link still ends them.
An encrypted flow (STARTTLS accepted) is bypassed in the kernel: its packets
pass without being pushed any more.  With the commit hold on, the segments
the kernel held are answered after each batch (sensor.inputs.hold).
"""

from __future__ import annotations

import time

from sensor.counters import Counters, counter, gauge
from sensor.inputs.hold import CommitHold
from sensor.kernel import abi
from sensor.kernel import maps as kernelmaps
from sensor.pipeline import Pipeline
from sensor.stream.packet import LINKTYPE_ETHERNET

__all__ = ["LiveFeed", "FeedCounters", "STARTTLS_BYPASS_TTL", "EXPIRE_EVERY"]

#: how long a STARTTLS flow stays bypassed in the kernel (seconds).  Bounded
#: so that a later connection reusing the same 4-tuple is inspected again.
STARTTLS_BYPASS_TTL = 3600.0
#: seconds of wall clock between two passes that end idle flows
EXPIRE_EVERY = 1.0
#: events dissected between two looks at the shutdown's deadline (drain)
DRAIN_CHUNK = 256
#: seconds between two reads of the kernel's ring losses (once any was seen),
#: and how old a loss must be to be judged there: events still in the ring
#: reach the pipeline first
LOSS_SWEEP_EVERY = 5.0

_HELD = abi.EVF_HELD
_CUT = abi.EVF_CUT
_INGRESS = int(abi.Direction.INGRESS)


class FeedCounters(Counters):
    """``owner``: the LiveFeed (``lost`` is the kernel's count, read from its
    map; the ring's own counts are read from its reader)."""

    events = counter("events read from the kernel's event ring")
    lost = counter("events the kernel could not write into the event ring (ring full)", metric="lost_samples",
                   read=lambda feed: feed.reader.lost)
    starttls_bypassed = counter("STARTTLS flows whose packets the kernel stopped pushing",
                                metric="starttls_bypassed_flows")
    starttls_bypass_errors = counter("STARTTLS flows the kernel's bypass map refused")
    loss_sweep_errors = counter("reads of the kernel's ring losses that failed")
    ring_bad_records = counter("event ring records that are not our events",
                               read=lambda feed: feed.reader.bad_records)
    ring_callback_errors = counter("event ring records the read callback failed to copy",
                                   read=lambda feed: feed.reader.callback_errors)
    ring_fill = gauge("share of the event ring holding records not yet read (0..1)", metric="ring_fill_ratio",
                      read=lambda feed: round(feed.reader.fill, 6), combine="max")
    discarded = counter("events read at shutdown and left undissected: the stop deadline came first")


class LiveFeed:
    """Pump events from ``reader`` (a sensor.kernel.ring.EventReader) into
    ``pipeline``; STARTTLS flows are bypassed through ``maps``; ``hold``
    (a CommitHold, or None when the kernel holds nothing) releases held segments."""

    def __init__(self, reader, pipeline: Pipeline, maps: kernelmaps.KernelMaps,
                 hold: CommitHold | None = None, enforcer=None, owns=None):
        """enforcer: a KernelEnforcer told the kernel timestamp of each event
        dissected (``event_ts_ns``), for its verdict-to-kernel histogram.
        owns: with several workers, whether a flow (src, sport, dst,
        dport; packed addresses) is this worker's: the kernel's loss map is
        shared, and the losses of another worker's flows are left to it."""
        self.reader = reader
        self.enforcer = enforcer
        self.pipeline = pipeline
        self.maps = maps
        self.hold = hold
        self.counters = FeedCounters(self)
        self._owns = owns
        self._offset = time.time() - time.monotonic()
        self._next_expire = time.monotonic() + EXPIRE_EVERY
        self._pending: list = []        # events an interrupted step left for drain()
        if pipeline.on_starttls is None:
            pipeline.on_starttls = self._bypass
        # XDP sees ingress frames as the NIC received them: their checksums
        # are verified; TC's egress frames carry what the NIC will complete
        pipeline.reassembler.verify_all()
        # events the ring refused: those no event carried are read from the
        # kernel's map when a flow ends, once any loss was seen (a map lookup
        # per direction of every ending flow otherwise costs for nothing)
        self._lossy = False
        self._next_sweep = time.monotonic() + LOSS_SWEEP_EVERY
        if pipeline.loss_lookup is None:
            pipeline.loss_lookup = self._lost_of

    def step(self, timeout_ms: int = 50, interrupt=None) -> int:
        """Wait up to ``timeout_ms`` for events, dissect them; returns how many.
        ``interrupt``: asked between chunks of events (the sensor's stop
        flag); when it says so, the rest waits for ``drain``."""
        events = self.reader.poll(timeout_ms)
        if self._lossy and self.reader.drained:
            # the ring was read empty: the kernel may push everything again
            try:
                self.maps.relieve(getattr(self.reader, "worker", 0))
            except OSError:
                self.counters.loss_sweep_errors += 1
        if interrupt is None or len(events) <= DRAIN_CHUNK:
            self._dissect(events)
        else:
            for start in range(0, len(events), DRAIN_CHUNK):
                if interrupt():
                    self._pending = events[start:]
                    break
                self._dissect(events[start:start + DRAIN_CHUNK])
        if self.hold is not None:
            self.hold.answer()
        now = time.monotonic()
        if now >= self._next_expire:
            self._next_expire = now + EXPIRE_EVERY
            if not self._lossy and self.reader.lost:
                self._lossy = True
            self.pipeline.expire(now + self._offset)
            if self._lossy and now >= self._next_sweep:
                self._next_sweep = now + LOSS_SWEEP_EVERY
                self.sweep_losses(now)
        return len(events)

    def _dissect(self, events) -> None:
        feed = self.pipeline.feed_frame
        offset = self._offset
        hold = self.hold
        counted = self.pipeline.counters
        enforcer = self.enforcer
        try:
            self._dissect_events(events, feed, offset, hold, counted, enforcer)
        finally:
            if enforcer is not None:
                enforcer.event_ts_ns = 0
        self.counters.events += len(events)

    def _dissect_events(self, events, feed, offset, hold, counted, enforcer) -> None:
        for ev in events:
            h = ev.header
            if enforcer is not None:
                enforcer.event_ts_ns = h.ts_ns
            lost = h.lost
            if lost:
                self._lossy = True
            if h.flags & _HELD and hold is not None:
                gated = counted.gated
                seg = feed(LINKTYPE_ETHERNET, ev.frame, h.wire_len, h.ts_ns / 1e9 + offset,
                           h.direction == _INGRESS, lost)
                if seg is not None:
                    hold.held(seg, h, None if h.flags & _CUT else ev.frame, gated=counted.gated != gated)
            else:
                feed(LINKTYPE_ETHERNET, ev.frame, h.wire_len, h.ts_ns / 1e9 + offset, h.direction == _INGRESS,
                     lost)

    def drain(self, give_up=None, rounds: int = 3, timeout_ms: int = 20) -> None:
        """Dissect what is left: the events an interrupted step left, then
        what is in the ring (before shutdown: after the programs are detached
        nothing more comes), up to ``rounds`` reads.  ``give_up``: asked
        between chunks of events; when it says time is out, the events read
        and not yet dissected are dropped, counted in ``discarded``."""
        pending, self._pending = self._pending, []
        if not self._dissect_until(pending, give_up):
            return
        for _ in range(rounds):
            events = self.reader.poll(timeout_ms)
            if not events or not self._dissect_until(events, give_up):
                return

    def _dissect_until(self, events, give_up) -> bool:
        """Dissect ``events`` chunk by chunk while ``give_up`` allows; False
        (the rest counted as discarded) when it did not."""
        for start in range(0, len(events), DRAIN_CHUNK):
            if give_up is not None and give_up():
                self.counters.discarded += len(events) - start
                return False
            self._dissect(events[start:start + DRAIN_CHUNK])
            if self.hold is not None:
                self.hold.answer()
        return True

    def sweep_losses(self, now: float) -> None:
        """The kernel's losses of connections the pipeline does not follow:
        a connection whose opening SYN was refused and of which no event came
        since gets its record here (Pipeline.unseen_loss); the others
        (mid-stream flows never followed, a flood's) are counted. Losses of
        followed flows wait for the flow's end."""
        maps = self.maps
        flow_of = self.pipeline.reassembler.flow_of
        try:
            entries = maps.losses(int((now - LOSS_SWEEP_EVERY) * 1e9))
            for key, loss in entries:
                src, dst = bytes(key.saddr), bytes(key.daddr)
                if key.family == abi.AF_INET:
                    src, dst = src[12:], dst[12:]
                if flow_of(src, key.sport, dst, key.dport) is not None:
                    continue
                if self._owns is not None and not self._owns(src, key.sport, dst, key.dport):
                    continue
                events = maps.forget_loss(key, int(loss.events))
                self.pipeline.unseen_loss(key.family, src, key.sport, dst, key.dport, events,
                                          bool(loss.flags & abi.LOSS_SYN), now + self._offset)
        except OSError:
            self.counters.loss_sweep_errors += 1

    def _lost_of(self, flow) -> int:
        """Events of ``flow`` the ring refused that no event carried (its last ones)."""
        if not self._lossy:
            return 0
        try:
            take = self.maps.take_lost
            return (take(abi.flow_key_packed(flow.orig_addr, flow.orig_p, flow.resp_addr, flow.resp_p))
                    + take(abi.flow_key_packed(flow.resp_addr, flow.resp_p, flow.orig_addr, flow.orig_p)))
        except OSError:
            return 0

    def _bypass(self, session) -> None:
        flow = session.flow
        try:
            self.maps.bypass_flow(kernelmaps.FlowEnds(flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p),
                                  ttl=STARTTLS_BYPASS_TTL)
            self.counters.starttls_bypassed += 1
        except OSError:
            self.counters.starttls_bypass_errors += 1
