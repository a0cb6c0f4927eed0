"""MIME over real SMTP sessions: swaks sends attachments it encodes itself
(--attach) and a message of nested entities built by the email package
(--data) to aiosmtpd in the lab; the wire is captured, and the replay of the
capture (the shipped rules loaded) must give each entity's name, type and
hashes as sent, the URLs, and the shipped rule's alerts.

``MIME_CAPTURE_OUT=path`` keeps the capture: that is how
tests/data/pcaps/lab__mime.pcap was made (its golden file and
tests/offline/test_mime_capture.py check it without the lab)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from support import mime_samples as S
from support.lab_capture import Capture
from support.mime_samples import check_samples, records_of


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


def test_attachments_sent_by_swaks_are_named_typed_and_hashed_in_the_replay(lab, tmp_path):
    capture = Capture(lab, lab.server_ns, lab.server_if, tmp_path / "wire.pcap")
    try:
        send_samples(lab, tmp_path)
    finally:
        capture.stop()
    out = os.environ.get("MIME_CAPTURE_OUT")
    if out:
        shutil.copy(tmp_path / "wire.pcap", out)
    check_samples(records_of(tmp_path / "wire.pcap"))
