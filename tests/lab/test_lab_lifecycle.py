"""The sensor's lifecycle under faults, live in the lab (issue 12 §4):

* SIGTERM while a flood keeps the sensor busy (tens of thousands of flows,
  the event ring overflowing): the programs are detached first (fail open),
  a session in a mail transaction still gets its record, the process exits
  with status 0 within systemd's kill timeout (TimeoutStopSec=20 of the
  unit; the exit time itself is a benchmark: bench/bench_lifecycle.py), and
  nothing is left attached;
* SIGKILL after the snapshot interval: the restarted sensor has the
  statistics counted before the kill.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from sensor.kernel.datapath import attached_xdp
from sensor.kernel.netns import iproute
from sensor.lab.network import CLIENT_V4
from support.flood import Flood
from support.lab_sensor import REPO, SensorProcess
from support.lab_session import LineSession

UNIT_KILL_TIMEOUT = 20          # deploy/smtp-sensor.service: TimeoutStopSec


def xdp_prog_id(lab) -> int | None:
    with iproute(lab.server_ns) as ipr:
        return attached_xdp(ipr.get_links(ipr.link_lookup(ifname=lab.server_if)[0])[0])[0]


def wait_for(pred, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s", pytrace=False)
        time.sleep(0.1)


class OpenSession(LineSession):
    """An SMTP session from the client namespace, left in the middle of its
    message (after DATA and a few lines, no end of data)."""

    def __init__(self, lab, sender: str):
        super().__init__(lab)
        for line in ("EHLO client.lab.example", f"MAIL FROM:<{sender}>", "RCPT TO:<rcpt@lab.example>", "DATA"):
            self.say(line)
        self.port = self.sock.getsockname()[1]
        self.sock.sendall(b"Subject: in flight\r\n\r\n" + b"a line of the message\r\n" * 20)


def test_sigterm_under_a_flood_detaches_first_and_exits(lab, test_pin_root, tmp_path):
    sender = "in-flight@lab.example"
    sensor = SensorProcess(lab, tmp_path / "records.json", test_pin_root / "sigterm" / "v1",
                           tmp_path / "control.sock", "--rules", str(REPO / "rules"))
    session = None
    try:
        sensor.wait_log(lambda e: e.get("event") == "running", timeout=120)
        session = OpenSession(lab, sender)
        wait_for(lambda: [f for f in sensor.cli("flows") if f["orig"] == f"{CLIENT_V4}:{session.port}"
                          and f["state"] == "DATA"], "the sensor follows the session in its DATA")
        with Flood(lab, flows=20000):
            wait_for(lambda: sensor.cli("status")["active_flows"] >= 5000, "the flood's flows followed")
            mark = sensor.mark()
            sensor.proc.send_signal(signal.SIGTERM)
            try:
                code = sensor.proc.wait(timeout=UNIT_KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"no exit within the unit's kill timeout\n{sensor.describe()}", pytrace=False)
            attached_at_exit = xdp_prog_id(lab)
        assert code == 0, sensor.describe()
        assert attached_at_exit is None
        stopped = sensor.wait_log(lambda e: e.get("event") == "stopped", after=mark, timeout=5)
        detached = sensor.wait_log(lambda e: e.get("event") == "detached", after=mark, timeout=1)
        assert sensor.logs.index(detached) < sensor.logs.index(stopped), "detach comes first (fail open)"
        assert set(stopped["shutdown"]) >= {"detach_s", "drain_s", "flows_s", "total_s"}
        # the session in its message is ended first, before the flood's flows
        record = sensor.wait_record(lambda r: r["event_type"] == "smtp" and r.get("mailfrom") == sender)
        assert record["delivered"] is False and record["id.orig_p"] == session.port
        assert stopped["pipeline"]["flows"] >= 5000
    finally:
        if session is not None:
            session.close()
        sensor.stop()
    filters = subprocess.run(["tc", "-n", lab.server_ns, "filter", "show", "dev", lab.server_if, "egress"],
                             capture_output=True, text=True).stdout
    assert "ss_tc_egress" not in filters


CONFIG = """\
[sensor]
state_file = "{state_file}"
snapshot_interval = "1s"

[spam_stats]
threshold = 1000
"""


def test_sigkill_after_the_snapshot_interval_loses_nothing_of_it(lab, test_pin_root, tmp_path):
    state_file = tmp_path / "spam-stats.msgpack"
    config = tmp_path / "sensor.toml"
    config.write_text(CONFIG.format(state_file=state_file))
    pins = test_pin_root / "sigkill-stats" / "v1"
    args = ("--config", str(config))
    first = SensorProcess(lab, tmp_path / "r1.json", pins, tmp_path / "a.sock", *args)
    try:
        first.wait_log(lambda e: e.get("event") == "running", timeout=120)
        for i in range(3):
            assert lab.swaks("--to", "rcpt@lab.example", "--from", f"s{i}@lab.example").returncode == 0
        wait_for(lambda: [h for h in first.cli("stats")["hosts"] if h["host"] == CLIENT_V4 and h["total"] == 3],
                 "3 connections counted")
        written = first.cli("status")["snapshots"]["written"]
        # two more: one of them began after the third connection was counted
        wait_for(lambda: first.cli("status")["snapshots"]["written"] >= written + 2, "two more snapshots")
        assert oct(state_file.stat().st_mode & 0o777) == "0o600"
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    finally:
        first.stop()
    again = SensorProcess(lab, tmp_path / "r2.json", pins, tmp_path / "b.sock", *args)
    try:
        again.wait_log(lambda e: e.get("event") == "running", timeout=120)
        restored = again.wait_log(lambda e: e.get("event") == "statistics snapshot", timeout=5)
        assert "restored 1 hosts" in restored["message"], restored
        (host,) = [h for h in again.cli("stats")["hosts"] if h["host"] == CLIENT_V4]
        assert host["total"] == 3
        assert again.stop() == 0
    finally:
        again.stop()
    assert xdp_prog_id(lab) is None
