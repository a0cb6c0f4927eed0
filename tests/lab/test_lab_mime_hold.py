"""A verdict on an attachment stops the message before the MTA commits it:
the real sensor (`smtp-sensor run`, the shipped rules with ``[attachments]
drop = true``, so the commit hold is on) on the lab server's veth, aiosmtpd
on port 25, and a client that writes its whole session (EHLO to QUIT, the
message carrying a program) in one ``sendall`` before reading any reply.
The attachment's entity ends at the boundary before the end of data, in the
segment the kernel holds: the drop must land before the release, so
aiosmtpd's journal has nothing from the sender; the same session with a PDF
in place of the program is delivered."""

from __future__ import annotations

import shutil
from email.message import EmailMessage

import pytest
from support import mime_samples as S
from support.lab_hold import (
    CounterDelta,
    PipelinedClient,
    ServerTap,
    assert_stopped,
    end_offset,
    envelope,
    wait_committed,
)
from support.lab_sensor import REPO, SensorProcess

from sensor.kernel import abi
from sensor.lab.network import CLIENT_V4
from sensor.service.control import ControlClient


@pytest.fixture(scope="module")
def sensor(lab, test_pin_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("mime-hold")
    rules = work / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    toml = (rules / "rules.toml").read_text()
    assert "[attachments]\n# drop the connection carrying an executable attachment (else alert only)\ndrop = false" in toml
    (rules / "rules.toml").write_text(toml.replace("drop = false", "drop = true"))
    proc = SensorProcess(lab, work / "records.json", test_pin_root / "mime-hold" / f"v{abi.ABI_VERSION}",
                         work / "control.sock", "--rules", str(rules))
    proc.control_client = ControlClient(work / "control.sock")
    try:
        proc.wait_log(lambda e: e.get("event") == "running", timeout=90)
        yield proc
    finally:
        proc.stop()


def session(sender: str, name: str, data: bytes) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = "user@lab.example"
    m["Subject"] = "the file"
    m.set_content("Here it is.\n")
    m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    message = m.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return envelope(sender) + message + b".\r\nQUIT\r\n"


def test_a_message_carrying_a_program_is_stopped_before_the_commit(lab, sensor):
    sender = "exe@allowed.example"
    stream = session(sender, "tool.exe", S.EXE)
    counters = CounterDelta(sensor.control_client)
    with ServerTap(lab) as tap, PipelinedClient(lab, 25) as client:
        client.send(stream)
        assert_stopped(lab, sensor, counters, tap, 25, CLIENT_V4, client.port, end_offset(stream), sender,
                       rule_id="attachments.executable")
    alert = sensor.wait_record(lambda r: r["event_type"] == "alert" and r["alert"]["metadata"].get("filename")
                               == "tool.exe", timeout=10)
    assert alert["alert"]["signature_id"] == "attachments.executable"


def test_the_same_session_with_a_pdf_is_delivered(lab, sensor):
    sender = "pdf@allowed.example"
    stream = session(sender, "report.pdf", S.PDF)
    with PipelinedClient(lab, 25) as client:
        client.send(stream)
        assert client.read_until(b"221 ", timeout=15), client.received[-500:]
    assert len(wait_committed(lab, 25, sender)) == 1
    files = sensor.wait_record(lambda r: r["event_type"] == "files" and r.get("filename") == "report.pdf",
                               timeout=10)
    assert files["mime_type"] == "application/pdf" and files["total_bytes"] == len(S.PDF)
