"""sensor.stream.reassembly: segments in any order in, each direction's bytes exactly once out."""

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.inputs.pcapfile import read_packets
from sensor.stream.flowid import community_id, pack_addr
from sensor.stream.packet import ACK, FIN, PSH, RST, SYN, Segment, decode
from sensor.stream.reassembly import (
    ANOMALY_BUFFER_FULL,
    ANOMALY_ISN_CHANGED,
    ANOMALY_OVERLAP,
    Data,
    FlowEnd,
    FlowStart,
    Gap,
    Reassembler,
    ReassemblyLimits,
    ReceiverPolicy,
    TcpAnomaly,
)
from sensor.stream.direction import CLIENT, SERVER
from support.captures import PCAPS_DIR as PCAPS

CLI, SRV = pack_addr("192.0.2.10"), pack_addr("198.51.100.25")
CPORT, SPORT = 40000, 25
MASK = 0xFFFFFFFF


def seg(from_client, seq, payload=b"", flags=PSH | ACK, ack=0, wire=None, cport=CPORT):
    src, dst, sp, dp = (CLI, SRV, cport, SPORT) if from_client else (SRV, CLI, SPORT, cport)
    return Segment(4, src, dst, sp, dp, seq & MASK, ack & MASK, flags, payload,
                   len(payload) if wire is None else wire, 0)


def handshake(r, cisn=1000, sisn=5000, ts=1.0, cport=CPORT):
    ev = r.feed(seg(True, cisn, flags=SYN, cport=cport), ts)
    ev += r.feed(seg(False, sisn, flags=SYN | ACK, ack=cisn + 1, cport=cport), ts)
    ev += r.feed(seg(True, cisn + 1, flags=ACK, ack=sisn + 1, cport=cport), ts)
    return ev


def streams(events):
    """Per direction: the byte string with gaps as b'?' * n, plus the event kinds."""
    out = {CLIENT: b"", SERVER: b""}
    for e in events:
        if isinstance(e, Data):
            out[e.direction] += e.data
        elif isinstance(e, Gap):
            out[e.direction] += b"?" * e.length
    return out


def kinds(events):
    return [type(e).__name__ for e in events]


def test_handshake_data_and_fins():
    r = Reassembler()
    ev = handshake(r)
    ev += r.feed(seg(False, 5001, b"220 hi\r\n"), 2.0)
    ev += r.feed(seg(True, 1001, b"QUIT\r\n"), 3.0)
    ev += r.feed(seg(False, 5009, b"221 bye\r\n", flags=PSH | ACK | FIN), 4.0)
    ev += r.feed(seg(True, 1007, flags=FIN | ACK), 5.0)
    assert kinds(ev) == ["FlowStart", "Data", "Data", "Data", "FlowEnd"]
    start, end = ev[0], ev[-1]
    assert start.orig == ("192.0.2.10", CPORT) and start.resp == ("198.51.100.25", 25)
    assert start.uid.startswith("C") and start.ts == 1.0
    assert start.community_id == community_id(CLI, SRV, 6, CPORT, 25)
    assert not start.flow.partial
    assert [(e.direction, e.data, e.ts) for e in ev[1:4]] == [
        (SERVER, b"220 hi\r\n", 2.0), (CLIENT, b"QUIT\r\n", 3.0), (SERVER, b"221 bye\r\n", 4.0)]
    assert end.reason == "fin" and end.ts == 5.0 and end.flow is start.flow
    assert r.feed(seg(False, 5019, flags=ACK), 5.1) == []      # final ACK: ignored
    assert r.counters.after_close == 1 and not list(r.flows)


def test_out_of_order_is_buffered_then_delivered_in_order():
    r = Reassembler()
    handshake(r)
    assert r.feed(seg(True, 1006, b"world"), 2) == []
    ev = r.feed(seg(True, 1001, b"hello"), 3)
    assert [(e.data, e.ts) for e in ev] == [(b"helloworld", 3)]


def test_retransmission_is_not_delivered_twice():
    r = Reassembler()
    handshake(r)
    ev = r.feed(seg(True, 1001, b"abcdef"), 2)
    ev += r.feed(seg(True, 1001, b"abcdef"), 3)
    ev += r.feed(seg(True, 1004, b"defgh"), 4)
    assert streams(ev)[CLIENT] == b"abcdefgh"
    assert not [e for e in ev if isinstance(e, TcpAnomaly)]
    assert r.counters.retransmitted == 1


def test_overlap_with_different_bytes_first_data_wins_under_the_first_policy_and_is_reported():
    r = Reassembler(policy=ReceiverPolicy(overlap="first"))
    handshake(r)
    ev = r.feed(seg(True, 1005, b"EFGH"), 2)                  # buffered
    ev += r.feed(seg(True, 1001, b"ABCDxxGH"), 3)             # disagrees on 2 bytes
    assert streams(ev)[CLIENT] == b"ABCDEFGH"
    anomalies = [e for e in ev if isinstance(e, TcpAnomaly)]
    assert [a.name for a in anomalies] == [ANOMALY_OVERLAP]
    assert "client" in anomalies[0].detail


def test_retransmission_of_delivered_bytes_with_different_content_is_reported():
    r = Reassembler()
    handshake(r)
    ev = r.feed(seg(True, 1001, b"MAIL FROM:<a@b>\r\n"), 2)
    ev += r.feed(seg(True, 1001, b"MAIL FROM:<x@y>\r\n"), 3)
    assert streams(ev)[CLIENT] == b"MAIL FROM:<a@b>\r\n"
    assert [e.name for e in ev if isinstance(e, TcpAnomaly)] == [ANOMALY_OVERLAP]


def test_sequence_wrap_around():
    r = Reassembler()
    isn = MASK - 3
    handshake(r, cisn=isn)
    ev = r.feed(seg(True, isn + 1 + 6, b"GHIJ"), 2)           # wrapped past 2**32
    ev += r.feed(seg(True, isn + 1, b"ABCDEF"), 3)
    assert streams(ev)[CLIENT] == b"ABCDEFGHIJ"
    assert not [e for e in ev if isinstance(e, (Gap, TcpAnomaly))]


def test_mid_stream_pickup_guesses_the_originator_from_the_server_port():
    r = Reassembler()
    ev = r.feed(seg(False, 777, b"250 OK\r\n"), 1)            # server talks first
    ev += r.feed(seg(True, 99, b"RCPT TO:<a@b>\r\n"), 2)
    assert kinds(ev) == ["FlowStart", "Data", "Data"]
    assert ev[0].flow.partial and ev[0].orig == ("192.0.2.10", CPORT)
    assert [(e.direction, e.data) for e in ev[1:]] == [(SERVER, b"250 OK\r\n"),
                                                        (CLIENT, b"RCPT TO:<a@b>\r\n")]


def test_pure_acks_and_lone_rst_do_not_create_flows():
    r = Reassembler()
    assert r.feed(seg(True, 1, flags=ACK), 1) == []
    assert r.feed(seg(True, 1, flags=RST), 1) == []
    assert r.feed(seg(True, 1, flags=FIN | ACK), 1) == []
    assert r.counters.no_flow == 3


def test_flows_without_a_tracked_port_are_ignored_unless_asked():
    s = Segment(4, CLI, SRV, 5555, 80, 1, 0, PSH | ACK, b"GET /", 5, 0)
    assert Reassembler().feed(s, 1) == []
    ev = Reassembler(only_ports=False).feed(s, 1)
    assert kinds(ev) == ["FlowStart", "Data"] and ev[0].orig[1] == 5555


def test_ports_are_configurable():
    r = Reassembler(ports={2525})
    assert r.feed(seg(True, 1, b"x"), 1) == []
    ev = r.feed(seg(False, 1, b"220 x\r\n", cport=2525), 1)    # 25 -> 2525: 2525 is the server
    assert ev[0].resp[1] == 2525


def test_cut_segment_delivers_a_gap_for_the_missing_tail():
    r = Reassembler()
    handshake(r)
    ev = r.feed(seg(True, 1001, b"DATA", wire=10), 2)
    ev += r.feed(seg(True, 1011, b"more"), 3)
    assert [(type(e).__name__, getattr(e, "data", None) or getattr(e, "length", None))
            for e in ev] == [("Data", b"DATA"), ("Gap", 6), ("Data", b"more")]


def test_rst_flushes_contiguous_then_gap_then_buffered():
    r = Reassembler()
    handshake(r)
    ev = r.feed(seg(True, 1001, b"abc"), 2)
    ev += r.feed(seg(True, 1010, b"xyz"), 3)                  # hole of 6 bytes
    ev += r.feed(seg(False, 5001, flags=RST | ACK), 4)
    assert kinds(ev) == ["Data", "Gap", "Data", "FlowEnd"]
    assert ev[1].length == 6 and ev[2].data == b"xyz" and ev[3].reason == "rst"


def test_fin_with_a_hole_waits_then_closes_with_a_gap():
    r = Reassembler(limits=ReassemblyLimits(close_timeout=5, ack_gaps=False))
    handshake(r)
    ev = r.feed(seg(True, 1001, b"abc"), 2)
    ev += r.feed(seg(True, 1010, b"xyz", flags=FIN | ACK), 3)
    ev += r.feed(seg(False, 5001, flags=FIN | ACK, ack=1014), 3)
    assert kinds(ev) == ["Data"]                             # waiting for the hole
    assert r.expire(7.9) == []
    ev = r.expire(8.0)
    assert kinds(ev) == ["Gap", "Data", "FlowEnd"] and ev[-1].reason == "fin"


def test_fin_with_a_hole_filled_late_closes_normally():
    r = Reassembler(limits=ReassemblyLimits(ack_gaps=False))
    handshake(r)
    ev = r.feed(seg(True, 1004, b"def", flags=FIN | ACK), 2)
    ev += r.feed(seg(False, 5001, flags=FIN | ACK), 2)
    ev += r.feed(seg(True, 1001, b"abc"), 3)
    assert kinds(ev) == ["Data", "FlowEnd"] and ev[0].data == b"abcdef"


def test_idle_timeout():
    r = Reassembler(limits=ReassemblyLimits(idle_timeout=60))
    handshake(r, ts=100)
    r.feed(seg(True, 1001, b"x"), 110)
    r.feed(seg(True, 1003, b"z"), 111)                       # 1-byte hole
    assert r.expire(170) == []
    ev = r.expire(171)
    assert kinds(ev) == ["Gap", "Data", "FlowEnd"]
    assert ev[-1].reason == "timeout" and ev[-1].ts == 171


def test_flush_all_ends_every_flow():
    r = Reassembler()
    handshake(r)
    handshake(r, cport=40001)
    r.feed(seg(True, 1001, b"x"), 2)
    ev = r.flush_all(9)
    assert kinds(ev) == ["FlowEnd", "FlowEnd"] and {e.reason for e in ev} == {"flush"}
    assert not list(r.flows)


def test_per_flow_buffer_cap_forces_a_gap():
    r = Reassembler(limits=ReassemblyLimits(flow_buffer=100, ack_gaps=False))
    handshake(r)
    ev = r.feed(seg(True, 1011, b"a" * 60), 2)
    ev += r.feed(seg(True, 1071, b"b" * 60), 3)               # 120 buffered > 100
    assert kinds(ev) == ["TcpAnomaly", "Gap", "Data"]
    assert ev[0].name == ANOMALY_BUFFER_FULL and ev[1].length == 10
    assert ev[2].data == b"a" * 60 + b"b" * 60
    assert r.buffered == 0


def test_global_buffer_cap_forces_a_gap():
    r = Reassembler(limits=ReassemblyLimits(global_buffer=100, ack_gaps=False))
    handshake(r)
    handshake(r, cport=40001)
    r.feed(seg(True, 1011, b"a" * 60), 2)
    ev = r.feed(seg(True, 1011, b"b" * 60, cport=40001), 3)
    assert kinds(ev) == ["TcpAnomaly", "Gap", "Data"] and ev[2].data == b"b" * 60
    assert r.buffered == 60


def test_chunk_cap_forces_a_gap():
    r = Reassembler(limits=ReassemblyLimits(max_chunks=3, ack_gaps=False))
    handshake(r)
    ev = []
    for i in range(4):
        ev += r.feed(seg(True, 1003 + 2 * i, b"x"), 2)
    assert "Gap" in kinds(ev) and ANOMALY_BUFFER_FULL in [e.name for e in ev
                                                          if isinstance(e, TcpAnomaly)]


def test_ack_past_a_hole_with_data_behind_it_is_capture_loss():
    r = Reassembler()
    handshake(r)
    ev = r.feed(seg(True, 1001, b"abc"), 2)
    ev += r.feed(seg(True, 1010, b"xyz"), 3)                  # hole 1004..1009
    assert kinds(ev) == ["Data"]
    ev = r.feed(seg(False, 5001, flags=ACK, ack=1013), 4)     # server got it all
    assert kinds(ev) == []             # maybe only reordered across directions: wait
    ev = r.feed(seg(False, 5001, flags=ACK, ack=1013), 4.1)
    assert kinds(ev) == []             # still within ack_gap_delay (0.2 s)
    ev = r.feed(seg(False, 5001, flags=ACK, ack=1013), 4.25)
    assert kinds(ev) == ["Gap", "Data"] and ev[0].length == 6 and r.counters.ack_gaps == 1


def test_hole_filled_within_the_ack_gap_delay_is_no_gap():
    r = Reassembler()
    handshake(r)
    ev = r.feed(seg(True, 1001, b"abc"), 2)
    ev += r.feed(seg(True, 1010, b"xyz"), 3)
    ev += r.feed(seg(False, 5001, flags=ACK, ack=1013), 3.0)  # the ACK overtook the data
    ev += r.feed(seg(True, 1004, b"123456"), 3.01)
    ev += r.feed(seg(False, 5001, flags=ACK, ack=1013), 3.5)
    assert "Gap" not in kinds(ev) and r.counters.ack_gaps == 0
    assert b"".join(e.data for e in ev if isinstance(e, Data)) == b"abc123456xyz"


def test_ack_gap_delay_zero_makes_the_gap_at_once():
    r = Reassembler(limits=ReassemblyLimits(ack_gap_delay=0))
    handshake(r)
    r.feed(seg(True, 1001, b"abc"), 2)
    r.feed(seg(True, 1010, b"xyz"), 3)
    ev = r.feed(seg(False, 5001, flags=ACK, ack=1013), 4)
    assert kinds(ev) == ["Gap", "Data"]


def test_new_syn_after_close_is_a_new_flow():
    r = Reassembler()
    ev = handshake(r)
    ev += r.feed(seg(True, 1001, flags=RST), 2)
    ev += handshake(r, cisn=90000, ts=3)
    starts = [e for e in ev if isinstance(e, FlowStart)]
    assert len(starts) == 2 and starts[0].uid != starts[1].uid


def test_syn_with_new_isn_on_a_busy_flow_ends_it_as_reused():
    r = Reassembler()
    handshake(r)
    r.feed(seg(True, 1001, b"HELO x\r\n"), 2)
    ev = r.feed(seg(True, 70000, flags=SYN), 3)
    assert kinds(ev) == ["FlowEnd", "FlowStart"] and ev[0].reason == "reused"


def test_syn_with_new_isn_before_any_data_replaces_the_isn():
    r = Reassembler()
    r.feed(seg(True, 1000, flags=SYN), 1)
    ev = r.feed(seg(True, 3000, flags=SYN), 2)
    ev += r.feed(seg(True, 3001, b"hi"), 3)
    assert [e.name for e in ev if isinstance(e, TcpAnomaly)] == [ANOMALY_ISN_CHANGED]
    assert streams(ev)[CLIENT] == b"hi"


def test_flow_cap_evicts_the_oldest():
    r = Reassembler(limits=ReassemblyLimits(max_flows=2))
    ev = []
    for p in (40001, 40002, 40003):
        ev += handshake(r, cport=p)
    ends = [e for e in ev if isinstance(e, FlowEnd)]
    assert [(e.reason, e.flow.orig_p) for e in ends] == [("evicted", 40001)]
    assert len(list(r.flows)) == 2


def test_syn_payload_starts_the_stream():
    r = Reassembler()
    ev = r.feed(seg(True, 10, b"EHLO", flags=SYN), 1)
    assert streams(ev)[CLIENT] == b"EHLO"


def test_uids_are_reproducible_with_a_seed():
    def run(seed):
        r = Reassembler(uid_seed=seed)
        return [e.uid for e in handshake(r) if isinstance(e, FlowStart)]
    assert run(7) == run(7) != run(8)


# ----------------------------------------------------------------- real captures
def replay(path, **kw):
    r = Reassembler(**kw)
    ev = []
    for ts, lt, fr, wl in read_packets(path):
        s = decode(lt, fr, wl)
        if s is not None:
            ev += r.feed(s, ts)
    return ev + r.flush_all()


def by_flow(events):
    flows = {}
    for e in events:
        flows.setdefault(e.flow.uid, []).append(e)
    return flows


def test_haka_capture_one_smtp_flow_client_starts_with_helo():
    ev = replay(PCAPS / "haka__smtp.pcap")
    flows = by_flow(ev)
    assert len(flows) == 1
    (fev,) = flows.values()
    start, end = fev[0], fev[-1]
    assert isinstance(start, FlowStart) and start.resp == ("192.168.20.1", 25)
    assert start.orig == ("192.168.10.10", 41155) and not start.flow.partial
    s = streams(fev)
    assert s[CLIENT].startswith(b"HELO some_domain\n")
    assert s[CLIENT].endswith(b"QUIT\n") and b"MAIL FROM: hacker@suspicious.org\n" in s[CLIENT]
    assert s[SERVER].startswith(b"220 ") and s[SERVER].endswith(b"221 2.0.0 Bye\r\n")
    assert end.reason == "fin"
    assert not [e for e in fev if isinstance(e, (Gap, TcpAnomaly))]


def test_ndpi_starttls_capture_ipv6_flow_has_a_capture_loss_gap():
    flows = by_flow(replay(PCAPS / "ndpi__smtp-starttls.pcap"))
    assert len(flows) == 2
    v6 = [f for f in flows.values() if f[0].flow.family == 6][0]
    assert [e.length for e in v6 if isinstance(e, Gap)] == [5760]      # 4 lost segments
    assert streams(v6)[CLIENT].startswith(b"EHLO [IPv6:")
    assert v6[-1].reason == "rst"


def test_port_587_capture_is_tracked():
    flows = by_flow(replay(PCAPS / "arkime__smtp-data-250.pcap"))
    assert len(flows) == 1
    (fev,) = flows.values()
    assert fev[0].resp[1] == 587 and streams(fev)[SERVER].startswith(b"220")


def test_client_first_capture_keeps_both_directions():
    flows = by_flow(replay(PCAPS / "arkime__smtp-moloch-bof.pcap"))
    (fev,) = flows.values()
    s = streams(fev)
    assert s[CLIENT].startswith(b"HELO ADCDTEST\r\n") and s[SERVER].startswith(b"220 ")


@pytest.mark.parametrize("path", sorted(PCAPS.glob("*.pcap")), ids=lambda p: p.name)
def test_every_shared_capture_gives_well_formed_flows(path):
    for fev in by_flow(replay(path, only_ports=False)).values():
        assert isinstance(fev[0], FlowStart) and isinstance(fev[-1], FlowEnd)
        assert sum(isinstance(e, (FlowStart, FlowEnd)) for e in fev) == 2
        fl = fev[0].flow
        for d, stm in ((CLIENT, fl.orig), (SERVER, fl.resp)):
            got = streams(fev)[d]
            assert len(got) == stm.pos == stm.delivered + stm.gaps


# ----------------------------------------------------------------- hypothesis
def cut(data, cuts):
    pts = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [(a, data[a:b]) for a, b in zip(pts, pts[1:])]


@settings(max_examples=120, deadline=None)
@given(
    client=st.binary(min_size=1, max_size=300),
    server=st.binary(min_size=1, max_size=300),
    ccuts=st.lists(st.integers(0, 400), max_size=12),
    scuts=st.lists(st.integers(0, 400), max_size=12),
    cisn=st.one_of(st.integers(0, MASK), st.integers(MASK - 400, MASK)),
    sisn=st.one_of(st.integers(0, MASK), st.integers(MASK - 400, MASK)),
    seed=st.integers(0, 2**32),
    fins=st.booleans(),
)
def test_any_segmentation_order_and_duplication_gives_the_original_streams(
        client, server, ccuts, scuts, cisn, sisn, seed, fins):
    rnd = random.Random(seed)
    segs = []
    for from_client, data, isn, cuts, ack in ((True, client, cisn, ccuts, sisn + 1),
                                              (False, server, sisn, scuts, cisn + 1)):
        pieces = cut(data, cuts)
        for off, piece in pieces:
            segs.append(seg(from_client, isn + 1 + off, piece, flags=PSH | ACK, ack=ack))
            r = rnd.random()
            if r < 0.3:                                  # duplicate
                segs.append(seg(from_client, isn + 1 + off, piece, flags=PSH | ACK, ack=ack))
            elif r < 0.5:                                # overlapping retransmission, same bytes
                a = rnd.randrange(len(data))
                b = rnd.randrange(a, len(data)) + 1
                segs.append(seg(from_client, isn + 1 + a, data[a:b], flags=PSH | ACK, ack=ack))
    if fins:                                             # FINs may overtake data too
        segs.append(seg(True, cisn + 1 + len(client), flags=FIN | ACK, ack=sisn + 1))
        segs.append(seg(False, sisn + 1 + len(server), flags=FIN | ACK, ack=cisn + 1))
    rnd.shuffle(segs)
    r = Reassembler()
    ev = r.feed(seg(True, cisn, flags=SYN), 0)
    ev += r.feed(seg(False, sisn, flags=SYN | ACK, ack=cisn + 1), 0)
    for i, s in enumerate(segs):
        ev += r.feed(s, 1 + i)
    if not fins:
        ev += r.flush_all(999)
    assert streams(ev) == {CLIENT: client, SERVER: server}
    assert not [e for e in ev if isinstance(e, (Gap, TcpAnomaly))]
    assert kinds(ev)[0] == "FlowStart" and kinds(ev)[-1] == "FlowEnd"
    assert ev[-1].reason == ("fin" if fins else "flush")
    assert r.buffered == 0


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=1, max_size=200), cuts=st.lists(st.integers(0, 250), max_size=8),
       lost=st.sets(st.integers(0, 8), max_size=3), isn=st.integers(MASK - 300, MASK),
       seed=st.integers(0, 1000))
def test_lost_segments_become_gaps_of_the_right_length(data, cuts, lost, isn, seed):
    pieces = cut(data, cuts)
    kept = [p for i, p in enumerate(pieces) if i not in lost]
    random.Random(seed).shuffle(kept)
    r = Reassembler()
    ev = r.feed(seg(True, isn, flags=SYN), 0)
    for off, piece in kept:
        ev += r.feed(seg(True, isn + 1 + off, piece, flags=PSH | ACK), 1)
    ev += r.feed(seg(True, isn + 1 + len(data), flags=FIN | ACK), 2)
    ev += r.feed(seg(False, 7, flags=FIN | ACK), 2)
    ev += r.flush_all(3)
    expect = bytearray(data)
    for i, (off, piece) in enumerate(pieces):
        if i in lost:
            expect[off:off + len(piece)] = b"?" * len(piece)
    assert streams(ev)[CLIENT] == bytes(expect)


def test_rst_far_outside_the_window_is_ignored_and_reported():
    r = Reassembler()
    handshake(r)
    ev = r.feed(seg(False, 5001 + (50 << 20), flags=RST), 2)
    assert kinds(ev) == ["TcpAnomaly"] and ev[0].name == "TCP_RST_OUT_OF_WINDOW"
    ev = r.feed(seg(True, 1001, b"still here"), 3)
    assert streams(ev)[CLIENT] == b"still here"


def test_rst_answering_a_syn_ends_the_flow():
    r = Reassembler()
    r.feed(seg(True, 1000, flags=SYN), 1)
    ev = r.feed(seg(False, 0, flags=RST | ACK, ack=1001), 1)
    assert kinds(ev) == ["FlowEnd"] and ev[0].reason == "rst"


def test_flow_ended_by_timeout_is_picked_up_again_when_it_talks():
    r = Reassembler(limits=ReassemblyLimits(idle_timeout=10))
    handshake(r)
    r.feed(seg(True, 1001, b"NOOP\r\n"), 2)
    assert kinds(r.expire(100)) == ["FlowEnd"]
    ev = r.feed(seg(True, 1007, b"QUIT\r\n"), 101)
    assert kinds(ev) == ["FlowStart", "Data"] and ev[0].flow.partial


def test_bench_script_runs_end_to_end():
    import subprocess
    import sys
    bench = Path(__file__).resolve().parents[2] / "bench" / "bench_decode.py"
    res = subprocess.run([sys.executable, str(bench), "--sessions", "12", "--body", "3000",
                          "--repeat", "1"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "read + decode + reassembly" in res.stdout and "packets/s" in res.stdout
