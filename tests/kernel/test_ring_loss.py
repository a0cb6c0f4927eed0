"""Events the ring refuses are counted per flow direction (ss_lost), and the
direction's next event carries the count (ss_event_hdr.lost): a small ring
filled by BPF_PROG_TEST_RUN, left unread."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from sensor.kernel import abi
from sensor.kernel.datapath import Datapath, DatapathConfig
from support.testrun import prog_test_run

CLIENT, SERVER = "198.51.100.7", "192.0.2.25"


def frame(sport: int = 40000, payload: bytes = b"x" * 100, seq: int = 1000) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=CLIENT, dst=SERVER)
                 / TCP(sport=sport, dport=25, flags="PA", seq=seq, ack=1) / Raw(payload))


@pytest.fixture(scope="module")
def small(kernel_prereqs, test_pin_root):
    """A datapath whose ring holds one page (a dozen small events)."""
    dp = Datapath(DatapathConfig(pin_dir=test_pin_root / "ring-loss" / f"v{abi.ABI_VERSION}",
                                 ring_pages=1)).load()
    reader = dp.event_reader(wake_batch=False)
    dp.maps.set_ports((25,))
    yield dp, reader
    dp.close()


@pytest.fixture
def dp(small):
    datapath, reader = small
    reader.poll(0)
    for table in (datapath.maps.lost_map, datapath.maps.ring_state_map, datapath.maps.counters_map,
                  datapath.maps.opened_map):
        table.clear()
    return datapath


def syn(sport: int) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=CLIENT, dst=SERVER)
                 / TCP(sport=sport, dport=25, flags="S", seq=999))


def fill(dp, reader, sport: int = 40000, opened: bool = True) -> int:
    """Push events of one flow (seen opening: its SYN first) until the ring
    refuses 5, of the smallest size class (so nothing else fits either);
    returns how many went in."""
    pushed = 0
    if opened:
        prog_test_run(dp.xdp_fd, syn(sport))
        pushed += 1
    while dp.maps.counters()["ingress"]["push_failed"] < 5:
        prog_test_run(dp.xdp_fd, frame(sport, payload=b"x", seq=1000 + pushed))
        pushed += 1
        assert pushed < 1000, "the ring never filled"
    return pushed - 5


def test_the_next_event_of_the_flow_carries_what_the_ring_refused(dp, small):
    reader = small[1]
    went_in = fill(dp, reader)
    events = reader.poll(0)
    assert len(events) == went_in and all(e.lost == 0 for e in events)
    dp.maps.relieve()                                  # read empty: as the live feed says
    prog_test_run(dp.xdp_fd, frame())
    [carrier] = reader.poll(0)
    assert carrier.lost == 5
    # carried once: the next event carries nothing, nothing is left to take
    prog_test_run(dp.xdp_fd, frame())
    [after] = reader.poll(0)
    assert after.lost == 0
    assert dp.maps.take_lost(abi.flow_key(CLIENT, 40000, SERVER, 25)) == 0


def test_losses_are_the_flow_directions_own(dp, small):
    reader = small[1]
    fill(dp, reader, sport=40001)
    reader.poll(0)
    dp.maps.relieve()
    prog_test_run(dp.xdp_fd, frame(sport=40002))       # another flow: nothing of the first's
    prog_test_run(dp.xdp_fd, frame(sport=40001))
    other, own = reader.poll(0)
    assert (other.header.sport, other.lost) == (40002, 0)
    assert (own.header.sport, own.lost) == (40001, 5)


def test_losses_no_event_carried_are_read_by_userland_once(dp, small):
    reader = small[1]
    fill(dp, reader, sport=40003)
    reader.poll(0)
    key = abi.flow_key(CLIENT, 40003, SERVER, 25)
    assert dp.maps.take_lost(key) == 5
    assert dp.maps.take_lost(key) == 0
    assert int(dp.maps.ring_state_map[abi.RING_PENDING].value) == 0   # pushes skip the lookup again
    dp.maps.relieve()
    prog_test_run(dp.xdp_fd, frame(sport=40003))
    [event] = reader.poll(0)
    assert event.lost == 0


def test_a_refused_opening_syn_is_marked_until_the_direction_is_seen_again(dp, small):
    reader = small[1]
    fill(dp, reader, sport=40004)
    prog_test_run(dp.xdp_fd, syn(40005))                      # refused: the ring is full
    key = abi.flow_key(CLIENT, 40005, SERVER, 25)
    assert dp.maps.lost_map[key].flags == abi.LOSS_SYN
    reader.poll(0)
    dp.maps.relieve()
    prog_test_run(dp.xdp_fd, frame(sport=40005))
    [event] = [e for e in reader.poll(0) if e.header.sport == 40005]
    assert event.lost == 1 and dp.maps.lost_map[key].flags == 0


def test_a_connection_whose_every_event_was_lost_leaves_a_record(dp, small):
    """The live feed's sweep of ss_lost: a connection the kernel saw open
    (its SYN refused) that userland never saw gets an EVENT_LOSS record;
    a mid-stream flow's losses are counted only."""
    import time

    from sensor.inputs.live import LiveFeed
    from sensor.pipeline import EVENT_LOSS, Pipeline
    from sensor.records.sinks import ListSink

    reader = small[1]
    fill(dp, reader, sport=40006, opened=False)               # mid-stream data, never followed:
    # its first refusal is noted, the next ones are shed (pressure, never seen opening)
    prog_test_run(dp.xdp_fd, syn(40007))                      # refused: the ring is full
    prog_test_run(dp.xdp_fd, frame(sport=40007))              # shed: not seen opening
    reader.poll(0)                                            # what was pushed is not fed
    sink = ListSink()
    pipeline = Pipeline(sink)
    feed = LiveFeed(reader, pipeline, dp.maps)
    feed.sweep_losses(time.monotonic())                       # too recent: judged later
    assert not sink
    feed.sweep_losses(time.monotonic() + 10)
    [rec] = sink
    assert (rec["name"], rec["layer"], rec["id.orig_p"], rec["id.resp_p"]) == (EVENT_LOSS, "sensor", 40007, 25)
    assert pipeline.counters.flows_never_seen == 1
    assert pipeline.counters.lost_unattributed == 1
    assert pipeline.counters.lost_events == 2
    assert dp.maps.counters()["ingress"]["shed"] == 5
    assert len(dp.maps.lost_map.items()) == 0
    from support.record_schemas import check
    check(rec)


def test_under_pressure_only_syn_and_fin_events_go_into_the_ring(dp, small):
    """Once the ring refused an event, and until userland read it empty, the
    room it frees goes to connections' beginnings and ends (and to
    connections seen opening: the next test)."""
    reader = small[1]
    fill(dp, reader, sport=40008)
    reader.poll(0)                                            # room again, pressure still on
    prog_test_run(dp.xdp_fd, frame(sport=40009))              # payload, never seen opening: shed
    prog_test_run(dp.xdp_fd, syn(40009))                      # SYN: pushed
    fin = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=CLIENT, dst=SERVER)
                / TCP(sport=40010, dport=25, flags="FA", seq=5, ack=1))
    rst = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=CLIENT, dst=SERVER)
                / TCP(sport=40011, dport=25, flags="R", seq=5))
    prog_test_run(dp.xdp_fd, fin)                             # FIN: pushed
    prog_test_run(dp.xdp_fd, rst)                             # a lone RST: refused, not noted
    got = [(e.header.sport, e.header.tcp_flags & 0x07) for e in reader.poll(0)]
    assert got == [(40009, abi.TCP_SYN), (40010, abi.TCP_FIN)]
    # what was shed is counted, not noted per flow
    assert dp.maps.take_lost(abi.flow_key(CLIENT, 40011, SERVER, 25)) == 0
    assert dp.maps.take_lost(abi.flow_key(CLIENT, 40009, SERVER, 25)) == 0
    assert dp.maps.counters()["ingress"]["shed"] == 2
    dp.maps.relieve()
    prog_test_run(dp.xdp_fd, frame(sport=40009))
    [event] = reader.poll(0)
    assert event.lost == 0 and event.payload


def test_a_reader_behind_frees_the_ring_a_batch_at_a_time(dp, small):
    """EventReader.max_records: a read stops there, the rest stays in the
    ring for the next one, and `drained` says when a read found it empty."""
    from sensor.kernel.ring import EventReader

    reader = small[1]
    went_in = fill(dp, reader, sport=40012)
    batched = EventReader(dp.bpf, max_records=4)
    try:
        sizes = []
        while True:
            events = batched.poll(0)
            sizes.append(len(events))
            if batched.drained:
                break
        assert sum(sizes) == went_in
        assert sizes[:-1] == [4] * (len(sizes) - 1) and sizes[-1] < 4
    finally:
        batched.close()


def test_under_pressure_a_connection_seen_opening_keeps_its_events(dp, small):
    reader = small[1]
    prog_test_run(dp.xdp_fd, syn(40013))                      # pushed: the connection is known
    fill(dp, reader, sport=40014)
    reader.poll(0)                                            # room again, pressure still on
    prog_test_run(dp.xdp_fd, frame(sport=40013))              # its data: pushed
    prog_test_run(dp.xdp_fd, frame(sport=40015))              # a flow never seen opening: refused
    server_reply = bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / IP(src=SERVER, dst=CLIENT)
                         / TCP(sport=25, dport=40013, flags="PA", seq=7, ack=1) / Raw(b"250 ok\r\n"))
    prog_test_run(dp.xdp_fd, server_reply)                    # the other direction: pushed too
    got = [(e.header.sport, e.header.dport) for e in reader.poll(0)]
    assert got == [(40013, 25), (25, 40013)]
    assert dp.maps.counters()["ingress"]["shed"] == 1
    dp.maps.relieve()


def test_the_ring_fill_is_what_waits_to_be_read(dp, small):
    _, reader = small
    assert reader.fill == 0.0
    prog_test_run(dp.xdp_fd, frame(41000))
    one = reader.fill
    assert 0.0 < one < 0.5                    # one small record in a page
    fill(dp, reader, sport=41001)
    assert reader.fill > 0.8                  # refused: (nearly) nothing more fits
    reader.poll(0)
    assert reader.fill == 0.0
