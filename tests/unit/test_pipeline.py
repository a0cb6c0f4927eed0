"""sensor.pipeline: segments in any cut and order give the same records; the
glue (STARTTLS, gaps, listeners, idle expiry) does what it says."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.pipeline import Pipeline
from sensor.records.sinks import ListSink
from sensor.stream.reassembly import ReassemblyLimits
from support.sessions import CPORT, DIALOGUE, session_segments  # noqa: F401


def run(segs, **kw):
    sink = ListSink()
    pipe = Pipeline(sink, **kw)
    for i, s in enumerate(segs):
        pipe.feed_segment(s, 100.0 + i * 0.001)
    pipe.finish()
    return sink, pipe


def comparable(records):
    return [{k: v for k, v in r.items() if k != "ts"} for r in records]


def test_one_session_gives_one_smtp_record_with_zeek_fields():
    sink, pipe = run(session_segments(DIALOGUE))
    (rec,) = sink.of("smtp")
    assert rec["mailfrom"] == "alice@example.org"
    assert rec["rcptto"] == ["bob@example.net", "nobody@example.net"]
    assert rec["subject"] == "café"
    assert rec["to"] == ["a@x.example", '"B, C" <b@x.example>']
    # Zeek: the bottom Received header is first_received, the one above it second
    assert rec["first_received"].startswith("from laptop")
    assert rec["second_received"].startswith("from relay2.example")
    assert rec["path"] == ["198.51.100.25", "192.0.2.10", "203.0.113.9", "198.51.100.7"]
    assert [(s["verb"], s.get("code")) for s in rec["steps"]] == [
        ("MAIL", 250), ("RCPT", 250), ("RCPT", 550), ("DATA", 354), (".", 250)]
    assert rec["steps"][2] == {"verb": "RCPT", "parameter": "TO:<nobody@example.net>",
                               "code": 550, "enhanced": "5.1.1", "text": "5.1.1 No such user"}
    assert rec["msg_size"] == len(DIALOGUE[5][1]) - len(b".\r\n") - 1   # one stuffed dot removed
    assert rec["delivered"] is True
    assert pipe.counters.flows == 1 and pipe.counters.transactions == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), cut=st.integers(1, 300), dup=st.floats(0, 0.3),
       shuffle_window=st.integers(1, 8))
def test_any_segmentation_reordering_and_duplication_gives_the_same_records(seed, cut, dup, shuffle_window):
    whole, _ = run(session_segments(DIALOGUE))
    rng = random.Random(seed)
    segs = session_segments(DIALOGUE, cut=cut, rng=rng)
    head, body = segs[:2], segs[2:]
    # reorder within a sliding window (a real network reorders locally) and duplicate some
    mixed = []
    for i in range(0, len(body), shuffle_window):
        chunk = body[i:i + shuffle_window]
        rng.shuffle(chunk)
        for s in chunk:
            mixed.append(s)
            if rng.random() < dup:
                mixed.append(s)
    got, _ = run(head + mixed)
    assert comparable(got.of("smtp")) == comparable(whole.of("smtp"))


def test_starttls_asks_for_a_bypass_once_and_ignores_what_follows():
    dialogue = [
        (False, b"220 mx ESMTP\r\n"), (True, b"EHLO c\r\n"),
        (False, b"250-mx\r\n250 STARTTLS\r\n"), (True, b"STARTTLS\r\n"),
        (False, b"220 2.0.0 Ready to start TLS\r\n"),
        (True, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200)),
        (False, b"\x16\x03\x03\x00\x5a\x02" + bytes(90)),
    ]
    bypassed = []
    sink, pipe = run(session_segments(dialogue), on_starttls=lambda sess: bypassed.append(sess.flow.uid))
    assert len(bypassed) == 1
    (rec,) = sink.of("smtp")
    assert rec["tls"] is True and rec["helo"] == "c"
    assert sink.of("anomaly") == []
    assert pipe.counters.starttls == 1


def test_lost_client_bytes_become_a_content_gap_anomaly():
    segs = session_segments(DIALOGUE, cut=100)
    # drop one segment in the middle of the message body, then let the FINs
    # and the close timeout turn the hole into a gap
    body = [i for i, s in enumerate(segs) if s.payload.startswith(b"line of body") or b"body text" in s.payload]
    del segs[body[len(body) // 2]]
    sink, _ = run(segs)
    names = [r["name"] for r in sink.of("anomaly")]
    assert "CONTENT_GAP" in names
    (rec,) = sink.of("smtp")
    assert rec["mailfrom"] == "alice@example.org"


def test_a_failing_listener_is_counted_and_dissection_goes_on():
    seen = []

    def broken(sess, ev):
        raise RuntimeError("listener bug")

    sink, pipe = run(session_segments(DIALOGUE), listeners=[broken, lambda s, e: seen.append(type(e).__name__)])
    assert len(sink.of("smtp")) == 1
    assert pipe.counters.listener_errors == len(seen) > 0
    assert "Transaction" in seen and "FlowEnd" in seen


def test_idle_flow_is_ended_by_expire_and_its_transaction_logged():
    # the message's final reply never comes, nor QUIT nor FIN: both went silent
    segs = session_segments(DIALOGUE[:-3])[:-2]
    sink = ListSink()
    pipe = Pipeline(sink, reassembly_limits=ReassemblyLimits(idle_timeout=30))
    for s in segs:
        pipe.feed_segment(s, 100.0)
    assert sink.of("smtp") == []
    pipe.expire(131.0)
    assert len(sink.of("smtp")) == 1 and pipe.sessions == []


def test_segments_on_other_ports_are_not_dissected():
    segs = [s._replace(sport=8080) if s.sport == 25 else s._replace(dport=8080) for s in session_segments(DIALOGUE)]
    sink, pipe = run(segs)
    assert list(sink) == [] and pipe.counters.flows == 0
