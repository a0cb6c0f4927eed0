"""Outputs chosen by configuration, live: `smtp-sensor run -c config.toml`
on the lab server's veth with three `[[output]]` tables beside `-o` (EVE to
a file, Zeek's logs to a folder, EVE alerts and drops to a Unix datagram
socket the test reads) and the repo's rules. A real swaks session from a
banned sender: every output has its records, the EVE ones valid against
Suricata's schema; after a rename and
SIGUSR1 every file output writes to a new file at its path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from sensor.kernel import abi
from sensor.outputs.eve import flow_id
from support.eve_schema import check_eve
from support.lab_sensor import SensorProcess

REPO = Path(__file__).resolve().parents[2]
BANNED_SENDER = "carol@spam.example"       # rules/rules.toml: spam_filter's banned_domains


def datagrams(sock: socket.socket, until, timeout: float = 10.0) -> list[dict]:
    got, deadline = [], time.monotonic() + timeout
    while not until(got):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(json.loads(sock.recv(65536)))
        except socket.timeout:
            pytest.fail(f"no such datagram within {timeout} s; got {got}", pytrace=False)
    return got


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-workers"])
def outputs_sensor(request, lab, test_pin_root, tmp_path_factory):
    """The sensor alone, or a supervisor whose two workers' records reach the
    outputs through it (sensor.service.relay.RecordLines)."""
    work = tmp_path_factory.mktemp("outputs-sensor")
    (work / "zeek").mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(work / "alerts.sock"))
    config = work / "config.toml"
    config.write_text(f'[sensor]\nrules = "{REPO / "rules"}"\n\n'
                      '[[output]]\ntype = "eve"\npath = "eve.json"\n\n'
                      '[[output]]\ntype = "zeek"\ndirectory = "zeek"\n\n'
                      '[[output]]\ntype = "eve"\nsocket = "alerts.sock"\nevent_types = ["alert", "drop"]\n')
    proc = SensorProcess(lab, work / "records.json", test_pin_root / "outputs" / f"v{abi.ABI_VERSION}",
                         work / "control.sock", "-c", str(config), workers=request.param)
    proc.work, proc.listener = work, listener
    try:
        ready = "running" if request.param == 1 else "supervising"
        proc.wait_log(lambda e: e.get("event") == ready, timeout=90)
        yield proc
    finally:
        proc.stop()
        listener.close()


@pytest.mark.lab
def test_every_output_gets_the_live_records(lab, outputs_sensor):
    sensor = outputs_sensor
    result = lab.swaks("--from", "erin@allowed.example", "--to", "bob@example.net", "--timeout", "5", timeout=30)
    assert result.returncode == 0, result.stdout[-1500:]
    smtp = sensor.wait_record(lambda r: r["event_type"] == "smtp" and r.get("mailfrom") == "erin@allowed.example",
                              timeout=20)
    result = lab.swaks("--from", BANNED_SENDER, "--to", "bob@example.net", "--timeout", "5", timeout=30)
    assert result.returncode != 0                            # dropped by spam_filter
    drop = sensor.wait_record(lambda r: r["event_type"] == "drop")
    # the socket: the alert and the drop, nothing else
    sent = datagrams(sensor.listener, lambda got: any(r["event_type"] == "drop" for r in got))
    assert {r["event_type"] for r in sent} == {"alert", "drop"}
    for record in sent:
        check_eve(record)
        assert record["flow_id"] == flow_id(drop["uid"]) and "in_iface" not in record
    # the EVE file: every record of the native file, each valid
    deadline = time.monotonic() + 10
    while True:
        eve = [json.loads(line) for line in (sensor.work / "eve.json").read_text().splitlines()]
        if len(eve) >= len(sensor.records()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(eve) == len(sensor.records())
    for record in eve:
        check_eve(record)
    assert {"smtp", "alert", "drop"} <= {r["event_type"] for r in eve}
    # Zeek's smtp.log has the allowed session (flushed by the loop's next tick)
    smtp_log = sensor.work / "zeek" / "smtp.log"
    deadline = time.monotonic() + 5
    while smtp["uid"] not in smtp_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert smtp["uid"] in smtp_log.read_text() and smtp_log.read_text().startswith("#separator \\x09")
    status = sensor.cli("status")
    assert status["outputs"]["written"][str(sensor.work / "eve.json")] == len(eve)


@pytest.mark.lab
def test_sigusr1_reopens_every_output(lab, outputs_sensor):
    sensor = outputs_sensor
    work = sensor.work
    os.rename(work / "eve.json", work / "eve.json.1")
    mark = sensor.mark()
    sensor.proc.send_signal(signal.SIGUSR1)
    reopened = sensor.wait_log(lambda e: e.get("event") == "files reopened" and "worker" not in e, after=mark)
    assert {str(work / "eve.json"), str(work / "zeek"), f"unix_dgram:{work / 'alerts.sock'}",
            str(work / "records.json")} <= set(reopened["files"])
    assert list((work / "zeek").glob("smtp.*.log"))          # Zeek's logs rotated
    result = lab.swaks("--from", "dave@allowed.example", "--to", "bob@example.net", "--timeout", "5", timeout=30)
    assert result.returncode == 0, result.stdout[-1500:]
    sensor.wait_record(lambda r: r["event_type"] == "smtp" and r.get("mailfrom") == "dave@allowed.example",
                       timeout=20)
    deadline = time.monotonic() + 10
    while not (work / "eve.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    new = [json.loads(line) for line in (work / "eve.json").read_text().splitlines()]
    assert any(r.get("smtp", {}).get("mail_from") == "<dave@allowed.example>" for r in new)
    old = (work / "eve.json.1").read_text()
    assert "dave@allowed.example" not in old
    shutil.rmtree(work / "zeek", ignore_errors=True)
