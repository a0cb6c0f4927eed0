"""The watchdog behind the rules' budget, live: a rule stuck in C code that
no signal interrupts (``collections.deque(itertools.count(), maxlen=0)``
never returns) stops the real `smtp-sensor run` loop.  Meanwhile the kernel
lets the held end of DATA pass after ``hold_max_ms``: a legitimate mail sent
through the stuck sensor is delivered.  After ``[limits.rules] watchdog_s``
(3 s here) faulthandler's thread writes the stacks (the rule's file and line
among them) to stderr and the process exits with status 1, for systemd's
Restart=on-failure.  Its programs stay on the interface, as after a SIGKILL:
the test removes them as `smtp-sensor unload -i` does, and checks they were
ours."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sensor.kernel import abi
from sensor.kernel.datapath import Datapath
from support.lab_sensor import SensorProcess

REPO = Path(__file__).resolve().parents[2]

STUCK = """
import collections
import itertools
from sensor.rules import hooks, rule

@rule(hooks.command, id="stuck.forever")
def forever(flow, command):
    if command.verb == "MAIL":
        collections.deque(itertools.count(), maxlen=0)    # C that never checks for signals
"""


def test_a_rule_stuck_in_c_code_ends_the_sensor_and_mail_still_flows(lab, test_pin_root, tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (rules / "stuck.py").write_text(STUCK)
    config = tmp_path / "sensor.toml"
    config.write_text("[limits.rules]\nwatchdog_s = 3\n")
    pin_dir = test_pin_root / "watchdog" / f"v{abi.ABI_VERSION}"
    proc = SensorProcess(lab, tmp_path / "records.json", pin_dir, tmp_path / "control.sock",
                         "--config", str(config), "--rules", str(rules))
    try:
        proc.wait_log(lambda e: e.get("event") == "running", timeout=90)
        sender = "ivy@allowed.example"
        result = lab.swaks("--from", sender, "--to", "bob@example.net", "--timeout", "10", timeout=40)
        # the rule hung on its MAIL: nothing judged the rest, the kernel let it pass
        assert result.returncode == 0, result.stdout[-1500:]
        delivered = [e for e in map(json.loads, lab.journal.read_text().splitlines())
                     if e["kind"] == "message" and e["mail_from"] == sender]
        assert len(delivered) == 1
        assert proc.proc.wait(timeout=60) == 1, proc.describe()
        proc.stop()
        err = "\n".join(proc.stderr)
        assert "Timeout (0:00:03)!" in err, err
        assert f'File "{rules / "stuck.py"}", line 9 in forever' in err, err
        assert not [e for e in proc.logs if e.get("event") == "stopped"]      # no clean stop: an exit
    finally:
        proc.stop()
        removed = Datapath.detach_stale(lab.server_if, lab.server_ns)
        shutil.rmtree(pin_dir, ignore_errors=True)
    assert removed and removed[0].startswith("XDP program"), removed
