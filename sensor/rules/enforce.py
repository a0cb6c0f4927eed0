"""Where rule verdicts go: the kernel's maps (live) or a verdict table (replay).

Both keep the same ``Verdicts`` table, so the live feed can count the packets
of a dropped flow that still arrive from the ring, and a replay can decide
which packets an inline sensor would have let pass (``passes``).

* ``KernelEnforcer``: ``drop_flow`` writes the kernel's flow-drop entry (both
  directions) with one map update before it returns (``reset``: the kernel
  also tears the connection down, bpf/teardown.h); ``ban`` writes a prefix
  into the LPM ban trie and tears down the open flows it covers (their flow
  drops come before the ban in the datapath), ``unban`` removes it; ``bypass`` stops pushing an
  encrypted flow; ``bans`` lists the kernel's bans with the operator's notes.
* ``ReplayEnforcer``: the same verdicts, applied to the packets that follow
  in the capture (the packet that triggered a verdict is dropped too: that is
  what an inline sensor such as Haka does).

Every verdict goes through an enforcer, whoever decides it: the rule engine,
the reject statistics, the operator through the control socket.  The
enforcer applies it; the ``drop`` record is the decider's (``sensor.records.drop``),
with the enforcer's ``mode`` as ``enforced_by``.

``passes(segment, ts)`` is the pipeline's gate in both modes: live, it keeps
the stragglers of a dropped flow (already in the ring when the kernel entry
was written) from the dissector and counts them; in replay it stands in for
the kernel.
"""

from __future__ import annotations

import ipaddress
import math
import time

from sensor.counters import Counters, histogram
from sensor.kernel import abi
from sensor.prefixes import PrefixSet
from sensor.stream.flowid import pack_addr
from sensor.stream.packet import ACK, RST, SYN

__all__ = ["Verdicts", "KernelEnforcer", "ReplayEnforcer", "EnforcerCounters"]

#: upper bounds (seconds) of the verdict-to-kernel histograms: 10 µs to 1 s
LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
                   0.1, 0.25, 0.5, 1.0)


class Verdicts:
    """Dropped flows (both directions) and banned prefixes, with expiry in the caller's clock.

    Keys are packed addresses (what a Segment carries), so the per-packet gate
    formats nothing.  Expired entries are pruned when the earliest expiry is
    passed.  ``keep``: seconds a flow entry is kept at most whatever its TTL
    (live: the kernel does the dropping, the gate only needs to catch the
    stragglers already in the event ring); None keeps it for its TTL (replay:
    this table is the kernel).
    """

    def __init__(self, ports=(25, 587), keep: float | None = None):
        self.flows: dict[tuple, float | None] = {}      # (packed a, ap, packed b, bp), both orders -> expiry
        #: the flows of ``flows`` torn down (``reset``), both orders, and those of them whose
        #: server has had its RST (what the kernel's SS_VF_TORN says): see ``passes``
        self.resets: set[tuple] = set()
        self.torn: set[tuple] = set()
        #: banned prefixes -> expiry ts or None, matched per prefix length (PrefixSet):
        #: the gate's cost does not grow with the number of bans
        self.bans = PrefixSet()
        #: the SMTP ports: like the kernel, bans apply only to packets to or from them
        self.ports = frozenset(ports)
        self.keep = keep
        self._prune_at = math.inf                       # the earliest expiry held

    def add_flow(self, flow_tuple, expires=None, now: float | None = None, reset: bool = False) -> None:
        a, ap, b, bp = flow_tuple
        if self.keep is not None and now is not None:
            expires = now + self.keep if expires is None else min(expires, now + self.keep)
        pa, pb = pack_addr(a), pack_addr(b)
        for key in ((pa, ap, pb, bp), (pb, bp, pa, ap)):
            self.flows[key] = expires
            self.torn.discard(key)
            if reset:
                self.resets.add(key)
            else:
                self.resets.discard(key)
        self._expiring(expires)

    def _end_flow(self, key) -> None:
        src, sport, dst, dport = key
        for k in (key, (dst, dport, src, sport)):
            self.flows.pop(k, None)
            self.resets.discard(k)
            self.torn.discard(k)

    def add_ban(self, network, expires=None) -> None:
        self.bans.add(network, expires)
        self._expiring(expires)

    def remove_ban(self, network) -> bool:
        """Lift a ban; False if there was none."""
        return self.bans.remove(network)

    def flow_dropped(self, src: str, sport: int, dst: str, dport: int, now: float | None = None) -> bool:
        return self._flow_dropped(pack_addr(src), sport, pack_addr(dst), dport, now)

    def _flow_dropped(self, src: bytes, sport: int, dst: bytes, dport: int, now) -> bool:
        exp = self.flows.get((src, sport, dst, dport), False)
        if exp is False:
            return False
        return exp is None or now is None or now < exp

    def passes(self, seg, ts: float) -> bool:
        """Would this segment (``None``: not TCP/IP) pass the datapath at ``ts``?"""
        if seg is None or (not self.flows and not self.bans):
            return True
        if ts >= self._prune_at:
            self._prune(ts)
        if self.flows and self._flow_dropped(seg.src, seg.sport, seg.dst, seg.dport, ts):
            return bool(self.resets) and self._torn_down_passes(seg)
        # the datapath checks bans on the source in XDP and on the destination in TC:
        # a banned host's packets are dropped whichever way they go -- on the
        # SMTP ports only, the other traffic is passed before any lookup
        if not self.bans or (seg.sport not in self.ports and seg.dport not in self.ports):
            return True
        return not (self._banned(seg.src, ts) or self._banned(seg.dst, ts))

    def _torn_down_passes(self, seg) -> bool:
        """A segment of a dropped flow, as the kernel treats it when the flow
        is torn down (bpf/datapath.c, ss_reset_how): RSTs pass; a client's
        SYN without ACK passes, and ends the drop once the server has had its
        RST (live: always -- the kernel let it through, so it ended there
        too); everything else is made into an RST (not dissected), and a
        server's packet is the server's RST."""
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        if key not in self.resets:
            return False
        flags = seg.flags
        if flags & RST:
            return True
        from_client = seg.dport in self.ports
        if from_client and flags & (SYN | ACK) == SYN:
            if self.keep is not None or (seg.dst, seg.dport, seg.src, seg.sport) in self.torn:
                self._end_flow(key)
            return True
        if not from_client and flags & ACK:
            self.torn.add(key)
        return False

    def banned(self, addr: str, now: float | None = None) -> bool:
        if now is not None and now >= self._prune_at:
            self._prune(now)
        return bool(self.bans) and self._banned(addr, now)

    def _banned(self, addr, now) -> bool:
        """``addr`` (packed, text) is in a ban; the expired ones are pruned
        by the caller (at the earliest expiry), so the longest prefix decides."""
        exp = self.bans.lookup(addr, False)
        return exp is not False and (exp is None or now is None or now < exp)

    def _expiring(self, expires) -> None:
        if expires is not None and expires < self._prune_at:
            self._prune_at = expires

    def _prune(self, now: float) -> None:
        self.flows = {k: e for k, e in self.flows.items() if e is None or e > now}
        self.resets &= self.flows.keys()
        self.torn &= self.flows.keys()
        bans = PrefixSet()
        for net, exp in self.bans.items():
            if exp is None or exp > now:
                bans.add(net, exp)
        self.bans = bans
        held = [e for e in self.flows.values() if e is not None] + \
            [e for _, e in self.bans.items() if e is not None]
        self._prune_at = min(held, default=math.inf)


#: seconds a live flow drop is kept in the userland gate (ring stragglers)
GATE_KEEP = 10.0


def open_flows_in(flows, network: str) -> list:
    """The flows of ``flows`` (``TcpFlow``s) with an end in ``network``: a
    ban tears them down as a rule's drop would (the kernel's ban alone drops
    their packets silently, and the MTA would wait out its timeout)."""
    net = ipaddress.ip_network(network, strict=False)
    found = []
    for flow in flows:
        for host in (flow.orig_h, flow.resp_h):
            ip = ipaddress.ip_address(host)
            if ip.version == net.version and ip in net:
                found.append(flow)
                break
    return found


def _expiry(now: float, ttl: float | None):
    return None if not ttl else now + ttl


class EnforcerCounters(Counters):
    """How long a verdict takes to reach the kernel (``KernelEnforcer``): since
    the kernel timestamp of the event being dissected when it was decided
    (the ring, the dissector, the rules and the map write: what the design
    calls the verdict-to-kernel delay; verdicts decided outside an event, by
    a tick or the control socket, have none), and since the enforcer was
    called (the map write alone)."""

    since_event = histogram("seconds from the kernel timestamp of the event a verdict was decided on "
                            "to its map write", LATENCY_BUCKETS, metric="verdict_to_kernel_seconds",
                            labels={"since": "event"})
    since_decision = histogram("seconds from the decision to the map write", LATENCY_BUCKETS,
                               metric="verdict_to_kernel_seconds", labels={"since": "decision"})


class KernelEnforcer:
    """Verdicts into the datapath's pinned maps (``sensor.kernel.maps.KernelMaps``).

    ``event_ts_ns``: the kernel timestamp (CLOCK_MONOTONIC, bpf_ktime_get_ns)
    of the event being dissected, 0 between events; the live feed sets it
    (``sensor.inputs.live``), the latency histograms read it."""

    mode = "kernel"

    def __init__(self, maps):
        self.maps = maps
        # the gate only has to catch what was already in the event ring when
        # the kernel entry was written: seconds, not the verdict's TTL
        self.verdicts = Verdicts(keep=GATE_KEEP)
        self.passes = self.verdicts.passes
        self.latencies_ns: list[int] = []          # verdict -> map written, last N
        self._keep = 10_000
        self.counters = EnforcerCounters()
        self.event_ts_ns = 0
        #: bans and unbans written since the start (the ban snapshot is written when it moved)
        self.ban_changes = 0
        self.notes: dict[str, str] = {}            # prefix -> the operator's words (ban add --reason)
        #: the open flows (the assembly gives the reassembly's): a ban tears down those it covers
        self.open_flows = tuple

    def _timed(self, fn, *args, **kw):
        t0 = time.perf_counter_ns()
        fn(*args, **kw)
        dt = time.perf_counter_ns() - t0
        counters = self.counters
        counters.since_decision.observe(dt / 1e9)
        if self.event_ts_ns:
            counters.since_event.observe(max(0, time.monotonic_ns() - self.event_ts_ns) / 1e9)
        lat = self.latencies_ns
        lat.append(dt)
        if len(lat) > self._keep:
            del lat[: len(lat) - self._keep]

    def drop_flow(self, flow, ttl: float | None, now: float, reset: bool = True) -> None:
        """Drop the flow in the kernel; ``reset``: tear it down too."""
        from sensor.kernel.maps import FlowEnds
        self._timed(self.maps.drop_flow, FlowEnds(flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p),
                    ttl=ttl, reason=abi.Reason.RULE, reset=reset)
        self.verdicts.add_flow((flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p), _expiry(now, ttl), now,
                               reset=reset)

    def ban(self, network: str, ttl: float | None, now: float, reason=abi.Reason.RULE,
            note: str | None = None) -> None:
        """Ban ``network`` for ``ttl`` seconds (None: until lifted).  The ban
        replaces any entry of the same prefix, its note with it: ``note`` (the
        operator's words) is what ``bans()`` shows with it."""
        self._timed(self.maps.ban, network, ttl=ttl, reason=reason)
        self.ban_changes += 1
        self.verdicts.add_ban(network, _expiry(now, ttl))
        for flow in open_flows_in(self.open_flows(), network):
            self.drop_flow(flow, ttl, now, reset=True)
        if note:
            self.notes[network] = note
        else:
            self.notes.pop(network, None)

    def unban(self, network: str) -> bool:
        """Lift the ban of ``network``; False if the kernel had none."""
        removed = self.maps.unban(network)
        self.ban_changes += 1
        self.verdicts.remove_ban(network)
        self.notes.pop(network, None)
        return removed

    def bans(self) -> list[tuple]:
        """The kernel's bans (``sensor.kernel.maps.Entry``), each with its note or None."""
        entries = self.maps.bans()
        for gone in set(self.notes) - {e.target for e in entries}:   # expired and swept
            del self.notes[gone]
        return [(e, self.notes.get(e.target)) for e in entries]

    def bypass(self, flow, ttl: float | None, now: float) -> None:
        from sensor.kernel.maps import FlowEnds
        self._timed(self.maps.bypass_flow, FlowEnds(flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p), ttl=ttl)


class ReplayEnforcer:
    """Verdicts kept in userland; ``passes(segment, ts)`` says what would have passed."""

    mode = "replay"

    def __init__(self):
        self.verdicts = Verdicts()
        self.passes = self.verdicts.passes
        self.bypassed: set = set()
        self.open_flows = tuple      # as KernelEnforcer's

    def drop_flow(self, flow, ttl: float | None, now: float, reset: bool = True) -> None:
        self.verdicts.add_flow((flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p), _expiry(now, ttl),
                               reset=reset)

    def ban(self, network: str, ttl: float | None, now: float, reason=abi.Reason.RULE,
            note: str | None = None) -> None:
        """As ``KernelEnforcer.ban``; a replay lists no bans, so ``note`` is in the record only."""
        self.verdicts.add_ban(network, _expiry(now, ttl))
        for flow in open_flows_in(self.open_flows(), network):
            self.drop_flow(flow, ttl, now, reset=True)

    def unban(self, network: str) -> bool:
        return self.verdicts.remove_ban(network)

    def bypass(self, flow, ttl: float | None, now: float) -> None:
        self.bypassed.add((flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p))

