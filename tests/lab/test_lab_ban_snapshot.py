"""Bans survive a reboot (issue 16 §4): a ban added by hand is written to
``--ban-file``; after the sensor stops and its pinned ban maps are gone (what
a reboot does to bpffs), the next sensor restores it, with its note and the
time it had left, and the banned client cannot connect."""

from __future__ import annotations

import pytest

from sensor.lab.network import CLIENT_V4
from support.lab_sensor import SensorProcess
from support.lab_smtp import connection_times_out

pytestmark = pytest.mark.lab


def test_a_manual_ban_is_restored_after_its_pins_are_gone(lab, test_pin_root, tmp_path):
    ban_file = tmp_path / "bans.msgpack"
    pins = test_pin_root / "ban-snapshot" / "v1"
    args = ("--ban-file", str(ban_file), "--ports", "25")
    first = SensorProcess(lab, tmp_path / "r1.json", pins, tmp_path / "a.sock", *args)
    try:
        first.wait_log(lambda e: e.get("event") == "running", timeout=120)
        first.cli("ban", "add", CLIENT_V4, "--ttl", "3600", "--reason", "lab: survives a reboot")
        assert first.stop() == 0
    finally:
        first.stop()
    assert oct(ban_file.stat().st_mode & 0o777) == "0o600"
    for name in ("ss_ban_v4", "ss_ban_v6"):          # a reboot: bpffs is empty
        (pins / name).unlink()
    again = SensorProcess(lab, tmp_path / "r2.json", pins, tmp_path / "b.sock", *args)
    try:
        again.wait_log(lambda e: e.get("event") == "running", timeout=120)
        restored = again.wait_log(lambda e: e.get("event") == "ban snapshot")
        assert "restored 1 bans" in restored["message"], restored
        (ban,) = [b for b in again.cli("ban", "list") if b["target"] == f"{CLIENT_V4}/32"]
        assert ban["reason"] == "manual" and ban["note"] == "lab: survives a reboot", ban
        assert 3000 < ban["ttl_left"] <= 3600
        assert connection_times_out(lab, CLIENT_V4, 25)        # its SYNs are dropped
    finally:
        again.stop()
