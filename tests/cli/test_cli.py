"""Every CLI command smoke-run under a timeout; user mistakes get one line,
never a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

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


def test_ebpf_flag_prints_what_bcc_compiles_for_this_run(tmp_path):
    """Without root: the listing is the datapath's, with this run's pin folder."""
    from sensor.config import SensorConfig
    from sensor.kernel.datapath import Datapath, DatapathConfig
    result = smtp_sensor("run", "--ebpf", "--pin-dir", str(tmp_path / "v1"))
    assert result.returncode == 0 and "int ss_xdp_ingress(struct xdp_md *ctx)" in result.stdout
    assert f'#define SS_PIN_DIR "{tmp_path}/v1"' in result.stdout.splitlines()
    workers = SensorConfig().worker_count      # one ring per worker: -DSS_WORKERS
    assert result.stdout == Datapath(DatapathConfig(pin_dir=tmp_path / "v1", workers=workers)).listing()


def test_missing_interface_is_one_line_error(kernel_prereqs, test_pin_root):
    result = smtp_sensor("run", "-i", "ssnope0", "--duration", "1", "--control-socket", "none",
                         "--pin-dir", str(test_pin_root / "cli" / "v1"))
    assert result.returncode == 2, result.stderr
    assert "interface 'ssnope0' does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    # --pin-dir is honoured: tests never touch the production pin folder
    assert (test_pin_root / "cli" / "v1" / "ss_ban_v4").exists()


def _lab_gone(stdout: str) -> None:
    """The demo's own namespaces and pin folder are gone (other labs may run at the same time)."""
    server_ns = re.search(r"\(aiosmtpd\) in (ss\w+-srv)", stdout).group(1)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert server_ns not in listed and server_ns.replace("-srv", "-cli") not in listed
    pin_root = re.search(r"pins in (/sys/fs/bpf/smtp-sensor-demo-\d+)/v\d+", stdout).group(1)
    assert not os.path.exists(pin_root)


def demo_signalled(at: str, delay: float = 0.0, timeout: float = 120) -> tuple[int, str, str]:
    """Run the demo; once it printed a line starting with `at`, wait `delay`
    s, send SIGINT, and a second one 0.3 s later.  (returncode, stdout,
    stderr).  Without PYTHONUNBUFFERED: the demo itself must print each line
    when it happens into a pipe, or the signal lands later than the line."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.Popen([*CLI, "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.lstrip().startswith(at):
                time.sleep(delay)
                proc.send_signal(signal.SIGINT)
                time.sleep(0.3)
                proc.send_signal(signal.SIGINT)     # a second Ctrl-C does not cut the teardown short
                break
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(seen) + out, err


def test_demo_runs_the_whole_story_and_tears_down(lab_prereqs):
    # a Ctrl-C once the demo has finished, while the interpreter exits: ignored
    code, out, err = demo_signalled("lab torn down")
    assert code == 0, out[-3000:] + err[-2000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err
    story, _, journal = out.partition("what reached the server")
    # the real sensor, with the shipped rules and the scaled-down statistics
    assert "spam_filter.mail_from" in story and "8 connections with >= 30 % rejected" in story
    # 1. legitimate mail: delivered, and dissected by the sensor
    assert "sensor: smtp    alice@example.org -> bob@lab.example: delivered" in story
    # 2. a banned domain: alerted and its flow dropped in the kernel
    assert re.search(r"ALERT +forbidden mail domain \(spam_filter\.mail_from .*MAIL FROM:<offers@suspicious\.org>",
                     story)
    # 3. a malformed sender: alerted and dropped
    assert re.search(r"ALERT +malformed email address \(spam_filter\.mail_from .*offers\.bulk-mail\.example", story)
    drops = re.findall(r"DROP +flow (192\.0\.2\.77:\d+) <> 192\.0\.2\.25:25", story)
    assert len(set(drops)) == 3, story
    dropped_in_xdp = re.findall(r"flow drop 192\.0\.2\.77:\d+ <> 192\.0\.2\.25:25: (\d+) client packets dropped in XDP",
                                story)
    assert len(dropped_in_xdp) == 3 and all(int(n) > 0 for n in dropped_in_xdp), story
    # the commit hold: the legitimate message released, the pipelined banned one dropped while held
    assert re.search(r"1\. legitimate mail.*?kernel: end of data held, released after [\d.]+ ms", story, re.S)
    pipelined = story.partition("4. a banned domain that writes its whole transaction at once")[2]
    assert "forbidden mail domain" in pipelined.partition("\n5. ")[0], story
    assert "kernel: end of data held, then the flow dropped" in pipelined.partition("\n5. ")[0], story
    # 5. the spam host: harvesting alert, the notice, the ban, its next connection dropped in XDP
    assert "recipients rejected in one connection (rcpt_rejects.harvest" in story
    assert re.search(r"NOTICE +SMTP_PossibleSpam: 192\.0\.2\.66 - sent: \d+ rejected: \d+ percent", story)
    assert re.search(r"BAN +192\.0\.2\.66/32 for 60 s", story)
    assert "no answer to its SYN" in story
    banned = re.search(r"ban 192\.0\.2\.66/32: (\d+) packets dropped, reason spam_stats", story)
    assert banned and int(banned.group(1)) > 0, story
    assert re.search(r"stats +192\.0\.2\.66 .*over the thresholds: SMTP_PossibleSpam", story)
    # 6. the legitimate host still gets through after the ban
    assert "sensor: smtp    alice@example.org -> carol@lab.example: delivered" in story
    # what reached the server: nothing from the dropped flows, not the banned host's last connection
    assert "offers@suspicious.org" not in journal and "offers.bulk-mail.example" not in journal
    assert "packet-level.com" not in journal
    assert re.search(r"192\.0\.2\.77 +3 of +3 connections arrived, +0 messages", journal)
    arrived, tried = map(int, re.search(r"192\.0\.2\.66 +(\d+) of +(\d+) connections arrived", journal).groups())
    assert arrived == tried - 1
    assert re.search(r"192\.0\.2\.10 +2 of +2 connections arrived, +2 messages", journal)
    assert "lab torn down" in out and "STILL PRESENT" not in out
    _lab_gone(out)


# a Ctrl-C during the story (the sensor attached), and once the teardown has
# begun (closing the lab): the whole teardown, exit 130, no traceback
@pytest.mark.parametrize("at,delay", [("2. ", 0.0), ("what reached the server", 0.02)], ids=["story", "teardown"])
def test_demo_interrupted_tears_everything_down(lab_prereqs, at, delay):
    code, stdout, err = demo_signalled(at, delay, timeout=60)
    assert code == 130, stdout[-2000:] + err[-2000:]
    assert "interrupted (SIGINT)" in stdout and "STILL PRESENT" not in stdout
    assert "Traceback" not in err and "Exception ignored" not in err, err
    _lab_gone(stdout)


# ------------------------------------------------------------------ replay
from support.captures import PCAPS_DIR as PCAPS  # noqa: E402


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


def test_replay_follows_the_configs_monitor_only_mode(tmp_path):
    """A SPAN sensor's own config (``enforce = false``) replayed: its drop
    records say monitor, as the live sensor's, and --write-passed keeps every
    packet; the same config enforcing gives the replay's verdicts."""
    import json

    from sensor.inputs.pcapfile import read_packets

    rules = PCAPS.parents[2] / "rules"
    records = {}
    for enforce in ("false", "true"):
        config = tmp_path / f"{enforce}.toml"
        config.write_text(f'[sensor]\nrules = "{rules}"\nenforce = {enforce}\n')
        out, passed = tmp_path / f"{enforce}.json", tmp_path / f"{enforce}.pcap"
        result = smtp_sensor("replay", str(PCAPS / "haka__smtp.pcap"), "-c", str(config), "-o", str(out),
                             "--write-passed", str(passed))
        assert result.returncode == 0, result.stderr
        assert "rules: 1 alerts, 1 flows dropped" in result.stderr
        records[enforce] = [json.loads(line) for line in out.read_text().splitlines()]
        records[enforce + " passed"] = sum(1 for _ in read_packets(passed))
    (drop,) = [r for r in records["false"] if r["event_type"] == "drop"]
    assert drop["enforced_by"] == "monitor"
    (smtp,) = [r for r in records["false"] if r["event_type"] == "smtp"]
    assert smtp["delivered"] is True and [s["verb"] for s in smtp["steps"]][-1] == "."
    assert records["false passed"] == 48 and records["true passed"] == 25
    assert [r["enforced_by"] for r in records["true"] if r["event_type"] == "drop"] == ["replay"]


def test_replay_of_a_capture_corrupt_in_the_middle_writes_what_it_read_then_fails_unless_lenient(tmp_path):
    import struct

    from support.smtp_pcap import session_frames, smtp_dialogue, write_pcap
    frames = (session_frames(smtp_dialogue(), sport=25, cport=40000)
              + session_frames(smtp_dialogue(sender=b"carol@example.org"), sport=25, cport=40001,
                               t0=1_700_000_010.0))
    data = bytearray(write_pcap(tmp_path / "intact.pcap", frames).read_bytes())
    pos = 24
    for _ in range(len(frames) // 2 + 10):            # into the second session, past its MAIL
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    struct.pack_into("<I", data, pos + 8, 0x7FFFFF00)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(bytes(data))
    out = tmp_path / "records.json"
    result = smtp_sensor("replay", str(bad), "-o", str(out))
    assert result.returncode == 2 and "corrupt record" in result.stderr and "--lenient" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("mailfrom") for r in written if r["event_type"] == "smtp"] == \
        ["alice@example.org", "carol@example.org"]
    lenient = smtp_sensor("replay", "--lenient", str(bad), "-o", str(out))
    assert lenient.returncode == 0 and "warning" in lenient.stderr and "skipped" in lenient.stderr
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("delivered") for r in written if r["event_type"] == "smtp"] == [True, True]


def test_replay_finds_smtp_on_other_ports_unless_ports_only(tmp_path):
    cap = PCAPS / "by_content" / "synthetic__smtp-http-connect-8240.pcap"
    out = tmp_path / "records.json"
    found = smtp_sensor("replay", str(cap), "-o", str(out))
    assert found.returncode == 0 and "1 SMTP flows (1 found by content on other ports)" in found.stderr
    (rec,) = [r for r in map(json.loads, out.read_text().splitlines()) if r["event_type"] == "smtp"]
    assert rec["id.resp_p"] == 8240 and rec["mailfrom"] == "frank@example.org"
    only = smtp_sensor("replay", "--ports-only", str(cap), "-o", str(out))
    assert only.returncode == 0 and "0 SMTP flows" in only.stderr and out.read_text() == ""
