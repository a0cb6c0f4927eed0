"""Logs: JSON lines to a file reopened after a rename (logrotate), console
rendering on a TTY, stdlib loggers (pyroute2, warnings) through the same
pipeline, records (JsonLinesSink) moved to a new stream."""

from __future__ import annotations

import io
import json
import logging
import os
import warnings

import pytest
import structlog

from sensor.errors import SensorError
from sensor.records.sinks import JsonLinesSink
from sensor.service import log as sensor_log


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    for h in root.handlers:
        if h not in handlers and isinstance(h, sensor_log.ReopenableFileHandler):
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)
    logging.captureWarnings(False)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_log_file_gets_json_lines_from_structlog_and_stdlib_loggers(tmp_path):
    path = tmp_path / "sensor.log"
    sensor_log.configure("info", file=path)
    structlog.get_logger("sensor").info("running", interfaces=["eth1"])
    logging.getLogger("pyroute2.ndb.main").warning("netlink said %s", "something")
    logging.getLogger("bcc").error("a bcc message, should it ever log")
    logging.getLogger("pyroute2").debug("below the level: not written")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning)
    got = lines(path)
    assert [e["event"] for e in got[:3]] == ["running", "netlink said something", "a bcc message, should it ever log"]
    assert got[0]["interfaces"] == ["eth1"] and got[0]["level"] == "info" and "ts" in got[0]
    assert got[1]["logger"] == "pyroute2.ndb.main" and got[1]["level"] == "warning" and "ts" in got[1]
    assert got[2]["logger"] == "bcc" and got[2]["level"] == "error"
    assert got[3]["logger"] == "py.warnings" and "deprecated thing" in got[3]["event"]
    assert len(got) == 4


def test_the_log_file_is_reopened_after_a_rename(tmp_path):
    path = tmp_path / "sensor.log"
    sensor_log.configure("info", file=path)
    log = structlog.get_logger("sensor")
    log.info("one")
    os.rename(path, tmp_path / "sensor.log.1")
    log.info("two")                          # still the old file, as with logrotate before the signal
    assert sensor_log.reopen() == [str(path)]
    log.info("three")
    logging.getLogger("pyroute2").warning("four")
    assert [e["event"] for e in lines(tmp_path / "sensor.log.1")] == ["one", "two"]
    assert [e["event"] for e in lines(path)] == ["three", "four"]


def test_a_failed_reopen_keeps_the_old_file(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "sensor.log"
    sensor_log.configure("info", file=path)
    log = structlog.get_logger("sensor")
    log.info("one")
    os.rename(folder, tmp_path / "moved")
    with pytest.raises(OSError):
        sensor_log.reopen()
    log.info("two")
    assert [e["event"] for e in lines(tmp_path / "moved" / "sensor.log")] == ["one", "two"]


def test_an_unwritable_log_file_is_a_one_line_error(tmp_path):
    with pytest.raises(SensorError, match=r"cannot write the log file .*/missing/x.log"):
        sensor_log.configure("info", file=tmp_path / "missing" / "x.log")


class FakeTty(io.StringIO):
    def isatty(self):
        return True


def test_console_rendering_on_a_tty_json_elsewhere():
    tty = FakeTty()
    sensor_log.configure("info", stream=tty)
    structlog.get_logger("sensor").info("running", interfaces=["eth1"])
    logging.getLogger("pyroute2").warning("from pyroute2")
    text = tty.getvalue()
    assert "running" in text and "from pyroute2" in text
    with pytest.raises(ValueError):
        json.loads(text.splitlines()[0])
    pipe = io.StringIO()
    sensor_log.configure("info", stream=pipe)
    structlog.get_logger("sensor").info("running")
    logging.getLogger("pyroute2").warning("from pyroute2")
    assert [json.loads(line)["event"] for line in pipe.getvalue().splitlines()] == ["running", "from pyroute2"]


def test_records_move_to_a_new_stream(tmp_path):
    first, second = io.StringIO(), io.StringIO()
    sink = JsonLinesSink(first)
    sink({"event_type": "smtp", "uid": "a"})
    sink.set_stream(second)
    sink({"event_type": "smtp", "uid": "b"})
    assert [json.loads(x)["uid"] for x in first.getvalue().splitlines()] == ["a"]
    assert [json.loads(x)["uid"] for x in second.getvalue().splitlines()] == ["b"]
    assert sink.written == 2
