"""AUTH outcomes and SMTP on another port, from real sessions in the netns lab.

aiosmtpd (``sensor.lab.server --auth``) listens on 587 and, without AUTH, on
2525; a capture on the server's veth records the wire; ``smtp-sensor replay``
of that capture (the real CLI, with a copy of the shipped rules) must find:

* every AUTH exchange the server journalled, with the outcome it gave (its
  535 for a wrong password, its 235 for the right one), and the shipped
  brute force rule's alerts: one connection trying five passwords, and one
  client failing once in each of many connections (password spraying);
* the session on 2525, found by content, with what the server journalled
  as delivered; with ``--ports-only`` nothing of it.

Credentials never appear in the records.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.lab.network import CLIENT_V4, SERVER_V4, Lab
from sensor.lab.server import LAB_PASSWORD, LAB_USER
from support.lab_capture import Capture

REPO = Path(__file__).resolve().parents[2]
WRONG = "not-the-Passw0rd"
SPRAYED = 6


@pytest.fixture(scope="module")
def lab(lab_prereqs, tmp_path_factory):
    work = tmp_path_factory.mktemp("auth-ports")
    with Lab() as lab:
        lab.journal = work / "journal.jsonl"
        lab.start_server(journal=lab.journal, port=587, auth=True)
        lab.start_server(journal=lab.journal, port=2525)
        lab.work = work
        yield lab


def journal(lab) -> list[dict]:
    return [json.loads(line) for line in lab.journal.read_text().splitlines()]


def read_reply(sock) -> bytes:
    data = b""
    while not re.search(rb"(?m)^\d{3} [^\r\n]*\r\n\Z", data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def one_connection_many_passwords(lab, tries: int) -> list[bytes]:
    """One session trying ``tries`` wrong passwords, then the right one: the
    server's replies to each AUTH."""
    replies = []
    with lab.connect(SERVER_V4, 587) as sock:
        read_reply(sock)
        sock.sendall(b"EHLO brute.example\r\n")
        read_reply(sock)
        for password in [WRONG + str(i) for i in range(tries)] + [LAB_PASSWORD]:
            blob = base64.b64encode(f"\0{LAB_USER}\0{password}".encode())
            sock.sendall(b"AUTH PLAIN " + blob + b"\r\n")
            replies.append(read_reply(sock))
        sock.sendall(b"QUIT\r\n")
        read_reply(sock)
    return replies


def replay(lab, capture: Path, rules: Path, *extra: str) -> tuple[list[dict], str]:
    out = lab.work / f"replay-{capture.stem}.json"
    result = subprocess.run([sys.executable, "-m", "sensor.cli", "replay", str(capture), "--rules", str(rules),
                             "-o", str(out), *extra], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in out.read_text().splitlines()], result.stderr


@pytest.fixture
def rules(tmp_path):
    """The shipped rules; [auth_bruteforce] per_client lowered for a short test."""
    folder = tmp_path / "rules"
    shutil.copytree(REPO / "rules", folder)
    toml = folder / "rules.toml"
    toml.write_text(re.sub(r"(?m)^per_client = .*$", f"per_client = {SPRAYED}", toml.read_text()))
    return folder


def test_auth_outcomes_and_brute_force_from_real_sessions(lab, rules):
    capture = Capture(lab, lab.server_ns, lab.server_if, lab.work / "auth.pcap")
    try:
        replies = one_connection_many_passwords(lab, 4)
        for _ in range(SPRAYED):
            result = lab.swaks("--port", "587", "--auth", "PLAIN", "--auth-user", LAB_USER,
                               "--auth-password", WRONG, "--from", "alice@example.org",
                               "--to", "bob@example.net", source=CLIENT_V4, timeout=20)
            assert result.returncode != 0 and "535" in result.stdout
        result = lab.swaks("--port", "587", "--auth", "LOGIN", "--auth-user", LAB_USER,
                           "--auth-password", LAB_PASSWORD, "--from", "alice@example.org",
                           "--to", "bob@example.net", source=CLIENT_V4, timeout=20)
        assert result.returncode == 0, result.stdout[-1500:]
    finally:
        path = capture.stop()
    assert [r[:3] for r in replies] == [b"535"] * 4 + [b"235"]

    records, _ = replay(lab, path, rules)
    truth = [e for e in journal(lab) if e["kind"] == "auth"]
    assert [e["success"] for e in truth] == [False] * 4 + [True] + [False] * SPRAYED + [True]

    # the delivered message's record: the connection's exchange succeeded
    (smtp,) = [r for r in records if r["event_type"] == "smtp" and r.get("delivered")]
    assert (smtp["auth_success"], smtp["auth_result"], smtp["auth_mechanism"], smtp["auth_code"],
            smtp["auth_attempts"], smtp["auth_failures"]) == (True, "success", "LOGIN", 235, 1, 0)

    alerts = [r["alert"] for r in records if r["event_type"] == "alert"]
    by_id = {}
    for a in alerts:
        by_id.setdefault(a["signature_id"], []).append(a)
    (conn,) = by_id["auth_bruteforce.connection"]
    assert conn["metadata"]["auth_failures"] == 3 and conn["metadata"]["auth_code"] == 535
    (client,) = by_id["auth_bruteforce.client"]
    assert client["sources"] == [CLIENT_V4]
    assert client["metadata"]["auth_failures"] == SPRAYED
    text = json.dumps(records)
    for secret in (LAB_PASSWORD, WRONG, base64.b64encode(f"\0{LAB_USER}\0{LAB_PASSWORD}".encode()).decode()):
        assert secret not in text


def test_a_session_on_2525_is_found_by_content(lab, rules):
    capture = Capture(lab, lab.server_ns, lab.server_if, lab.work / "port2525.pcap")
    try:
        result = lab.swaks("--port", "2525", "--from", "carol@example.org", "--to", "dan@example.net",
                           source=CLIENT_V4, timeout=20)
        assert result.returncode == 0, result.stdout[-1500:]
    finally:
        path = capture.stop()
    delivered = [e for e in journal(lab) if e["kind"] == "message" and e["mail_from"] == "carol@example.org"]
    assert len(delivered) == 1

    records, summary = replay(lab, path, rules)
    (smtp,) = [r for r in records if r["event_type"] == "smtp"]
    assert (smtp["id.resp_p"], smtp["mailfrom"], smtp["rcptto"], smtp["delivered"]) == \
        (2525, "carol@example.org", ["dan@example.net"], True)
    assert "1 found by content" in summary
    records, summary = replay(lab, path, rules, "--ports-only")
    assert records == [] and "0 SMTP flows" in summary
