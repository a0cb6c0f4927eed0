"""Live and offline give the same records: real SMTP sessions in the netns
lab (swaks plain, pipelined to Postfix, BDAT to Postfix, AUTH, STARTTLS) are
dissected live (datapath events -> pipeline) while a capture records the wire; a replay of that capture must log the same smtp and anomaly records
(all fields but ts, which differ by the kernel-vs-capture clock)."""

from __future__ import annotations

import base64
import json

import pytest

from sensor.inputs.live import LiveFeed
from sensor.inputs.pcapfile import read_packets
from sensor.inputs.replay import replay
from sensor.kernel import abi
from sensor.kernel.datapath import Datapath, DatapathConfig
from sensor.lab.network import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, SPAMMER_V4, Lab
from sensor.pipeline import Pipeline
from sensor.records.sinks import ListSink
from support.lab_capture import Capture
from support.prereqs import require_swaks_ipv6
from support.record_schemas import check


@pytest.fixture(scope="module")
def lab(lab_prereqs):
    """aiosmtpd (STARTTLS, AUTH, a rejecting recipient) on port 25, a real
    Postfix (PIPELINING, CHUNKING, STARTTLS) on port 587, same addresses."""
    with Lab() as lab:
        lab.start_server(reject_rcpt=r"^spamtrap@", tls=True, auth=True)
        lab.start_postfix(port=587)
        yield lab


@pytest.fixture
def live(lab, test_pin_root, tmp_path):
    """The datapath on the server's veth, a live pipeline, and a capture of the same wire."""
    dp = Datapath(DatapathConfig(pin_dir=test_pin_root / "live" / f"v{abi.ABI_VERSION}")).load()
    try:
        dp.attach(lab.server_if, netns=lab.server_ns)
        sink = ListSink()
        feed = LiveFeed(dp.event_reader(), Pipeline(sink, uid_seed=7), dp.maps)
        capture = Capture(lab, lab.server_ns, lab.server_if, tmp_path / "wire.pcap")
        try:
            yield feed, sink, capture
        finally:
            capture.stop()
    finally:
        for table in (dp.maps.ban_v4, dp.maps.ban_v6, dp.maps.flow_drop, dp.maps.bypass_map):
            table.clear()
        dp.close()


def without_ts(records):
    return [{k: v for k, v in r.items() if k != "ts"} for r in records]


def finish_and_compare(feed, sink, capture):
    feed.drain(rounds=10, timeout_ms=50)
    feed.pipeline.finish()
    assert feed.reader.lost == 0
    offline = ListSink()
    replay(capture.stop(), Pipeline(offline, uid_seed=7))
    for rec in sink:
        check(rec)
    assert without_ts(sink) == without_ts(offline)
    for a, b in zip(sink, offline):
        assert abs(a["ts"] - b["ts"]) < 0.5, (a, b)
    return sink


def run_session(lab, feed, *swaks_args, source=None, server=SERVER_V4, expect_rc=0):
    result = lab.swaks(*swaks_args, source=source, server=server, timeout=20)
    assert result.returncode == expect_rc, result.stdout[-1500:] + result.stderr[-500:]
    feed.drain(rounds=5, timeout_ms=50)
    return result


def test_plain_sessions_live_equal_replay(lab, live):
    require_swaks_ipv6()                                # its third session
    feed, sink, capture = live
    run_session(lab, feed, "--from", "alice@example.org", "--to", "bob@example.net",
                "--header", "Subject: live and replay", source=CLIENT_V4)
    run_session(lab, feed, "--from", "promo@spam.example", "--to", "spamtrap@example.net",
                source=SPAMMER_V4, expect_rc=24)       # swaks: 24 = no recipient accepted
    run_session(lab, feed, "--from", "alice@example.org", "--to", "bob@example.net", server=SERVER_V6)
    records = finish_and_compare(feed, sink, capture)
    smtp = [r for r in records if r["event_type"] == "smtp"]
    assert [r["id.orig_h"] for r in smtp] == [CLIENT_V4, SPAMMER_V4, CLIENT_V6]
    assert smtp[0]["subject"] == "live and replay" and smtp[0]["delivered"] is True
    assert smtp[1]["steps"][1]["code"] == 550 and smtp[1]["delivered"] is False
    assert len({r["uid"] for r in smtp}) == 3


def test_pipelined_session_to_postfix_live_equals_replay(lab, live):
    feed, sink, capture = live
    run_session(lab, feed, "--port", "587", "--pipeline", "--from", "alice@example.org",
                "--to", "user@lab.example,spam@lab.example,other@lab.example", source=CLIENT_V4)
    records = finish_and_compare(feed, sink, capture)
    (smtp,) = [r for r in records if r["event_type"] == "smtp"]
    assert [(s["verb"], s.get("code")) for s in smtp["steps"]] == [
        ("MAIL", 250), ("RCPT", 250), ("RCPT", 550), ("RCPT", 250), ("DATA", 354), (".", 250)]
    assert smtp["id.resp_p"] == 587 and smtp["delivered"] is True
    assert not [r for r in records if r["event_type"] == "anomaly"
                and r["name"] == "INVALID_PIPELINED_SEQUENCE"]


@pytest.mark.parametrize("mode", ["last", "zero_last", "pipelined"])
def test_bdat_session_to_postfix_live_equals_replay(lab, live, mode):
    feed, sink, capture = live
    result = lab.bdat_client("--size", "3000", port=587, chunk_size=700, zero_last=mode == "zero_last",
                             pipeline=mode == "pipelined", source=CLIENT_V4)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-500:]
    records = finish_and_compare(feed, sink, capture)
    (smtp,) = [r for r in records if r["event_type"] == "smtp"]
    verbs = [s["verb"] for s in smtp["steps"]]
    assert verbs[:2] == ["MAIL", "RCPT"] and set(verbs[2:]) == {"BDAT"}
    assert smtp["steps"][-1]["parameter"].upper().endswith("LAST")
    assert all(s.get("code") == 250 for s in smtp["steps"])
    assert smtp["delivered"] is True and smtp["msg_size"] >= 3000


def test_auth_session_live_equals_replay_and_never_logs_credentials(lab, live):
    from sensor.lab.server import LAB_PASSWORD, LAB_USER
    feed, sink, capture = live
    for mech in ("PLAIN", "LOGIN"):
        run_session(lab, feed, "--auth", mech, "--auth-user", LAB_USER, "--auth-password", LAB_PASSWORD,
                    "--from", "alice@example.org", "--to", "bob@example.net", source=CLIENT_V4)
    records = finish_and_compare(feed, sink, capture)
    assert len([r for r in records if r["event_type"] == "smtp"]) == 2
    text = json.dumps(records)
    for secret in (LAB_PASSWORD, base64.b64encode(LAB_PASSWORD.encode()).decode(),
                   base64.b64encode(f"\0{LAB_USER}\0{LAB_PASSWORD}".encode()).decode()):
        assert secret not in text


def test_starttls_session_live_equals_replay_and_is_bypassed(lab, live):
    feed, sink, capture = live
    before = feed.events
    run_session(lab, feed, "--tls", "--from", "alice@example.org", "--to", "bob@example.net",
                source=CLIENT_V4)
    records = finish_and_compare(feed, sink, capture)
    (smtp,) = [r for r in records if r["event_type"] == "smtp"]
    assert smtp["tls"] is True
    assert feed.bypassed == 1
    # the kernel stopped pushing the encrypted rest: fewer events than packets on the wire
    wire = sum(1 for _ in read_packets(capture.path))
    assert feed.events - before < wire
