"""Every CLI command smoke-run under a timeout; user mistakes get one line,
never a traceback."""

from __future__ import annotations

import re
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
    assert result.stderr.strip() == "smtp-sensor: no interface given: use -i IFACE or [sensor] interfaces in the config"


def test_an_impossible_interface_name_is_one_line_error():
    result = smtp_sensor("run", "-i", "smtpsensor-nope0")
    assert result.returncode == 2 and "is not an interface name" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_ebpf_flag_prints_the_kernel_source():
    result = smtp_sensor("run", "--ebpf")
    assert result.returncode == 0 and "int ss_xdp_ingress(struct xdp_md *ctx)" in result.stdout


def test_missing_interface_is_one_line_error(kernel_prereqs, test_pin_root):
    result = smtp_sensor("run", "-i", "ssnope0", "--duration", "1", "--control-socket", "none",
                         "--pin-dir", str(test_pin_root / "cli" / "v1"))
    assert result.returncode == 2, result.stderr
    assert "interface 'ssnope0' does not exist" in result.stderr
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
    # the demo's own namespaces are gone (other labs may run at the same time)
    server_ns = re.search(r"\(aiosmtpd\) in (ss\w+-srv)", result.stdout).group(1)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert server_ns not in listed and server_ns.replace("-srv", "-cli") not in listed


# ------------------------------------------------------------------ replay
PCAPS = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "pcaps"


def test_replay_prints_records_on_stdout_and_one_summary_line():
    result = smtp_sensor("replay", str(PCAPS / "haka__smtp.pcap"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    types = [__import__("json").loads(line)["event_type"] for line in lines]
    assert types.count("smtp") == 1 and "anomaly" in types
    (summary,) = result.stderr.splitlines()
    assert "48 packets" in summary and "1 SMTP flows" in summary and "1 transactions" in summary


def test_replay_writes_records_to_a_file(tmp_path):
    out = tmp_path / "records.json"
    result = smtp_sensor("replay", str(PCAPS / "arkime__smtp-data-250.pcap"), "-o", str(out))
    assert result.returncode == 0 and result.stdout == ""
    assert '"event_type":"smtp"' in out.read_text()


def test_replay_of_a_missing_file_is_one_line_error(tmp_path):
    result = smtp_sensor("replay", str(tmp_path / "nope.pcap"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"smtp-sensor: {tmp_path / 'nope.pcap'}: no such file"


def test_replay_of_a_file_that_is_not_a_capture_is_one_line_error(tmp_path):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello, this is not a pcap\n")
    result = smtp_sensor("replay", str(bogus))
    assert result.returncode == 2 and "not a pcap or pcapng file" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_replay_of_a_truncated_capture_fails_unless_lenient(tmp_path):
    data = (PCAPS / "haka__smtp.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 30])
    result = smtp_sensor("replay", str(cut))
    assert result.returncode == 2 and "truncated" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    lenient = smtp_sensor("replay", "--lenient", str(cut))
    assert lenient.returncode == 0 and "warning" in lenient.stderr and "47 packets" in lenient.stderr


def test_replay_to_an_unwritable_output_is_one_line_error(tmp_path):
    result = smtp_sensor("replay", str(PCAPS / "haka__smtp.pcap"), "-o", str(tmp_path / "no" / "dir" / "x.json"))
    assert result.returncode == 2 and result.stderr.startswith("smtp-sensor: cannot write")
    assert "Traceback" not in result.stderr
