"""Outputs chosen by configuration: ``[[output]]`` tables (type, one
destination, event types), the default that is today's one native output,
the destinations (file, folder, stdout, syslog, Unix sockets) and their
reopening on SIGUSR1, the EVE fields computed without a capture."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import time
from pathlib import Path

import pytest
import structlog

from sensor.config import Config, ConfigError, OutputConfig, SensorConfig, loads
from sensor.errors import SensorError
from sensor.outputs import Outputs, build_output
from sensor.outputs.destinations import FileDestination, SyslogDestination, UnixSocketDestination
from sensor.outputs.eve import EveOutput, eve_record, eve_timestamp, flow_id, signature_id
from sensor.records.sinks import JsonLinesSink
from sensor.rules.api import RuleError, hooks, rule
from sensor.service.loop import Sensor

SMTP = {"ts": 1764651600.123456, "event_type": "smtp", "uid": "CAbc", "id.orig_h": "192.0.2.7",
        "id.orig_p": 40000, "id.resp_h": "198.51.100.1", "id.resp_p": 25, "community_id": "1:x=",
        "trans_depth": 2, "helo": "client.example", "mailfrom": "a@example.com", "rcptto": ["b@example.com"]}
ANOMALY = {"ts": 1764651601.0, "event_type": "anomaly", "layer": "ip", "name": "FRAGMENT_OVERLAP"}


# ---------------------------------------------------------------- the config

def test_output_tables_several_at_once_with_paths_relative_to_the_file(tmp_path):
    config = loads('[[output]]\ntype = "eve"\npath = "eve.json"\nevent_types = ["alert", "smtp"]\n\n'
                   '[[output]]\ntype = "zeek"\ndirectory = "zeek"\nformat = "json"\nrotate_interval = "1h"\n\n'
                   '[[output]]\nsocket = "/run/smtp-sensor/records.sock"\nsocket_type = "stream"\n',
                   source=tmp_path / "config.toml")
    eve, zeek, native = config.outputs
    assert (eve.type, eve.path, eve.event_types) == ("eve", tmp_path / "eve.json", ("alert", "smtp"))
    assert (zeek.directory, zeek.format, zeek.rotate_interval) == (tmp_path / "zeek", "json", 3600.0)
    assert (native.type, native.destination, native.socket_type) == ("native", "socket", "stream")
    assert loads("").outputs == ()


@pytest.mark.parametrize("text, message", [
    ('[[output]]\ntype = "eve"\n', "[output] give exactly one of path, directory, stdout, syslog, socket"),
    ('[[output]]\npath = "a"\nstdout = true\n', "not path and stdout"),
    ('[[output]]\ntype = "zeek"\npath = "a"\n', 'type = "zeek" writes one file per log: give a directory'),
    ('[[output]]\nstdout = true\nevent_types = ["smpt"]\n', 'unknown event type "smpt" (did you mean "smtp"?)'),
    ('[[output]]\nstdout = true\n[[output]]\ntype = "evee"\nstdout = true\n',
     "[output #2] type: must be one of native, eve, zeek; got 'evee'"),
    ('[[output]]\npth = "a"\n', 'unknown key "pth" (did you mean "path"?)'),
    ('[[output]]\nsyslog = true\nfacility = "local9"\n', "[output] facility: must be one of"),
    ("output = 3\n", "output: must be an array of tables ([[output]]), one per output"),
])
def test_a_wrong_output_table_is_one_line_naming_it(text, message):
    with pytest.raises(ConfigError) as err:
        loads(text, source="c.toml")
    assert message in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- the set of outputs

def test_without_output_tables_the_records_are_todays_json_lines():
    ours, todays = io.StringIO(), io.StringIO()
    outputs = Outputs.from_config(Config(), stdout=ours)
    for record in (SMTP, ANOMALY, {"ts": 1.0, "event_type": "x", "text": "é\u2028"}):
        outputs(record)
        JsonLinesSink(todays)(record)
    outputs.close()
    assert ours.getvalue() == todays.getvalue()


def test_the_sensor_output_file_is_one_more_native_output_beside_the_tables(tmp_path):
    eve = tmp_path / "eve.json"
    config = Config(sensor=SensorConfig(output=str(tmp_path / "records.json")),
                    outputs=(OutputConfig(type="eve", path=eve),))
    outputs = Outputs.from_config(config, stdout=io.StringIO())
    outputs(SMTP)
    outputs.close()
    assert json.loads((tmp_path / "records.json").read_text()) == SMTP
    assert json.loads(eve.read_text())["event_type"] == "smtp"
    # tables alone: nothing on standard output
    stdout = io.StringIO()
    alone = Outputs.from_config(Config(outputs=(OutputConfig(type="eve", path=eve),)), stdout=stdout)
    alone(SMTP)
    alone.close()
    assert stdout.getvalue() == "" and len(eve.read_text().splitlines()) == 2


def test_event_types_choose_the_records_by_native_or_eve_name(tmp_path):
    config = Config(outputs=(OutputConfig(type="eve", path=tmp_path / "a", event_types=("anomaly",)),
                             OutputConfig(path=tmp_path / "f", event_types=("fileinfo",)),
                             OutputConfig(directory=tmp_path)))
    outputs = Outputs.from_config(config)
    for record in (SMTP, ANOMALY, dict(ANOMALY, event_type="files")):
        outputs(record)
    outputs.close()
    assert [json.loads(x)["event_type"] for x in (tmp_path / "a").read_text().splitlines()] == ["anomaly"]
    assert [json.loads(x)["event_type"] for x in (tmp_path / "f").read_text().splitlines()] == ["files"]
    assert len((tmp_path / "records.json").read_text().splitlines()) == 3


def test_an_output_that_cannot_open_is_one_line_and_closes_the_others(tmp_path):
    config = Config(outputs=(OutputConfig(path=tmp_path / "ok"), OutputConfig(path=tmp_path / "no" / "x")))
    with pytest.raises(SensorError, match=r"cannot write .*/no/x: No such file or directory"):
        Outputs.from_config(config)


def test_every_output_is_reopened_after_a_rename_and_a_failure_keeps_the_old_file(tmp_path):
    (tmp_path / "d").mkdir()
    config = Config(outputs=(OutputConfig(type="eve", path=tmp_path / "eve.json"),
                             OutputConfig(directory=tmp_path / "d"), OutputConfig(stdout=True)))
    outputs = Outputs.from_config(config, stdout=io.StringIO())
    outputs(SMTP)
    os.rename(tmp_path / "eve.json", tmp_path / "eve.json.1")
    os.rename(tmp_path / "d", tmp_path / "d.1")                 # its file cannot be made again
    reopened, failed = outputs.reopen()
    assert reopened == [str(tmp_path / "eve.json")]
    (why,) = failed.values()
    assert list(failed) == [str(tmp_path / "d" / "records.json")] and why.endswith("No such file or directory")
    outputs(ANOMALY)
    outputs.close()
    assert len((tmp_path / "eve.json").read_text().splitlines()) == 1           # the new file
    assert len((tmp_path / "d.1" / "records.json").read_text().splitlines()) == 2   # the old one kept going


def test_a_reload_gives_the_sink_in_use_the_new_configs_outputs(tmp_path):
    outputs = Outputs.from_config(Config(outputs=(OutputConfig(path=tmp_path / "old.json"),)))
    outputs(SMTP)
    old_file = outputs.outputs[0][0].destination.handle
    outputs.take_over(Outputs.from_config(Config(outputs=(OutputConfig(type="eve", path=tmp_path / "new.json"),))))
    outputs(ANOMALY)
    outputs.close()
    assert old_file.closed and len((tmp_path / "old.json").read_text().splitlines()) == 1
    assert json.loads((tmp_path / "new.json").read_text())["event_type"] == "anomaly"


def test_a_reload_that_changes_the_outputs_moves_the_records_or_refuses_in_one_line(tmp_path):
    from sensor.assembly import Userland
    from sensor.service.loop import RunOptions

    config = Config(sensor=SensorConfig(interfaces=("eth-test",)),
                    outputs=(OutputConfig(type="eve", path=tmp_path / "old.json"),))
    configs = [dataclasses.replace(config, outputs=(OutputConfig(path=tmp_path / "no" / "x.json"),)),
               dataclasses.replace(config, outputs=(OutputConfig(path=tmp_path / "new.json"),))]
    sensor = Sensor(config, RunOptions(load_config=lambda: configs.pop(0)), logger=structlog.get_logger("test"))
    sensor._build()
    try:
        sensor.userland = Userland(config, sensor.sink)
        refused = sensor.reload()                              # the new output cannot be opened
        assert refused["config_error"].startswith("configuration not reloaded: cannot write")
        assert sensor.config is config
        sensor.sink(SMTP)
        applied = sensor.reload()
        assert applied["config_error"] is None and applied["config_changed"] == ["outputs"]
        sensor.pipeline.sink(ANOMALY)                          # the pipeline's sink: the same object
    finally:
        sensor._close_output()
    assert [json.loads(x)["event_type"] for x in (tmp_path / "old.json").read_text().splitlines()] == ["smtp"]
    assert json.loads((tmp_path / "new.json").read_text()) == ANOMALY


def test_the_live_sensor_writes_its_outputs_and_reopens_them_on_sigusr1(tmp_path):
    eve = tmp_path / "eve.json"
    plain = tmp_path / "plain.json"
    sensor = Sensor(Config(sensor=SensorConfig(interfaces=("eth-test",)),
                           outputs=(OutputConfig(type="eve", path=eve, in_iface=True),
                                    OutputConfig(type="eve", path=plain))), logger=structlog.get_logger("test"))
    sensor._build()             # the datapath is only built (nothing loaded) and the outputs opened
    try:
        sensor.sink(SMTP)
        sensor.sink.flush()
        assert json.loads(eve.read_text())["in_iface"] == "eth-test"       # asked for
        assert "in_iface" not in json.loads(plain.read_text())              # the schema's default
        os.rename(eve, tmp_path / "eve.json.1")
        sensor.reopen_files()
        sensor.sink(ANOMALY)
        sensor.sink.flush()
        assert json.loads(eve.read_text())["event_type"] == "anomaly"
        assert sensor.own_counters.log_reopens == 1
    finally:
        sensor._close_output()


# ---------------------------------------------------------------- destinations

def test_each_line_is_in_the_file_as_soon_as_written(tmp_path):
    """As the native records always were: tail -f and Filebeat see whole lines at once."""
    output = build_output(OutputConfig(type="eve", path=tmp_path / "eve.json"))
    output.write(SMTP)
    assert json.loads((tmp_path / "eve.json").read_text())["event_type"] == "smtp"
    output.close()


def test_a_replays_output_file_is_written_afresh(tmp_path):
    path = tmp_path / "out.json"
    for _ in range(2):
        dest = FileDestination(path, mode="w")
        dest.write_line("new")
        dest.close()
    assert path.read_text() == "new\n" and (path.stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize("socket_type, kind", [("dgram", socket.SOCK_DGRAM), ("stream", socket.SOCK_STREAM)])
def test_records_to_a_unix_socket(tmp_path, socket_type, kind):
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX, kind)
    server.bind(path)
    if kind == socket.SOCK_STREAM:
        server.listen(1)
    output = build_output(OutputConfig(type="eve", socket=path, socket_type=socket_type))
    output.write(SMTP)
    output.write(ANOMALY)
    conn = server.accept()[0] if kind == socket.SOCK_STREAM else server
    conn.settimeout(5)
    data = b""
    while data.count(b"\n") < 2:
        data += conn.recv(65536)
    output.close()
    assert [json.loads(x)["event_type"] for x in data.decode().splitlines()] == ["smtp", "anomaly"]


def test_nobody_listening_on_the_socket_drops_lines_and_connects_again_later(tmp_path):
    path = str(tmp_path / "s.sock")
    now = [0.0]
    dest = UnixSocketDestination(path, "dgram", clock=lambda: now[0])
    dest.write_line("lost")
    assert dest.dropped == 1
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    dest.write_line("too soon")                     # no new attempt within RETRY_S
    assert dest.dropped == 2
    now[0] += UnixSocketDestination.RETRY_S
    dest.write_line("heard")
    server.settimeout(5)
    assert server.recv(100) == b"heard\n" and dest.dropped == 2
    server.close()                                  # the reader went away
    os.unlink(path)
    dest.write_line("lost again")
    assert dest.dropped == 3 and dest.sock is None
    dest.close()


def test_what_each_output_wrote_and_lost_is_counted(tmp_path):
    config = Config(outputs=(OutputConfig(type="eve", path=tmp_path / "eve.json"),
                             OutputConfig(socket=tmp_path / "nobody.sock")))
    outputs = Outputs.from_config(config)
    outputs(SMTP)
    outputs(ANOMALY)
    counts = outputs.counters.as_dict()
    outputs.close()
    assert counts["written"] == {str(tmp_path / "eve.json"): 2, f"unix_dgram:{tmp_path / 'nobody.sock'}": 2}
    assert counts["dropped"] == {f"unix_dgram:{tmp_path / 'nobody.sock'}": 2}


def test_syslog_gets_one_message_a_record_at_the_facility(monkeypatch):
    import syslog
    sent, opened = [], []
    monkeypatch.setattr(syslog, "openlog", lambda *a: opened.append(a))
    monkeypatch.setattr(syslog, "syslog", lambda priority, text: sent.append((priority, text)))
    output = build_output(OutputConfig(type="eve", syslog=True, facility="mail"))
    output.write(SMTP)
    assert opened == [("smtp-sensor", syslog.LOG_PID, syslog.LOG_MAIL)]
    ((priority, text),) = sent
    assert priority == syslog.LOG_MAIL | syslog.LOG_INFO and json.loads(text)["event_type"] == "smtp"
    assert isinstance(output.destination, SyslogDestination)


def test_type_zeek_writes_zeeks_logs_in_the_directory_and_rotates_them_on_reopen(tmp_path):
    from sensor.config import SpamStatsConfig
    config = Config(spam_stats=SpamStatsConfig(local_networks=["192.0.2.0/24"]),
                    outputs=(OutputConfig(type="zeek", directory=tmp_path, format="json"),))
    outputs = Outputs.from_config(config)
    (zeek, _), = outputs.outputs
    assert zeek.format == "json" and zeek.site.local_networks       # [spam_stats] local_networks: Site::local_nets
    outputs(dict(SMTP, path=["198.51.100.1", "192.0.2.7"], tls=False, steps=[], delivered=False))
    outputs.flush()
    (line,) = (tmp_path / "smtp.log").read_text().splitlines()
    assert json.loads(line)["uid"] == "CAbc" and json.loads(line)["mailfrom"] == "a@example.com"
    reopened, failed = outputs.reopen()                               # SIGUSR1: Zeek's logs rotate
    assert reopened == [str(tmp_path)] and not failed
    assert not (tmp_path / "smtp.log").exists() and len(list(tmp_path.glob("smtp.*.log"))) == 1
    outputs.close()


# ---------------------------------------------------------------- EVE fields

def test_the_timestamp_is_local_time_with_its_offset_as_suricata_writes_it(monkeypatch):
    if not Path("/usr/share/zoneinfo/America/New_York").exists():
        from support.prereqs import missing
        missing("tzdata, the time zones (./run setup installs it)")
    try:
        for tz, expected in (("UTC", "2025-12-02T05:00:00.123456+0000"),
                             ("America/New_York", "2025-12-02T00:00:00.123456-0500"),
                             ("Asia/Kolkata", "2025-12-02T10:30:00.123456+0530")):
            monkeypatch.setenv("TZ", tz)
            time.tzset()
            assert eve_timestamp(1764651600.123456) == expected
    finally:
        monkeypatch.undo()
        time.tzset()


def test_flow_ids_are_stable_48_bit_integers_one_per_uid():
    assert flow_id("CAbc") == flow_id("CAbc") != flow_id("CAbd")
    assert all(0 < flow_id(f"C{n}") < 2 ** 48 for n in range(1000))


def test_signature_ids_are_the_declared_sid_or_stable_in_the_local_range():
    assert signature_id("spam_filter.mail_from") == 1813241         # the same on every sensor and run
    assert signature_id("spam_filter.mail_from", 2100001) == 2100001
    ids = {signature_id(f"rules.r{n}") for n in range(100)}
    assert all(1_000_000 <= i < 2_000_000 for i in ids) and len(ids) == 100


def test_a_rule_declares_its_sid_and_its_alerts_carry_it_into_eve():
    @rule(hooks.command, id="t.sid", sid=1000123)
    def with_sid(flow, cmd):
        pass

    assert with_sid.__rule__.sid == 1000123
    for bad in (0, 2 ** 31, "12", True):
        with pytest.raises(RuleError, match="sid must be an integer"):
            rule(hooks.command, sid=bad)
    alert = {"ts": 1.0, "event_type": "alert", "uid": "C1", "src_ip": "192.0.2.7", "src_port": 1,
             "dest_ip": "198.51.100.1", "dest_port": 25, "proto": "TCP", "community_id": "1:x",
             "alert": {"signature_id": "t.sid", "rev": 3, "sid": 1000123, "signature": "s", "severity": "high"},
             "smtp": {"mail_from": None}}
    eve = eve_record(alert)
    assert (eve["alert"]["signature_id"], eve["alert"]["rev"], eve["alert"]["severity"]) == (1000123, 3, 1)
    assert "smtp" not in eve                        # no sender yet: no smtp object


def test_an_alert_on_a_flow_already_dropped_is_blocked():
    text = io.StringIO()
    from sensor.outputs.destinations import StreamDestination
    out = EveOutput(StreamDestination(text))
    alert = {"ts": 1.0, "event_type": "alert", "uid": "C1", "src_ip": "192.0.2.7", "src_port": 1,
             "dest_ip": "198.51.100.1", "dest_port": 25, "proto": "TCP", "community_id": "1:x",
             "alert": {"signature_id": "r.x", "rev": 1, "signature": "s", "severity": "low"}, "smtp": {}}
    drop = {"ts": 1.0, "event_type": "drop", "uid": "C1", "id.orig_h": "192.0.2.7", "id.orig_p": 1,
            "id.resp_h": "198.51.100.1", "id.resp_p": 25, "community_id": "1:x", "action": "drop_flow",
            "target": "t", "reason": "rule", "enforced_by": "replay", "rule_id": "r.x"}
    for record in (alert, drop, alert):
        out.write(record)
    first, dropped, second = [json.loads(x) for x in text.getvalue().splitlines()]
    assert first["alert"]["action"] == "allowed" and second["alert"]["action"] == "blocked"
    assert dropped["alert"]["action"] == "blocked" and dropped["drop"] == {"reason": "rule"}
