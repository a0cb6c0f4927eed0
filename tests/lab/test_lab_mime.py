"""MIME over real SMTP sessions: swaks sends attachments it encodes itself
(--attach) and a message of nested entities built by the email package
(--data) to a real Postfix in the lab; the wire is captured, and the replay of the
capture (the shipped rules loaded) must give each entity's name, type and
hashes as sent, the URLs, and the shipped rule's alerts.

``MIME_CAPTURE_OUT=path`` keeps the capture: that is how
tests/data/pcaps/lab__mime.pcap was made (its golden file and
tests/offline/test_mime_capture.py check it without the lab)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support import mime_samples as S
from support.lab_capture import Capture
from support.mime_samples import check_samples, records_of
from support.prereqs import missing

from sensor.inputs.pcapfile import read_packets
from sensor.inputs.pcapwriter import PcapWriter
from sensor.stream.packet import decode


@pytest.fixture(scope="module")
def lab(lab_prereqs):
    """A real Postfix on port 25 (it writes each reply whole: the capture's
    replies are one segment each, as tshark's cross-check wants them)."""
    from sensor.lab.network import Lab

    if not shutil.which("postfix"):
        missing("postfix (installed by ./run setup)")
    with Lab() as lab:
        lab.start_postfix(tls=False)
        yield lab


def send_samples(lab, work: Path) -> None:
    """The two sessions of lab__mime.pcap."""
    (work / "tool.exe").write_bytes(S.EXE)
    (work / "photos.zip").write_bytes(S.ZIP)
    (work / "complex.eml").write_bytes(S.complex_message())
    r = lab.swaks("--from", "alice@lab.example", "--to", "user@lab.example",
                  "--header", "Subject: tools", "--body", "See http://lab.example/tools for more.",
                  "--attach-type", "application/octet-stream", "--attach", f"@{work / 'tool.exe'}",
                  "--attach-type", "application/zip", "--attach", f"@{work / 'photos.zip'}")
    assert r.returncode == 0, r.stdout + r.stderr
    r = lab.swaks("--from", "alice@lab.example", "--to", "user@lab.example",
                  "--data", f"@{work / 'complex.eml'}")
    assert r.returncode == 0, r.stdout + r.stderr


def keep_tcp(src: Path, dst: Path) -> None:
    packets = list(read_packets(src))
    writer = PcapWriter(dst, packets[0][1])
    for ts, linktype, frame, wirelen in packets:
        if decode(linktype, frame, wirelen) is not None:
            writer.write(ts, frame, wirelen)
    writer.close()


def test_attachments_sent_by_swaks_are_named_typed_and_hashed_in_the_replay(lab, tmp_path):
    capture = Capture(lab, lab.server_ns, lab.server_if, tmp_path / "wire.pcap")
    try:
        send_samples(lab, tmp_path)
    finally:
        capture.stop()
    out = os.environ.get("MIME_CAPTURE_OUT")
    if out:                       # TCP frames only: the namespace's ARP and IPv6 noise left out
        keep_tcp(tmp_path / "wire.pcap", Path(out))
    check_samples(records_of(tmp_path / "wire.pcap"))
