"""sensor.stream.packet: one frame in, one TCP segment (or None + a counted reason) out."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import ARP, IP, TCP, UDP, Dot1AD, Dot1Q, Ether, IPv6, Raw, raw
from scapy.layers.inet6 import IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import CookedLinux, CookedLinuxV2

from sensor.inputs.pcapfile import read_packets
from sensor.stream.packet import ACK, FIN, PSH, REASONS, RST, SYN, Decoder, Segment, addr_str, decode, mark_cut
from support.captures import PCAPS_DIR as PCAPS

V4A, V4B = "192.0.2.10", "198.51.100.25"
V6A, V6B = "2001:db8::10", "2001:db8:1::25"
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def tcp4(payload=b"EHLO client.example\r\n", **kw):
    return IP(src=V4A, dst=V4B) / TCP(sport=40000, dport=25, seq=1000, ack=2000,
                                      flags=kw.pop("flags", "PA"), **kw) / payload


def tcp6(payload=b"EHLO client.example\r\n"):
    return IPv6(src=V6A, dst=V6B) / TCP(sport=40000, dport=587, seq=7, ack=9, flags="PA") / payload


def counted(linktype, frame, **kw):
    reasons = {}
    seg = decode(linktype, frame, reasons=reasons, **kw)
    assert set(reasons) <= set(REASONS)
    return seg, reasons


def test_ethernet_ipv4_tcp_fields():
    seg = decode(1, raw(ETH / tcp4()))
    assert isinstance(seg, Segment)
    assert seg.family == 4
    assert addr_str(seg.src) == V4A and seg.dst_str == V4B
    assert (seg.sport, seg.dport, seg.seq, seg.ack) == (40000, 25, 1000, 2000)
    assert seg.flags == PSH | ACK
    assert seg.payload == b"EHLO client.example\r\n"
    assert seg.wire_paylen == len(seg.payload) and not seg.cut


def test_ethernet_padding_is_not_payload():
    frame = raw(ETH / tcp4(b"Hi"))
    padded = frame + b"\x00" * (60 - len(frame))
    seg = decode(1, padded)
    assert seg.payload == b"Hi" and seg.wirelen == 60


def test_ipv4_options_honour_ihl():
    pkt = IP(src=V4A, dst=V4B, options=b"\x01\x01\x01\x00") / TCP(sport=1, dport=25) / b"xyz"
    frame = raw(ETH / pkt)
    assert frame[14] == 0x46
    assert decode(1, frame).payload == b"xyz"


def test_tcp_options_honour_data_offset():
    pkt = IP(src=V4A, dst=V4B) / TCP(sport=1, dport=25, options=[("MSS", 1460), ("NOP", None),
                                                               ("WScale", 7)]) / b"data"
    seg = decode(1, raw(ETH / pkt))
    assert seg.payload == b"data"


@pytest.mark.parametrize("tags", [
    [Dot1Q(vlan=10)],
    [Dot1AD(vlan=100), Dot1Q(vlan=10)],
    [Dot1Q(vlan=100), Dot1Q(vlan=10)],
])
def test_vlan_tags_up_to_two(tags):
    frame = ETH
    for t in tags:
        frame = frame / t
    seg = decode(1, raw(frame / tcp4()))
    assert seg.payload.startswith(b"EHLO") and seg.dport == 25


def test_three_vlan_tags_are_refused():
    frame = ETH / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / tcp4()
    seg, reasons = counted(1, raw(frame))
    assert seg is None and reasons == {"not_ip": 1}


def test_ipv6_over_vlan():
    seg = decode(1, raw(ETH / Dot1Q(vlan=5) / tcp6()))
    assert seg.family == 6 and seg.src_str == V6A and seg.dst_str == V6B
    assert len(seg.src) == 16 and seg.dport == 587 and seg.payload.startswith(b"EHLO")


def test_ipv6_extension_headers_are_skipped():
    pkt = (IPv6(src=V6A, dst=V6B) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
           / IPv6ExtHdrRouting(addresses=["2001:db8::99"]) / IPv6ExtHdrFragment(offset=0, m=0)
           / TCP(sport=5, dport=25, seq=1) / b"MAIL")
    seg = decode(1, raw(ETH / pkt))
    assert seg is not None and seg.payload == b"MAIL"


def test_ipv6_non_first_fragment_is_counted():
    pkt = IPv6(src=V6A, dst=V6B) / IPv6ExtHdrFragment(offset=10, m=0, nh=6) / Raw(b"x" * 40)
    seg, reasons = counted(1, raw(ETH / pkt))
    assert seg is None and reasons == {"ip_fragment": 1}


def test_ipv4_non_first_fragment_is_counted():
    pkt = IP(src=V4A, dst=V4B, proto=6, frag=100) / Raw(b"y" * 40)
    seg, reasons = counted(1, raw(ETH / pkt))
    assert seg is None and reasons == {"ip_fragment": 1}


def test_ipv4_first_fragment_is_not_decoded_as_if_whole():
    # its TCP payload is only the datagram's first part: the defragmenter's (test_defrag.py)
    pkt = IP(src=V4A, dst=V4B, flags="MF") / TCP(sport=9, dport=25) / b"abcdefgh"
    seg, reasons = counted(1, raw(ETH / pkt))
    assert seg is None and reasons == {"ip_fragment": 1}


def test_ipv6_first_fragment_is_not_decoded_as_if_whole():
    pkt = IPv6(src=V6A, dst=V6B) / IPv6ExtHdrFragment(offset=0, m=1, nh=6) / TCP(sport=9, dport=25) / b"abcdefgh"
    seg, reasons = counted(1, raw(ETH / pkt))
    assert seg is None and reasons == {"ip_fragment": 1}


@pytest.mark.parametrize("pkt,reason", [
    (ETH / ARP(), "not_ip"),
    (ETH / IP(src=V4A, dst=V4B) / UDP(sport=53, dport=53) / b"q", "not_tcp"),
    (ETH / IPv6(src=V6A, dst=V6B) / UDP(sport=53, dport=53) / b"q", "not_tcp"),
])
def test_non_tcp_traffic_gives_a_reason(pkt, reason):
    seg, reasons = counted(1, raw(pkt))
    assert seg is None and reasons == {reason: 1}


def test_sll_frame():
    frame = raw(CookedLinux(proto=0x0800) / tcp4())
    assert decode(113, frame).payload.startswith(b"EHLO")
    assert decode(113, raw(CookedLinux(proto=0x86DD) / tcp6())).family == 6


def test_sll2_frame():
    frame = raw(CookedLinuxV2(proto=0x86DD) / tcp6())
    seg = decode(276, frame)
    assert seg.family == 6 and seg.payload.startswith(b"EHLO")


@pytest.mark.parametrize("linktype", [101, 12, 14])
def test_raw_ip_frames(linktype):
    assert decode(linktype, raw(tcp4())).family == 4
    assert decode(linktype, raw(tcp6())).family == 6


def test_bsd_loopback_null_and_loop():
    body = raw(tcp4())
    assert decode(0, struct.pack("<I", 2) + body).dport == 25       # DLT_NULL, host order
    assert decode(0, struct.pack(">I", 2) + body).dport == 25       # written big-endian
    assert decode(108, struct.pack(">I", 2) + body).dport == 25      # DLT_LOOP, network order
    assert decode(0, struct.pack("<I", 30) + raw(tcp6())).family == 6


def test_unknown_linktype_is_counted():
    seg, reasons = counted(147, raw(ETH / tcp4()))
    assert seg is None and reasons == {"unknown_linktype": 1}


def test_cut_frame_keeps_what_was_captured_and_says_how_much_is_missing():
    frame = raw(ETH / tcp4(b"A" * 100))
    seg = decode(1, frame[:-40], wirelen=len(frame))
    assert seg.payload == b"A" * 60 and seg.wire_paylen == 100 and seg.cut
    assert seg.wirelen == len(frame)


def test_mark_cut_extends_wire_length():
    seg = decode(1, raw(ETH / tcp4(b"abc")))
    cut = mark_cut(seg, 10)
    assert cut.cut and cut.wire_paylen == 10 and cut.payload == b"abc"


def test_bad_headers_are_counted_not_raised():
    frame = bytearray(raw(ETH / tcp4()))
    bad_ihl = bytearray(frame)
    bad_ihl[14] = 0x44
    assert counted(1, bytes(bad_ihl))[1] == {"bad_ip": 1}
    bad_total = bytearray(frame)
    bad_total[16:18] = b"\x00\x0a"              # total length 10 < header
    assert counted(1, bytes(bad_total))[1] == {"bad_ip": 1}
    bad_doff = bytearray(frame)
    bad_doff[14 + 20 + 12] = 0x30               # data offset 3 words
    assert counted(1, bytes(bad_doff))[1] == {"bad_tcp": 1}
    huge_doff = bytearray(frame)
    huge_doff[14 + 20 + 12] = 0xF0              # past the IP payload
    assert counted(1, bytes(huge_doff))[1] == {"bad_tcp": 1}


@pytest.mark.parametrize("linktype,frame", [
    (1, raw(ETH / Dot1Q(vlan=3) / tcp4())),
    (1, raw(ETH / IPv6(src=V6A, dst=V6B) / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment()
            / TCP(dport=25) / b"x")),
    (113, raw(CookedLinux(proto=0x0800) / tcp4())),
    (276, raw(CookedLinuxV2(proto=0x86DD) / tcp6())),
])
def test_every_prefix_of_a_frame_decodes_or_is_counted(linktype, frame):
    for n in range(len(frame) + 1):
        reasons = {}
        seg = decode(linktype, frame[:n], wirelen=len(frame), reasons=reasons)
        if seg is None:
            assert sum(reasons.values()) == 1
        else:
            assert seg.cut or n == len(frame)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 9999]), st.binary(max_size=120))
def test_arbitrary_bytes_never_raise(linktype, data):
    decode(linktype, data, reasons={})


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_behind_valid_headers_never_raise(tail):
    decode(1, raw(ETH)[:12] + b"\x08\x00" + b"\x45" + tail, reasons={})
    decode(1, raw(ETH)[:12] + b"\x86\xdd" + b"\x60" + tail, reasons={})


def test_decoder_counts():
    d = Decoder()
    d.decode(1, raw(ETH / tcp4()))
    d.decode(1, raw(ETH / ARP()))
    assert d.decoded == 1 and d.reasons == {"not_ip": 1}


def test_flag_constants():
    seg = decode(1, raw(ETH / tcp4(b"", flags="SFR")))
    assert seg.flags == SYN | FIN | RST and seg.payload == b""


def test_haka_capture_has_42_tcp_segments_of_48_packets():
    d = Decoder()
    pkts = list(read_packets(PCAPS / "haka__smtp.pcap"))
    segs = [d.decode(lt, fr, wl) for _, lt, fr, wl in pkts]
    assert len(pkts) == 48
    assert d.decoded == 42 and d.reasons == {"not_ip": 4, "not_tcp": 2}
    smtp = [s for s in segs if s and 25 in (s.sport, s.dport)]
    assert len(smtp) == 32
    assert {s.src_str for s in smtp} == {"192.168.10.10", "192.168.20.1"}


def test_ndpi_starttls_capture_is_ipv6_over_vlan():
    v6 = []
    for _, lt, fr, wl in read_packets(PCAPS / "ndpi__smtp-starttls.pcap"):
        seg = decode(lt, fr, wl)
        assert seg is not None
        if seg.family == 6:
            assert fr[12:14] == b"\x81\x00"
            v6.append(seg)
    assert len(v6) == 33
    assert {v6[0].src_str, v6[0].dst_str} == {"2003:de:2016:125:fc36:8317:4e86:cb72",
                                               "2003:de:2016:120::a08:53"}


def test_arkime_html_capture_is_bsd_loopback():
    (ts, lt, fr, wl), = read_packets(PCAPS / "arkime__smtp-html.pcap")
    assert lt == 0
    seg = decode(lt, fr, wl)
    assert seg.src_str == "127.0.0.1" and 8000 in (seg.sport, seg.dport)


def test_all_shared_captures_decode_fully_except_haka_noise():
    for path in sorted(PCAPS.glob("*.pcap")):
        if path.name == "haka__smtp.pcap":
            continue
        d = Decoder()
        for _, lt, fr, wl in read_packets(path):
            d.decode(lt, fr, wl)
        assert d.reasons == {}, path.name


def test_memoryview_frames_decode_like_bytes():
    cases = [(1, raw(ETH / Dot1Q(vlan=3) / tcp6())),
             (0, struct.pack("<I", 2) + raw(tcp4())),
             (108, struct.pack(">I", 2) + raw(tcp4())),
             (113, raw(CookedLinux() / tcp4()))]
    for lt, frame in cases:
        a, b = decode(lt, frame), decode(lt, memoryview(frame))
        assert a is not None and bytes(b.payload) == a.payload and b[:8] == a[:8]


def test_ipv4_total_length_zero_from_tso_uses_the_frame_length():
    frame = bytearray(raw(ETH / tcp4(b"x" * 3000)))
    frame[16:18] = b"\x00\x00"
    seg = decode(1, bytes(frame[:200]), wirelen=len(frame))
    assert seg.wire_paylen == 3000 and seg.cut and seg.payload == b"x" * (200 - 54)
