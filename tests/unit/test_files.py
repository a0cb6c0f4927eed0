"""Every file the sensor creates is owner-only (sensor.files): the records
(``[sensor] output`` and its reopening after logrotate), the log file, the
statistics snapshot, a capture written with --write-passed, a rule's dump.
``replay -o`` and dump_mail are also checked end to end in tests/cli and
tests/offline.  Each test runs under a umask that would let anyone read a
file opened the ordinary way."""

from __future__ import annotations

import logging
import os
import stat

import pytest
import structlog

from sensor.config import Config, SensorConfig, SpamStatsConfig
from sensor.files import PRIVATE, open_private
from sensor.inputs.pcapwriter import PcapWriter
from sensor.service import log as sensor_log
from sensor.service.loop import Sensor
from sensor.spamstats import RejectStats
from sensor.spamstats.snapshot import write_snapshot


@pytest.fixture(autouse=True)
def open_umask():
    old = os.umask(0)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_file_opened_the_ordinary_way_would_be_readable_by_anyone(tmp_path):
    with open(tmp_path / "plain", "w"):
        pass
    assert mode(tmp_path / "plain") == 0o666     # what the tests below guard against


@pytest.mark.parametrize("how", ["a", "ab", "w", "wb"])
def test_open_private_creates_0600(tmp_path, how):
    path = tmp_path / "f"
    with open_private(path, how) as f:
        f.write(b"x" if "b" in how else "x")
    assert mode(path) == PRIVATE == 0o600
    assert path.read_bytes() == b"x"


def test_append_appends_write_truncates_and_an_existing_mode_is_kept(tmp_path):
    path = tmp_path / "records.json"
    path.write_text("one\n")
    os.chmod(path, 0o640)                        # the operator's choice: a group of readers
    with open_private(path, "a") as f:
        f.write("two\n")
    assert path.read_text() == "one\ntwo\n" and mode(path) == 0o640
    with open_private(path, "w") as f:
        f.write("three\n")
    assert path.read_text() == "three\n" and mode(path) == 0o640


def test_open_private_only_writes(tmp_path):
    with pytest.raises(ValueError, match="writes only"):
        open_private(tmp_path / "f", "r")


def test_the_records_file_and_its_reopening_after_a_rename(tmp_path):
    path = tmp_path / "records.json"
    sensor = Sensor(Config(sensor=SensorConfig(interfaces=("eth-test",), output=str(path))),
                    logger=structlog.get_logger("test"))
    sensor._build()             # the datapath is only built (nothing loaded) and the output opened
    try:
        sensor.sink({"event_type": "anomaly", "name": "X"})
        sensor.sink.flush()
        assert mode(path) == 0o600 and path.read_text().startswith("{")
        os.rename(path, tmp_path / "records.json.1")
        sensor.reopen_files()
        sensor.sink({"event_type": "anomaly", "name": "Y"})
        sensor.sink.flush()
        assert mode(path) == 0o600 and '"Y"' in path.read_text()
    finally:
        sensor._close_output()


def test_the_log_file_and_its_reopening_after_a_rename(tmp_path):
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    path = tmp_path / "sensor.log"
    try:
        sensor_log.configure("info", file=path)
        structlog.get_logger("sensor").info("running")
        assert mode(path) == 0o600
        os.rename(path, tmp_path / "sensor.log.1")
        assert sensor_log.reopen() == [str(path)]
        structlog.get_logger("sensor").info("files reopened")
        assert mode(path) == 0o600 and "files reopened" in path.read_text()
    finally:
        for h in root.handlers:
            if isinstance(h, sensor_log.ReopenableFileHandler):
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)
        logging.captureWarnings(False)


def test_a_written_capture(tmp_path):
    path = tmp_path / "passed.pcap"
    with PcapWriter(path, 1) as w:
        w.write(1.0, b"\x00" * 60)
    assert mode(path) == 0o600


def test_the_statistics_snapshot_and_the_one_replacing_it(tmp_path):
    path = tmp_path / "spamstats.msgpack"
    stats = RejectStats(SpamStatsConfig())
    write_snapshot(path, stats)
    assert mode(path) == 0o600
    write_snapshot(path, stats)
    assert mode(path) == 0o600 and not (tmp_path / "spamstats.msgpack.tmp").exists()
