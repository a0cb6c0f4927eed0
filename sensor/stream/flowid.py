"""Flow identity: Zeek-style connection uids and Community ID v1.

``UidGenerator(seed)`` hands out uids like Zeek's (``'C'`` + base62); the sequence
depends only on the seed, so a replay with the same seed gives the same uids.

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
import random
import socket
from struct import Struct

__all__ = ["UidGenerator", "community_id", "pack_addr"]

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


class UidGenerator:
    """Deterministic Zeek-style uids: ``'C'`` + base62 of 96 pseudo-random bits.

    Same seed, same sequence of uids (for reproducible replays); for live use pass
    a seed from ``os.urandom``.
    """

    __slots__ = ("_rng", "prefix")

    def __init__(self, seed: int | bytes | str = 0, prefix: str = "C"):
        self._rng = random.Random(seed if not isinstance(seed, bytes) else
                                  int.from_bytes(seed, "big"))
        self.prefix = prefix

    def next(self) -> str:
        return self.prefix + _base62(self._rng.getrandbits(96))

    __call__ = next
