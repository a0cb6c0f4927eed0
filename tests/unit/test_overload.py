"""Overload leaves nothing unsaid (issue 12 section 3): events the kernel's
ring lost are said in the flow's records, the flow table evicts by
inactivity and says so, and anomaly records are bounded per connection."""

from __future__ import annotations

import json

from sensor.pipeline import ANOMALIES_SUPPRESSED, EVENT_LOSS, FLOW_EVICTED, Pipeline
from sensor.records.sinks import ListSink
from sensor.smtp import SmtpLimits
from sensor.stream.flowid import pack_addr
from sensor.stream.packet import ACK, PSH, Segment
from sensor.stream.reassembly import Reassembler, ReassemblyLimits
from support.record_schemas import check as validate
from support.sessions import DIALOGUE, session_segments


def feed(pipe, segs, t0=100.0, lost=None):
    """Segments through Pipeline.feed_frame's loss path: ``lost`` maps a
    segment index to the events lost before it."""
    lost = lost or {}
    for i, seg in enumerate(segs):
        ts = t0 + i * 0.001
        events = pipe.reassembler.feed(seg, ts)
        if i in lost:
            pipe._lost(seg, events, lost[i])
        pipe._handle(events)


def anomalies(sink, name):
    return [r for r in sink.of("anomaly") if r["name"] == name]


# ------------------------------------------------------------------ ring losses

def test_a_flow_whose_events_were_lost_says_so_in_its_records():
    sink = ListSink()
    pipe = Pipeline(sink)
    segs = session_segments(DIALOGUE)
    # the segment carrying the RCPTs and DATA is lost; the next one carries the count
    lost_at = next(i for i, s in enumerate(segs) if s.payload.startswith(b"MAIL"))
    carrier = lost_at + 1
    feed(pipe, segs[:lost_at] + segs[lost_at + 1:], lost={carrier - 1: 1})
    pipe.finish()
    [loss] = anomalies(sink, EVENT_LOSS)
    assert loss["layer"] == "sensor" and loss["uid"] == sink.of("smtp")[0]["uid"]
    [rec] = sink.of("smtp")
    assert rec["lost_events"] == 1 and rec["gap_bytes"] > 0
    for r in sink:
        validate(r)
    assert pipe.counters.lost_events == 1 and pipe.counters.flows_with_loss == 1


def test_losses_no_event_carried_are_read_when_the_flow_ends():
    sink = ListSink()
    pipe = Pipeline(sink)
    asked = []

    def lookup(flow):
        asked.append(flow.uid)
        return 3                     # e.g. the flow's FINs, refused by the ring

    pipe.loss_lookup = lookup
    feed(pipe, session_segments(DIALOGUE))
    [loss] = anomalies(sink, EVENT_LOSS)
    assert "3 event(s)" in loss["detail"] and asked == [loss["uid"]]
    # the smtp record was written at the end of DATA, before the flow ended:
    # only what the flow lost before a record is in it
    assert "lost_events" not in sink.of("smtp")[0]


def test_a_loss_carried_by_the_segment_that_ends_the_flow_is_counted_in_it():
    sink = ListSink()
    pipe = Pipeline(sink)
    segs = session_segments(DIALOGUE)
    feed(pipe, segs, lost={len(segs) - 1: 2})     # the last FIN carries the loss
    [loss] = anomalies(sink, EVENT_LOSS)
    assert "2 event(s)" in loss["detail"]


def test_a_flow_whose_syn_was_lost_is_picked_up_partial_and_says_it_lost_events():
    sink = ListSink()
    pipe = Pipeline(sink)
    segs = session_segments(DIALOGUE)[1:]           # the client's SYN is gone
    feed(pipe, segs, lost={0: 0, 1: 1})
    pipe.finish()
    assert len(sink.of("smtp")) == 1
    assert len(anomalies(sink, EVENT_LOSS)) == 1


def test_a_loss_without_a_followed_flow_is_counted_apart():
    pipe = Pipeline(ListSink())
    lone = Segment(4, pack_addr("192.0.2.10"), pack_addr("198.51.100.25"), 40000, 25, 1, 1, ACK, b"", 0, 0)
    feed(pipe, [lone], lost={0: 4})
    assert pipe.counters.lost_unattributed == 4


# ------------------------------------------------------------------ eviction

def _data(cport, seq=1, payload=b"EHLO x\r\n"):
    return Segment(4, pack_addr("192.0.2.10"), pack_addr("198.51.100.25"), cport, 25, seq, 1,
                   PSH | ACK, payload, len(payload), 0)


def test_the_flow_table_evicts_the_least_recently_active_flow():
    r = Reassembler(limits=ReassemblyLimits(max_flows=2))
    r.feed(_data(1001), 1.0)
    r.feed(_data(1002), 2.0)
    r.feed(_data(1001, seq=9), 3.0)                 # the first flow is active again
    out = r.feed(_data(1003), 4.0)
    [end] = [e for e in out if type(e).__name__ == "FlowEnd"]
    assert (end.reason, end.flow.orig_p) == ("evicted", 1002)
    assert r.counters.flows_evicted == 1
    assert sorted(f.orig_p for f in r.flows) == [1001, 1003]


def test_an_evicted_flow_says_so_in_its_records():
    sink = ListSink()
    pipe = Pipeline(sink, reassembly_limits=ReassemblyLimits(max_flows=1))
    feed(pipe, session_segments(DIALOGUE, cport=41000)[:6])
    feed(pipe, session_segments(DIALOGUE, cport=41001)[:3], t0=200.0)
    [evicted] = anomalies(sink, FLOW_EVICTED)
    assert evicted["id.orig_p"] == 41000
    validate(evicted)


# ------------------------------------------------------------------ anomaly bound

def rcpt_before_mail_capture(path, rcpts: int) -> int:
    """A capture (scapy) of one session sending ``rcpts`` RCPT before any
    MAIL, each refused; returns its size."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import wrpcap

    cli, srv, cport = "192.0.2.10", "198.51.100.25", 40123
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    c, s = 1000, 7000
    pkts = [eth / IP(src=cli, dst=srv) / TCP(sport=cport, dport=25, flags="S", seq=c),
            eth / IP(src=srv, dst=cli) / TCP(sport=25, dport=cport, flags="SA", seq=s, ack=c + 1)]
    c, s = c + 1, s + 1

    def say(from_client, data):
        nonlocal c, s
        if from_client:
            pkts.append(eth / IP(src=cli, dst=srv) / TCP(sport=cport, dport=25, flags="PA", seq=c, ack=s) / data)
            c += len(data)
        else:
            pkts.append(eth / IP(src=srv, dst=cli) / TCP(sport=25, dport=cport, flags="PA", seq=s, ack=c) / data)
            s += len(data)

    say(False, b"220 mx.example ESMTP\r\n")
    say(True, b"EHLO spammer.example\r\n")
    say(False, b"250-mx.example\r\n250 PIPELINING\r\n")
    batch = 20
    for i in range(0, rcpts, batch):
        n = min(batch, rcpts - i)
        say(True, b"".join(b"RCPT TO:<user%d@victim.example>\r\n" % (i + k) for k in range(n)))
        say(False, b"503 5.5.1 Error: need MAIL command\r\n" * n)
    say(True, b"QUIT\r\n")
    say(False, b"221 bye\r\n")
    wrpcap(str(path), pkts)
    return path.stat().st_size


def replay_records(capture):
    from sensor.assembly import Userland
    from sensor.config import Config
    from sensor.inputs.replay import replay

    sink = ListSink()
    replay(capture, Userland(Config(), sink))
    return sink


def test_a_flood_of_rcpt_before_mail_writes_a_bounded_number_of_anomaly_records(tmp_path):
    rcpts = 3000
    rcpt_before_mail_capture(tmp_path / "a.pcap", rcpts)
    sink = replay_records(tmp_path / "a.pcap")
    bound = SmtpLimits().anomalies_per_name
    names = {}
    for r in sink.of("anomaly"):
        names[r["name"]] = names.get(r["name"], 0) + 1
    assert names["RCPT_BEFORE_MAIL"] == bound
    [summary] = [r for r in anomalies(sink, ANOMALIES_SUPPRESSED) if r["suppressed_name"] == "RCPT_BEFORE_MAIL"]
    assert summary["suppressed_count"] == rcpts - bound
    assert all(n <= bound for name, n in names.items() if name != ANOMALIES_SUPPRESSED)
    # the transaction keeps transaction_steps of its steps and addresses, and counts the rest
    [rec] = sink.of("smtp")
    kept = SmtpLimits().transaction_steps
    assert (len(rec["steps"]), rec["steps_omitted"]) == (kept, rcpts - kept)
    assert (len(rec["rcptto"]), rec["rcptto_omitted"]) == (kept, rcpts - kept)
    for r in sink:
        validate(r)


def test_the_records_of_a_rcpt_flood_do_not_grow_with_it(tmp_path):
    small = rcpt_before_mail_capture(tmp_path / "small.pcap", 1500)
    large = rcpt_before_mail_capture(tmp_path / "large.pcap", 3000)
    assert large > 1.9 * small

    def written(capture):
        return sum(len(json.dumps(r)) for r in replay_records(capture))

    # the same records but for the counts in them (a few digits)
    assert abs(written(tmp_path / "large.pcap") - written(tmp_path / "small.pcap")) < 100


def test_the_bound_is_per_connection_and_configurable():
    sink = ListSink()
    pipe = Pipeline(sink, smtp_limits=SmtpLimits(anomalies_per_name=2))
    dialogue = [(False, b"220 mx ESMTP\r\n"), (True, b"EHLO c\r\n"), (False, b"250 mx\r\n")]
    dialogue += [(True, b"RCPT TO:<a@b.example>\r\n"), (False, b"503 need MAIL\r\n")] * 5
    for n, cport in enumerate((42000, 42001)):
        feed(pipe, session_segments(dialogue, cport=cport), t0=100.0 + n)
    per_flow = {}
    for r in anomalies(sink, "RCPT_BEFORE_MAIL"):
        per_flow[r["id.orig_p"]] = per_flow.get(r["id.orig_p"], 0) + 1
    assert per_flow == {42000: 2, 42001: 2}
    assert [r["suppressed_count"] for r in anomalies(sink, ANOMALIES_SUPPRESSED)] == [3, 3]
    assert pipe.counters.anomalies_suppressed == 6


def test_evictions_and_losses_are_in_status_and_the_metrics():
    from types import SimpleNamespace

    from sensor.assembly import Userland
    from sensor.config import Config, LimitsConfig
    from sensor.counters import as_tree
    from support.prereqs import require_module

    sink = ListSink()
    userland = Userland(Config(limits=LimitsConfig(reassembly=ReassemblyLimits(max_flows=1))), sink)
    pipe = userland.pipeline
    feed(pipe, session_segments(DIALOGUE, cport=41000)[:6], lost={5: 2})
    feed(pipe, session_segments(DIALOGUE, cport=41001)[:3], t0=200.0)
    tree = as_tree(userland.counter_groups())
    assert tree["reassembly"]["flows_evicted"] == 1
    assert tree["pipeline"]["lost_events"] == 2 and tree["pipeline"]["flows_with_loss"] == 1

    require_module("prometheus_client")
    from test_metrics import samples

    got, _ = samples(SimpleNamespace(counter_groups=userland.counter_groups))
    assert got[("smtp_sensor_tcp_flows_evicted_total", ())] == 1
    assert got[("smtp_sensor_lost_events_total", ())] == 2


# ------------------------------------------------------------------ per-flow bounds of the dissector

def test_unanswered_pipelined_commands_are_bounded_per_flow():
    from sensor.smtp import SMTPConnection
    from sensor.smtp import anomalies as A

    limits = SmtpLimits()
    conn = SMTPConnection(limits)
    out = conn.receive_server(b"220 mx\r\n", 1.0)
    out += conn.receive_client(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n", 1.0)
    most = 0
    for i in range(3 * limits.pending_commands):
        out += conn.receive_client(b"RCPT TO:<u%d@" % i + b"x" * 400 + b".example>\r\n", 1.0)
        most = max(most, len(conn._pending.commands))
    assert most == limits.pending_commands
    assert [e.name for e in out if getattr(e, "name", None) == A.TOO_MANY_PENDING_COMMANDS] == \
        [A.TOO_MANY_PENDING_COMMANDS]


def test_replies_without_commands_are_bounded_in_octets():
    from sensor.smtp import SMTPConnection
    from sensor.smtp import anomalies as A

    limits = SmtpLimits()
    conn = SMTPConnection(limits)
    conn.receive_server(b"220 mx\r\n", 1.0)
    conn.receive_client(b"EHLO c\r\n", 1.0)
    conn.receive_server(b"250 mx\r\n", 1.0)
    big = b"".join(b"250-" + b"y" * 2000 + b"\r\n" for _ in range(200)) + b"250 end\r\n"
    most, out = 0, []
    for _ in range(20):
        out += conn.receive_server(big, 1.0)
        most = max(most, conn._pending.reply_octets)
    assert most <= limits.unmatched_reply_octets + 200 * 2000 + 10
    assert sum(1 for e in out if getattr(e, "name", None) == A.UNABLE_TO_MATCH_REPLY_WITH_REQUEST) >= 18
