"""--monitor-only (a SPAN/mirror port): verdicts are logged as what would have
been done ("enforced_by": "monitor") and nothing is dropped: the banned
sender's mail arrives, the kernel drops nothing, the flow stays inspected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sensor.lab.network import CLIENT_V4, Lab
from support.lab_sensor import SensorProcess
from support.record_schemas import check

RULES = Path(__file__).resolve().parents[2] / "rules"


def test_monitor_only_logs_verdicts_and_drops_nothing(lab_prereqs, test_pin_root, tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    records = tmp_path / "records.json"
    journal = tmp_path / "journal.jsonl"
    with Lab() as lab:
        lab.start_server(journal=journal)
        sensor = SensorProcess(lab, records, test_pin_root / "monitor" / "v1", tmp_path / "control.sock",
                               "--monitor-only", "--rules", str(rules))
        try:
            sensor.wait_log(lambda e: e.get("event") == "running", timeout=90)
            result = lab.swaks("--from", "mallory@spam.example", "--to", "bob@example.net", source=CLIENT_V4)
            assert result.returncode == 0, result.stdout[-1500:]     # nothing stopped it
            sensor.wait_record(lambda r: r["event_type"] == "smtp")
        finally:
            rc = sensor.stop(timeout=30)
        assert rc == 0, sensor.describe()
        stopped = sensor.wait_log(lambda e: e.get("event") == "stopped")
        assert stopped["counters"]["ingress"]["drop_flow"] == 0
        assert stopped["counters"]["egress"]["drop_flow"] == 0
    recs = sensor.records()
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
