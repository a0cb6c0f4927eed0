"""vagrant/Vagrantfile is valid Ruby that provisions with the README's set-up
and runs the README's test command; the systemd unit reloads with SIGHUP."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def test_vagrantfile_is_valid_ruby():
    ruby = shutil.which("ruby")
    if ruby is None:
        if IN_CI:
            pytest.fail("ruby is missing (./run setup installs vagrant, which brings it)")
        pytest.skip("ruby is missing")
    result = subprocess.run([ruby, "-c", str(REPO / "vagrant" / "Vagrantfile")], capture_output=True, text=True)
    assert result.returncode == 0 and "Syntax OK" in result.stdout, result.stderr


def test_vagrant_validates_the_vagrantfile():
    if shutil.which("vagrant") is None:
        if IN_CI:
            pytest.fail("vagrant is missing (./run setup installs Debian's package)")
        pytest.skip("vagrant is missing")
    # --ignore-provider: no VirtualBox/libvirt on a CI machine; the rest is checked
    result = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=REPO / "vagrant",
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"})
    assert result.returncode == 0 and "validated successfully" in result.stdout, result.stdout + result.stderr


def test_vagrantfile_provisions_with_the_readme_commands():
    text = (REPO / "vagrant" / "Vagrantfile").read_text()
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "./run tests" in readme and "./run tests" in ci
    assert 'inline: "cd /smtp-sensor && ./run setup"' in text
    assert 'inline: "cd /smtp-sensor && CI=true ./run tests"' in text
    assert "ubuntu-24.04" in text and "SMTP_SENSOR_CPUS" in text and "SMTP_SENSOR_MEMORY" in text


def test_systemd_unit_reloads_with_sighup_and_states_capabilities():
    unit = (REPO / "deploy" / "smtp-sensor.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    for cap in ("CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"):
        assert cap in unit
