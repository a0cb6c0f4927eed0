"""A held frame cut after its judged octets (sensor.inputs.framecut): the
stack on the MTA host must take it as if the client had sent it so, so its
lengths and checksums are checked by scapy's own computation."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from sensor.inputs.framecut import checksum, cut_payload

PAYLOAD = b"MAIL FROM:<a@example.org>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n"
KEEP = PAYLOAD.index(b"Subject")
V4 = IP(src="192.0.2.10", dst="198.51.100.25")
MAC = "02:00:00:00:00:01"
V6 = IPv6(src="2001:db8::10", dst="2001:db8:1::25")


def frame(l3, *, vlans=(), flags="PA", options=()):
    link = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    for layer in vlans:
        link = link / layer
    return bytes(link / l3 / TCP(sport=40000, dport=25, seq=1000, ack=7000, flags=flags, options=list(options))
                 / PAYLOAD)


def recomputed(data: bytes) -> Ether:
    """``data`` parsed, then built again with scapy's own lengths and checksums."""
    pkt = Ether(data)
    del pkt[TCP].chksum
    if IP in pkt:
        del pkt[IP].chksum, pkt[IP].len
    if IPv6 in pkt:
        del pkt[IPv6].plen
    return Ether(bytes(pkt))


@pytest.mark.parametrize("l3", [V4, IP(src="192.0.2.10", dst="198.51.100.25", options=b"\x01\x01\x01\x00"), V6,
                                V6 / IPv6ExtHdrHopByHop(), V6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()],
                         ids=["ipv4", "ipv4-options", "ipv6", "ipv6-hop-by-hop", "ipv6-two-ext-headers"])
@pytest.mark.parametrize("vlans", [(), (Dot1Q(vlan=7),), (Dot1AD(vlan=3), Dot1Q(vlan=7))],
                         ids=["untagged", "vlan", "qinq"])
def test_the_cut_frame_has_the_judged_octets_and_the_lengths_and_checksums_of_a_real_one(l3, vlans):
    whole = frame(l3, vlans=vlans, options=[("Timestamp", (1, 2))])
    cut = cut_payload(whole, KEEP)
    assert cut == bytes(recomputed(cut))
    assert bytes(Ether(cut)[TCP].payload) == PAYLOAD[:KEEP]
    assert Ether(cut)[TCP].options == Ether(whole)[TCP].options


def test_a_cut_frame_ends_no_stream_and_is_pushed():
    cut = Ether(cut_payload(frame(V4, flags="FA"), KEEP))
    assert cut[TCP].flags == "PA"


def test_keeping_every_octet_gives_the_same_segment():
    whole = frame(V4)
    assert bytes(Ether(cut_payload(whole, len(PAYLOAD)))[TCP].payload) == PAYLOAD


@pytest.mark.parametrize("data", [
    b"", b"\x02" * 13, frame(V4)[:40],
    bytes(Ether(src=MAC, dst=MAC) / IP(src="192.0.2.10", dst="198.51.100.25", flags="MF") / TCP() / PAYLOAD),
    bytes(Ether(src=MAC, dst=MAC) / V6 / IPv6ExtHdrRouting(addresses=["2001:db8::99"]) / TCP() / PAYLOAD),
    bytes(Ether(src=MAC, dst=MAC) / V6 / IPv6ExtHdrFragment() / TCP() / PAYLOAD),
    bytes(Ether(src=MAC, dst=MAC, type=0x0806) / (b"\0" * 40)),
], ids=["empty", "short", "truncated", "ipv4-fragment", "ipv6-routing", "ipv6-fragment", "arp"])
def test_a_frame_it_cannot_cut_gives_none(data):
    assert cut_payload(data, 4) is None


def test_asking_for_more_octets_than_the_frame_has_gives_none():
    assert cut_payload(frame(V4), len(PAYLOAD) + 1) is None


@pytest.mark.parametrize("data", [b"\0\0", b"\xff\xff", b"\x12\x34\x56", b"\xff\xff\x00\x01" * 3, bytes(range(256))])
def test_the_checksum_is_rfc_1071s(data):
    padded = data + b"\0" * (len(data) & 1)
    total = 0
    for i in range(0, len(padded), 2):
        total += int.from_bytes(padded[i:i + 2], "big")
        total = (total & 0xFFFF) + (total >> 16)
    assert checksum(data) == ~total & 0xFFFF
