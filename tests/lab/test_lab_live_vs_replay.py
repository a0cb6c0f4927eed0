"""Live and offline give the same records: real SMTP sessions in the netns
lab (swaks plain, pipelined to Postfix, BDAT to Postfix, AUTH, STARTTLS, a
forbidden sender under a monitor-only config) are dissected by the live
sensor (``sensor.service.loop.Sensor``, the real assembly, in this process,
its records written as ``smtp-sensor run -o`` writes them) while a capture
records the wire; ``smtp-sensor replay`` of that capture with the same config
file must write the same records (all fields but ts, which differ by the
kernel-vs-capture clock)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sensor.config import load
from sensor.inputs.pcapfile import read_packets
from sensor.kernel import abi
from sensor.lab.network import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, SPAMMER_V4, Lab
from sensor.service.loop import RunOptions, Sensor
from support.lab_capture import Capture
from support.prereqs import require_swaks_ipv6
from support.record_schemas import check

REPO = Path(__file__).resolve().parents[2]
UID_SEED = 7


@pytest.fixture(scope="module")
def lab(lab_prereqs):
    """aiosmtpd (STARTTLS, AUTH, a rejecting recipient) on port 25, a real
    Postfix (PIPELINING, CHUNKING, STARTTLS) on port 587, same addresses."""
    with Lab() as lab:
        lab.start_server(reject_rcpt=r"^spamtrap@", tls=True, auth=True)
        lab.start_postfix(port=587)
        yield lab


class LiveRun:
    """The live sensor built from ``config`` (a TOML file) on the server's
    veth, and a capture of the same wire."""

    def __init__(self, lab, config: Path, pin_dir: Path, work: Path):
        self.config, self.work = config, work
        self.records_path = work / "live.json"
        cfg = load(config)
        cfg = replace(cfg, sensor=replace(cfg.sensor, interfaces=(lab.server_if,), netns=lab.server_ns,
                                          pin_dir=pin_dir, output=str(self.records_path)))
        self.sensor = Sensor(cfg, RunOptions(uid_seed=UID_SEED, stats_interval=3600.0))
        self.sensor.start()
        self.capture = Capture(lab, lab.server_ns, lab.server_if, work / "wire.pcap")

    def settle(self, timeout: float = 10.0) -> None:
        """Run the sensor's loop until the ring has been quiet for a few turns."""
        deadline, quiet = time.monotonic() + timeout, 0
        while quiet < 3 and time.monotonic() < deadline:
            quiet = 0 if self.sensor.step(50) else quiet + 1

    def stop(self) -> None:
        self.capture.stop()
        self.sensor.stop()

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.records_path.read_text().splitlines()]


@pytest.fixture
def start_live(lab, test_pin_root, tmp_path, request):
    """``start_live(config_text)``: a LiveRun with that config file (the default config if empty)."""
    runs = []

    def start(config_text: str = "") -> LiveRun:
        config = tmp_path / "sensor.toml"
        config.write_text(config_text)
        name = re.sub(r"\W", "_", request.node.name)
        run = LiveRun(lab, config, test_pin_root / "live-vs-replay" / name / f"v{abi.ABI_VERSION}", tmp_path)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.stop()


def without_ts(records):
    return [{k: v for k, v in r.items() if k != "ts"} for r in records]


def finish_and_compare(live: LiveRun) -> list[dict]:
    """Stop the live sensor, replay its capture with its config file; the records must agree."""
    live.settle()
    assert live.sensor.feed.counters.lost == 0
    live.stop()
    online = live.records()
    offline_path = live.work / "replay.json"
    result = subprocess.run([sys.executable, "-m", "sensor.cli", "replay", str(live.capture.path),
                             "-c", str(live.config), "--uid-seed", str(UID_SEED), "-o", str(offline_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    offline = [json.loads(line) for line in offline_path.read_text().splitlines()]
    for rec in online:
        check(rec)
    assert without_ts(online) == without_ts(offline)
    for a, b in zip(online, offline):
        assert abs(a["ts"] - b["ts"]) < 0.5, (a, b)
    return online


def run_session(lab, live, *swaks_args, source=None, server=SERVER_V4, expect_rc=0):
    result = lab.swaks(*swaks_args, source=source, server=server, timeout=20)
    assert result.returncode == expect_rc, result.stdout[-1500:] + result.stderr[-500:]
    live.settle()
    return result


def test_plain_sessions_live_equal_replay(lab, start_live):
    require_swaks_ipv6()                                # its third session
    live = start_live()
    run_session(lab, live, "--from", "alice@example.org", "--to", "bob@example.net",
                "--header", "Subject: live and replay", source=CLIENT_V4)
    run_session(lab, live, "--from", "promo@spam.example", "--to", "spamtrap@example.net",
                source=SPAMMER_V4, expect_rc=24)       # swaks: 24 = no recipient accepted
    run_session(lab, live, "--from", "alice@example.org", "--to", "bob@example.net", server=SERVER_V6)
    records = finish_and_compare(live)
    smtp = [r for r in records if r["event_type"] == "smtp"]
    assert [r["id.orig_h"] for r in smtp] == [CLIENT_V4, SPAMMER_V4, CLIENT_V6]
    assert smtp[0]["subject"] == "live and replay" and smtp[0]["delivered"] is True
    assert smtp[1]["steps"][1]["code"] == 550 and smtp[1]["delivered"] is False
    assert len({r["uid"] for r in smtp}) == 3


def test_pipelined_session_to_postfix_live_equals_replay(lab, start_live):
    live = start_live()
    run_session(lab, live, "--port", "587", "--pipeline", "--from", "alice@example.org",
                "--to", "user@lab.example,spam@lab.example,other@lab.example", source=CLIENT_V4)
    records = finish_and_compare(live)
    (smtp,) = [r for r in records if r["event_type"] == "smtp"]
    assert [(s["verb"], s.get("code")) for s in smtp["steps"]] == [
        ("MAIL", 250), ("RCPT", 250), ("RCPT", 550), ("RCPT", 250), ("DATA", 354), (".", 250)]
    assert smtp["id.resp_p"] == 587 and smtp["delivered"] is True
    assert not [r for r in records if r["event_type"] == "anomaly"
                and r["name"] == "INVALID_PIPELINED_SEQUENCE"]


# the commit hold masks Postfix's CHUNKING (its EHLO reply leaves through TC):
# these sessions need the hold off to use BDAT at all
HOLD_OFF = '[enforce]\nhold = "off"\n'


@pytest.mark.parametrize("mode", ["last", "zero_last", "pipelined"])
def test_bdat_session_to_postfix_live_equals_replay(lab, start_live, mode):
    live = start_live(HOLD_OFF)
    result = lab.bdat_client("--size", "3000", port=587, chunk_size=700, zero_last=mode == "zero_last",
                             pipeline=mode == "pipelined", source=CLIENT_V4)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-500:]
    records = finish_and_compare(live)
    (smtp,) = [r for r in records if r["event_type"] == "smtp"]
    verbs = [s["verb"] for s in smtp["steps"]]
    assert verbs[:2] == ["MAIL", "RCPT"] and set(verbs[2:]) == {"BDAT"}
    assert smtp["steps"][-1]["parameter"].upper().endswith("LAST")
    assert all(s.get("code") == 250 for s in smtp["steps"])
    assert smtp["delivered"] is True and smtp["msg_size"] >= 3000


def test_with_the_hold_on_postfix_offers_no_chunking_and_live_equals_replay(lab, start_live):
    live = start_live()
    result = lab.bdat_client("--size", "3000", port=587, source=CLIENT_V4)
    # the client read Postfix's EHLO reply with the keyword masked, and gave up
    assert result.returncode == 1 and "does not advertise CHUNKING" in result.stdout, result.stdout[-1500:]
    assert "XXXXXXXX" in result.stdout
    live.settle()
    assert live.sensor.counters()["counters"]["egress"]["ehlo_rewritten"] == 1
    finish_and_compare(live)          # the capture holds the masked reply too: replay agrees


def test_auth_session_live_equals_replay_and_never_logs_credentials(lab, start_live):
    from sensor.lab.server import LAB_PASSWORD, LAB_USER
    live = start_live()
    for mech in ("PLAIN", "LOGIN"):
        run_session(lab, live, "--auth", mech, "--auth-user", LAB_USER, "--auth-password", LAB_PASSWORD,
                    "--from", "alice@example.org", "--to", "bob@example.net", source=CLIENT_V4)
    records = finish_and_compare(live)
    assert len([r for r in records if r["event_type"] == "smtp"]) == 2
    text = json.dumps(records)
    for secret in (LAB_PASSWORD, base64.b64encode(LAB_PASSWORD.encode()).decode(),
                   base64.b64encode(f"\0{LAB_USER}\0{LAB_PASSWORD}".encode()).decode()):
        assert secret not in text


def test_starttls_session_live_equals_replay_and_is_bypassed(lab, start_live):
    live = start_live()
    feed = live.sensor.feed
    before = feed.counters.events
    run_session(lab, live, "--tls", "--from", "alice@example.org", "--to", "bob@example.net",
                source=CLIENT_V4)
    records = finish_and_compare(live)
    (smtp,) = [r for r in records if r["event_type"] == "smtp"]
    assert smtp["tls"] is True
    assert feed.counters.starttls_bypassed == 1
    # the kernel stopped pushing the encrypted rest: fewer events than packets on the wire
    wire = sum(1 for _ in read_packets(live.capture.path))
    assert feed.counters.events - before < wire


def test_a_monitor_only_sensor_and_the_replay_of_its_capture_agree(lab, start_live):
    """A SPAN sensor's config: rules that drop, ``enforce = false``.  Live, the
    verdict is recorded as what would have been done and nothing is dropped
    or gated; the replay with the same config writes the same records."""
    live = start_live(f'[sensor]\nrules = "{REPO / "rules"}"\nenforce = false\n')
    run_session(lab, live, "--from", "mallory@spam.example", "--to", "bob@example.net", source=CLIENT_V4)
    pipeline = live.sensor.pipeline
    kernel = live.sensor.datapath.maps.counters()
    records = finish_and_compare(live)
    (drop,) = [r for r in records if r["event_type"] == "drop"]
    assert drop["action"] == "drop_flow" and drop["enforced_by"] == "monitor"
    (smtp,) = [r for r in records if r["event_type"] == "smtp"]
    assert smtp["mailfrom"] == "mallory@spam.example" and smtp["delivered"] is True
    assert pipeline.counters.gated == 0
    assert kernel["ingress"]["drop_flow"] == kernel["egress"]["drop_flow"] == 0
