"""--monitor-only (a SPAN/mirror port): verdicts are logged as what would have
been done ("enforced_by": "monitor") and nothing is dropped: the banned
sender's mail arrives, the kernel drops nothing, the flow stays inspected."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.lab import CLIENT_V4, Lab

from record_schemas import check

pytestmark = pytest.mark.lab
CLI = [sys.executable, "-m", "sensor.cli"]
RULES = Path(__file__).resolve().parents[1] / "rules"


def test_monitor_only_logs_verdicts_and_drops_nothing(lab_prereqs, test_pin_root, tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    records = tmp_path / "records.json"
    journal = tmp_path / "journal.jsonl"
    with Lab() as lab:
        lab.start_server(journal=journal)
        proc = subprocess.Popen([*CLI, "--log-format", "json", "run", "-i", lab.server_if, "--netns", lab.server_ns,
                                 "--pin-dir", str(test_pin_root / "monitor" / "v1"), "--monitor-only",
                                 "--rules", str(rules), "-o", str(records),
                                 "--control-socket", str(tmp_path / "control.sock")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                if '"running"' in line:
                    break
            result = lab.swaks("--from", "mallory@spam.example", "--to", "bob@example.net", source=CLIENT_V4)
            assert result.returncode == 0, result.stdout[-1500:]     # nothing stopped it
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        stopped = [json.loads(line) for line in out.splitlines() if '"stopped"' in line][-1]
        assert stopped["counters"]["ingress"]["drop_flow"] == 0
        assert stopped["counters"]["egress"]["drop_flow"] == 0
    recs = [json.loads(line) for line in records.read_text().splitlines()]
    for rec in recs:
        check(rec)
    (alert,) = [r for r in recs if r["event_type"] == "alert"]
    assert alert["alert"]["signature"] == "forbidden mail domain"
    (drop,) = [r for r in recs if r["event_type"] == "drop"]
    assert drop["enforced_by"] == "monitor" and drop["action"] == "drop_flow"
    (smtp,) = [r for r in recs if r["event_type"] == "smtp"]
    assert smtp["mailfrom"] == "mallory@spam.example" and smtp["delivered"] is True
    assert any(json.loads(line).get("mail_from") == "mallory@spam.example"
               for line in journal.read_text().splitlines())
