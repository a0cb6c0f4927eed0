"""The reassembly takes the receiver's view: what Linux discards (wrong
checksum, data without ACK, an RST not at rcv_nxt) changes nothing, the urgent
byte leaves the stream, and overlapping copies are kept by the target's policy."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from sensor.stream.direction import CLIENT
from sensor.stream.packet import ACK, FIN, PSH, RST, SYN, URG, checksum_ok, decode
from sensor.stream.reassembly import (
    ANOMALY_BAD_CHECKSUM,
    ANOMALY_NO_ACK,
    ANOMALY_OVERLAP,
    ANOMALY_RST_NOT_EXACT,
    ANOMALY_RST_OUT_OF_WINDOW,
    ANOMALY_URGENT,
    Data,
    FlowEnd,
    Reassembler,
    ReceiverPolicy,
    TcpAnomaly,
)

C4, S4 = "192.0.2.10", "198.51.100.25"
C6, S6 = "2001:db8::10", "2001:db8::25"
CISN, SISN = 1000, 5000


def frame(from_client, seq, payload=b"", flags=PSH | ACK, ack=None, urg=0, bad=False, v6=False):
    c, s = (C6, S6) if v6 else (C4, S4)
    src, dst, sp, dp = (c, s, 40000, 25) if from_client else (s, c, 25, 40000)
    if ack is None:
        ack = SISN + 1 if from_client else CISN + 1
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / TCP(sport=sp, dport=dp, seq=seq, ack=ack, flags=flags, urgptr=urg) / payload
    raw = bytearray(bytes(pkt))
    if bad:
        raw[14 + (40 if v6 else 20) + 16] ^= 0x01        # the TCP checksum, one bit off
    return decode(1, bytes(raw))


def handshake(r, v6=False):
    ev = r.feed(frame(True, CISN, flags=SYN, ack=0, v6=v6), 1.0)
    ev += r.feed(frame(False, SISN, flags=SYN | ACK, v6=v6), 1.0)
    ev += r.feed(frame(True, CISN + 1, flags=ACK, v6=v6), 1.0)
    return ev


def client_bytes(events):
    return b"".join(e.data for e in events if isinstance(e, Data) and e.direction == CLIENT)


def names(events):
    return [e.name for e in events if isinstance(e, TcpAnomaly)]


# ----------------------------------------------------------------- checksums
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("size", [0, 1, 2, 17, 1400])
def test_checksum_ok_agrees_with_scapy_for_right_and_wrong_segments(v6, size):
    payload = bytes(range(256)) * 6
    good = frame(True, CISN + 1, payload[:size], v6=v6)
    assert checksum_ok(good) is True
    assert checksum_ok(frame(True, CISN + 1, payload[:size], bad=True, v6=v6)) is False


def test_a_cut_frame_cannot_be_verified_and_is_not_called_bad():
    whole = frame(True, CISN + 1, b"MAIL FROM:<a@b.example>\r\n")
    cut = decode(1, whole.frame[:60], len(whole.frame))
    assert cut.cut and checksum_ok(cut) is None
    assert checksum_ok(whole._replace(l4=-1)) is None       # a segment built by hand


@pytest.mark.parametrize("mode", ["yes", "auto"])
def test_a_fake_copy_with_a_wrong_checksum_is_ignored_and_the_real_one_kept(mode):
    r = Reassembler(policy=ReceiverPolicy(checksums=mode))
    handshake(r)
    ev = r.feed(frame(True, CISN + 1, b"EHLO x\r\n"), 2)
    ev += r.feed(frame(True, CISN + 9, b"MAIL FROM:<friend@good.example>\r\n", bad=True), 3)
    ev += r.feed(frame(True, CISN + 9, b"MAIL FROM:<spammer@suspicious.org>\r\n"), 4)
    assert client_bytes(ev) == b"EHLO x\r\nMAIL FROM:<spammer@suspicious.org>\r\n"
    assert names(ev) == [ANOMALY_BAD_CHECKSUM] and r.counters.bad_checksum == 1


def test_an_rst_with_a_wrong_checksum_does_not_end_the_flow():
    r = Reassembler(policy=ReceiverPolicy(checksums="yes"))
    handshake(r)
    ev = r.feed(frame(True, CISN + 1, flags=RST | ACK, bad=True), 2)
    ev += r.feed(frame(True, CISN + 1, b"MAIL FROM:<spammer@suspicious.org>\r\n"), 3)
    assert not [e for e in ev if isinstance(e, FlowEnd)]
    assert client_bytes(ev) == b"MAIL FROM:<spammer@suspicious.org>\r\n"


def test_no_validation_keeps_what_the_capture_holds():
    r = Reassembler(policy=ReceiverPolicy(checksums="no"))
    handshake(r)
    ev = r.feed(frame(True, CISN + 1, b"EHLO x\r\n", bad=True), 2)
    assert client_bytes(ev) == b"EHLO x\r\n" and not names(ev)


def test_auto_takes_wrong_checksums_the_receiver_acknowledged_as_the_captures():
    """A capture made on the server before checksum offload: its data has
    wrong checksums, and the client acknowledges it."""
    r = Reassembler(policy=ReceiverPolicy(checksums="auto"))
    handshake(r)                                                   # right checksums, no data
    ev = r.feed(frame(False, SISN + 1, b"220 hi\r\n", bad=True), 2)
    ev += r.feed(frame(False, SISN + 9, b"250 ok\r\n", bad=True), 3)
    assert not [e for e in ev if isinstance(e, Data)]              # kept aside: nothing said yet
    ev += r.feed(frame(True, CISN + 1, b"EHLO x\r\n", ack=SISN + 17), 4)
    ev += r.feed(frame(True, CISN + 9, b"QUIT\r\n", bad=True), 5)  # the client's direction is verified
    server = [e for e in ev if isinstance(e, Data) and e.direction != CLIENT]
    assert b"".join(e.data for e in server) == b"220 hi\r\n250 ok\r\n" and server[0].ts == 2
    assert ev.index(server[0]) < ev.index(next(e for e in ev if isinstance(e, Data) and e.direction == CLIENT))
    assert client_bytes(ev) == b"EHLO x\r\n" and names(ev) == [ANOMALY_BAD_CHECKSUM]
    assert r.counters.checksum_offload == 1


def test_auto_a_fake_first_copy_with_a_wrong_checksum_is_still_ignored():
    """The replay of an attack: the wrong checksum comes first, then the real
    copy with a right one; the receiver's ACK covers the real one."""
    r = Reassembler(policy=ReceiverPolicy(checksums="auto"))
    handshake(r)
    ev = r.feed(frame(True, CISN + 1, b"MAIL FROM:<friend@good.example>\r\n", bad=True), 2)
    ev += r.feed(frame(True, CISN + 1, b"MAIL FROM:<spam@suspicious.org>\r\n"), 3)
    ev += r.feed(frame(True, CISN + 33, b"QUIT\r\n", bad=True), 4)
    ev += r.feed(frame(False, SISN + 1, flags=ACK, ack=CISN + 33), 5)
    assert client_bytes(ev) == b"MAIL FROM:<spam@suspicious.org>\r\n"
    assert names(ev) == [ANOMALY_BAD_CHECKSUM] * 2 and r.counters.checksum_offload == 0


def test_auto_at_the_end_of_a_one_sided_capture_what_was_kept_aside_is_the_stream():
    r = Reassembler(policy=ReceiverPolicy(checksums="auto"))
    handshake(r)
    ev = r.feed(frame(False, SISN + 1, b"220 hi\r\n", bad=True), 2)
    ev += r.flush_all(3)
    assert b"".join(e.data for e in ev if isinstance(e, Data)) == b"220 hi\r\n"


def test_a_segment_marked_unverifiable_is_not_verified():
    r = Reassembler(policy=ReceiverPolicy(checksums="yes"))
    handshake(r)
    ev = r.feed(frame(True, CISN + 1, b"EHLO x\r\n", bad=True), 2, verify=False)
    assert client_bytes(ev) == b"EHLO x\r\n"


# ----------------------------------------------------------------- data without ACK
def test_a_fake_copy_without_ack_is_ignored_and_the_real_one_kept():
    r = Reassembler()
    handshake(r)
    ev = r.feed(frame(True, CISN + 1, b"MAIL FROM:<friend@good.example>\r\n", flags=PSH), 2)
    ev += r.feed(frame(True, CISN + 1, b"MAIL FROM:<spammer@suspicious.org>\r\n"), 3)
    assert client_bytes(ev) == b"MAIL FROM:<spammer@suspicious.org>\r\n"
    assert names(ev) == [ANOMALY_NO_ACK] and r.counters.no_ack == 1


def test_a_fin_without_ack_does_not_close():
    r = Reassembler()
    handshake(r)
    r.feed(frame(True, CISN + 1, flags=FIN), 2)
    ev = r.feed(frame(False, SISN + 1, flags=FIN | ACK), 3)
    assert not [e for e in ev if isinstance(e, FlowEnd)]


# ----------------------------------------------------------------- RSTs
def test_an_rst_in_the_window_not_at_rcv_nxt_changes_nothing():
    r = Reassembler()
    handshake(r)
    ev = r.feed(frame(True, CISN + 1 + 100, flags=RST | ACK), 2)
    ev += r.feed(frame(True, CISN + 1, b"MAIL FROM:<spammer@suspicious.org>\r\n"), 3)
    assert not [e for e in ev if isinstance(e, FlowEnd)]
    assert names(ev) == [ANOMALY_RST_NOT_EXACT] and r.counters.rst_ignored == 1
    assert client_bytes(ev) == b"MAIL FROM:<spammer@suspicious.org>\r\n"


def test_an_rst_far_outside_the_window_is_named_so():
    r = Reassembler()
    handshake(r)
    assert names(r.feed(frame(True, CISN + 1 + (8 << 20), flags=RST), 2)) == [ANOMALY_RST_OUT_OF_WINDOW]


def test_an_rst_at_rcv_nxt_ends_the_flow_and_its_payload_is_not_read():
    r = Reassembler()
    handshake(r)
    ev = r.feed(frame(True, CISN + 1, b"QUIT\r\n", flags=RST | ACK), 2)
    assert [e.reason for e in ev if isinstance(e, FlowEnd)] == ["rst"] and client_bytes(ev) == b""


def test_an_rst_at_the_end_of_out_of_order_data_is_accepted_the_sack_case():
    r = Reassembler()
    handshake(r)
    r.feed(frame(True, CISN + 11, b"0123456789"), 2)               # a hole of 10 in front
    ev = r.feed(frame(True, CISN + 21, flags=RST), 3)
    assert [e.reason for e in ev if isinstance(e, FlowEnd)] == ["rst"]


def test_an_rst_after_a_fin_at_the_fin_or_just_after():
    for at in (0, 1):
        r = Reassembler()
        handshake(r)
        r.feed(frame(True, CISN + 1, b"QUIT\r\n", flags=PSH | ACK | FIN), 2)
        ev = r.feed(frame(True, CISN + 7 + at, flags=RST), 3)
        assert [e.reason for e in ev if isinstance(e, FlowEnd)] == ["rst"], at


# ----------------------------------------------------------------- urgent data
def test_the_urgent_byte_leaves_the_stream_as_linux_reads_it():
    r = Reassembler()
    handshake(r)
    data = b"MAIL FROM:<spammer@suspicXious.org>\r\n"
    ptr = data.index(b"X") + 1                                     # the byte before seq + pointer
    ev = r.feed(frame(True, CISN + 1, data, flags=PSH | ACK | URG, urg=ptr), 2)
    assert client_bytes(ev) == b"MAIL FROM:<spammer@suspicious.org>\r\n"
    assert names(ev) == [ANOMALY_URGENT] and r.counters.urgent_removed == 1
    assert r.position(*_client_dir(r)) == ((CISN + 1 + len(data)) & 0xFFFFFFFF, True)


def _client_dir(r):
    from sensor.stream.flowid import pack_addr
    return pack_addr(C4), 40000, pack_addr(S4), 25


def test_inline_keeps_the_urgent_byte():
    r = Reassembler(policy=ReceiverPolicy(urgent="inline"))
    handshake(r)
    ev = r.feed(frame(True, CISN + 1, b"abcXdef", flags=PSH | ACK | URG, urg=4), 2)
    assert client_bytes(ev) == b"abcXdef" and not names(ev)


def test_an_urgent_pointer_past_the_segment_takes_out_a_later_byte():
    r = Reassembler()
    handshake(r)
    ev = r.feed(frame(True, CISN + 1, b"abc", flags=PSH | ACK | URG, urg=5), 2)
    ev += r.feed(frame(True, CISN + 4, b"dXf"), 3)
    assert client_bytes(ev) == b"abcdf"


def test_a_later_urgent_mark_replaces_a_pending_one_whose_byte_then_stays():
    r = Reassembler()
    handshake(r)
    ev = r.feed(frame(True, CISN + 1, b"ab", flags=PSH | ACK | URG, urg=4), 2)   # marks 'd' (pos 3)
    ev += r.feed(frame(True, CISN + 3, b"c", flags=PSH | ACK | URG, urg=4), 3)   # marks pos 5
    ev += r.feed(frame(True, CISN + 4, b"defg"), 4)
    assert client_bytes(ev) == b"abcdeg"


def test_an_urgent_mark_before_what_was_received_is_ignored():
    r = Reassembler()
    handshake(r)
    ev = r.feed(frame(True, CISN + 1, b"abcd"), 2)
    ev += r.feed(frame(True, CISN + 1, b"abcd", flags=PSH | ACK | URG, urg=2), 3)   # retransmitted
    ev += r.feed(frame(True, CISN + 5, b"ef"), 4)
    assert client_bytes(ev) == b"abcdef" and ANOMALY_URGENT not in names(ev)


# ----------------------------------------------------------------- overlaps
REAL = b"MAIL FROM:<spammer@suspicious.org>\r\n"
FAKE = b"MAIL FROM:<friend@gooooood.org>\r\n"


def _out_of_order_then_covering(policy, fake_at, fake, real_at, real):
    r = Reassembler(policy=ReceiverPolicy(overlap=policy))
    handshake(r)
    r.feed(frame(True, CISN + 1, b"EHLO x\r\n"), 2)
    ev = r.feed(frame(True, CISN + 9 + fake_at, fake), 3)          # out of order: a hole before it
    ev += r.feed(frame(True, CISN + 9 + real_at, real), 4)
    return ev


@pytest.mark.parametrize("policy, kept", [("linux", REAL), ("bsd", REAL), ("windows", REAL),
                                          ("last", REAL), ("first", None)])
def test_a_fake_out_of_order_segment_then_the_real_one_covering_it(policy, kept):
    ev = _out_of_order_then_covering(policy, 11, FAKE[11:], 0, REAL)
    got = client_bytes(ev)
    assert got == (kept if kept else REAL[:11] + FAKE[11:] + REAL[len(FAKE):])
    assert ANOMALY_OVERLAP in names(ev)


@pytest.mark.parametrize("policy, new_wins", [("linux", True), ("bsd", False), ("windows", False),
                                              ("first", False), ("last", True)])
def test_the_same_start_and_longer_is_kept_by_linux_and_last_only(policy, new_wins):
    r = Reassembler(policy=ReceiverPolicy(overlap=policy))
    handshake(r)
    r.feed(frame(True, CISN + 11, b"fake"), 2)
    r.feed(frame(True, CISN + 11, b"real!!"), 3)
    ev = r.feed(frame(True, CISN + 1, b"0123456789"), 4)
    assert client_bytes(ev) == b"0123456789" + (b"real!!" if new_wins else b"fake!!")


@pytest.mark.parametrize("policy, new_wins", [("linux", False), ("bsd", False), ("first", False),
                                              ("last", True)])
def test_a_segment_starting_inside_a_buffered_one_keeps_the_old_bytes_but_for_last(policy, new_wins):
    r = Reassembler(policy=ReceiverPolicy(overlap=policy))
    handshake(r)
    r.feed(frame(True, CISN + 11, b"aaaa"), 2)
    r.feed(frame(True, CISN + 13, b"BBBB"), 3)
    ev = r.feed(frame(True, CISN + 1, b"0123456789"), 4)
    assert client_bytes(ev) == b"0123456789" + (b"aaBBBB" if new_wins else b"aaaaBB")


def test_linux_coalesces_adjacent_out_of_order_segments():
    """tcp_ooo_try_coalesce: 'bbbb' joins 'aaaa', so a copy starting where
    'bbbb' started now starts inside one buffered segment: the old bytes stay."""
    r = Reassembler()
    handshake(r)
    r.feed(frame(True, CISN + 11, b"aaaa"), 2)
    r.feed(frame(True, CISN + 15, b"bbbb"), 3)
    r.feed(frame(True, CISN + 15, b"XXXXXX"), 4)
    ev = r.feed(frame(True, CISN + 1, b"0123456789"), 5)
    assert client_bytes(ev) == b"0123456789aaaabbbbXX"


def test_delivered_bytes_never_change_whatever_the_policy():
    for policy in ("linux", "last"):
        r = Reassembler(policy=ReceiverPolicy(overlap=policy))
        handshake(r)
        ev = r.feed(frame(True, CISN + 1, REAL), 2)
        ev += r.feed(frame(True, CISN + 1, FAKE + b"more"), 3)
        assert client_bytes(ev).startswith(REAL) and ANOMALY_OVERLAP in names(ev)


@settings(max_examples=80, deadline=None)
@given(policy=st.sampled_from(["linux", "bsd", "windows", "first", "last"]),
       pieces=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 20), st.integers(0, 255)),
                       min_size=1, max_size=12))
def test_any_overlaps_deliver_every_position_once(policy, pieces):
    """Whatever overlaps and whatever the policy: each position is delivered
    once, from one of the copies that covered it."""
    r = Reassembler(policy=ReceiverPolicy(overlap=policy))
    handshake(r)
    ev = []
    covered = {}
    for i, (start, length, fill) in enumerate(pieces):
        ev += r.feed(frame(True, CISN + 1 + start, bytes([fill]) * length), 2 + i)
        for p in range(start, start + length):
            covered.setdefault(p, set()).add(fill)
    top = max(s + n for s, n, _ in pieces)
    ev += r.feed(frame(True, CISN + 1, b"\xff" * top), 99)
    covered = {p: v | {0xFF} for p, v in covered.items()}
    got = client_bytes(ev)
    assert len(got) == top
    assert all(got[p] in covered.get(p, {0xFF}) for p in range(top))


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=200), cuts=st.lists(st.integers(0, 250), max_size=8),
       fakes=st.lists(st.tuples(st.integers(0, 199), st.integers(1, 40), st.sampled_from(["checksum", "no ack",
                                                                                       "rst"])), max_size=6),
       mode=st.sampled_from(["yes", "auto"]), seed=st.integers(0, 1000))
def test_fakes_the_receiver_discards_never_reach_the_stream(data, cuts, fakes, mode, seed):
    """The real stream cut anyhow; before each real segment, maybe a fake the
    receiver discards (a wrong checksum, no ACK, an RST not at rcv_nxt): the
    stream is the real one, whatever the fakes hold."""
    import random
    rnd = random.Random(seed)
    pts = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    r = Reassembler(policy=ReceiverPolicy(checksums=mode))
    ev = handshake(r)
    ev += r.feed(frame(True, CISN + 1, data[:pts[1]]), 2)     # a right checksum first: verified
    pending = list(fakes)
    for i, (a, b) in enumerate(zip(pts[1:], pts[2:])):
        if pending and rnd.random() < 0.5:
            off, n, how = pending.pop()
            junk = bytes(rnd.randrange(256) for _ in range(n))
            if how == "checksum":
                ev += r.feed(frame(True, CISN + 1 + off, junk, bad=True), 3 + i)
            elif how == "no ack":
                ev += r.feed(frame(True, CISN + 1 + off, junk, flags=PSH), 3 + i)
            elif off + 1 != a:
                ev += r.feed(frame(True, CISN + 2 + off, flags=RST | ACK), 3 + i)
        ev += r.feed(frame(True, CISN + 1 + a, data[a:b]), 3 + i)
    ev += r.flush_all(99)
    assert client_bytes(ev) == data


def test_auto_never_takes_an_rst_with_a_wrong_checksum_on_trust():
    r = Reassembler(policy=ReceiverPolicy(checksums="auto"))
    handshake(r)                                                   # undecided: no data yet
    ev = r.feed(frame(True, CISN + 1, flags=RST | ACK, bad=True), 2)
    assert names(ev) == [ANOMALY_BAD_CHECKSUM] and not [e for e in ev if isinstance(e, FlowEnd)]
