"""Reject statistics live (issue 5): the real CLI sensor (`python -m sensor.cli
run --config`) on the lab server's veth, two real MTAs in the server namespace
(aiosmtpd on port 25 rejecting recipients with its 550 handler, a real Postfix
on port 587 rejecting them with its recipient restrictions), and clients in the
client namespace under a scaled-down config (10 connections, 30 percent, checks
every second).

* a spam host (192.0.2.66) whose connections to both servers are mostly
  rejected gets one SMTP_PossibleSpam notice (the seed's message, the real
  reject texts of both servers sampled), a ban_source drop record, and its
  next connection is dropped in XDP (`ban list` shows the /32, reason
  spam_stats; the kernel's drop_ban counter moves);
* a known mail server (local_mail, 192.0.2.30) doing the same gets
  SMTP_StrangeRejectBehavior, no ban, and its next mail is delivered; more
  rejects within suppress_for raise no second notice;
* an internal host (local_networks 198.51.100.0/24) gets
  SMTP_PossibleInternalSpam with its rejected recipients (" mailto: ...");
* a replay of the capture of the same wire, with the same config, gives the
  same notices; so does a replay of the bursts alone (a capture that ends
  before the replay's next check);
* a restart (SIGTERM, start again) restores the statistics from the state
  file, and the ban is still in the pinned map.

Every burst ends with a connection that gets no reject, so that the check
that first sees a host at the threshold always sees the same counts, whenever
it runs (live checks and replay checks are not in phase): the notices of the
live run and of the replay can be compared word for word.

One lab, one capture and one sensor process (then a second one, for the
restart) serve the module; the tests run in file order.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sensor.inputs.pcapfile import read_packets
from sensor.inputs.pcapwriter import PcapWriter
from sensor.kernel import abi
from sensor.kernel.netns import iproute
from sensor.lab.network import CLIENT_V4, SPAMMER_V4, Lab
from support.lab_capture import Capture
from support.lab_sensor import SensorProcess
from support.lab_smtp import connection_times_out, smtp_session

REPO = Path(__file__).resolve().parents[2]

MAIL_SERVER_V4 = "192.0.2.30"          # listed in local_mail: a known mail server
INTERNAL_V4 = "198.51.100.7"           # in local_networks
INTERNAL_NET = "198.51.100.0/24"
BENIGN_V4 = CLIENT_V4                  # a few good mails: never judged
REJECTED_DOMAIN = "nowhere.lab.example"  # both servers refuse every recipient there
THRESHOLD = 10
# both outlast the module on a slow machine (under emulation it takes minutes): the restart
# test finds every host in the window and every ban in force
SPAM_BAN_TTL = 900     # s
PERIOD_S = 900

CONFIG = f"""\
# scaled down from the seed's 300 connections / 30 percent / 60 min
[sensor]
ports = [25, 587]
state_file = "{{state_file}}"
snapshot_interval = "5s"

[spam_stats]
threshold = {THRESHOLD}
percent = 30
period = "{PERIOD_S}s"
check_interval = "1s"
local_mail = ["{MAIL_SERVER_V4}/32"]
local_networks = ["{INTERNAL_NET}"]

[spam_stats.ban]
SMTP_PossibleSpam = {SPAM_BAN_TTL}
SMTP_StrangeRejectBehavior = 0
"""


# ---------------------------------------------------------------- an SMTP client

def burst(lab: Lab, source: str, rcpts_of) -> list[list[int]]:
    """THRESHOLD sequential connections from ``source``, alternating between
    aiosmtpd (25) and Postfix (587); the i-th names ``rcpts_of(i)``; the last
    one names no recipient (no reject: the counts are final when the host
    reaches the threshold)."""
    out = []
    for i in range(THRESHOLD):
        port = 25 if i % 2 == 0 else 587
        out.append(smtp_session(lab, source, port, rcpts_of(i) if i < THRESHOLD - 1 else ()))
    return out


# ---------------------------------------------------------------- the sensor process

def notices(records, src: str | None = None) -> list[dict]:
    return [r for r in records if r["event_type"] == "notice" and (src is None or r["src"] == src)]


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def lab(lab_prereqs, tmp_path_factory):
    journal = tmp_path_factory.mktemp("spamstats-lab") / "journal.jsonl"
    with Lab(client_addrs=(CLIENT_V4, SPAMMER_V4, MAIL_SERVER_V4, INTERNAL_V4)) as lab:
        # the internal host is in another TEST-NET than the server: the server
        # reaches it on the same link
        with iproute(lab.server_ns) as ipr:
            ipr.route("add", dst=INTERNAL_NET, oif=lab.ifindex(lab.server_ns, lab.server_if), scope=253)
        lab.journal = journal
        lab.start_server(journal=journal, reject_rcpt=rf"@{REJECTED_DOMAIN.replace('.', '[.]')}$")
        lab.postfix = lab.start_postfix(reject=(REJECTED_DOMAIN,), tls=False, port=587)
        yield lab


@pytest.fixture(scope="module")
def setup(lab, test_pin_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("spamstats-sensor")
    config = work / "sensor.toml"
    state_file = work / "spam-stats.msgpack"
    config.write_text(CONFIG.format(state_file=state_file))
    return {"work": work, "config": config, "state_file": state_file,
            "pin_dir": test_pin_root / "spamstats" / f"v{abi.ABI_VERSION}",
            "control": work / "control.sock", "records": work / "records.json"}


@pytest.fixture(scope="module")
def sensor(lab, setup):
    proc = SensorProcess(lab, setup["records"], setup["pin_dir"], setup["control"],
                         "--config", str(setup["config"]), "--stats-interval", "3600")
    try:
        proc.wait_log(lambda e: e.get("event") == "running", timeout=90)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def traffic(lab, sensor, setup):
    """The wire captured while the spam host, the known mail server and the
    internal host each send a burst (in parallel) and a few good mails go by;
    the capture goes on until the test that replays it stops it."""
    capture = Capture(lab, lab.server_ns, lab.server_if, setup["work"] / "wire.pcap")
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            jobs = {
                SPAMMER_V4: pool.submit(burst, lab, SPAMMER_V4,
                                        lambda i: (f"nobody@{REJECTED_DOMAIN}", "user@lab.example")),
                MAIL_SERVER_V4: pool.submit(burst, lab, MAIL_SERVER_V4,
                                            lambda i: (f"bounce-{i % 3}@{REJECTED_DOMAIN}",)),
                INTERNAL_V4: pool.submit(burst, lab, INTERNAL_V4, lambda i: (f"int-{i}@{REJECTED_DOMAIN}",)),
                BENIGN_V4: pool.submit(lambda: [smtp_session(lab, BENIGN_V4, port, ("user@lab.example",),
                                                             data=True) for port in (25, 587)]),
            }
            codes = {host: job.result() for host, job in jobs.items()}
        yield {"capture": capture, "codes": codes, "bursts_done": time.time()}
    finally:
        capture.stop()


# ---------------------------------------------------------------- tests

def test_the_bursts_got_real_rejects_from_both_servers(lab, traffic):
    codes = traffic["codes"]
    for host in (SPAMMER_V4, MAIL_SERVER_V4, INTERNAL_V4):
        sessions = codes[host]
        assert len(sessions) == THRESHOLD
        assert all(s[0] == 220 for s in sessions), sessions
        assert sum(550 in s for s in sessions) == THRESHOLD - 1, sessions
    # both MTAs refused: aiosmtpd's handler (journal) and Postfix's restrictions (its log)
    rejected_by_aiosmtpd = [json.loads(line) for line in lab.journal.read_text().splitlines()
                            if '"rcpt_rejected"' in line]
    assert {e["peer"] for e in rejected_by_aiosmtpd} >= {SPAMMER_V4, MAIL_SERVER_V4, INTERNAL_V4}
    lab.postfix.wait_for_log(rf"reject: RCPT from \S+\[{INTERNAL_V4}\]")
    clients = {r["client"].rsplit(":", 1)[0] for r in lab.postfix.rejections()}   # client port logged
    assert {f"unknown[{h}]" for h in (SPAMMER_V4, MAIL_SERVER_V4, INTERNAL_V4)} <= clients, clients
    assert all(550 not in s for s in codes[BENIGN_V4])


def test_a_spam_host_gets_one_notice_a_ban_and_is_dropped_in_xdp(lab, sensor, traffic):
    notice = sensor.wait_record(lambda r: r["event_type"] == "notice" and r["src"] == SPAMMER_V4)
    assert notice["note"] == "SMTP_PossibleSpam"
    assert notice["msg"] == f"{SPAMMER_V4} - sent: {THRESHOLD} rejected: 90 percent"
    assert notice["n"] == THRESHOLD - 1 and notice["total"] == THRESHOLD and notice["percent"] == 90
    assert notice["actions"] == ["ban"] and notice["ban_ttl"] == SPAM_BAN_TTL
    assert notice["suppress_for"] == PERIOD_S
    # the real reject texts of both MTAs, sampled
    texts = {(s["code"], s.get("enhanced"), s["text"]): s["count"] for s in notice["samples"]}
    aiosmtpd = (550, "5.1.1", f"<nobody@{REJECTED_DOMAIN}>: Recipient address rejected: User unknown")
    postfix = (550, "5.1.1", f"<nobody@{REJECTED_DOMAIN}>: Recipient address rejected: User unknown in the lab")
    assert texts == {aiosmtpd: 5, postfix: 4}, notice["samples"]
    assert "Sampled rejects: 550 5.1.1" in notice["sub"]
    drop = sensor.wait_record(lambda r: r["event_type"] == "drop" and r.get("target") == f"{SPAMMER_V4}/32")
    assert drop["action"] == "ban_source" and drop["reason"] == "spam_stats"
    assert drop["ttl"] == SPAM_BAN_TTL and drop["enforced_by"] == "kernel"
    # the next connection: its SYN dropped in XDP, so it times out
    assert connection_times_out(lab, SPAMMER_V4, 25)
    assert connection_times_out(lab, SPAMMER_V4, 587)
    bans = {b["target"]: b for b in sensor.cli("ban", "list")}
    assert bans[f"{SPAMMER_V4}/32"]["reason"] == "spam_stats", bans
    assert bans[f"{SPAMMER_V4}/32"]["packets"] >= 2
    assert 0 < bans[f"{SPAMMER_V4}/32"]["ttl_left"] <= SPAM_BAN_TTL
    status = sensor.cli("status")
    assert status["counters"]["ingress"]["drop_ban"] >= 2, status["counters"]
    assert status["spam_stats"]["bans"] >= 1


def test_a_known_mail_server_gets_strange_reject_behavior_no_ban_and_one_notice(lab, sensor, traffic):
    notice = sensor.wait_record(lambda r: r["event_type"] == "notice" and r["src"] == MAIL_SERVER_V4)
    assert notice["note"] == "SMTP_StrangeRejectBehavior"
    assert notice["msg"] == f"{MAIL_SERVER_V4} - sent: {THRESHOLD} rejected: 90 percent"
    assert notice["actions"] == [] and "ban_ttl" not in notice
    assert {s["code"] for s in notice["samples"]} == {550}
    # more rejects after the notice (let a check pass first: the notice's counts stay those of the burst)
    time.sleep(1.5)
    before = sensor.cli("stats")["counters"]["suppressed"]
    for port in (25, 587, 25):
        assert 550 in smtp_session(lab, MAIL_SERVER_V4, port, (f"late@{REJECTED_DOMAIN}",))
    # ... and its next mail is delivered (no ban): aiosmtpd journalled it
    assert 250 in smtp_session(lab, MAIL_SERVER_V4, 25, ("postmaster@lab.example",), data=True)[-2:]
    messages = [json.loads(line) for line in lab.journal.read_text().splitlines() if '"message"' in line]
    assert any(m["peer"] == MAIL_SERVER_V4 for m in messages)
    # the changed window was checked again, and suppressed: no second notice
    deadline = time.monotonic() + 5
    while sensor.cli("stats")["counters"]["suppressed"] <= before:
        assert time.monotonic() < deadline, sensor.cli("stats")
        time.sleep(0.2)
    assert len(notices(sensor.records(), MAIL_SERVER_V4)) == 1
    assert not [r for r in sensor.records() if r["event_type"] == "drop" and MAIL_SERVER_V4 in r.get("target", "")]
    bans = {b["target"] for b in sensor.cli("ban", "list")}
    assert f"{MAIL_SERVER_V4}/32" not in bans


def test_an_internal_host_gets_possible_internal_spam_with_its_recipients(lab, sensor, traffic):
    notice = sensor.wait_record(lambda r: r["event_type"] == "notice" and r["src"] == INTERNAL_V4)
    assert notice["note"] == "SMTP_PossibleInternalSpam"
    rcpts = ",".join(f"int-{i}@{REJECTED_DOMAIN}" for i in range(THRESHOLD - 1))
    assert notice["msg"] == f"{INTERNAL_V4} - sent: {THRESHOLD} rejected: 90 percent mailto: {rcpts}"
    assert notice["recipients"] == rcpts.split(",")


def test_one_notice_per_host_and_none_for_good_senders(sensor, traffic):
    time.sleep(1.2)       # one more check
    found = notices(sensor.records())
    assert sorted(n["src"] for n in found) == sorted([SPAMMER_V4, MAIL_SERVER_V4, INTERNAL_V4]), found
    stats = {h["host"]: h for h in sensor.cli("stats")["hosts"]}
    assert stats[BENIGN_V4]["total"] == 2 and stats[BENIGN_V4]["rejects"] == 0


def test_a_replay_of_the_capture_gives_the_same_notices(sensor, traffic, setup):
    wire = traffic["capture"].stop()
    out = setup["work"] / "replay.json"
    result = subprocess.run([sys.executable, "-m", "sensor.cli", "replay", str(wire), "--config",
                             str(setup["config"]), "-o", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    replayed = [json.loads(line) for line in out.read_text().splitlines()]

    def key(n):
        return (n["note"], n["src"], n["msg"], n.get("sub"))

    live = sorted(map(key, notices(sensor.records())))
    assert sorted(map(key, notices(replayed))) == live, result.stderr
    assert len(live) == 3
    bans = {r["target"] for r in replayed if r["event_type"] == "drop"}
    assert bans == {f"{SPAMMER_V4}/32", f"{INTERNAL_V4}/32"}

    # a capture of the bursts alone (it ends before the replay's next check):
    # the same notices too (the replay judges what the last connections
    # changed when the capture ends; it used to give none)
    cut = setup["work"] / "bursts.pcap"
    writer = PcapWriter(cut, 1)
    for ts, _, frame, wirelen in read_packets(wire):
        if ts <= traffic["bursts_done"] + 0.3:
            writer.write(ts, frame, wirelen)
    writer.close()
    result = subprocess.run([sys.executable, "-m", "sensor.cli", "replay", str(cut), "--config",
                             str(setup["config"])], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    replayed = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(map(key, notices(replayed))) == live, result.stderr


def test_a_restart_restores_the_statistics_and_keeps_the_ban(lab, sensor, setup):
    before = {h["host"]: h for h in sensor.cli("stats")["hosts"]}
    assert sensor.stop() == 0, sensor.describe()
    stopped = sensor.wait_log(lambda e: e.get("event") == "stopped", timeout=1)
    assert stopped["counters"]["ingress"]["drop_ban"] >= 2
    assert stopped["spam_stats"]["notices"] == 3 and stopped["spam_stats"]["bans"] == 2
    assert stopped["lost"] == 0 and stopped["pipeline"]["listener_errors"] == 0
    assert setup["state_file"].stat().st_size > 0
    again = SensorProcess(lab, setup["records"], setup["pin_dir"], setup["control"],
                          "--config", str(setup["config"]), "--stats-interval", "3600")
    stopped_ok = False
    try:
        again.wait_log(lambda e: e.get("event") == "running", timeout=90)
        restored = again.wait_log(lambda e: e.get("event") == "statistics snapshot", timeout=1)
        assert "restored 4 hosts and 2 bans" in restored["message"], restored
        after = {h["host"]: h for h in again.cli("stats")["hosts"]}
        for host in (SPAMMER_V4, MAIL_SERVER_V4, INTERNAL_V4, BENIGN_V4):
            assert (after[host]["total"], after[host]["rejects"]) == \
                   (before[host]["total"], before[host]["rejects"]), (before, after)
        assert after[MAIL_SERVER_V4]["class"] == "SMTP_StrangeRejectBehavior"
        bans = {b["target"]: b for b in again.cli("ban", "list")}
        assert bans[f"{SPAMMER_V4}/32"]["reason"] == "spam_stats", bans
        assert connection_times_out(lab, SPAMMER_V4, 25)
        # no notice again for what was already reported
        time.sleep(1.2)
        assert len(notices(again.records())) == 3
        stopped_ok = again.stop() == 0
    finally:
        again.stop()
    assert stopped_ok, again.describe()
