"""The commit hold against a real Postfix when things go wrong: a control
plane that stops (the kernel fails open after hold_max_ms: mail is delayed,
never lost), and clients that send BDAT although the sensor masked CHUNKING
in Postfix's EHLO reply (held: a banned sender commits nothing, a legitimate
one is delivered).

The sensor is the real CLI (`smtp-sensor run --rules`, the shipped rules) on
the server's veth; what Postfix committed is read from its own log."""

from __future__ import annotations

import os
import signal
import time

import pytest

from sensor.kernel import abi
from sensor.lab.network import CLIENT_V4, Lab
from support.lab_hold import start_sensor


@pytest.fixture(scope="module")
def lab(lab_prereqs):
    with Lab() as lab:
        lab.postfix = lab.start_postfix(tls=False)
        yield lab


@pytest.fixture(scope="module")
def sensor(lab, test_pin_root, tmp_path_factory):
    proc = start_sensor(lab, tmp_path_factory.mktemp("hold-faults"),
                        test_pin_root / "hold-faults" / f"v{abi.ABI_VERSION}")
    try:
        yield proc
    finally:
        proc.stop()


def kernel(sensor) -> dict:
    return sensor.cli("status")["counters"]["ingress"]


def committed(lab, sender: str, since: int) -> list[str]:
    """Postfix's log lines of messages it queued from ``sender`` since the mark."""
    return [line for line in lab.postfix.log_lines()[since:] if f"from=<{sender}>" in line]


def test_a_stopped_control_plane_delays_mail_by_about_hold_max_and_loses_none(lab, sensor):
    before = kernel(sensor)["hold_timeout"]
    mark, log_mark = lab.postfix.mark(), sensor.mark()
    os.kill(sensor.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = lab.swaks("--from", "patient@example.org", "--to", "user@lab.example", source=CLIENT_V4,
                           timeout=30)
        took = time.monotonic() - started
    finally:
        os.kill(sensor.proc.pid, signal.SIGCONT)
    assert result.returncode == 0 and "250 2.0.0 Ok: queued" in result.stdout, result.stdout[-1500:]
    lab.postfix.wait_for_log(r"to=<user@lab\.example>.*status=sent", since=mark)
    assert committed(lab, "patient@example.org", mark)
    # nobody released the end of data: the kernel let its retransmission pass after hold_max_ms
    assert kernel(sensor)["hold_timeout"] >= before + 1
    assert took >= 0.4, took                     # held at least hold_max_ms (400) before it passed
    sensor.wait_log(lambda e: e.get("event", "").startswith("held segments passed unjudged"), log_mark)


@pytest.mark.parametrize("pipeline", [False, True], ids=["lockstep", "pipelined"])
def test_a_banned_sender_forcing_bdat_past_the_masked_chunking_commits_nothing(lab, sensor, pipeline):
    sender = f"bdat-{int(pipeline)}@spam.example"
    mark = lab.postfix.mark()
    result = lab.bdat_client("--size", "2000", "--force", mail_from=sender, to=("user@lab.example",),
                             chunk_size=600, pipeline=pipeline, source=CLIENT_V4, timeout=15)
    assert result.returncode != 0, result.stdout[-1500:]
    assert "XXXXXXXX" in result.stdout                   # the EHLO reply it read: CHUNKING masked
    sensor.wait_record(lambda r: r["event_type"] == "drop" and r.get("mailfrom") == sender
                       or r["event_type"] == "alert" and r.get("smtp", {}).get("mail_from") == sender)
    time.sleep(0.5)                                      # what Postfix would log after a commit
    assert not committed(lab, sender, mark)
    assert "queued as" not in result.stdout


def test_a_legitimate_client_forcing_bdat_is_held_chunk_by_chunk_and_delivered(lab, sensor):
    sender = "bdat-ok@example.org"
    mark = lab.postfix.mark()
    before = sensor.cli("status")["hold"]["releases"]
    result = lab.bdat_client("--size", "3000", "--force", mail_from=sender, to=("user@lab.example",),
                             chunk_size=1000, source=CLIENT_V4, timeout=30)
    assert result.returncode == 0, result.stdout[-1500:]
    lab.postfix.wait_for_log(r"to=<user@lab\.example>.*status=sent", since=mark)
    assert committed(lab, sender, mark)
    # every BDAT line and, inside a chunk, every segment was held and released
    assert sensor.cli("status")["hold"]["releases"] >= before + 3
