"""Decode one link-layer frame into a TCP segment.

Pure function of (link type, frame bytes): used for offline replay (frames from
``sensor.inputs.pcapfile``) and for live events (the kernel hands over the Ethernet frame,
possibly cut short; its original length says how much was on the wire).

Speed matters more than generality here: one precompiled ``struct.Struct`` per
header, no per-layer objects, no exceptions on the hot path.  A frame that is not
a decodable TCP segment gives ``None`` and one reason counted in the ``reasons``
dict the caller passes (see ``REASONS``); nothing ever raises.

Supported link types (pcap LINKTYPE_* numbers):
    0 NULL and 108 LOOP (BSD loopback, 4-byte family), 1 ETHERNET (up to two
    VLAN tags, 0x8100 / 0x88a8 / 0x9100), 12 / 14 / 101 raw IP, 113 LINUX_SLL,
    276 LINUX_SLL2, 228 IPV4, 229 IPV6.
"""

from __future__ import annotations

import socket
from struct import Struct
from typing import NamedTuple

__all__ = [
    "Segment", "Decoder", "decode", "link_layer", "mark_cut", "addr_str", "checksum_ok", "urgent_pointer", "REASONS",
    "FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR",
    "LINKTYPE_NULL", "LINKTYPE_ETHERNET", "LINKTYPE_RAW", "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2", "LINKTYPE_LOOP", "LINKTYPE_IPV4", "LINKTYPE_IPV6",
]

# TCP flag bits (low byte of the flags field).
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_RAW_TYPES = frozenset((12, 14, LINKTYPE_RAW))

_ETH_IP4, _ETH_IP6 = 0x0800, 0x86DD
_VLAN_TYPES = frozenset((0x8100, 0x88A8, 0x9100))
_MAX_VLAN = 2

# Why a frame gave no segment.  Only these keys are ever counted.
REASONS = (
    "truncated",            # a header runs past the captured bytes
    "unknown_linktype",     # link type we do not decode
    "not_ip",               # ARP, LLDP, ... or a third VLAN tag
    "bad_ip",               # wrong version, IHL < 5, total length < header
    "ip_fragment",          # an IP fragment: kept by the defragmenter (or none was given)
    "not_tcp",              # UDP, ICMP, ...
    "bad_tcp",              # TCP data offset < 5 words or past the IP payload
)

_u16 = Struct("!H").unpack_from
_u32_le = Struct("<I").unpack_from
_u32_be = Struct(">I").unpack_from
_ip4 = Struct("!BxHxxHxBxx4s4s").unpack_from  # vihl, total length, frag, proto, src, dst
_ip6 = Struct("!xxxxHB").unpack_from          # payload length, next header
_ip6_addrs = Struct("!16s16s").unpack_from    # at +8
_tcp = Struct("!HHIIBB").unpack_from          # sport, dport, seq, ack, offset, flags
_ext = Struct("!BB").unpack_from              # next header, length
# Ethernet + IPv4 without options + TCP, in one call (the common frame):
# ethertype, vihl, total length, frag, proto, src, dst, sport, dport, seq, ack, offset, flags
_eth_ip4_tcp = Struct("!12xH" "BxHxxHxBxx4s4s" "HHIIBB").unpack_from

# IPv6 extension headers that we skip (RFC 8200 4.1): hop-by-hop, routing,
# destination options, mobility, HIP, shim6; AH and fragment handled apart.
_IP6_EXT = frozenset((0, 43, 60, 135, 139, 140))
_IP6_FRAG, _IP6_AH = 44, 51
_MAX_EXT = 8


class Segment(NamedTuple):
    """One TCP segment as seen on the wire.

    ``src``/``dst`` are packed addresses (4 bytes for IPv4, 16 for IPv6); use
    ``addr_str`` or the ``src_str``/``dst_str`` properties for text.  ``payload``
    is what was captured; ``wire_paylen`` is the TCP payload length the IP header
    announces.  When the capture (or the kernel) cut the frame, ``cut`` is true
    and reassembly turns the missing tail into a Gap.

    ``frame`` and ``l4`` (the frame the segment was decoded from and the
    offset of its TCP header in it) are what the receiver's checks need
    beyond the fields: the checksum (``checksum_ok``) and the urgent pointer
    (``urgent_pointer``).  A segment built by hand has no frame (``l4`` -1):
    it cannot be verified and carries no urgent pointer.
    """

    family: int          # 4 or 6
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes
    wire_paylen: int
    wirelen: int         # length of the whole frame on the wire
    frame: bytes = b""   # the frame (or reassembled datagram) holding the TCP header
    l4: int = -1         # offset of the TCP header in ``frame``; -1: none

    @property
    def cut(self) -> bool:
        return self.wire_paylen > len(self.payload)

    @property
    def src_str(self) -> str:
        return addr_str(self.src)

    @property
    def dst_str(self) -> str:
        return addr_str(self.dst)


_new = tuple.__new__


def addr_str(packed: bytes) -> str:
    """Text form of a packed IPv4 or IPv6 address."""
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def mark_cut(seg: Segment, wire_paylen: int) -> Segment:
    """Return ``seg`` saying that ``wire_paylen`` payload bytes were on the wire.

    For callers that learn of a cut from elsewhere (e.g. the kernel's metadata).
    """
    return seg._replace(wire_paylen=max(wire_paylen, len(seg.payload)))


def _count(reasons, reason):
    if reasons is not None:
        reasons[reason] = reasons.get(reason, 0) + 1
    return None


def link_layer(linktype: int, data, n: int):
    """Where the IP header of a frame of ``linktype`` starts: ``(ip version, offset)``
    (version 0: not IP), or the reason it cannot be told (``truncated``, ``not_ip``,
    ``unknown_linktype``)."""
    if linktype == 1:
        if n < 14:
            return "truncated"
        off = 14
        et = _u16(data, 12)[0]
        if et in _VLAN_TYPES:
            tags = 0
            while et in _VLAN_TYPES:
                tags += 1
                if tags > _MAX_VLAN:
                    return "not_ip"
                if n < off + 4:
                    return "truncated"
                et = _u16(data, off + 2)[0]
                off += 4
        if et == _ETH_IP4:
            ver = 4
        elif et == _ETH_IP6:
            ver = 6
        else:
            return "not_ip"
    elif linktype in _RAW_TYPES:
        if n < 1:
            return "truncated"
        off = 0
        ver = data[0] >> 4
    elif linktype == 113:
        if n < 16:
            return "truncated"
        off = 16
        et = _u16(data, 14)[0]
        ver = 4 if et == _ETH_IP4 else 6 if et == _ETH_IP6 else 0
    elif linktype == 276:
        if n < 20:
            return "truncated"
        off = 20
        et = _u16(data, 0)[0]
        ver = 4 if et == _ETH_IP4 else 6 if et == _ETH_IP6 else 0
    elif linktype == 0 or linktype == 108:
        if n < 4:
            return "truncated"
        off = 4
        fam = _u32_le(data, 0)[0]
        if linktype == 108 or fam > 0xFFFF:      # LOOP is network order; NULL is host order
            fam = _u32_be(data, 0)[0]
        # AF_INET is 2 everywhere; AF_INET6 is 10, 24, 28 or 30 depending on the OS.
        ver = 4 if fam == 2 else 6 if fam in (10, 24, 28, 30) else 0
    elif linktype == 228:
        off, ver = 0, 4
    elif linktype == 229:
        off, ver = 0, 6
    else:
        return "unknown_linktype"
    return ver, off


def decode(linktype: int, data, wirelen: int = -1, reasons: dict | None = None, defrag=None,
           ts: float = 0.0):
    """Decode ``data`` (bytes) captured on a link of type ``linktype``.

    ``wirelen`` is the original length of the frame (default: ``len(data)``).
    Returns a ``Segment`` or ``None``; on ``None`` the reason is counted in
    ``reasons`` (a dict, key -> count) when one is given.

    An IP fragment goes to ``defrag`` (a ``sensor.stream.defrag.Defragmenter``)
    with ``ts``, its time; when it completes a datagram, the datagram is decoded
    as raw IP (so it meets every check a whole packet does) and its Segment
    returned.  Without ``defrag``, and while a datagram is incomplete, a
    fragment gives None (``ip_fragment``).
    """
    n = len(data)
    if wirelen < n:
        wirelen = n
    if linktype == 1 and n >= 54:
        # Fast path: Ethernet, IPv4 with a 20-byte header, not a fragment, TCP.
        # Anything else (or anything odd) takes the general path below.
        et, vihl, tot, frag, proto, src, dst, sport, dport, seq, ack, doff, flags = \
            _eth_ip4_tcp(data, 0)
        if et == 0x0800 and vihl == 0x45 and proto == 6 and tot >= 20 and not frag & 0x3FFF:
            end = 14 + tot
            pstart = 34 + ((doff >> 4) << 2)
            if pstart >= 54 and pstart <= end and pstart <= n:
                return _new(Segment, (4, src, dst, sport, dport, seq, ack, flags,
                                      data[pstart:end], end - pstart, wirelen, data, 34))
    # ---- link layer: find the network protocol and its offset
    where = link_layer(linktype, data, n)
    if where.__class__ is str:
        return _count(reasons, where)
    ver, off = where

    # ---- network layer
    if ver == 4:
        if n < off + 20:
            return _count(reasons, "truncated")
        vihl, tot, frag, proto, src, dst = _ip4(data, off)
        ihl = (vihl & 0x0F) << 2
        if tot == 0:              # TSO/GSO capture on the sending host: length unset
            tot = wirelen - off
        if vihl >> 4 != 4 or ihl < 20 or tot < ihl:
            return _count(reasons, "bad_ip")
        if frag & 0x3FFF and proto == 6:    # more fragments, or an offset: a piece of a datagram
            if defrag is None:
                return _count(reasons, "ip_fragment")
            if n < off + tot:
                return _count(reasons, "truncated")
            whole = defrag.ipv4(data, off, off + tot, ts)
            if whole is None:
                return _count(reasons, "ip_fragment")
            return decode(228, whole, len(whole), reasons)
        if proto != 6:
            return _count(reasons, "not_tcp")
        l4 = off + ihl
        end = off + tot           # IP says the packet ends here (Ethernet padding after)
        family = 4
    elif ver == 6:
        if n < off + 40:
            return _count(reasons, "truncated")
        if data[off] >> 4 != 6:
            return _count(reasons, "bad_ip")
        plen, nxt = _ip6(data, off)
        src, dst = _ip6_addrs(data, off + 8)
        l4 = off + 40
        end = l4 + plen if plen else wirelen   # plen 0: jumbogram, trust the frame
        hops = 0
        nh_at = off + 6                 # the byte that names the header at l4
        while nxt != 6:
            if n < l4 + 8:              # every extension header is at least 8 bytes
                return _count(reasons, "truncated")
            if nxt in _IP6_EXT:
                nxt2, hlen = _ext(data, l4)
                ln = (hlen + 1) << 3
            elif nxt == _IP6_FRAG:
                if _u16(data, l4 + 2)[0] & 0xFFF9:     # an offset or more fragments
                    if data[l4] != 6 and data[l4] not in _IP6_EXT and data[l4] != _IP6_AH:
                        return _count(reasons, "not_tcp")
                    if defrag is None:
                        return _count(reasons, "ip_fragment")
                    if n < end:
                        return _count(reasons, "truncated")
                    whole = defrag.ipv6(data, off, l4, end, nh_at, ts)
                    if whole is None:
                        return _count(reasons, "ip_fragment")
                    return decode(229, whole, len(whole), reasons)
                nxt2 = data[l4]             # an atomic fragment (RFC 6946): a whole packet
                ln = 8
            elif nxt == _IP6_AH:
                nxt2, hlen = _ext(data, l4)
                ln = (hlen + 2) << 2
            else:
                return _count(reasons, "not_tcp")
            hops += 1
            if hops > _MAX_EXT:
                return _count(reasons, "bad_ip")
            nxt = nxt2
            nh_at = l4
            l4 += ln
            if l4 > end:
                return _count(reasons, "bad_ip")
        family = 6
    else:
        return _count(reasons, "not_ip")

    # ---- TCP
    if n < l4 + 20:
        if end < l4 + 20:
            return _count(reasons, "bad_tcp")
        return _count(reasons, "truncated")
    sport, dport, seq, ack, doff, flags = _tcp(data, l4)
    doff = (doff >> 4) << 2
    pstart = l4 + doff
    if doff < 20 or pstart > end:
        return _count(reasons, "bad_tcp")
    if n < pstart:
        return _count(reasons, "truncated")
    return _new(Segment, (family, src, dst, sport, dport, seq, ack, flags,
                          data[pstart:end], end - pstart, wirelen, data, l4))


_from_bytes = int.from_bytes


def checksum_ok(seg: Segment):
    """Whether the TCP checksum of ``seg`` is right (RFC 9293 3.1: over the
    pseudo-header, the TCP header and the payload; IPv4 and IPv6 alike);
    None when it cannot be told: no frame, or the frame was cut.

    The ones'-complement sum of 16-bit words is the number the bytes spell
    modulo 0xFFFF (2**16 is 1 modulo 0xFFFF), with 0 and 0xFFFF the same
    value: a right checksum makes the whole sum 0.  The pseudo-header's
    words (addresses, protocol 6, TCP length) add up the same way; an odd
    length is padded with a zero byte (times 256).
    """
    l4 = seg.l4
    if l4 < 0:
        return None
    frame = seg.frame
    tlen = ((frame[l4 + 12] >> 4) << 2) + seg.wire_paylen
    end = l4 + tlen
    if end > len(frame):
        return None
    total = _from_bytes(frame[l4:end], "big")
    if tlen & 1:
        total <<= 8
    return (total + _from_bytes(seg.src, "big") + _from_bytes(seg.dst, "big") + 6 + tlen) % 0xFFFF == 0


def urgent_pointer(seg: Segment) -> int:
    """The urgent pointer field of ``seg`` (-1 when it has no frame)."""
    return -1 if seg.l4 < 0 else _u16(seg.frame, seg.l4 + 18)[0]


class Decoder:
    """``decode`` with its own reason counters: ``Decoder().decode(lt, data)``."""

    __slots__ = ("reasons", "decoded")

    def __init__(self):
        self.reasons: dict[str, int] = {}
        self.decoded = 0

    def decode(self, linktype: int, data, wirelen: int = -1):
        seg = decode(linktype, data, wirelen, self.reasons)
        if seg is not None:
            self.decoded += 1
        return seg
