"""SMTP found by content (sensor.smtp.probe, Pipeline(by_content=True)): a 220
greeting and a client's EHLO/HELO make a flow SMTP whatever its port, also
inside an HTTP CONNECT tunnel; the rest is not dissected."""

from __future__ import annotations

import pytest

from sensor.pipeline import Pipeline
from sensor.records.sinks import ListSink
from sensor.smtp.probe import NOT_SMTP, PROBE_BYTES, SMTP, UNDECIDED, SmtpProbe
from sensor.stream.direction import CLIENT, SERVER
from support.sessions import session_segments
from support.smtp_pcap import smtp_dialogue

C, S = CLIENT, SERVER
CONNECT = b"CONNECT mx.example:25 HTTP/1.1\r\nHost: mx.example:25\r\n\r\n"


def verdicts(*turns, cut=None) -> list[str]:
    """The probe's verdict after each piece of ``turns`` ((direction, bytes)),
    each cut into pieces of ``cut`` bytes."""
    probe, out = SmtpProbe(), []
    for direction, data in turns:
        step = cut or len(data) or 1
        for i in range(0, len(data), step):
            out.append(probe.feed(direction, data[i:i + step]))
    return out


@pytest.mark.parametrize("cut", [None, 1, 3])
@pytest.mark.parametrize("turns, want", [
    ([(S, b"220 mx ESMTP\r\n"), (C, b"EHLO c.example\r\n")], SMTP),
    ([(S, b"220-mx first line\r\n"), (C, b"helo c\r\n")], SMTP),            # Zeek: any case
    ([(C, b"EHLO c.example\r\n"), (S, b"220 mx\r\n")], SMTP),               # client first
    ([(S, b"  220 mx\r\n"), (C, b"NOOP\r\n  EHLO c\r\n")], SMTP),           # EHLO on a later line
    ([(S, b"220 ftp.example FTP\r\n"), (C, b"USER anonymous\r\n" * 80)], NOT_SMTP),   # FTP
    ([(S, b"SSH-2.0-OpenSSH_9.2\r\n"), (C, b"SSH-2.0-x\r\n")], NOT_SMTP),
    ([(S, b"2200 no\r\n"), (C, b"EHLO c\r\n")], NOT_SMTP),
    ([(C, b"GET / HTTP/1.1\r\n\r\n"), (S, b"HTTP/1.1 200 OK\r\n\r\n220 ")], NOT_SMTP),
    ([(C, CONNECT), (S, b"HTTP/1.1 200 Connection established\r\n\r\n220 mx\r\n"),
      (C, b"EHLO c\r\n")], SMTP),
    ([(C, CONNECT), (S, b"HTTP/1.0 200 OK\r\nVia: proxy\r\n\r\n"), (S, b"220 mx\r\n"),
      (C, b"EHLO c\r\n")], SMTP),
    ([(C, CONNECT), (S, b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"),
      (C, b"EHLO c\r\n")], NOT_SMTP),
    ([(C, CONNECT), (S, b"HTTP/1.1 200 OK\r\n\r\n"), (S, b"SSH-2.0-x\r\n")], NOT_SMTP),
    ([(C, b"\x16\x03\x01\x00\x40\x01\x00\x00\x3c"), (S, b"\x16\x03\x03")], NOT_SMTP),  # TLS
])
def test_the_verdict(turns, want, cut):
    got = verdicts(*turns, cut=cut)
    assert got[-1] == want
    # undecided until decided, and never changes after
    first = next(i for i, v in enumerate(got) if v != UNDECIDED)
    assert set(got[first:]) == {want}


def test_a_client_without_ehlo_in_its_first_bytes_is_not_smtp():
    probe = SmtpProbe()
    probe.feed(S, b"220 mx\r\n")
    assert probe.feed(C, b"X" * (PROBE_BYTES - 1)) == UNDECIDED
    assert probe.feed(C, b"XX\r\nEHLO late\r\n") == NOT_SMTP


def test_implicit_tls_is_flagged_and_the_tunnel_target_kept():
    probe = SmtpProbe()
    probe.feed(C, b"\x16\x03\x01\x02\x00\x01")
    assert probe.state == NOT_SMTP and probe.tls
    probe = SmtpProbe()
    for d, b in [(C, CONNECT), (S, b"HTTP/1.1 200 OK\r\n\r\n220 mx\r\n"), (C, b"EHLO c\r\n")]:
        probe.feed(d, b)
    assert probe.state == SMTP and probe.tunnel == "mx.example:25"
    assert probe.skip == {C: len(CONNECT), S: len(b"HTTP/1.1 200 OK\r\n\r\n")}


# ---------------------------------------------------------------- the pipeline

def run(dialogues, *, by_content=True):
    """[(server port, dialogue)] through one pipeline; (records, counters)."""
    sink, n = ListSink(), 0
    pipe = Pipeline(sink, by_content=by_content)
    for k, (port, d) in enumerate(dialogues):
        for seg in session_segments(d, sport=port, cport=42000 + k):
            pipe.feed_segment(seg, 100.0 + n * 0.001)
            n += 1
    pipe.finish()
    return sink, pipe.counters


def test_smtp_on_any_port_is_dissected_like_smtp_on_25():
    d = smtp_dialogue()
    on25, _ = run([(25, d)])
    on2525, counters = run([(2525, d)])
    (a,), (b,) = on25.of("smtp"), on2525.of("smtp")
    differ = {k for k in a if a[k] != b[k]}
    assert differ == {"uid", "id.resp_p", "community_id"}
    assert counters.by_content == {"2525": 1} and counters.flows == 1


def test_without_by_content_other_ports_are_not_looked_at():
    sink, counters = run([(2525, smtp_dialogue())], by_content=False)
    assert list(sink) == [] and counters.flows == 0


def test_smtp_inside_an_http_connect_tunnel_starts_after_the_proxy_reply():
    d = smtp_dialogue()
    tunnel = [(True, CONNECT), (False, b"HTTP/1.1 200 Connection established\r\n\r\n" + d[0][1])] + d[1:]
    sink, counters = run([(8240, tunnel)])
    (rec,) = sink.of("smtp")
    assert rec["mailfrom"] == "alice@example.org" and rec["delivered"] is True
    assert sink.of("anomaly") == []                  # the proxy's bytes never reached the dissector
    assert counters.tunnels == 1


def test_the_uids_of_flows_on_the_ports_do_not_depend_on_other_flows():
    # the flow on 25 is the same flow in both runs (endpoints, first time): the others come after it
    alone, _ = run([(25, smtp_dialogue())])
    mixed, _ = run([(25, smtp_dialogue()),
                    (8080, [(True, b"GET / HTTP/1.1\r\n\r\n"), (False, b"HTTP/1.1 200 OK\r\n\r\n")]),
                    (2525, smtp_dialogue(sender=b"x@example.org"))])
    uid = alone.of("smtp")[0]["uid"]
    on25 = [r for r in mixed.of("smtp") if r["id.resp_p"] == 25]
    assert [r["uid"] for r in on25] == [uid]
    assert len({r["uid"] for r in mixed.of("smtp")}) == 2


def test_not_smtp_flows_leave_nothing_behind():
    sink, counters = run([(21, [(False, b"220 ftp\r\n"), (True, b"USER anonymous\r\n" * 100)]),
                          (8080, [(True, b"GET / HTTP/1.1\r\n\r\n"), (False, b"HTTP/1.1 200 OK\r\n\r\n")])])
    assert list(sink) == [] and counters.flows == 0 and counters.by_content == {}
