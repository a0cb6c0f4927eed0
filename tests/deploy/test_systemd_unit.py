"""deploy/smtp-sensor.service keeps what the sensor writes owner-only: a
UMask and owner-only state and log folders, in a unit systemd accepts; the
logrotate file creates the new files 0600 as the sensor would."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "smtp-sensor.service"


def service_settings() -> dict[str, str]:
    settings, section = {}, None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_the_unit_makes_the_sensors_files_owner_only():
    s = service_settings()
    assert s["UMask"] == "0077"
    assert s["StateDirectoryMode"] == s["LogsDirectoryMode"] == "0700"
    assert s["StateDirectory"] == s["LogsDirectory"] == "smtp-sensor"


def test_systemd_accepts_the_unit(tmp_path):
    if not shutil.which("systemd-analyze"):
        from support.prereqs import missing
        missing("systemd-analyze (systemd)")
    # the programs the unit runs need not be on this machine (the installed
    # ExecStart; /bin/kill, which a minimal root lacks): verify the unit
    # around /bin/true
    unit = tmp_path / "smtp-sensor.service"
    unit.write_text("\n".join(line.split("=", 1)[0] + "=/bin/true" if line.startswith("Exec") else line
                              for line in UNIT.read_text().splitlines()) + "\n")
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False,
                            timeout=60)
    complaints = [line for line in result.stderr.splitlines()
                  if "smtp-sensor.service" in line and ("Failed" in line or "Unknown" in line)]
    assert result.returncode == 0 and not complaints, result.stderr


def test_the_unit_keeps_statistics_and_bans_in_its_state_folder():
    import shlex

    from sensor.cli import build_parser

    argv = shlex.split(service_settings()["ExecStart"])
    args = build_parser().parse_args(argv[1:])
    state = Path("/var/lib") / service_settings()["StateDirectory"]
    assert args.state_file.parent == state and args.ban_file.parent == state
    assert args.state_file != args.ban_file


def test_logrotate_creates_the_new_files_0600():
    rules = [line.split("#")[0].strip() for line in (REPO / "deploy" / "smtp-sensor.logrotate").read_text()
             .splitlines()]
    assert "create 0600 root root" in rules
