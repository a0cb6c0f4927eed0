"""Flow identity: Zeek-style connection uids and Community ID v1.

``FlowUids(seed).uid(orig_addr, orig_p, resp_addr, resp_p, seq, ...)`` gives a
flow a uid like Zeek's (``'C'`` + base62), a keyed hash of the seed and the
flow alone (its endpoints and first sequence number): a replay with the same
seed gives the same uids, however its flows are split over workers, and the
live sensor the same as a replay of its capture.

``community_id(saddr, daddr, proto, sport, dport, seed=0)`` implements Community
ID v1 (https://github.com/corelight/community-id-spec): SHA-1 over
seed(2) | addr(4|16) | addr(4|16) | proto(1) | pad(1) | port(2) | port(2), the
endpoints ordered so both directions hash alike, base64, prefixed ``"1:"``.
For ICMP (1) and ICMPv6 (58) pass the type as ``sport`` and the code as
``dport``; they are mapped to port equivalents as the spec says.
"""

from __future__ import annotations

import base64
import hashlib
import math
import socket
from struct import Struct

__all__ = ["FlowUids", "community_id", "pack_addr"]

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_pre = Struct("!H").pack
_ports = Struct("!BxHH").pack
_proto_only = Struct("!Bx").pack

# Spec: ICMP message types that have a counterpart are "two-way"; the counterpart
# type plays the destination port.  Other types are one-way: (type, code), unordered.
_ICMP4_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
_ICMP6_PAIRS = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135,
                130: 131, 131: 130, 139: 140, 140: 139, 144: 145, 145: 144}


def pack_addr(addr) -> bytes:
    """Packed form (4 or 16 bytes) of an address given as text or packed bytes."""
    if isinstance(addr, (bytes, bytearray)):
        return bytes(addr)
    addr = str(addr)
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


def community_id(saddr, daddr, proto: int, sport: int | None = None,
                 dport: int | None = None, seed: int = 0) -> str:
    """Community ID v1 of a flow, e.g. ``'1:LQU9qZlK+B5F3KDmev6m5PMibrg='``.

    Addresses as text or packed bytes.  Ports ``None`` for protocols without
    ports (then none are hashed).  Same result for either direction of a flow.
    """
    s = pack_addr(saddr)
    d = pack_addr(daddr)
    if sport is None or dport is None:
        if d < s:
            s, d = d, s
        tail = _proto_only(proto)
    else:
        one_way = False
        if proto == 1 or proto == 58:
            pairs = _ICMP4_PAIRS if proto == 1 else _ICMP6_PAIRS
            if sport in pairs:
                dport = pairs[sport]
            else:
                one_way = True
        if not one_way and (d < s or (s == d and dport < sport)):
            s, d, sport, dport = d, s, dport, sport
        tail = _ports(proto, sport, dport)
    h = hashlib.sha1(_pre(seed & 0xFFFF) + s + d + tail).digest()
    return "1:" + base64.b64encode(h).decode("ascii")


_PAIRS = [a + b for a in _B62 for b in _B62]      # base62 two digits at a time


def _base62(n: int) -> str:
    out = []
    while n:
        n, r = divmod(n, 3844)
        out.append(_PAIRS[r])
    s = "".join(reversed(out)).lstrip("0")
    return s or "0"


class FlowUids:
    """Zeek-style connection uids (``'C'`` + base62 of 96 bits), each a keyed
    hash of the flow alone: the seed, the flow's endpoints (originator first)
    and the sequence number of the segment that started it (the SYN's ISN,
    or the first segment of a flow picked up mid-stream, and which side sent
    it), plus a counter for the rare flows that share all of those.

    A flow's uid does not depend on which other flows came before it, so a
    capture split over several workers (``replay --workers``, each worker
    following the flows of its own clients) gives every flow the uid one
    process gives it; nor on the clock, so the live sensor and a replay of
    its capture with the same seed agree although their timestamps differ by
    the kernel's and the capture's clocks.  A reused 4-tuple has a new ISN.
    Same seed, same uids (reproducible replays); a live sensor passes a seed
    from ``os.urandom``.

    The collision counter is per key, kept for flows that began within
    ``COLLISION_WINDOW`` seconds of the latest one (``ts``: only for that),
    so the table stays small whatever the run's length.
    """

    __slots__ = ("_key", "prefix", "_seen", "_latest", "_prune_at")

    #: seconds of flow starts whose keys are remembered for collisions
    COLLISION_WINDOW = 60.0

    def __init__(self, seed: int | bytes | str = 0, prefix: str = "C"):
        raw = seed if isinstance(seed, bytes) else str(seed).encode()
        self._key = hashlib.blake2b(hashlib.blake2b(raw, digest_size=32).digest(), digest_size=12)
        self.prefix = prefix
        self._seen: dict = {}          # key -> (flows so far, ts of the last)
        self._latest = -math.inf
        self._prune_at = -math.inf

    def uid(self, orig_addr: bytes, orig_p: int, resp_addr: bytes, resp_p: int, seq: int,
            from_orig: bool = True, ts: float = 0.0) -> str:
        ident = _flow_ident(len(orig_addr), orig_p, resp_p, seq, from_orig) + orig_addr + resp_addr
        seen = self._seen
        n = seen.get(ident, _NEW)[0]
        seen[ident] = (n + 1, ts)
        if ts > self._latest:
            self._latest = ts
            if ts >= self._prune_at:
                self._prune(ts)
        h = self._key.copy()
        h.update(ident)
        if n:
            h.update(n.to_bytes(4, "big"))
        return self.prefix + _base62(int.from_bytes(h.digest(), "big"))

    def _prune(self, now: float) -> None:
        oldest = now - self.COLLISION_WINDOW
        self._seen = {k: v for k, v in self._seen.items() if v[1] >= oldest}
        self._prune_at = now + self.COLLISION_WINDOW


_flow_ident = Struct("!BHHI?").pack
_NEW = (0, 0.0)
