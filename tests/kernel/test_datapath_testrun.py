"""The kernel programs run by BPF_PROG_TEST_RUN on crafted packets: every
path through bpf/datapath.c, with the event it emits and the counter it bumps."""

from __future__ import annotations

import ctypes as ct
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from sensor.errors import SensorError
from sensor.kernel import abi, bpfsys
from sensor.kernel.datapath import Datapath, DatapathConfig
from sensor.kernel.maps import FlowEnds
from support.testrun import prog_test_run

XDP_DROP, XDP_PASS = 1, 2
TC_ACT_OK, TC_ACT_SHOT = 0, 2

CLIENT4, SERVER4 = "198.51.100.7", "192.0.2.25"
CLIENT6, SERVER6 = "2001:db8:1::7", "2001:db8:2::25"
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def smtp4(payload=b"EHLO client.example\r\n", sport=40000, dport=25, flags="PA", src=CLIENT4,
          dst=SERVER4, ip_options=None, seq=1000, **tcp):
    ip = IP(src=src, dst=dst, options=ip_options) if ip_options else IP(src=src, dst=dst)
    pkt = ETH / ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=2000, **tcp)
    return bytes(pkt / Raw(payload)) if payload else bytes(pkt)


def smtp6(payload=b"EHLO client.example\r\n", ext=(), sport=40000, dport=25, flags="PA",
          src=CLIENT6, dst=SERVER6):
    layer = IPv6(src=src, dst=dst)
    for header in ext:
        layer = layer / header
    pkt = ETH / layer / TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=2000)
    return bytes(pkt / Raw(payload)) if payload else bytes(pkt)


@pytest.fixture(scope="module")
def loaded(kernel_prereqs, test_pin_root):
    dp = Datapath(DatapathConfig(pin_dir=test_pin_root / "testrun" / f"v{abi.ABI_VERSION}")).load()
    reader = dp.event_reader(wake_batch=False)
    yield dp, reader
    dp.close()


@pytest.fixture
def dp(loaded):
    """The loaded datapath with empty enforcement maps, zero counters and the
    default configuration, its ring drained."""
    datapath, reader = loaded
    maps = datapath.maps
    for table in (maps.ban_v4, maps.ban_v6, maps.flow_drop, maps.bypass_map, maps.release_map, maps.hold_map,
                  maps.flow_state_map, maps.lost_map, maps.ring_state_map):
        table.clear()
    maps.counters_map.clear()
    maps.set_ports((25, 587))
    maps.set_config()
    reader.poll(0)
    return datapath


@pytest.fixture
def reader(loaded):
    return loaded[1]


def xdp(dp, frame: bytes) -> int:
    return prog_test_run(dp.xdp_fd, frame).retval


def tc(dp, frame: bytes) -> int:
    return prog_test_run(dp.tc_fd, frame).retval


def ingress(dp) -> dict[str, int]:
    return dp.maps.counters()["ingress"]


MARKS = {c.name.lower() for c in abi.Counter if c >= abi.VERDICT_COUNTERS}


def only(counts: dict[str, int], **expected) -> None:
    """The counters hold exactly `expected` (others zero; seen is the verdicts' sum)."""
    nonzero = {k: v for k, v in counts.items() if v and k != "seen"}
    assert nonzero == expected
    assert counts["seen"] == sum(v for k, v in expected.items() if k not in MARKS)


# ------------------------------------------------------------------ pushing

def test_ipv4_smtp_payload_is_pushed_with_metadata_and_bytes(dp, reader):
    frame = smtp4(b"MAIL FROM:<a@example.org>\r\n")
    assert xdp(dp, frame) == XDP_PASS
    [event] = reader.poll(100)
    h = event.header
    assert (h.version, h.direction, h.flags) == (abi.ABI_VERSION, abi.Direction.INGRESS, 0)
    assert (h.wire_len, h.cap_len) == (len(frame), len(frame))
    assert event.frame == frame
    assert (event.src, event.dst, h.sport, h.dport) == (CLIENT4, SERVER4, 40000, 25)
    assert (h.seq, h.ack, h.family) == (1000, 2000, abi.AF_INET)
    assert h.tcp_flags == abi.TCP_PSH | abi.TCP_ACK
    assert (h.l3_off, h.payload_off) == (14, 14 + 20 + 20)
    assert event.payload == b"MAIL FROM:<a@example.org>\r\n"
    assert h.ts_ns > 0
    only(ingress(dp), pushed=1)


def test_ipv4_options_move_the_payload_offset(dp, reader):
    frame = smtp4(b"DATA\r\n", ip_options=[b"\x01\x01\x01\x00", b"\x01\x01\x01\x00"])
    assert xdp(dp, frame) == XDP_PASS
    [event] = reader.poll(100)
    assert event.header.payload_off == 14 + 28 + 20
    assert event.payload == b"DATA\r\n"


def test_tcp_options_are_skipped_by_data_offset(dp, reader):
    frame = smtp4(b"QUIT\r\n", options=[("MSS", 1460), ("NOP", None), ("WScale", 7)])
    xdp(dp, frame)
    [event] = reader.poll(100)
    assert event.header.payload_off == 14 + 20 + 28
    assert event.payload == b"QUIT\r\n"


def test_ipv6_smtp_payload_is_pushed(dp, reader):
    frame = smtp6(b"RCPT TO:<b@example.net>\r\n")
    assert xdp(dp, frame) == XDP_PASS
    [event] = reader.poll(100)
    assert (event.src, event.dst, event.header.family) == (CLIENT6, SERVER6, abi.AF_INET6)
    assert event.payload == b"RCPT TO:<b@example.net>\r\n"
    assert event.header.payload_off == 14 + 40 + 20


def test_ipv6_extension_headers_are_skipped(dp, reader):
    ext = (IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(), IPv6ExtHdrDestOpt(), IPv6ExtHdrFragment(offset=0))
    frame = smtp6(b"NOOP\r\n", ext=ext)
    assert xdp(dp, frame) == XDP_PASS
    [event] = reader.poll(100)
    assert event.payload == b"NOOP\r\n"
    assert event.header.payload_off == 14 + 40 + 8 + 8 + 8 + 8 + 20


@pytest.mark.parametrize("tags", [(Dot1Q(vlan=10),), (Dot1AD(vlan=100), Dot1Q(vlan=10))],
                         ids=["802.1Q", "802.1ad+802.1Q"])
def test_vlan_tags_are_looked_through(dp, reader, tags):
    pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    for tag in tags:
        pkt = pkt / tag
    frame = bytes(pkt / IP(src=CLIENT4, dst=SERVER4) / TCP(sport=40000, dport=25, flags="PA") / Raw(b"HELO x\r\n"))
    assert xdp(dp, frame) == XDP_PASS
    [event] = reader.poll(100)
    assert event.header.l3_off == 14 + 4 * len(tags)
    assert event.payload == b"HELO x\r\n"


def test_three_vlan_tags_pass_as_not_ip(dp, reader):
    frame = bytes(ETH / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / IP(src=CLIENT4, dst=SERVER4)
                  / TCP(dport=25) / Raw(b"x"))
    assert xdp(dp, frame) == XDP_PASS
    assert reader.poll(10) == []
    only(ingress(dp), not_ip=1)


@pytest.mark.parametrize("port", [25, 587])
def test_server_replies_from_an_smtp_port_are_pushed(dp, reader, port):
    xdp(dp, smtp4(b"250 OK\r\n", sport=port, dport=40000, src=SERVER4, dst=CLIENT4))
    [event] = reader.poll(100)
    assert event.payload == b"250 OK\r\n"


@pytest.mark.parametrize("flags", ["S", "F", "R", "FA", "SA"])
def test_syn_fin_rst_without_payload_are_pushed(dp, reader, flags):
    assert xdp(dp, smtp4(b"", flags=flags)) == XDP_PASS
    [event] = reader.poll(100)
    assert event.header.payload_len == 0


def test_pure_ack_is_not_pushed_even_with_ethernet_padding(dp, reader):
    frame = smtp4(b"", flags="A")
    padded = frame + b"\x00" * (60 - len(frame))
    assert xdp(dp, padded) == XDP_PASS
    assert reader.poll(10) == []
    only(ingress(dp), pure_ack=1)


# ------------------------------------------------------------------ passing uncounted-for traffic

def test_other_traffic_passes_counted(dp, reader):
    assert xdp(dp, smtp4(dport=80)) == XDP_PASS
    assert xdp(dp, bytes(ETH / IP(src=CLIENT4, dst=SERVER4) / UDP(dport=25) / Raw(b"x"))) == XDP_PASS
    assert xdp(dp, bytes(ETH / ARP())) == XDP_PASS
    frag = bytes(ETH / IP(src=CLIENT4, dst=SERVER4, frag=100, proto=6) / Raw(b"x" * 40))
    assert xdp(dp, frag) == XDP_PASS
    frag6 = smtp6(ext=(IPv6ExtHdrFragment(offset=10),))
    assert xdp(dp, frag6) == XDP_PASS
    assert reader.poll(10) == []
    only(ingress(dp), not_smtp=1, not_tcp=1, not_ip=1, fragment=2)


@pytest.mark.parametrize("make", [smtp4, smtp6, lambda p: smtp6(p, ext=(IPv6ExtHdrHopByHop(),))],
                         ids=["ipv4", "ipv6", "ipv6-hbh"])
def test_truncation_at_every_header_byte_is_a_parse_error(dp, reader, make):
    frame = make(b"DATA\r\n")
    for cut in range(14, len(frame)):  # XDP test runs need a whole Ethernet header
        assert xdp(dp, frame[:cut]) == XDP_PASS
    assert reader.poll(10) == []
    only(ingress(dp), parse_error=len(frame) - 14)


def test_ipv4_header_length_below_five_words_is_a_parse_error(dp, reader):
    frame = bytearray(smtp4())
    frame[14] = 0x44  # version 4, IHL 4
    xdp(dp, bytes(frame))
    only(ingress(dp), parse_error=1)


def test_tcp_data_offset_below_five_words_is_a_parse_error(dp, reader):
    frame = bytearray(smtp4())
    frame[14 + 20 + 12] = 0x40
    xdp(dp, bytes(frame))
    only(ingress(dp), parse_error=1)


# ------------------------------------------------------------------ runtime configuration

def test_port_set_changes_at_run_time(dp, reader):
    dp.maps.set_ports({2525})
    xdp(dp, smtp4(dport=25))
    xdp(dp, smtp4(dport=2525))
    [event] = reader.poll(100)
    assert event.header.dport == 2525
    only(ingress(dp), not_smtp=1, pushed=1)


def test_snaplen_cuts_and_marks_the_event(dp, reader):
    dp.maps.set_config(snaplen=100)
    frame = smtp4(b"x" * 1400)
    xdp(dp, frame)
    [event] = reader.poll(100)
    assert event.cut and event.header.cap_len == 100 and event.header.wire_len == len(frame)
    assert event.frame == frame[:100]
    only(ingress(dp), pushed=1, cut=1)


def test_push_can_be_switched_off(dp, reader):
    dp.maps.set_config(push=False)
    xdp(dp, smtp4())
    assert reader.poll(10) == []
    only(ingress(dp), no_push=1)


# ------------------------------------------------------------------ enforcement

@pytest.mark.parametrize("prefix,frame", [
    (f"{CLIENT4}/32", smtp4()),
    ("198.51.100.0/24", smtp4()),
    ("2001:db8:1::/48", smtp6()),
], ids=["v4/32", "v4/24", "v6/48"])
def test_banned_source_is_dropped_and_counted(dp, reader, prefix, frame):
    dp.maps.ban(prefix, ttl=600)
    assert xdp(dp, frame) == XDP_DROP
    assert xdp(dp, frame) == XDP_DROP
    assert reader.poll(10) == []
    only(ingress(dp), drop_ban=2)
    [entry] = dp.maps.bans()
    assert (entry.target, entry.packets, entry.bytes) == (prefix, 2, 2 * len(frame))
    assert 590 < entry.ttl_left() <= 600


def test_ban_of_another_prefix_does_not_drop(dp, reader):
    dp.maps.ban("203.0.113.0/24")
    assert xdp(dp, smtp4()) == XDP_PASS
    only(ingress(dp), pushed=1)


def test_expired_ban_passes(dp, reader):
    key = abi.lpm_key(f"{CLIENT4}/32")
    dp.maps.ban_v4[key] = abi.Verdict(expires_ns=1, reason=abi.Reason.MANUAL)
    assert xdp(dp, smtp4()) == XDP_PASS
    assert len(reader.poll(100)) == 1
    only(ingress(dp), pushed=1, expired=1)
    assert dp.maps.sweep() == 1
    assert dp.maps.bans() == []


def test_flow_drop_drops_both_directions_and_nothing_else(dp, reader):
    dp.maps.drop_flow(FlowEnds(CLIENT4, 40000, SERVER4, 25))
    assert xdp(dp, smtp4()) == XDP_DROP
    assert xdp(dp, smtp4(b"250 OK\r\n", sport=25, dport=40000, src=SERVER4, dst=CLIENT4)) == XDP_DROP
    assert xdp(dp, smtp4(sport=40001)) == XDP_PASS
    only(ingress(dp), drop_flow=2, pushed=1)
    assert sorted(e.packets for e in dp.maps.drops()) == [1, 1]
    dp.maps.flow_drop.clear()
    assert xdp(dp, smtp4()) == XDP_PASS


def test_bypassed_flow_passes_without_events(dp, reader):
    dp.maps.bypass_flow(FlowEnds(CLIENT6, 40000, SERVER6, 25))
    assert xdp(dp, smtp6()) == XDP_PASS
    assert reader.poll(10) == []
    only(ingress(dp), bypassed=1)


def test_enforcement_can_be_switched_off(dp, reader):
    dp.maps.ban(CLIENT4)
    dp.maps.set_config(enforce=False)
    assert xdp(dp, smtp4()) == XDP_PASS
    only(ingress(dp), pushed=1)


# ------------------------------------------------------------------ the commit hold

# every way the last byte of an end of data can sit in a segment: the whole
# terminator, each split of CRLF.CRLF, the lenient ones, and a dot after CR/LF
# at every offset of the 8-byte words the scan reads (and across them)
COMPLETING = [
    b"Bye.\r\n.\r\n", b".\r\n", b"\r\n", b"\n", b"\r", b".", b"\n.\r\n", b"\r\n.", b"\n.",
    b"text\n.\n", b"text\r.\r", b"text\r\n.\nQUIT\r\n", b"x" * 1400 + b"\r\n.\r\n",
    *(b"y" * n + b"\n." + b"z" * 9 for n in range(1, 18)),
    *(b"y" * n + b"\r." for n in range(1, 18)),
]
# what a message's body and commands look like: dots, CRs and LFs, never CR/LF-dot
NOT_COMPLETING = [
    b"MAIL FROM:<a@b.example>\r\n", b"Subject: hi.\r\nSee you. Bye\r\n", b"a.b.c.d\r\n" * 100,
    b"x" * 1447 + b"\r", *(b"y" * n + b"\r\n" + b"z" * 9 for n in range(1, 18)),
]


def held_setup(dp, **config):
    dp.maps.set_config(hold=True, **config)


@pytest.mark.parametrize("payload", COMPLETING, ids=repr)
def test_a_client_segment_that_can_complete_a_message_is_held_and_pushed(dp, reader, payload):
    held_setup(dp)
    frame = smtp4(payload)
    assert xdp(dp, frame) == XDP_DROP
    [event] = reader.poll(100)
    assert event.held and event.frame == frame
    only(ingress(dp), held=1)
    [(flow, hold)] = dp.maps.holds()
    assert flow == f"{CLIENT4}:40000 > {SERVER4}:25" and (hold.seq, hold.end) == (1000, 1000 + len(payload))


@pytest.mark.parametrize("payload", NOT_COMPLETING, ids=lambda p: repr(p[:40]))
def test_a_client_segment_that_cannot_complete_a_message_passes(dp, reader, payload):
    held_setup(dp)
    assert xdp(dp, smtp4(payload)) == XDP_PASS
    [event] = reader.poll(100)
    assert not event.held
    only(ingress(dp), pushed=1)


def test_a_segment_longer_than_the_scan_is_held_unread(dp, reader):
    held_setup(dp)
    assert xdp(dp, smtp4(b"x" * (abi.HOLD_SCAN_MAX + 1))) == XDP_DROP
    only(ingress(dp), held=1)


def test_an_ipv6_candidate_behind_extension_headers_is_held(dp, reader):
    held_setup(dp)
    assert xdp(dp, smtp6(b"body\r\n.\r\n", ext=(IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()))) == XDP_DROP
    only(ingress(dp), held=1)


def test_the_release_lets_the_candidate_pass_up_to_its_sequence_number(dp, reader):
    held_setup(dp)
    payload = b"body\r\n.\r\n"
    key = abi.flow_key(CLIENT4, 40000, SERVER4, 25)
    dp.maps.release(key, 1000 + len(payload) - 1)       # one byte short
    assert xdp(dp, smtp4(payload)) == XDP_DROP
    dp.maps.release(key, 1000 + len(payload))
    assert xdp(dp, smtp4(payload)) == XDP_PASS
    events = reader.poll(100)
    assert [e.header.flags & (abi.EVF_HELD | abi.EVF_RELEASED) for e in events] == [abi.EVF_HELD, abi.EVF_RELEASED]
    only(ingress(dp), held=1, pushed=1, released=1)
    # a release in another flow, or of the other direction, lets nothing pass
    dp.maps.release_map.clear()
    dp.maps.release(abi.flow_key(SERVER4, 25, CLIENT4, 40000), 2**31)
    dp.maps.release(abi.flow_key(CLIENT4, 40001, SERVER4, 25), 2**31)
    assert xdp(dp, smtp4(payload)) == XDP_DROP


def test_a_new_connection_on_the_same_ports_starts_without_a_release(dp, reader):
    held_setup(dp)
    key = abi.flow_key(CLIENT4, 40000, SERVER4, 25)
    dp.maps.release(key, 2**31)
    assert xdp(dp, smtp4(b".\r\n")) == XDP_PASS and dp.maps.holds() == []      # released: no hold
    assert xdp(dp, smtp4(None, flags="S")) == XDP_PASS
    assert len(dp.maps.release_map.items()) == 0
    assert xdp(dp, smtp4(b".\r\n")) == XDP_DROP
    only(ingress(dp), pushed=2, released=1, held=1)


def test_the_release_compares_sequence_numbers_across_the_wrap(dp, reader):
    held_setup(dp)
    key = abi.flow_key(CLIENT4, 40000, SERVER4, 25)
    dp.maps.release(key, 20)                             # 2**32 - 10 + 12 bytes wraps to 2
    assert xdp(dp, smtp4(b"body\r\n.\r\n", seq=2**32 - 10)) == XDP_PASS
    dp.maps.release(key, 2**32 - 20)                     # before the segment
    assert xdp(dp, smtp4(b"body\r\n.\r\n", seq=2**32 - 10)) == XDP_DROP


def test_a_hold_older_than_hold_max_passes_its_retransmission(dp, reader):
    held_setup(dp, hold_max_ms=1)
    assert xdp(dp, smtp4(b".\r\n")) == XDP_DROP
    time.sleep(0.005)
    assert xdp(dp, smtp4(b"body.\r\n.\r\n", seq=1000)) == XDP_PASS     # same start, more bytes
    events = reader.poll(100)
    assert events[-1].header.flags & abi.EVF_HOLD_TIMEOUT
    only(ingress(dp), held=1, pushed=1, hold_timeout=1)


def test_a_hold_times_out_only_for_its_own_sequence_number(dp, reader):
    held_setup(dp, hold_max_ms=1)
    assert xdp(dp, smtp4(b".\r\n", seq=1000)) == XDP_DROP
    [(_, first)] = dp.maps.holds()
    time.sleep(0.005)
    assert xdp(dp, smtp4(b".\r\n", seq=5000)) == XDP_DROP   # another candidate: a new hold
    [(_, second)] = dp.maps.holds()
    assert second.seq == 5000 and second.since_ns > first.since_ns
    only(ingress(dp), held=2)


def test_the_hold_is_off_by_default_and_in_monitor_only_mode(dp, reader):
    assert xdp(dp, smtp4(b".\r\n")) == XDP_PASS
    dp.maps.set_config(hold=True, enforce=False)
    assert xdp(dp, smtp4(b".\r\n")) == XDP_PASS
    only(ingress(dp), pushed=2)


def test_server_replies_and_egress_are_never_held(dp, reader):
    held_setup(dp)
    reply = smtp4(b"250 ok\r\n.\r\n", sport=25, dport=40000, src=SERVER4, dst=CLIENT4)
    assert xdp(dp, reply) == XDP_PASS
    assert tc(dp, smtp4(b"body\r\n.\r\n")) == TC_ACT_OK
    counts = dp.maps.counters()
    assert counts["ingress"]["pushed"] == 1 and counts["egress"]["pushed"] == 1
    assert counts["ingress"]["held"] == counts["egress"]["held"] == 0


# the command phase: a flow the kernel saw open (its SYN), the server's last reply not 354

def opened(dp, seq=1000):
    """Hold on, and the client's SYN seen: its first line starts at seq."""
    held_setup(dp)
    assert xdp(dp, smtp4(None, flags="S", seq=seq - 1)) == XDP_PASS


def server_says(dp, reply: bytes, hook=None):
    frame = smtp4(reply, sport=25, dport=40000, src=SERVER4, dst=CLIENT4)
    return (hook or tc)(dp, frame)


def test_whole_command_lines_from_the_line_start_pass(dp, reader):
    opened(dp)
    line = b"MAIL FROM:<a@b.example>\r\n"
    assert xdp(dp, smtp4(line)) == XDP_PASS
    assert xdp(dp, smtp4(b"RCPT TO:<c@d.example>\r\nRCPT TO:<e@f.example>\r\n", seq=1000 + len(line))) == XDP_PASS
    assert xdp(dp, smtp4(line)) == XDP_PASS          # a retransmission of what passed
    assert ingress(dp)["held"] == 0


@pytest.mark.parametrize("payload,seq", [
    (b"MAIL FROM:<a@b.example>", 1000),               # not a whole line
    (b"MAIL FROM:<a@b.example>\r\n", 1003),           # not where the next line starts
    (b"BDAT 5 LAST\r\n", 1000),                       # a BDAT line: its chunk ends anywhere
    (b"NOOP\r\nbdat 12\r\n", 1000),
    (b"B", 1000),
], ids=["partial-line", "not-at-line-start", "bdat", "bdat-after-a-line", "b-alone"])
def test_in_the_command_phase_anything_but_whole_lines_without_bdat_is_held(dp, reader, payload, seq):
    opened(dp)
    assert xdp(dp, smtp4(payload, seq=seq)) == XDP_DROP
    assert ingress(dp)["held"] == 1


def test_a_split_command_line_holds_until_the_line_is_whole_again(dp, reader):
    opened(dp)
    dp.maps.release(abi.flow_key(CLIENT4, 40000, SERVER4, 25), 1002)
    assert xdp(dp, smtp4(b"BD", seq=1000)) == XDP_PASS           # released: passes, mid-line
    assert xdp(dp, smtp4(b"AT 5 LAST\r\nhell\n", seq=1002)) == XDP_DROP  # after a partial line: held
    dp.maps.release(abi.flow_key(CLIENT4, 40000, SERVER4, 25), 1002 + 16)
    assert xdp(dp, smtp4(b"AT 5 LAST\r\nhell\n", seq=1002)) == XDP_PASS
    assert xdp(dp, smtp4(b"NOOP\r\n", seq=1018)) == XDP_PASS    # whole lines again


@pytest.mark.parametrize("hook", ["tc", "xdp"])
def test_after_a_354_message_data_passes_unless_it_can_end_the_message(dp, reader, hook):
    opened(dp)
    assert xdp(dp, smtp4(b"DATA\r\n")) == XDP_PASS
    assert server_says(dp, b"250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n", globals()[hook]) in (
        TC_ACT_OK, XDP_PASS)
    assert xdp(dp, smtp4(b"Subject: hi\r\n\r\nBody without a line end", seq=1006)) == XDP_PASS
    assert xdp(dp, smtp4(b"more body\r\n.\r\n", seq=1006 + 40)) == XDP_DROP
    # the reply after the end of data: commands again
    server_says(dp, b"250 2.0.0 Ok: queued\r\n", globals()[hook])
    assert xdp(dp, smtp4(b"QUIT", seq=2000)) == XDP_DROP


@pytest.mark.parametrize("reply,encrypted", [(b"220 2.0.0 Ready to start TLS\r\n", True),
                                            (b"454 4.7.0 TLS not available\r\n", False)],
                         ids=["accepted", "refused"])
def test_after_an_accepted_starttls_nothing_is_held(dp, reader, reply, encrypted):
    opened(dp)
    assert xdp(dp, smtp4(b"starttls\r\n")) == XDP_PASS
    server_says(dp, reply)
    tls_record = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n.\x17junk"
    assert xdp(dp, smtp4(tls_record, seq=1010)) == (XDP_PASS if encrypted else XDP_DROP)


def test_a_release_at_a_line_start_is_where_the_next_command_may_start(dp, reader):
    # the released bytes reached the MTA without passing here (injected): the
    # release point says where the client's next line starts
    opened(dp)
    assert xdp(dp, smtp4(b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")) == XDP_DROP
    key = abi.flow_key(CLIENT4, 40000, SERVER4, 25)
    dp.maps.release(key, 1030)
    assert xdp(dp, smtp4(b"QUIT\r\n", seq=1030)) == XDP_DROP        # not known as a line start
    dp.maps.release(key, 1030, at_line=True)
    assert xdp(dp, smtp4(b"QUIT\r\n", seq=1030)) == XDP_PASS
    assert xdp(dp, smtp4(b"NOOP", seq=1036)) == XDP_DROP             # and on: whole lines only


def test_a_flow_released_with_hold_all_holds_every_segment_beyond_the_release(dp, reader):
    held_setup(dp)
    key = abi.flow_key(CLIENT4, 40000, SERVER4, 25)
    dp.maps.release(key, 1000, hold_all=True)
    assert xdp(dp, smtp4(b"plain chunk bytes\r\n", seq=1000)) == XDP_DROP
    dp.maps.release(key, 1000 + 19, hold_all=True)
    assert xdp(dp, smtp4(b"plain chunk bytes\r\n", seq=1000)) == XDP_PASS


EHLO = (b"250-mx.lab.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n%s\r\n"
        b"250-8BITMIME\r\n250 SMTPUTF8\r\n")


def tcp_checksum_ok(frame: bytes) -> bool:
    pkt = Ether(frame)
    sent = pkt[TCP].chksum
    del pkt[TCP].chksum
    return Ether(bytes(pkt))[TCP].chksum == sent


@pytest.mark.parametrize("line", [b"250-CHUNKING", b"250-chunking", b"250-cHuNkInG", b"250-X" + b"CHUNKING"[:0] + b"CHUNKING",
                                  b"250-SMTPUTF8\r\n250 CHUNKING"],
                         ids=["upper", "lower", "mixed", "odd-offset", "last-line"])
def test_the_ehlo_reply_leaving_through_tc_has_chunking_masked_with_a_valid_checksum(dp, reader, line):
    held_setup(dp)
    payload = (EHLO % line) if not line.endswith(b"250 CHUNKING") else b"250-mx\r\n" + line + b"\r\n"
    frame = smtp4(payload, sport=25, dport=40000, src=SERVER4, dst=CLIENT4)
    assert tcp_checksum_ok(frame)
    run = prog_test_run(dp.tc_fd, frame)
    keyword = line.rsplit(b"-", 1)[-1].rsplit(b" ", 1)[-1]
    if keyword.upper() != b"CHUNKING":                       # "250-XCHUNKING": another keyword
        assert run.data_out == frame
        return
    assert run.retval == TC_ACT_OK
    assert Ether(run.data_out)[Raw].load == payload.replace(keyword, b"XXXXXXXX")
    assert run.data_out[:50] == frame[:50]                   # only the payload and the checksum change
    assert tcp_checksum_ok(run.data_out)
    [event] = reader.poll(100)
    assert b"XXXXXXXX" in event.payload and b"CHUNKING" not in event.payload.upper()
    counts = dp.maps.counters()["egress"]
    assert counts["ehlo_rewritten"] == 1 and counts["pushed"] == 1 and counts["seen"] == 1


def test_the_ehlo_reply_is_left_alone_without_the_hold_and_on_xdp(dp, reader):
    frame = smtp4(EHLO % b"250-CHUNKING", sport=25, dport=40000, src=SERVER4, dst=CLIENT4)
    assert prog_test_run(dp.tc_fd, frame).data_out == frame
    held_setup(dp)
    assert prog_test_run(dp.xdp_fd, frame).data_out == frame
    assert prog_test_run(dp.tc_fd, smtp4(b"250 CHUNKING is a word here\r\n" * 2, sport=25, dport=40000,
                                         src=SERVER4, dst=CLIENT4)).retval == TC_ACT_OK
    assert dp.maps.counters()["egress"]["ehlo_rewritten"] == 0


def test_a_dropped_flow_is_dropped_before_any_hold(dp, reader):
    held_setup(dp)
    dp.maps.drop_flow(FlowEnds(CLIENT4, 40000, SERVER4, 25))
    assert xdp(dp, smtp4(b".\r\n")) == XDP_DROP
    assert reader.poll(10) == []
    only(ingress(dp), drop_flow=1)


def test_hold_max_must_fit_the_kernel_clock(dp):
    with pytest.raises(ValueError, match="hold_max_ms"):
        dp.maps.set_config(hold=True, hold_max_ms=0)


# ------------------------------------------------------------------ teardown

XDP_TX, TC_ACT_REDIRECT = 3, 7
ETH_C, ETH_S = "02:00:00:00:00:01", "02:00:00:00:00:02"      # client's and server's MACs


def frame4(payload=b"RCPT TO:<b@example.net>\r\n", flags="PA", seq=1000, ack=2000, tags=(), from_client=True,
           ip_options=None, **tcp):
    """A client (or, from_client False, server) segment of the torn-down flow CLIENT4:40000 <> SERVER4:25."""
    src, dst, sport, dport = (CLIENT4, SERVER4, 40000, 25) if from_client else (SERVER4, CLIENT4, 25, 40000)
    eth = Ether(src=ETH_C, dst=ETH_S) if from_client else Ether(src=ETH_S, dst=ETH_C)
    for tag in tags:
        eth = eth / tag
    ip = IP(src=src, dst=dst, ttl=50, options=ip_options) if ip_options else IP(src=src, dst=dst, ttl=50)
    pkt = eth / ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, **tcp)
    return bytes(pkt / Raw(payload)) if payload else bytes(pkt)


def frame6(payload=b"RCPT TO:<b@example.net>\r\n", flags="PA", seq=1000, ack=2000, ext=(), tags=(),
           from_client=True):
    src, dst, sport, dport = (CLIENT6, SERVER6, 40000, 25) if from_client else (SERVER6, CLIENT6, 25, 40000)
    eth = Ether(src=ETH_C, dst=ETH_S) if from_client else Ether(src=ETH_S, dst=ETH_C)
    for tag in tags:
        eth = eth / tag
    layer = IPv6(src=src, dst=dst, hlim=50)
    for header in ext:
        layer = layer / header
    pkt = eth / layer / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack)
    return bytes(pkt / Raw(payload)) if payload else bytes(pkt)


def torn_down(dp, six=False):
    dp.maps.drop_flow(FlowEnds(CLIENT6 if six else CLIENT4, 40000, SERVER6 if six else SERVER4, 25), reset=True)


def checksums_ok(frame: bytes) -> Ether:
    """The frame parsed by scapy, after checking that its IPv4 and TCP
    checksums are what scapy computes for the same bytes."""
    pkt = Ether(frame)
    again = pkt.copy()
    if IP in again:
        del again[IP].chksum
    del again[TCP].chksum
    again = Ether(bytes(again))
    if IP in pkt:
        assert pkt[IP].chksum == again[IP].chksum, "IPv4 header checksum"
    assert pkt[TCP].chksum == again[TCP].chksum, "TCP checksum"
    return pkt


def rst_of(frame: bytes) -> tuple[Ether, TCP]:
    pkt = checksums_ok(frame)
    tcp = pkt[TCP]
    assert tcp.dataofs == 5 and tcp.options == [] and bytes(tcp.payload) == b"", "no options, no payload"
    assert (tcp.window, tcp.urgptr) == (0, 0)
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    if IP in pkt:
        assert ip.len == ip.ihl * 4 + 20
    else:
        assert len(frame) == len(bytes(pkt)) and ip.plen == len(bytes(ip.payload))
    return pkt, tcp


def headers(ip6) -> list[str]:
    return [type(h).__name__ for h in ip6.iterpayloads() if not isinstance(h, (TCP, Raw))]


ENCAPSULATIONS = {
    "ipv4": lambda **kw: frame4(**kw),
    "ipv4-options": lambda **kw: frame4(ip_options=[b"\x01\x01\x01\x00"], **kw),
    "tcp-options": lambda **kw: frame4(options=[("MSS", 1460), ("NOP", None), ("WScale", 7)], **kw),
    "vlan": lambda **kw: frame4(tags=(Dot1Q(vlan=10),), **kw),
    "qinq": lambda **kw: frame4(tags=(Dot1AD(vlan=100), Dot1Q(vlan=10)), **kw),
    "ipv6": lambda **kw: frame6(**kw),
    "ipv6-ext": lambda **kw: frame6(ext=(IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(), IPv6ExtHdrDestOpt()), **kw),
    "ipv6-vlan": lambda **kw: frame6(tags=(Dot1Q(vlan=20),), **kw),
}


@pytest.mark.parametrize("make", ENCAPSULATIONS.values(), ids=ENCAPSULATIONS.keys())
def test_the_clients_next_packet_becomes_an_rst_to_the_server_at_its_own_seq(dp, reader, make):
    frame = make(payload=b"DATA\r\n" * 100, seq=5000, ack=7000)
    torn_down(dp, six=IPv6 in Ether(frame))
    result = prog_test_run(dp.xdp_fd, frame)
    assert result.retval == XDP_PASS
    pkt, tcp = rst_of(result.data_out)
    sent = Ether(frame)
    ip, sent_ip = (pkt[IP], sent[IP]) if IP in pkt else (pkt[IPv6], sent[IPv6])
    assert (pkt.src, pkt.dst, ip.src, ip.dst, tcp.sport, tcp.dport) == \
           (sent.src, sent.dst, sent_ip.src, sent_ip.dst, 40000, 25)            # on to the server
    assert (tcp.flags, tcp.seq, tcp.ack) == ("RA", 5000, 7000)
    assert bytes(pkt)[:len(bytes(pkt)) - len(bytes(ip))] == frame[:len(bytes(pkt)) - len(bytes(ip))]  # tags kept
    if IPv6 in pkt:                                                     # extension headers kept
        assert headers(pkt[IPv6]) == headers(sent[IPv6])
    assert reader.poll(10) == []
    only(ingress(dp), drop_flow=1, reset=1)


@pytest.mark.parametrize("make", ENCAPSULATIONS.values(), ids=ENCAPSULATIONS.keys())
def test_the_clients_later_packets_go_back_to_the_client_as_its_rst(dp, reader, make):
    torn_down(dp, six=IPv6 in Ether(make()))
    assert xdp(dp, make(seq=5000, ack=7000)) == XDP_PASS                 # the server's
    result = prog_test_run(dp.xdp_fd, make(payload=b"DATA\r\n", seq=5000, ack=7010))   # retransmitted
    assert result.retval == XDP_TX
    pkt, tcp = rst_of(result.data_out)
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    client, server = (CLIENT4, SERVER4) if IP in pkt else (CLIENT6, SERVER6)
    assert (pkt.src, pkt.dst, ip.src, ip.dst, tcp.sport, tcp.dport) == (ETH_S, ETH_C, server, client, 25, 40000)
    # RFC 793: the reset takes its sequence number from the segment's ACK field
    assert (tcp.flags, tcp.seq, tcp.ack) == ("R", 7010, 0)
    assert (ip.ttl if IP in pkt else ip.hlim) == 64
    only(ingress(dp), drop_flow=2, reset=2)


@pytest.mark.parametrize("make", [frame4, frame6, lambda **kw: frame4(tags=(Dot1Q(vlan=10),), **kw)],
                         ids=["ipv4", "ipv6", "vlan"])
def test_the_servers_packet_goes_back_to_the_server_as_its_rst_through_ingress(dp, reader, make):
    torn_down(dp, six=IPv6 in Ether(make()))
    reply = make(payload=b"250 2.1.5 Ok\r\n", from_client=False, seq=7000, ack=5123)
    result = prog_test_run(dp.tc_fd, reply)
    assert result.retval == TC_ACT_REDIRECT
    pkt, tcp = rst_of(result.data_out)
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    client, server = (CLIENT4, SERVER4) if IP in pkt else (CLIENT6, SERVER6)
    # as if the client sent it: the server's own MAC as destination, so its stack takes it
    assert (pkt.src, pkt.dst, ip.src, ip.dst, tcp.sport, tcp.dport) == (ETH_C, ETH_S, client, server, 40000, 25)
    assert (tcp.flags, tcp.seq) == ("R", 5123)                   # the server's rcv_nxt, from its ACK field
    assert dp.maps.counters()["egress"]["reset"] == 1
    # the server has had its exact RST: the client's next packet goes back to the client
    assert xdp(dp, make(seq=5123, ack=7000)) == XDP_TX


def test_a_tc_rewrite_of_a_large_server_segment_cuts_it_to_the_headers(dp, reader):
    torn_down(dp)
    reply = frame4(payload=b"x" * 1400, from_client=False, seq=7000, ack=5123)
    result = prog_test_run(dp.tc_fd, reply)
    assert result.retval == TC_ACT_REDIRECT and len(result.data_out) == 14 + 20 + 20
    rst_of(result.data_out)


def test_a_server_packet_on_xdp_goes_back_to_the_server(dp, reader):
    """A remote server (the host is the client): XDP sends its RST back at once."""
    torn_down(dp)
    result = prog_test_run(dp.xdp_fd, frame4(payload=b"250 ok\r\n", from_client=False, seq=7000, ack=5123))
    assert result.retval == XDP_TX
    pkt, tcp = rst_of(result.data_out)
    assert (pkt[IP].src, pkt[IP].dst, tcp.sport, tcp.dport, tcp.flags, tcp.seq) == \
           (CLIENT4, SERVER4, 40000, 25, "R", 5123)


def test_rsts_of_a_torn_down_flow_pass_unchanged(dp, reader):
    torn_down(dp)
    for frame in (frame4(None, flags="R", seq=5000), frame4(None, flags="RA", from_client=False)):
        result = prog_test_run(dp.xdp_fd, frame)
        assert result.retval == XDP_PASS and result.data_out == frame
    assert tc(dp, frame4(None, flags="R", from_client=False)) == TC_ACT_OK
    assert reader.poll(10) == []
    only(ingress(dp), drop_flow=2)


def test_a_silent_drop_makes_no_rst(dp, reader):
    dp.maps.drop_flow(FlowEnds(CLIENT4, 40000, SERVER4, 25))
    assert xdp(dp, frame4()) == XDP_DROP
    assert tc(dp, frame4(from_client=False)) == TC_ACT_SHOT
    assert xdp(dp, frame4(None, flags="R")) == XDP_DROP
    only(ingress(dp), drop_flow=2)


def test_a_torn_down_flow_without_ack_has_nothing_to_answer(dp, reader):
    torn_down(dp)
    assert xdp(dp, frame4(b"x", flags="P")) == XDP_DROP
    assert xdp(dp, frame4(None, flags="SA", from_client=False)) == XDP_TX     # a SYN-ACK has an ACK field
    only(ingress(dp), drop_flow=2, reset=1)


def test_a_banned_hosts_open_flow_is_torn_down_before_the_ban_drops_the_rest(dp, reader):
    """A ban tears down the flows it finds open through their flow drops,
    which the datapath reads before the ban; the host's other packets meet
    the ban and are dropped silently."""
    torn_down(dp)
    dp.maps.ban(CLIENT4, ttl=600)
    result = prog_test_run(dp.xdp_fd, frame4(seq=5000, ack=7000))
    assert result.retval == XDP_PASS
    _, tcp = rst_of(result.data_out)
    assert (tcp.flags, tcp.seq) == ("RA", 5000)
    another = Ether(frame4(seq=5000, ack=7000))          # the host's connection the sensor did not see open
    another[TCP].sport = 40001
    del another[TCP].chksum
    assert xdp(dp, bytes(another)) == XDP_DROP
    only(ingress(dp), drop_flow=1, reset=1, drop_ban=1)


# ------------------------------------------------------------------ a drop lives as long as its connection

def flow_flags(dp) -> dict[str, int]:
    return {e.target: e.flags for e in dp.maps.drops()}


def test_a_new_connection_on_the_ports_ends_the_drop_once_the_server_had_its_rst(dp, reader):
    torn_down(dp)
    syn = frame4(None, flags="S", seq=90000, ack=0)
    # before the server's RST: the SYN passes unchanged, the drop stays
    result = prog_test_run(dp.xdp_fd, syn)
    assert result.retval == XDP_PASS and result.data_out == syn
    assert len(dp.maps.drops()) == 2
    # the server answers (a challenge ACK, or a SYN-ACK if its socket is gone): its exact RST
    assert tc(dp, frame4(None, flags="A", from_client=False, seq=7000, ack=5123)) == TC_ACT_REDIRECT
    assert flow_flags(dp)[f"{SERVER4}:25 > {CLIENT4}:40000"] == abi.VF_RESET | abi.VF_TORN
    # the SYN again: a new connection, inspected like any other
    assert xdp(dp, syn) == XDP_PASS
    [event] = reader.poll(100)
    assert event.header.tcp_flags == abi.TCP_SYN
    assert dp.maps.drops() == []
    assert xdp(dp, frame4(b"EHLO again\r\n", seq=90001)) == XDP_PASS
    counts = ingress(dp)
    assert (counts["drop_ended"], counts["pushed"], counts["drop_flow"]) == (1, 2, 1)


def test_a_guessed_rst_alone_does_not_end_the_drop(dp, reader):
    """The client's packet made into the server's RST is a guess at its rcv_nxt:
    a SYN after it still passes without ending the drop (the server's answer decides)."""
    torn_down(dp)
    assert xdp(dp, frame4(seq=5000)) == XDP_PASS
    assert flow_flags(dp)[f"{CLIENT4}:40000 > {SERVER4}:25"] == abi.VF_RESET | abi.VF_GUESSED
    assert xdp(dp, frame4(None, flags="S", seq=90000, ack=0)) == XDP_PASS
    assert len(dp.maps.drops()) == 2 and reader.poll(10) == []
    assert xdp(dp, frame4(seq=5000)) == XDP_TX                     # and the client still gets its RST


def test_a_syn_ack_does_not_end_the_drop(dp, reader):
    torn_down(dp)
    assert tc(dp, frame4(None, flags="A", from_client=False)) == TC_ACT_REDIRECT
    assert tc(dp, frame4(None, flags="SA", from_client=False)) == TC_ACT_REDIRECT
    assert len(dp.maps.drops()) == 2


# ------------------------------------------------------------------ TC egress

def test_tc_egress_pushes_with_egress_direction(dp, reader):
    frame = smtp4(b"220 mx ESMTP\r\n", sport=25, dport=40000, src=SERVER4, dst=CLIENT4)
    assert tc(dp, frame) == TC_ACT_OK
    [event] = reader.poll(100)
    assert event.header.direction == abi.Direction.EGRESS
    assert event.payload == b"220 mx ESMTP\r\n"
    counts = dp.maps.counters()
    assert counts["egress"]["pushed"] == 1 and counts["ingress"]["seen"] == 0


def test_tc_egress_drops_towards_a_banned_peer(dp, reader):
    dp.maps.ban(CLIENT4)
    frame = smtp4(b"220 mx\r\n", sport=25, dport=40000, src=SERVER4, dst=CLIENT4)
    assert tc(dp, frame) == TC_ACT_SHOT
    assert dp.maps.counters()["egress"]["drop_ban"] == 1


# ------------------------------------------------------------------ pins

def test_bans_survive_a_reload_through_the_pinned_maps(dp, test_pin_root):
    dp.maps.ban("203.0.113.0/24", ttl=300, reason=abi.Reason.SPAM_STATS)
    with Datapath(DatapathConfig(pin_dir=dp.config.pin_dir)) as second:
        [entry] = second.maps.bans()
        assert entry.target == "203.0.113.0/24" and entry.reason == abi.Reason.SPAM_STATS


def test_pinned_map_of_another_layout_is_refused(kernel_prereqs, test_pin_root):
    import bcc
    pin_dir = test_pin_root / "stale-layout" / f"v{abi.ABI_VERSION}"  # not test_lab_stale_programs' folder
    pin_dir.mkdir(parents=True)
    # a map where ss_ban_v4 belongs, with a key of another size
    stale = bcc.BPF(text=(f'BPF_TABLE_PINNED("lpm_trie", struct {{ u32 p; u8 a[8]; }}, u64, ss_ban_v4, '
                         f'16, "{pin_dir}/ss_ban_v4", BPF_F_NO_PREALLOC);').encode())
    stale.cleanup()
    with pytest.raises(SensorError, match="another layout"):
        Datapath(DatapathConfig(pin_dir=pin_dir)).load()


def test_verdict_layout_matches_what_the_kernel_map_holds(dp):
    fd = dp.maps.ban_v4.map_fd
    info = bpfsys.map_info(fd)
    assert (info.key_size, info.value_size) == (ct.sizeof(abi.LpmV4), ct.sizeof(abi.Verdict))


def test_test_run_reports_a_duration(dp):
    result = prog_test_run(dp.xdp_fd, smtp4(dport=80), repeat=1000)
    assert result.retval == XDP_PASS and result.duration_ns > 0


# ------------------------------------------------------------------ IP fragments and IPv6 extension headers

def tcp_bytes(payload=b"MAIL FROM:<spammer@suspicious.org>\r\n", sport=40000, dport=25) -> bytes:
    return bytes(TCP(sport=sport, dport=dport, flags="PA", seq=1000, ack=2000) / Raw(payload))


def frag4(data: bytes, offset: int, more: bool, src=CLIENT4, dst=SERVER4, proto=6) -> bytes:
    return bytes(ETH / IP(src=src, dst=dst, id=7, proto=proto, flags="MF" if more else 0, frag=offset // 8)
                 / Raw(data))


def frag6(data: bytes, offset: int, more: bool, nh=6, ext=(), src=CLIENT6, dst=SERVER6) -> bytes:
    layer = IPv6(src=src, dst=dst)
    for header in ext:
        layer = layer / header
    return bytes(ETH / layer / IPv6ExtHdrFragment(id=7, offset=offset // 8, m=int(more), nh=nh) / Raw(data))


def first_and_later(family: int, first: int = 8, **ports):
    """The first fragment (``first`` bytes of TCP) and a later one of an SMTP segment."""
    data = tcp_bytes(**ports)
    make = frag4 if family == 4 else frag6
    return make(data[:first], 0, True), make(data[first:], first, False)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("first", [8, 32])
def test_prevention_drops_the_first_fragment_of_an_smtp_datagram(dp, reader, family, first):
    head, rest = first_and_later(family, first)
    assert xdp(dp, head) == XDP_DROP
    assert xdp(dp, rest) == XDP_PASS     # useless without its first: the receiver times it out
    assert reader.poll(10) == []
    only(ingress(dp), drop_frag=1, fragment=1)


@pytest.mark.parametrize("family", [4, 6])
def test_prevention_drops_the_first_fragment_of_a_server_reply_on_egress(dp, reader, family):
    data = tcp_bytes(b"250 2.1.0 Ok\r\n", sport=25, dport=40000)
    src, dst = (SERVER4, CLIENT4) if family == 4 else (SERVER6, CLIENT6)
    make = frag4 if family == 4 else frag6
    assert tc(dp, make(data[:16], 0, True, src=src, dst=dst)) == TC_ACT_SHOT
    assert dp.maps.counters()["egress"]["drop_frag"] == 1


@pytest.mark.parametrize("family", [4, 6])
def test_a_first_fragment_of_other_ports_passes_as_not_smtp(dp, reader, family):
    head, _ = first_and_later(family, 16, dport=80)
    assert xdp(dp, head) == XDP_PASS
    only(ingress(dp), not_smtp=1)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("first", [8, 32])
def test_monitor_only_pushes_every_tcp_fragment_for_userland(dp, reader, family, first):
    dp.maps.set_config(enforce=False)
    head, rest = first_and_later(family, first)
    assert xdp(dp, rest) == XDP_PASS     # a later fragment may come first
    assert xdp(dp, head) == XDP_PASS
    later_ev, first_ev = reader.poll(100)
    assert later_ev.frame == rest and first_ev.frame == head
    assert later_ev.header.flags == first_ev.header.flags == abi.EVF_FRAGMENT
    assert (first_ev.header.sport, first_ev.header.dport) == (40000, 25)
    assert (later_ev.header.sport, later_ev.header.dport) == (0, 0)
    assert first_ev.src == later_ev.src == (CLIENT4 if family == 4 else CLIENT6)
    only(ingress(dp), pushed=2, frag_pushed=2)


def test_monitor_only_pushes_an_ipv6_later_fragment_that_begins_with_an_extension_header(dp, reader):
    dp.maps.set_config(enforce=False)
    assert xdp(dp, frag6(b"x" * 24, 16, False, nh=60)) == XDP_PASS
    [ev] = reader.poll(100)
    assert ev.header.flags == abi.EVF_FRAGMENT
    only(ingress(dp), pushed=1, frag_pushed=1)


def test_monitor_only_with_pushing_off_pushes_no_fragment(dp, reader):
    dp.maps.set_config(enforce=False, push=False)
    head, rest = first_and_later(4)
    assert xdp(dp, head) == XDP_PASS and xdp(dp, rest) == XDP_PASS
    assert reader.poll(10) == []
    only(ingress(dp), no_push=2)


@pytest.mark.parametrize("enforce", [True, False])
def test_fragments_of_other_protocols_pass_as_not_tcp(dp, reader, enforce):
    dp.maps.set_config(enforce=enforce)
    udp = bytes(UDP(sport=53, dport=25) / Raw(b"q" * 40))
    assert xdp(dp, frag4(udp[:16], 0, True, proto=17)) == XDP_PASS
    assert xdp(dp, frag4(udp[16:], 16, False, proto=17)) == XDP_PASS
    assert xdp(dp, frag6(udp[16:], 16, False, nh=17)) == XDP_PASS
    assert reader.poll(10) == []
    only(ingress(dp), not_tcp=3)


def test_an_atomic_ipv6_fragment_is_a_whole_packet(dp, reader):
    assert xdp(dp, smtp6(b"NOOP\r\n", ext=(IPv6ExtHdrFragment(offset=0, m=0),))) == XDP_PASS
    [ev] = reader.poll(100)
    assert ev.header.flags == 0 and ev.payload == b"NOOP\r\n"
    only(ingress(dp), pushed=1)


def test_an_ipv6_fragment_behind_other_extension_headers_is_a_fragment(dp, reader):
    ext = (IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt())
    data = tcp_bytes()
    assert xdp(dp, frag6(data[:16], 0, True, ext=ext)) == XDP_DROP
    only(ingress(dp), drop_frag=1)


SIX = (IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting(), IPv6ExtHdrDestOpt(),
       IPv6ExtHdrDestOpt(), IPv6ExtHdrDestOpt())


def test_six_extension_headers_are_followed(dp, reader):
    assert xdp(dp, smtp6(b"NOOP\r\n", ext=SIX)) == XDP_PASS
    [ev] = reader.poll(100)
    assert ev.payload == b"NOOP\r\n"
    only(ingress(dp), pushed=1)


def test_the_authentication_header_is_followed(dp, reader):
    from scapy.layers.ipsec import AH
    assert xdp(dp, smtp6(b"NOOP\r\n", ext=(AH(nh=6, payloadlen=4, spi=1, seq=1, icv=b"\0" * 12),))) == XDP_PASS
    [ev] = reader.poll(100)
    assert ev.payload == b"NOOP\r\n"


@pytest.mark.parametrize("enforce,verdict,counter", [(True, XDP_DROP, "drop_ext_limit"),
                                                     (False, XDP_PASS, "ext_limit")])
def test_more_extension_headers_than_followed_are_counted_and_dropped_in_prevention(
        dp, reader, enforce, verdict, counter):
    dp.maps.set_config(enforce=enforce)
    frame = smtp6(b"MAIL FROM:<spammer@suspicious.org>\r\n", ext=SIX + (IPv6ExtHdrDestOpt(),))
    assert xdp(dp, frame) == verdict
    assert reader.poll(10) == []
    only(ingress(dp), **{counter: 1})
    assert tc(dp, frame) == (TC_ACT_SHOT if enforce else TC_ACT_OK)


# ------------------------------------------------------------------ what `run --ebpf` prints

def without_map_fds(bytecode: bytes) -> bytes:
    """The instructions with the map fds of their 64-bit loads zeroed
    (BPF_PSEUDO_MAP_FD / _VALUE): two compiles get fds of their own."""
    code = bytearray(bytecode)
    for at in range(0, len(code), 8):
        if code[at] == 0x18 and code[at + 1] >> 4 in (1, 2):   # BPF_LD | BPF_DW | BPF_IMM
            code[at + 4:at + 8] = bytes(4)
    return bytes(code)


def test_the_printed_listing_compiles_to_the_loaded_programs_and_maps(dp):
    """The listing alone, without the -D flags, is what the datapath compiled:
    the same instructions, maps of the same layouts, the same pinned maps."""
    import bcc
    other = bcc.BPF(text=dp.listing().encode(), cflags=[f for f in dp.cflags() if not f.startswith("-D")])
    try:
        for name in (b"ss_xdp_ingress", b"ss_tc_egress"):
            assert without_map_fds(other.dump_func(name)) == without_map_fds(dp.bpf.dump_func(name))
        for name in (b"ss_events", b"ss_counters", b"ss_ports", b"ss_config",
                     b"ss_ban_v4", b"ss_ban_v6", b"ss_flow_drop", b"ss_bypass"):
            ours, theirs = bpfsys.map_info(dp.bpf[name].map_fd), bpfsys.map_info(other[name].map_fd)
            assert (theirs.type, theirs.key_size, theirs.value_size, theirs.max_entries) == \
                   (ours.type, ours.key_size, ours.value_size, ours.max_entries), name
            assert (theirs.id == ours.id) == name.startswith((b"ss_ban", b"ss_flow", b"ss_bypass")), name
    finally:
        other.cleanup()
