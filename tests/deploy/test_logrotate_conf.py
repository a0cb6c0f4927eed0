"""deploy/smtp-sensor.logrotate: rename then SIGUSR1 (the sensor reopens its
files), never copytruncate (which loses lines written during the copy)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deploy" / "smtp-sensor.logrotate"


def test_rename_and_sigusr1_not_copytruncate():
    text = CONF.read_text()
    rules = [line.split("#")[0].strip() for line in text.splitlines()]
    assert "copytruncate" not in rules
    assert any("--signal=USR1 smtp-sensor.service" in r for r in rules)
    assert "postrotate" in rules and "endscript" in rules and "sharedscripts" in rules


def test_logrotate_accepts_it(tmp_path):
    if not shutil.which("logrotate"):
        from support.prereqs import missing
        missing("logrotate (./run setup installs it)")
    # installed, the file is root's, 0644 (logrotate refuses one owned by
    # another user, as a checkout copied in by a VM's rsync is): a copy of ours
    conf = tmp_path / "smtp-sensor"
    conf.write_text(CONF.read_text())
    conf.chmod(0o644)
    result = subprocess.run(["logrotate", "--debug", "--state", str(tmp_path / "state"), str(conf)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr
