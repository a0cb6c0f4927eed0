"""Every shipped capture replayed through the pipeline into Zeek logs, TSV and
JSON, read back with parsezeeklogs and checked field by field against the
records the same replay wrote: smtp.log against the smtp records, files.log
against the files records, weird.log against the anomalies Zeek would call
weirds; the Haka seed's rule alert in notice.log."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensor.assembly import Userland
from sensor.config import Config, SensorConfig
from sensor.inputs.replay import replay
from sensor.outputs.zeek import NOT_WEIRD, WEIRD_NAMES, ZeekLogs
from sensor.records.sinks import ListSink
from support.captures import PCAPS_DIR
from support.zeek_logs import Clock, read_log

RULES = Path(__file__).resolve().parents[2] / "rules"
CAPTURES = sorted(PCAPS_DIR.glob("*.pcap"))
SMTP_SAME = ("uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "trans_depth", "helo", "rcptto",
             "date", "from", "to", "cc", "reply_to", "msg_id", "in_reply_to", "subject", "x_originating_ip",
             "first_received", "second_received", "last_reply", "path", "user_agent", "tls")
FILES_SAME = ("fuid", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "source", "depth",
              "mime_type", "filename", "is_orig", "seen_bytes", "total_bytes", "md5", "sha1", "sha256")


def replay_into_zeek(capture, folder, fmt, config=None):
    """Replay ``capture`` once, its records both kept and written as Zeek logs."""
    records = ListSink()
    zeek = ZeekLogs(folder, format=fmt, clock=Clock(1796181017.0))

    def tee(record):
        records(record)
        zeek(record)

    replay(capture, Userland(config or Config(), tee))
    zeek.close()
    return records, zeek


def logged(folder, log) -> list[dict]:
    path = folder / f"{log}.log"
    return read_log(path) if path.exists() else []


def ts_of(row_ts, fmt):
    return row_ts if fmt == "json" else round(row_ts, 6)


@pytest.mark.parametrize("fmt", ["tsv", "json"])
@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.stem)
def test_smtp_files_and_weird_logs_hold_the_records_of_each_capture(tmp_path, capture, fmt):
    records, zeek = replay_into_zeek(capture, tmp_path, fmt)

    smtp = logged(tmp_path, "smtp")
    assert len(smtp) == len(records.of("smtp")) == zeek.written["smtp"]
    for row, rec in zip(smtp, records.of("smtp")):
        assert row["ts"] == ts_of(rec["ts"], fmt)
        for name in SMTP_SAME:
            assert row.get(name) == rec.get(name), name
        assert row.get("mailfrom") == (rec.get("mailfrom") or None)    # <>: unset, as Zeek
        assert row["fuids"] == rec.get("fuids", [])

    files = logged(tmp_path, "files")
    assert len(files) == len(records.of("files"))
    for row, rec in zip(files, records.of("files")):
        assert row["ts"] == ts_of(rec["ts"], fmt)
        for name in FILES_SAME:
            assert row.get(name) == rec.get(name), name
        assert row["analyzers"] == [h.upper() for h in ("md5", "sha1", "sha256") if h in rec]

    weirds = [rec for rec in records.of("anomaly")
              if rec["layer"] != "sensor" and rec["name"] not in NOT_WEIRD]
    rows = logged(tmp_path, "weird")
    assert len(rows) == len(weirds)
    for row, rec in zip(rows, weirds):
        assert row["name"] == WEIRD_NAMES.get(rec["name"], rec["name"])
        assert row.get("uid") == rec.get("uid") and row.get("id.orig_h") == rec.get("id.orig_h")
        assert (row.get("addl") or "").endswith(rec.get("detail", ""))
    assert sum(zeek.written.values()) + sum(zeek.not_written.values()) == len(records)


def test_the_captures_give_every_zeek_log_but_notice_and_some_weirds_by_zeeks_names(tmp_path):
    seen, names = set(), set()
    for n, capture in enumerate(CAPTURES):
        folder = tmp_path / str(n)
        folder.mkdir()
        replay_into_zeek(capture, folder, "tsv")
        seen |= {p.stem for p in folder.glob("*.log")}
        names |= {row["name"] for row in logged(folder, "weird")}
    assert seen == {"smtp", "files", "weird"}
    assert "line_terminated_with_single_LF" in names           # a Zeek name ...
    assert "MISSING_ANGLE_BRACKETS" in names                   # ... and one of ours


def test_the_haka_rule_alert_is_a_notice_and_its_drop_has_no_zeek_log(tmp_path):
    config = Config(sensor=SensorConfig(rules=RULES, enforce=True))
    records, zeek = replay_into_zeek(PCAPS_DIR / "haka__smtp.pcap", tmp_path, "tsv", config)
    (alert,) = records.of("alert")
    (row,) = logged(tmp_path, "notice")
    assert row["note"] == "Rule::spam_filter.mail_from" and row["msg"] == "forbidden mail domain"
    assert row["uid"] == alert["uid"] and row["src"] == alert["src_ip"] and row["p"] == alert["dest_port"]
    assert zeek.not_written["drop"] == len(records.of("drop")) >= 1
