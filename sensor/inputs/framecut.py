"""A held frame cut short: its first ``keep`` payload octets, checksums made anew.

The commit hold releases a held segment only as far as the rules have judged
it.  When a client writes commands and message content in one segment before
the server's 354, the dissector can read the content only after that reply,
and the MTA sends it only after it has the DATA line: the sensor puts into the
stack a copy of the held frame that ends after the judged octets (the DATA
line), the MTA answers, the dissector reads on, and the rest of the frame
follows once judged (the MTA's TCP takes the new octets of the whole frame).

Ethernet with up to two VLAN tags, IPv4 (any options) and IPv6 (hop-by-hop
and destination options before TCP); a frame this cannot cut (anything else,
an IPv6 routing header whose final destination the pseudo-header would need,
an IPv4 fragment) gives None and is left to the client's retransmission.
The cut frame carries no FIN (its end is not the end of the stream) and
carries PSH.  The checksum is the ones'-complement sum of 16-bit words, which
is the sum of the octets read as one big number, modulo 0xFFFF: one
``int.from_bytes`` instead of a loop over words.
"""

from __future__ import annotations

from struct import Struct

__all__ = ["cut_payload", "checksum"]

_VLAN = frozenset((0x8100, 0x88A8, 0x9100))
_IP6_SKIPPED = frozenset((0, 60))      # hop-by-hop, destination options
_FIN, _PSH = 0x01, 0x08
_u16 = Struct("!H")


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``: the 16-bit value to store."""
    if len(data) & 1:
        data += b"\0"
    total = int.from_bytes(data, "big") % 0xFFFF
    if not total and data.strip(b"\0"):
        total = 0xFFFF            # a nonzero sum that is a multiple of 0xFFFF
    return ~total & 0xFFFF


def _tcp_checksum(pseudo: bytes, segment: bytearray) -> int:
    segment[16:18] = b"\0\0"
    return checksum(pseudo + bytes(segment))


def cut_payload(frame: bytes, keep: int) -> bytes | None:
    """``frame`` with only its first ``keep`` TCP payload octets, or None."""
    n = len(frame)
    if n < 14 or keep < 0:
        return None
    off = 12
    ethertype = _u16.unpack_from(frame, off)[0]
    tags = 0
    while ethertype in _VLAN:
        tags += 1
        if tags > 2 or n < off + 6:
            return None
        off += 4
        ethertype = _u16.unpack_from(frame, off)[0]
    l3 = off + 2
    if ethertype == 0x0800:
        if n < l3 + 20 or frame[l3] >> 4 != 4:
            return None
        ihl = (frame[l3] & 0x0F) << 2
        total = _u16.unpack_from(frame, l3 + 2)[0]
        if ihl < 20 or frame[l3 + 9] != 6 or _u16.unpack_from(frame, l3 + 6)[0] & 0x3FFF:
            return None
        l4, end = l3 + ihl, l3 + total
    elif ethertype == 0x86DD:
        if n < l3 + 40 or frame[l3] >> 4 != 6:
            return None
        nxt, l4 = frame[l3 + 6], l3 + 40
        end = l4 + _u16.unpack_from(frame, l3 + 4)[0]
        while nxt in _IP6_SKIPPED:
            if n < l4 + 8:
                return None
            nxt, l4 = frame[l4], l4 + ((frame[l4 + 1] + 1) << 3)
        if nxt != 6:
            return None
    else:
        return None
    if end > n or n < l4 + 20:
        return None
    doff = (frame[l4 + 12] >> 4) << 2
    start = l4 + doff
    if doff < 20 or start > end or keep > end - start:
        return None
    out = bytearray(frame[:start + keep])
    tcp_len = len(out) - l4
    if ethertype == 0x0800:
        out[l3 + 2:l3 + 4] = _u16.pack(len(out) - l3)
        out[l3 + 10:l3 + 12] = b"\0\0"
        out[l3 + 10:l3 + 12] = _u16.pack(checksum(bytes(out[l3:l4])))
        pseudo = bytes(out[l3 + 12:l3 + 20]) + b"\0\x06" + _u16.pack(tcp_len)
    else:
        out[l3 + 4:l3 + 6] = _u16.pack(len(out) - l3 - 40)
        pseudo = bytes(out[l3 + 8:l3 + 40]) + tcp_len.to_bytes(4, "big") + b"\0\0\0\x06"
    out[l4 + 13] = (out[l4 + 13] & ~_FIN) | _PSH
    tcp = out[l4:]
    out[l4 + 16:l4 + 18] = _u16.pack(_tcp_checksum(pseudo, tcp))
    return bytes(out)
