"""Live and offline give the same records: real SMTP sessions in the netns
lab are dissected live (datapath events -> pipeline) while dumpcap records
the wire; a replay of that capture must log the same smtp and anomaly records
(all fields but ts, which differ by the kernel-vs-capture clock)."""

from __future__ import annotations

import pytest

from sensor import abi
from sensor.datapath import Datapath, DatapathConfig
from sensor.lab import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, SPAMMER_V4, Lab
from sensor.live import LiveFeed
from sensor.output import ListSink
from sensor.pipeline import Pipeline
from sensor.replay import replay

from lab_capture import Capture
from record_schemas import check

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab(lab_prereqs):
    with Lab() as lab:
        lab.start_server(reject_rcpt=r"^spamtrap@")
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
