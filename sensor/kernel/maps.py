"""The control plane's API over the datapath's maps: the SMTP port set, the
runtime configuration, source bans, flow drops, flow bypass, the commit
hold's release points and counters.

Expiries are absolute CLOCK_MONOTONIC deadlines in ns, the clock of
bpf_ktime_get_ns(); the kernel ignores an expired entry and sweep() removes it.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import time
from dataclasses import dataclass

from sensor.kernel import abi

BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LPM_TRIE = 11

# name -> (map type, key size, value size, max entries): what a pinned map
# must look like to be reused (sensor.kernel.datapath.check_pins).
PINNED_MAPS = {
    "ss_ban_v4": (BPF_MAP_TYPE_LPM_TRIE, ct.sizeof(abi.LpmV4), ct.sizeof(abi.Verdict), abi.BAN_MAX),
    "ss_ban_v6": (BPF_MAP_TYPE_LPM_TRIE, ct.sizeof(abi.LpmV6), ct.sizeof(abi.Verdict), abi.BAN_MAX),
    "ss_flow_drop": (BPF_MAP_TYPE_LRU_HASH, ct.sizeof(abi.FlowKey), ct.sizeof(abi.Verdict), abi.FLOW_MAX),
    "ss_bypass": (BPF_MAP_TYPE_LRU_HASH, ct.sizeof(abi.FlowKey), ct.sizeof(abi.Verdict), abi.FLOW_MAX),
}


def monotonic_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def deadline(ttl: float | None) -> int:
    """expires_ns for a TTL in seconds; None or 0 means no expiry."""
    if not ttl:
        return 0
    if ttl < 0:
        raise ValueError(f"TTL must be positive, got {ttl}")
    return monotonic_ns() + int(ttl * 1e9)


@dataclass(frozen=True)
class Entry:
    """One ban, flow drop or bypass as userland reports it."""

    target: str  # a prefix for bans, "src:sport > dst:dport" for flows
    reason: abi.Reason
    expires_ns: int
    packets: int
    bytes: int
    flags: int = 0  # abi.VF_* of a flow drop: torn down (VF_RESET), what the kernel sent

    @property
    def reset(self) -> bool:
        """A flow drop that tears the connection down (not only silences it)."""
        return bool(self.flags & abi.VF_RESET)

    def ttl_left(self, now_ns: int | None = None) -> float | None:
        if not self.expires_ns:
            return None
        return max(0.0, (self.expires_ns - (now_ns or monotonic_ns())) / 1e9)


@dataclass(frozen=True)
class FlowEnds:
    """Both ends of a TCP connection; direction does not matter for verdicts."""

    src: str
    sport: int
    dst: str
    dport: int

    def keys(self) -> tuple[abi.FlowKey, abi.FlowKey]:
        return (abi.flow_key(self.src, self.sport, self.dst, self.dport),
                abi.flow_key(self.dst, self.dport, self.src, self.sport))


def _flow_text(key: abi.FlowKey) -> str:
    src = abi.address_text(key.family, bytes(key.saddr))
    dst = abi.address_text(key.family, bytes(key.daddr))
    return f"{src}:{key.sport} > {dst}:{key.dport}"


class KernelMaps:
    def __init__(self, bpf):
        self.counters_map = bpf[b"ss_counters"]
        self.ports_map = bpf[b"ss_ports"]
        self.config_map = bpf[b"ss_config"]
        self.ban_v4 = bpf[b"ss_ban_v4"]
        self.ban_v6 = bpf[b"ss_ban_v6"]
        self.flow_drop = bpf[b"ss_flow_drop"]
        self.bypass_map = bpf[b"ss_bypass"]
        self.release_map = bpf[b"ss_release"]
        self.hold_map = bpf[b"ss_hold"]
        self.flow_state_map = bpf[b"ss_flow_state"]
        self.lost_map = bpf[b"ss_lost"]
        self.ring_state_map = bpf[b"ss_ring_state"]
        self.opened_map = bpf[b"ss_opened"]
        self.if_counters_map = bpf[b"ss_if_counters"]
        self._ports: set[int] = set()
        self._wake_batch = False

    # ------------------------------------------------------------ configuration

    def set_ports(self, ports) -> None:
        wanted = set(ports)
        bad = [p for p in wanted if not 0 < p < abi.PORT_MAX]
        if bad:
            raise ValueError(f"not TCP ports: {sorted(bad)}")
        for port in self._ports - wanted:
            self.ports_map[ct.c_int(port)] = ct.c_uint8(0)
        for port in wanted - self._ports:
            self.ports_map[ct.c_int(port)] = ct.c_uint8(1)
        self._ports = wanted

    def set_config(self, push: bool = True, enforce: bool = True, snaplen: int = 0,
                   wake_batch: bool | None = None, hold: bool = False,
                   hold_max_ms: int = abi.HOLD_MAX_MS_DEFAULT) -> None:
        """wake_batch: wake the event reader every abi.WAKE_BATCH records per
        CPU (False: on every record pushed after it had read all); None keeps
        the current choice (Datapath.event_reader makes it).  hold: the commit
        hold (only with enforce), released by the kernel after hold_max_ms."""
        if not 0 <= snaplen <= abi.SNAPLEN_MAX:
            raise ValueError(f"snaplen must be 0..{abi.SNAPLEN_MAX}, got {snaplen}")
        if not 0 < hold_max_ms < 2**32 // 1_000_000:
            raise ValueError(f"hold_max_ms must be 1..{2**32 // 1_000_000 - 1}, got {hold_max_ms}")
        if wake_batch is not None:
            self._wake_batch = wake_batch
        flags = ((0 if push else abi.CFG_NO_PUSH) | (0 if enforce else abi.CFG_NO_ENFORCE)
                 | (abi.CFG_WAKE_BATCH if self._wake_batch else 0) | (abi.CFG_HOLD if hold else 0))
        self.config_map[ct.c_int(0)] = abi.Config(flags=flags, snaplen=snaplen, hold_max_ms=hold_max_ms)

    # ------------------------------------------------------------ bans

    def _ban_map(self, key):
        return self.ban_v4 if isinstance(key, abi.LpmV4) else self.ban_v6

    def ban(self, network: str, ttl: float | None = None, reason: abi.Reason = abi.Reason.MANUAL) -> None:
        """Drop everything from a prefix (192.0.2.7, 192.0.2.0/24, 2001:db8::/48)."""
        key = abi.lpm_key(ipaddress.ip_network(network, strict=False))
        self._ban_map(key)[key] = abi.Verdict(expires_ns=deadline(ttl), reason=reason)

    def unban(self, network: str) -> bool:
        key = abi.lpm_key(ipaddress.ip_network(network, strict=False))
        return _delete(self._ban_map(key), key)

    def bans(self) -> list[Entry]:
        return [Entry(str(abi.lpm_network(k)), abi.Reason(v.reason), v.expires_ns, v.packets, v.bytes)
                for table in (self.ban_v4, self.ban_v6) for k, v in table.items()]

    # ------------------------------------------------------------ flows

    def drop_flow(self, flow: FlowEnds, ttl: float | None = None, reason: abi.Reason = abi.Reason.RULE,
                  reset: bool = False) -> None:
        """Drop both directions of a connection.  ``reset``: tear it down as
        well -- the kernel makes the flow's next packets into the RSTs each
        end accepts (bpf/teardown.h), and a new connection on the same ports
        ends the drop once the server has had its RST."""
        _set_both(self.flow_drop, flow, abi.Verdict(expires_ns=deadline(ttl), reason=reason,
                                                    flags=abi.VF_RESET if reset else 0))

    def drops(self) -> list[Entry]:
        return _flow_entries(self.flow_drop)

    def bypass_flow(self, flow: FlowEnds, ttl: float | None = None,
                    reason: abi.Reason = abi.Reason.STARTTLS) -> None:
        """Stop pushing a connection's packets (they still pass)."""
        _set_both(self.bypass_map, flow, abi.Verdict(expires_ns=deadline(ttl), reason=reason))

    # ------------------------------------------------------------ the commit hold

    def release(self, key: abi.FlowKey, seq: int, hold_all: bool = False, at_line: bool = False) -> None:
        """Let the client's (``key``: client -> server) candidate segments
        that end at or before ``seq`` pass: every byte before it is judged.
        hold_all: every segment beyond ``seq`` is a candidate (a BDAT client);
        at_line: a command line starts at ``seq`` (the byte before it is LF)."""
        flags = (abi.REL_HOLD_ALL if hold_all else 0) | (abi.REL_AT_LINE if at_line else 0)
        self.release_map[key] = abi.Release(seq=seq & 0xFFFFFFFF, flags=flags, ts_ns=monotonic_ns())

    def forget_hold(self, key: abi.FlowKey) -> None:
        """The flow is over: its release point and hold go."""
        _delete(self.release_map, key)
        _delete(self.hold_map, key)
        _delete(self.flow_state_map, key)

    def holds(self) -> list[tuple[str, abi.Hold]]:
        """The kernel's current holds (flow text, Hold), released or not."""
        return [(_flow_text(k), v) for k, v in self.hold_map.items()]

    def sweep(self, now_ns: int | None = None) -> int:
        """Remove expired bans, drops and bypasses; returns how many."""
        now_ns = now_ns or monotonic_ns()
        removed = 0
        for table in (self.ban_v4, self.ban_v6, self.flow_drop, self.bypass_map):
            expired = [k for k, v in table.items() if v.expires_ns and v.expires_ns <= now_ns]
            for key in expired:
                removed += _delete(table, key)
        return removed

    # ------------------------------------------------------------ ring losses

    def take_lost(self, key: abi.FlowKey) -> int:
        """Events of the direction ``key`` the ring refused that no event
        carried (abi.Loss); the entry goes, so each is counted once."""
        try:
            loss = self.lost_map[key]
        except KeyError:
            return 0
        return self.forget_loss(key, int(loss.events))

    def forget_loss(self, key: abi.FlowKey, events: int) -> int:
        """Remove the ss_lost entry ``key`` whose ``events`` userland counted; returns them."""
        _delete(self.lost_map, key)
        if events:
            # the kernel's count of losses not carried yet (it keeps pushes
            # from looking ss_lost up while it is zero)
            slot = ct.c_int(abi.RING_PENDING)
            pending = self.ring_state_map[slot]
            self.ring_state_map[slot] = ct.c_uint64(max(0, int(pending.value) - events))
        return events

    def relieve(self, worker: int = 0) -> None:
        """Userland read worker ``worker``'s ring empty: the kernel pushes
        every event into it again (until it refuses one: SS_RING_PRESSURE + worker)."""
        self.ring_state_map[ct.c_int(abi.RING_PRESSURE + worker)] = ct.c_uint64(0)

    def losses(self, older_than_ns: int) -> list[tuple[abi.FlowKey, abi.Loss]]:
        """The ss_lost entries whose last loss is before ``older_than_ns``
        (CLOCK_MONOTONIC), read in batches."""
        try:
            items = self.lost_map.items_lookup_batch()
        except Exception:  # noqa: BLE001 - a kernel without batch ops: one by one
            items = self.lost_map.items()
        return [(k, v) for k, v in items if v.last_ns < older_than_ns]

    # ------------------------------------------------------------ counters

    def counters(self) -> dict[str, dict[str, int]]:
        """Counters summed over CPUs, per direction, plus the derived 'seen'."""
        result = {}
        for direction in abi.Direction:
            values = {}
            for counter in abi.Counter:
                idx = direction * abi.COUNTER_COUNT + counter
                values[counter.name.lower()] = int(self.counters_map.sum(ct.c_int(idx)).value)
            values["seen"] = sum(values[c.name.lower()] for c in abi.Counter if c < abi.VERDICT_COUNTERS)
            result[direction.name.lower()] = values
        return result

    # ------------------------------------------------------------ interfaces

    def count_interface(self, ifindex: int) -> None:
        """Give an attached interface its counters (both directions, zero):
        the kernel counts only the interfaces it finds in the map."""
        table = self.if_counters_map
        for direction in abi.Direction:
            table[abi.IfKey(ifindex, direction)] = table.Leaf()     # one per CPU, zero

    def interface_counters(self, ifindex: int) -> dict[str, dict[str, int]]:
        """The verdicts of an interface's packets, summed over CPUs, per
        direction (the exclusive verdicts but the cheap passes: not IP, not
        TCP, not an SMTP port), with their sum ``seen``."""
        result = {}
        for direction in abi.Direction:
            try:
                per_cpu = self.if_counters_map[abi.IfKey(ifindex, direction)]
            except KeyError:
                per_cpu = ()
            values = {c.name.lower(): sum(int(cpu.verdicts[c]) for cpu in per_cpu)
                      for c in abi.Counter if abi.Counter.NOT_SMTP < c < abi.VERDICT_COUNTERS}
            values["seen"] = sum(values.values())
            result[direction.name.lower()] = values
        return result


def _set_both(table, flow: FlowEnds, verdict: abi.Verdict) -> None:
    for key in flow.keys():
        table[key] = verdict


def _flow_entries(table) -> list[Entry]:
    return [Entry(_flow_text(k), abi.Reason(v.reason), v.expires_ns, v.packets, v.bytes, v.flags)
            for k, v in table.items()]


def _delete(table, key) -> bool:
    try:
        del table[key]
        return True
    except KeyError:
        return False
