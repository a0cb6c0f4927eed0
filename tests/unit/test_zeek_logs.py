"""sensor.outputs.zeek with hand-made records: Zeek's header, columns, markers
and escapes in TSV, Zeek's JSON, the weird mapping, what no log takes,
rotation (interval, reopen, close, a leftover log, a log moved away), and the
user errors.  Logs are read back with parsezeeklogs (support.zeek_logs)."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.errors import SensorError
from sensor.outputs.zeek import (LOGS, WEIRD_NAMES, LogSpec, ZeekLogs, ZeekLogsError, next_rotation,
                                 rotated_name, tsv_line)
from support.zeek_logs import (CONN, Clock, alert_record, anomaly_record, drop_record, files_record,
                               header, local, notice_record, read_log, smtp_record)

T0 = local(2026, 12, 2, 5, 13, 27)


def stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d-%H-%M-%S", time.localtime(t))


def zeek(tmp_path, **kw) -> ZeekLogs:
    kw.setdefault("clock", Clock(T0))
    return ZeekLogs(tmp_path, **kw)


def body(path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]


def one_smtp(tmp_path, fmt="tsv", **fields) -> dict:
    with zeek(tmp_path, format=fmt) as z:
        z.write(smtp_record(**fields))
    (row,) = read_log(tmp_path / "smtp.log")
    return row


# ------------------------------------------------------------------ TSV as Zeek writes it

def test_tsv_header_is_zeeks_and_smtp_columns_are_zeeks_in_its_order(tmp_path):
    clock = Clock(T0)
    z = zeek(tmp_path, clock=clock)
    z.write(smtp_record())
    clock.now = T0 + 5
    z.close()
    lines = (tmp_path / "smtp.log").read_text().splitlines()
    assert lines[:6] == ["#separator \\x09", "#set_separator\t,", "#empty_field\t(empty)",
                         "#unset_field\t-", "#path\tsmtp", f"#open\t{stamp(T0)}"]
    assert lines[6].split("\t") == ["#fields", "ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h",
                                    "id.resp_p", "trans_depth", "helo", "mailfrom", "rcptto", "date",
                                    "from", "to", "cc", "reply_to", "msg_id", "in_reply_to", "subject",
                                    "x_originating_ip", "first_received", "second_received",
                                    "last_reply", "path", "user_agent", "tls", "fuids"]
    assert lines[7].split("\t") == ["#types", "time", "string", "addr", "port", "addr", "port", "count",
                                    "string", "string", "set[string]", "string", "string",
                                    "set[string]", "set[string]", "string", "string", "string",
                                    "string", "addr", "string", "string", "string", "vector[addr]",
                                    "string", "bool", "vector[string]"]
    assert lines[-1] == f"#close\t{stamp(T0 + 5)}"
    assert len(lines) == 10


def test_files_notice_and_weird_columns_are_zeeks():
    assert LOGS["files"].names[:13] == ("ts", "fuid", "uid", "id.orig_h", "id.orig_p", "id.resp_h",
                                        "id.resp_p", "source", "depth", "analyzers", "mime_type",
                                        "filename", "duration")
    assert LOGS["notice"].names[:21] == ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p",
                                         "fuid", "file_mime_type", "file_desc", "proto", "note", "msg",
                                         "sub", "src", "dst", "p", "n", "peer_descr", "actions",
                                         "email_dest", "suppress_for")
    assert LOGS["weird"].names == ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p",
                                   "name", "addl", "notice", "peer", "source")


def test_tsv_cells_unset_empty_sets_times_bools(tmp_path):
    with zeek(tmp_path) as z:
        z.write(smtp_record(ts=1733385184.5, subject=""))
    (line,) = body(tmp_path / "smtp.log")
    cells = dict(zip(LOGS["smtp"].names, line.split("\t")))
    assert cells["ts"] == "1733385184.500000"
    assert cells["id.resp_p"] == "25" and cells["trans_depth"] == "1"
    assert cells["rcptto"] == "bob@example.net,carol@example.net"
    assert cells["path"] == "198.51.100.25,192.0.2.10"
    assert cells["subject"] == "(empty)"                 # an empty string
    assert cells["to"] == "-" and cells["date"] == "-"   # not in the record: unset
    assert cells["fuids"] == "(empty)"                  # Zeek's default: an empty vector
    assert cells["tls"] == "F"


def test_null_sender_leaves_mailfrom_unset_as_zeek_does(tmp_path):
    assert one_smtp(tmp_path, mailfrom="")["mailfrom"] is None


@pytest.mark.parametrize("value, cell", [
    ("a\tb", "a\\x09b"),                # the separator
    ("back\\slash", "back\\\\slash"),
    ("bell\x07 del\x7f", "bell\\x07 del\\x7f"),
    ("cr\r\nlf", "cr\\x0d\\x0alf"),
    ("-", "\\x2d"),                     # the unset marker as a value
    ("(empty)", "\\x28empty)"),         # the empty marker as a value
    ("a - (empty) b", "a - (empty) b"), # only a whole value is ambiguous
    ("comma, in a string", "comma, in a string"),
    ("caf\u00e9 \u2603", "caf\u00e9 \u2603"),   # valid UTF-8 as it is (LogAscii::enable_utf_8)
    ("octet \udcff", "octet \\xff"),    # not UTF-8 on the wire (surrogateescape)
])
def test_tsv_escapes_a_string_as_zeek(tmp_path, value, cell):
    with zeek(tmp_path) as z:
        z.write(smtp_record(subject=value))
    (line,) = body(tmp_path / "smtp.log")
    assert dict(zip(LOGS["smtp"].names, line.split("\t")))["subject"] == cell
    (row,) = read_log(tmp_path / "smtp.log")
    if "\udcff" not in value:
        assert row["subject"] == value


def test_tsv_escapes_the_set_separator_inside_an_element_only(tmp_path):
    with zeek(tmp_path) as z:
        z.write(smtp_record(to=['"Doe, John" <john@example.net>', "-", "x@example.net"]))
    (line,) = body(tmp_path / "smtp.log")
    cell = dict(zip(LOGS["smtp"].names, line.split("\t")))["to"]
    assert cell == '"Doe\\x2c John" <john@example.net>,\\x2d,x@example.net'
    (row,) = read_log(tmp_path / "smtp.log")
    assert row["to"] == ['"Doe, John" <john@example.net>', "-", "x@example.net"]


def test_a_line_that_would_begin_with_a_hash_begins_with_its_escape():
    spec = LogSpec("test", (("name", "string"), ("n", "count")))
    assert tsv_line(spec, {"name": "#fields", "n": 1}) == "\\x23fields\t1\n"


text_values = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(subject=text_values, to=st.lists(text_values, min_size=1, max_size=4, unique=True))
def test_any_string_and_set_read_back_as_written(tmp_path_factory, subject, to):
    folder = tmp_path_factory.mktemp("z")
    with zeek(folder) as z:
        z.write(smtp_record(subject=subject, to=to))
    (row,) = read_log(folder / "smtp.log")
    assert row["subject"] == subject and row["to"] == to


# ------------------------------------------------------------------ JSON as Zeek writes it

def test_json_is_one_object_a_line_in_zeeks_order_unset_fields_left_out(tmp_path):
    clock = Clock(T0)
    with zeek(tmp_path, format="json", clock=clock) as z:
        z.write(smtp_record(ts=1733385184.610901, mailfrom=""))
        z.write(files_record())
    (line,) = (tmp_path / "smtp.log").read_text().splitlines()   # no header, no #close
    obj = json.loads(line)
    assert list(obj) == ["ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p",
                         "trans_depth", "helo", "rcptto", "subject", "last_reply", "path", "tls", "fuids"]
    assert obj["ts"] == 1733385184.610901 and obj["id.resp_p"] == 25 and obj["tls"] is False
    assert obj["rcptto"] == ["bob@example.net", "carol@example.net"] and obj["fuids"] == []
    files = json.loads((tmp_path / "files.log").read_text())
    assert files["analyzers"] == ["MD5", "SHA256"] and files["duration"] == 0.0
    assert "local_orig" not in files and files["is_orig"] is True


def test_json_writes_controls_and_octets_as_zeek_does(tmp_path):
    row = one_smtp(tmp_path, "json", subject="a\x01b\tc \udcfe \u00e9")
    assert row["subject"] == "a\\x01b\tc \\xfe \u00e9"


def test_json_and_tsv_read_back_the_same(tmp_path):
    records = [smtp_record(subject="x\ty", to=["a, b", "-"]), files_record(), notice_record(),
               alert_record(), anomaly_record("BARE_LF_IN_DATA", detail="1 bare LF")]
    for fmt in ("tsv", "json"):
        (tmp_path / fmt).mkdir()
        with zeek(tmp_path / fmt, format=fmt) as z:
            for rec in records:
                assert z.write(rec)
    for log in ("smtp", "files", "notice", "weird"):
        tsv = read_log(tmp_path / "tsv" / f"{log}.log")
        js = read_log(tmp_path / "json" / f"{log}.log")
        assert [{k: v for k, v in r.items() if v is not None} for r in tsv] == js


# ------------------------------------------------------------------ what goes where

def test_files_record_to_files_log(tmp_path):
    with zeek(tmp_path) as z:
        z.write(files_record(filename="a\tb.zip"))
    (row,) = read_log(tmp_path / "files.log")
    assert row["fuid"] == "F" + "b" * 17 and row["uid"] == CONN["uid"]
    assert row["id.orig_h"] == "192.0.2.10" and row["id.resp_p"] == 25
    assert row["source"] == "SMTP" and row["depth"] == 1 and row["is_orig"] is True
    assert row["analyzers"] == ["MD5", "SHA256"] and row["md5"] == "0" * 32 and row["sha1"] is None
    assert row["seen_bytes"] == row["total_bytes"] == 1234 and row["missing_bytes"] == 0
    assert row["mime_type"] == "application/zip" and row["filename"] == "a\tb.zip"
    assert row["local_orig"] is None and row["timedout"] is False


def test_local_orig_is_set_only_with_local_networks_as_zeeks_site_local_nets(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with zeek(tmp_path / "a", local_networks=["192.0.2.0/24"]) as z:
        z.write(files_record())
        z.write(files_record(**{"id.orig_h": "203.0.113.9"}))
    with zeek(tmp_path / "b") as z:
        z.write(files_record())
    assert [r["local_orig"] for r in read_log(tmp_path / "a" / "files.log")] == [True, False]
    assert [r["local_orig"] for r in read_log(tmp_path / "b" / "files.log")] == [None]


def test_notice_record_to_notice_log_with_the_ban_as_a_drop_action(tmp_path):
    with zeek(tmp_path, peer="mx1") as z:
        z.write(notice_record())
        z.write(notice_record(actions=[], note="SMTP_StrangeRejectBehavior"))
    banned, logged = read_log(tmp_path / "notice.log")
    assert banned["note"] == "SMTP_PossibleSpam" and banned["src"] == "203.0.113.7"
    assert banned["n"] == 120 and banned["suppress_for"] == 3600.0 and banned["peer_descr"] == "mx1"
    assert banned["msg"].startswith("203.0.113.7 - sent: 300") and banned["sub"] == "550 5.7.1 no"
    assert banned["actions"] == ["Notice::ACTION_LOG", "Notice::ACTION_DROP"]
    assert logged["actions"] == ["Notice::ACTION_LOG"] and banned["email_dest"] == []
    assert banned["uid"] is None and banned["remote_location.country_code"] is None


def test_alert_record_to_notice_log_as_a_notice_of_the_rule(tmp_path):
    with zeek(tmp_path) as z:
        z.write(alert_record())
    (row,) = read_log(tmp_path / "notice.log")
    assert row["note"] == "Rule::smuggling.terminator" and row["msg"] == "SMTP smuggling attempt"
    assert row["sub"] == "severity high, confidence high, ref CVE-2023-51764"
    assert (row["uid"], row["id.orig_h"], row["id.resp_p"]) == (CONN["uid"], "192.0.2.10", 25)
    assert (row["src"], row["dst"], row["p"], row["proto"]) == ("192.0.2.10", "198.51.100.25", 25, "tcp")


def test_anomalies_to_weird_log_with_zeeks_names_where_it_has_them(tmp_path):
    with zeek(tmp_path, peer="mx1") as z:
        z.write(anomaly_record("BARE_LF_IN_DATA", detail="2 bare LF"))
        z.write(anomaly_record("MISSING_ANGLE_BRACKETS", detail="MAIL: address 'a@b' not in <...>"))
        z.write(anomaly_record("TCP_BAD_CHECKSUM", layer="tcp"))
        z.write(anomaly_record("IPV4_FRAG_OVERLAP", layer="ip", conn=False))
    mapped, own, tcp, ip = read_log(tmp_path / "weird.log")
    assert mapped["name"] == "line_terminated_with_single_LF" and mapped["addl"] == "BARE_LF_IN_DATA: 2 bare LF"
    assert own["name"] == "MISSING_ANGLE_BRACKETS" and own["addl"] == "MAIL: address 'a@b' not in <...>"
    assert mapped["uid"] == CONN["uid"] and mapped["id.orig_p"] == 49152 and mapped["source"] == "SMTP"
    assert mapped["notice"] is False and mapped["peer"] == "mx1"
    assert (tcp["name"], tcp["addl"], tcp["source"]) == ("bad_TCP_checksum", "TCP_BAD_CHECKSUM", "TCP")
    assert (ip["name"], ip["uid"], ip["id.orig_h"], ip["source"]) == ("fragment_overlap", None, None, "IP")


def test_what_no_zeek_log_takes_is_counted_not_written(tmp_path):
    z = zeek(tmp_path)
    assert not z.write(drop_record())
    assert not z.write(anomaly_record("DATA_COMMAND_REJECTED", detail="554"))
    assert not z.write(anomaly_record("EVENT_LOSS", layer="sensor"))
    assert not z.write({"ts": 1.0, "event_type": "something_new"})
    z.close()
    assert z.not_written == {"drop": 1, "anomaly": 2, "something_new": 1}
    assert sorted(os.listdir(tmp_path)) == []          # a log is created by its first line
    assert z.written == {"smtp": 0, "files": 0, "notice": 0, "weird": 0}


def test_every_mapped_weird_name_is_an_anomaly_name():
    from sensor.smtp import anomalies
    from sensor.stream import defrag, reassembly
    ours = anomalies.ALL | defrag.ANOMALIES | {getattr(reassembly, n) for n in dir(reassembly)
                                               if n.startswith("ANOMALY_")}
    assert set(WEIRD_NAMES) <= ours


def test_logs_are_created_owner_only(tmp_path):
    old = os.umask(0)
    try:
        with zeek(tmp_path) as z:
            z.write(smtp_record())
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "smtp.log").st_mode) == 0o600


# ------------------------------------------------------------------ rotation

def test_rotation_on_the_interval_names_each_file_by_the_opening_of_its_period(tmp_path):
    clock = Clock(T0)                                   # 05:13:27
    z = zeek(tmp_path, clock=clock, rotate_interval=3600)
    z.write(smtp_record(trans_depth=1))
    clock.now = local(2026, 12, 2, 5, 59, 59)
    z.write(smtp_record(trans_depth=2))
    clock.now = local(2026, 12, 2, 6, 0, 1)             # past 06:00: the first file is rotated
    z.write(smtp_record(trans_depth=3))
    first = tmp_path / f"smtp.{stamp(T0)}.log"
    assert [r["trans_depth"] for r in read_log(first)] == [1, 2]
    assert header(first)["close"] == stamp(local(2026, 12, 2, 6, 0, 1))
    clock.now = local(2026, 12, 2, 7, 30)               # a quiet hour: flush() rotates it
    z.flush()
    second = tmp_path / "smtp.2026-12-02-06-00-00.log"
    assert [r["trans_depth"] for r in read_log(second)] == [3]
    assert header(second)["open"] == stamp(local(2026, 12, 2, 6, 0, 1))
    assert not (tmp_path / "smtp.log").exists()         # the next line opens it again
    clock.now = local(2026, 12, 2, 7, 45)
    z.write(smtp_record(trans_depth=4))
    clock.now = local(2026, 12, 2, 8, 0, 0)
    z.close()                                           # with an interval, closing rotates too
    assert z.rotated == [str(first), str(second), str(tmp_path / "smtp.2026-12-02-07-00-00.log")]


def test_next_rotation_counts_from_local_midnight():
    assert next_rotation(T0, 3600) == local(2026, 12, 2, 6)
    assert next_rotation(T0, 900) == local(2026, 12, 2, 5, 15)
    assert next_rotation(T0, 86400) == local(2026, 12, 3)
    assert next_rotation(local(2026, 12, 2, 6), 3600) == local(2026, 12, 2, 7)
    assert rotated_name("/var/log/zeek/smtp.log", T0) == f"/var/log/zeek/smtp.{stamp(T0)}.log"


def test_reopen_rotates_every_open_log_and_the_next_line_opens_a_new_one(tmp_path):
    clock = Clock(T0)
    z = zeek(tmp_path, clock=clock)
    z.write(smtp_record())
    z.write(anomaly_record("UNKNOWN_COMMAND"))
    clock.now = T0 + 60
    z.reopen()
    assert sorted(os.listdir(tmp_path)) == [f"smtp.{stamp(T0)}.log", f"weird.{stamp(T0)}.log"]
    assert header(tmp_path / f"weird.{stamp(T0)}.log")["close"] == stamp(T0 + 60)
    clock.now = T0 + 120
    z.write(smtp_record(trans_depth=2))
    z.reopen()                                          # weird.log was not opened again: nothing to do
    assert sorted(os.listdir(tmp_path)) == [f"smtp.{stamp(T0)}.log", f"smtp.{stamp(T0 + 60)}.log",
                                            f"weird.{stamp(T0)}.log"]
    assert [r["trans_depth"] for r in read_log(tmp_path / f"smtp.{stamp(T0 + 60)}.log")] == [2]


def test_a_name_already_taken_gets_a_number_nothing_is_overwritten(tmp_path):
    clock = Clock(T0)
    z = zeek(tmp_path, clock=clock)
    for depth in (1, 2):
        z.write(smtp_record(trans_depth=depth))
        z.reopen()                                      # twice in the same second
    assert [r["trans_depth"] for r in read_log(tmp_path / f"smtp.{stamp(T0)}.log")] == [1]
    assert [r["trans_depth"] for r in read_log(tmp_path / f"smtp.{stamp(T0)}-1.log")] == [2]


def test_a_leftover_log_of_an_earlier_run_is_renamed_not_overwritten(tmp_path):
    leftover = tmp_path / "smtp.log"
    leftover.write_text("#separator \\x09\nleft by a crash\n")
    os.utime(leftover, (T0 - 3600, T0 - 3600))
    with zeek(tmp_path) as z:
        z.write(smtp_record())
    assert (tmp_path / f"smtp.{stamp(T0 - 3600)}.log").read_text().endswith("left by a crash\n")
    assert len(read_log(tmp_path / "smtp.log")) == 1


def test_a_log_moved_away_before_reopen_is_closed_in_place_not_renamed(tmp_path):
    clock = Clock(T0)
    z = zeek(tmp_path, clock=clock)
    z.write(smtp_record())
    z.flush()
    os.rename(tmp_path / "smtp.log", tmp_path / "smtp.log.1")     # logrotate's way
    clock.now = T0 + 30
    z.reopen()
    assert sorted(os.listdir(tmp_path)) == ["smtp.log.1"]
    assert header(tmp_path / "smtp.log.1")["close"] == stamp(T0 + 30)
    z.write(smtp_record(trans_depth=2))
    z.close()
    assert [r["trans_depth"] for r in read_log(tmp_path / "smtp.log")] == [2]


def test_close_without_an_interval_leaves_the_log_in_place_closed(tmp_path):
    with zeek(tmp_path) as z:
        z.write(notice_record())
    assert os.listdir(tmp_path) == ["notice.log"] and "close" in header(tmp_path / "notice.log")


# ------------------------------------------------------------------ user errors

@pytest.mark.parametrize("kw, words", [
    ({"format": "xml"}, "format 'xml' is not one of tsv, json"),
    ({"rotate_interval": 0}, "rotate_interval must be a number of seconds above 0"),
])
def test_bad_settings_are_one_line_errors(tmp_path, kw, words):
    with pytest.raises(ZeekLogsError, match=words) as err:
        ZeekLogs(tmp_path, **kw)
    assert isinstance(err.value, SensorError) and "\n" not in str(err.value)


def test_a_missing_directory_says_to_create_it(tmp_path):
    with pytest.raises(ZeekLogsError, match=r"is not a directory: create it \(install -d"):
        ZeekLogs(tmp_path / "nowhere")


def test_a_directory_removed_under_the_sensor_is_a_one_line_error(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    z = zeek(folder)
    folder.rmdir()
    with pytest.raises(ZeekLogsError, match="cannot open .*smtp.log"):
        z.write(smtp_record())

