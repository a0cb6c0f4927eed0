"""An EVE file written by ``smtp-sensor replay`` with an ``[[output]] type =
"eve"`` table, read by a real consumer of Suricata's eve.json from PyPI:
suricatalog (its eve.json reader, its alert filter, the row its alert
table shows)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from pathlib import Path

from sensor.cli import main
from support.captures import PCAPS_DIR

REPO = Path(__file__).resolve().parents[2]


def test_suricatalog_reads_the_alerts_of_an_eve_file(tmp_path, capsys):
    from suricatalog.alert_apps import BaseAlertApp
    from suricatalog.filter import OnlyAlertsFilter
    from suricatalog.log import EveLogHandler

    eve = tmp_path / "eve.json"
    config = tmp_path / "config.toml"
    config.write_text(f'[sensor]\nrules = "{REPO / "rules"}"\n\n[[output]]\ntype = "eve"\npath = "{eve}"\n')
    assert main(["replay", str(PCAPS_DIR / "haka__smtp.pcap"), "-c", str(config)]) == 0
    assert capsys.readouterr().out == ""          # [[output]] given: nothing on stdout
    ours = [json.loads(line) for line in eve.read_text().splitlines()]
    expected = [r for r in ours if r["event_type"] == "alert"]
    assert expected

    only_alerts = OnlyAlertsFilter()
    only_alerts.timestamp = datetime(2000, 1, 1, tzinfo=timezone.utc)   # the capture is from 2014
    read = list(EveLogHandler().get_events(eve_files=[eve], data_filter=only_alerts))
    assert read == expected
    row = asyncio.run(BaseAlertApp.extract_from_alert(read[0]))
    assert row["signature"] == "forbidden mail domain" and row["severity"] == 3
    assert (row["src_ip"], row["dest_ip"], row["dest_port"], row["protocol"]) == (
        "192.168.10.10", "192.168.20.1", "25", "smtp")
