"""Where rule verdicts go: the kernel's maps (live) or a verdict table (replay).

Both keep the same ``Verdicts`` table, so the live feed can count the packets
of a dropped flow that still arrive from the ring, and a replay can decide
which packets an inline sensor would have let pass (``passes``).

* ``KernelEnforcer``: ``drop_flow`` writes the kernel's flow-drop entry (both
  directions) with one map update before it returns; ``ban`` writes a prefix
  into the LPM ban trie; ``bypass`` stops pushing an encrypted flow.
* ``ReplayEnforcer``: the same verdicts, applied to the packets that follow
  in the capture (the packet that triggered a verdict is dropped too: that is
  what an inline sensor such as Haka does).

``passes(segment, ts)`` is the pipeline's gate in both modes: live, it keeps
the stragglers of a dropped flow (already in the ring when the kernel entry
was written) from the dissector and counts them; in replay it stands in for
the kernel.
"""

from __future__ import annotations

import ipaddress
import time

from .. import abi
from ..packet import addr_str

__all__ = ["Verdicts", "KernelEnforcer", "ReplayEnforcer"]


class Verdicts:
    """Dropped flows (both directions) and banned prefixes, with expiry in the caller's clock."""

    def __init__(self, ports=(25, 587)):
        self.flows: dict[tuple, float | None] = {}      # (a, ap, b, bp) text, both orders -> expiry ts
        self.bans: dict = {}                            # ip_network -> expiry ts or None
        #: the SMTP ports: like the kernel, bans apply only to packets to or from them
        self.ports = frozenset(ports)

    def add_flow(self, flow_tuple, expires=None) -> None:
        a, ap, b, bp = flow_tuple
        self.flows[(a, ap, b, bp)] = expires
        self.flows[(b, bp, a, ap)] = expires

    def add_ban(self, network, expires=None) -> None:
        self.bans[ipaddress.ip_network(network, strict=False)] = expires

    def flow_dropped(self, src: str, sport: int, dst: str, dport: int, now: float | None = None) -> bool:
        exp = self.flows.get((src, sport, dst, dport), False)
        if exp is False:
            return False
        return exp is None or now is None or now < exp

    def passes(self, seg, ts: float) -> bool:
        """Would this segment (``None``: not TCP/IP) pass the datapath at ``ts``?"""
        if seg is None or (not self.flows and not self.bans):
            return True
        src, dst = addr_str(seg.src), addr_str(seg.dst)
        if self.flows and self.flow_dropped(src, seg.sport, dst, seg.dport, ts):
            return False
        # the datapath checks bans on the source in XDP and on the destination in TC:
        # a banned host's packets are dropped whichever way they go -- on the
        # SMTP ports only, the other traffic is passed before any lookup
        if not self.bans or (seg.sport not in self.ports and seg.dport not in self.ports):
            return True
        return not (self.banned(src, ts) or self.banned(dst, ts))

    def banned(self, addr: str, now: float | None = None) -> bool:
        if not self.bans:
            return False
        ip = ipaddress.ip_address(addr)
        for net, exp in self.bans.items():
            if ip.version == net.version and ip in net and (exp is None or now is None or now < exp):
                return True
        return False


def _expiry(now: float, ttl: float | None):
    return None if not ttl else now + ttl


class KernelEnforcer:
    """Verdicts into the datapath's pinned maps (``sensor.kernelmaps.KernelMaps``)."""

    mode = "kernel"

    def __init__(self, maps):
        self.maps = maps
        self.verdicts = Verdicts()
        self.passes = self.verdicts.passes
        self.latencies_ns: list[int] = []          # verdict -> map written, last N
        self._keep = 10_000

    def _timed(self, fn, *args, **kw):
        t0 = time.perf_counter_ns()
        fn(*args, **kw)
        dt = time.perf_counter_ns() - t0
        lat = self.latencies_ns
        lat.append(dt)
        if len(lat) > self._keep:
            del lat[: len(lat) - self._keep]

    def drop_flow(self, flow, ttl: float | None, now: float) -> None:
        from ..kernelmaps import Flow
        self._timed(self.maps.drop_flow, Flow(flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p),
                    ttl=ttl, reason=abi.Reason.RULE)
        self.verdicts.add_flow((flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p), _expiry(now, ttl))

    def ban(self, network: str, ttl: float | None, now: float, reason=abi.Reason.RULE) -> None:
        self._timed(self.maps.ban, network, ttl=ttl, reason=reason)
        self.verdicts.add_ban(network, _expiry(now, ttl))

    def bypass(self, flow, ttl: float | None, now: float) -> None:
        from ..kernelmaps import Flow
        self._timed(self.maps.bypass_flow, Flow(flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p), ttl=ttl)


class ReplayEnforcer:
    """Verdicts kept in userland; ``passes(segment, ts)`` says what would have passed."""

    mode = "replay"

    def __init__(self):
        self.verdicts = Verdicts()
        self.passes = self.verdicts.passes
        self.bypassed: set = set()

    def drop_flow(self, flow, ttl: float | None, now: float) -> None:
        self.verdicts.add_flow((flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p), _expiry(now, ttl))

    def ban(self, network: str, ttl: float | None, now: float, reason=abi.Reason.RULE) -> None:
        self.verdicts.add_ban(network, _expiry(now, ttl))

    def bypass(self, flow, ttl: float | None, now: float) -> None:
        self.bypassed.add((flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p))

