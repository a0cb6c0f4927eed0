"""Every CLI command smoke-run under a timeout; user mistakes get one line,
never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "sensor.cli"]


def smtp_sensor(*args, timeout=60):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_no_command_prints_help_and_exits_2():
    result = smtp_sensor()
    assert result.returncode == 2 and "examples:" in result.stdout


def test_help_shows_examples():
    result = smtp_sensor("run", "--help")
    assert result.returncode == 0 and "smtp-sensor run -i eth1" in result.stdout


@pytest.mark.parametrize("ports", ["25,x", "0", "70000"])
def test_bad_ports_are_a_usage_error(ports):
    result = smtp_sensor("run", "-i", "lo", "--ports", ports)
    assert result.returncode == 2 and "ports must be" in result.stderr and "Traceback" not in result.stderr


def test_run_without_interface_is_one_line_error():
    result = smtp_sensor("run")
    assert result.returncode == 2
    assert result.stderr.strip() == "smtp-sensor: no interface given: use -i IFACE (see smtp-sensor run --help)"


def test_ebpf_flag_prints_the_kernel_source():
    result = smtp_sensor("run", "--ebpf")
    assert result.returncode == 0 and "int ss_xdp_ingress(struct xdp_md *ctx)" in result.stdout


def test_missing_interface_is_one_line_error(kernel_prereqs, test_pin_root):
    result = smtp_sensor("run", "-i", "smtpsensor-nope0", "--duration", "1",
                         "--pin-dir", str(test_pin_root / "cli" / "v1"))
    assert result.returncode == 2, result.stderr
    assert "interface 'smtpsensor-nope0' does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    # --pin-dir is honoured: tests never touch the production pin folder
    assert (test_pin_root / "cli" / "v1" / "ss_ban_v4").exists()


def test_demo_runs_the_lab_and_shows_the_ban(lab_prereqs):
    result = smtp_sensor("demo", timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "XDP C> EHLO client.lab.example" in result.stdout
    assert "TC  S< 550 5.1.1" in result.stdout
    assert "ban 192.0.2.66/32:" in result.stdout and " 0 packets dropped" not in result.stdout
    assert "lab torn down" in result.stdout
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "-cli" not in listed and "-srv" not in listed
