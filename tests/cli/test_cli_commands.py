"""Every CLI command, smoke-run under a timeout.

Without a sensor (no lab): the user's mistakes get one line and exit code 2,
never a traceback; replay and rules check work on files.

Against one real sensor (lab): `smtp-sensor run` in a subprocess on the lab
server's veth, with the shipped rules, the reject statistics, its own control
socket, pin folder, log file, records file and a metrics endpoint on
127.0.0.1 (port 0: the kernel picks a free one).  status, flows (during an
open session), stats, ban add/list/del (and the ban drops in XDP), reload,
rules check; the metrics scraped against the kernel counters `status` reads;
the log and records files reopened on SIGUSR1 after a rename; unload
--keep-maps (pins kept, XDP gone), then a second sensor and unload without it
(pins gone).  Exit codes: 0 ok, 1 a failure the command reports, 2 a mistake.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sensor.kernel import abi
from sensor.kernel.netns import socket_in
from sensor.lab.network import CLIENT_V4, SERVER_V4, SPAMMER_V4, Lab
from support.prereqs import require_module
from support.record_schemas import check as check_record

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60          # every command, at most
LAB_ADDRESSES = (SERVER_V4, CLIENT_V4, SPAMMER_V4)


def cli(*args, sock: Path | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "sensor.cli", *map(str, args)]
    if sock is not None:
        argv += ["--control-socket", str(sock)]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess, code: int = 2, match: str = "") -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smtp-sensor: "), result.stderr
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


# ---------------------------------------------------------------- no sensor needed

@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli-capture") / "small.pcap"
    subprocess.run([sys.executable, str(REPO / "bench" / "gen_capture.py"), "--size-mb", "0.3", "--seed", "5",
                    "-o", str(path)], check=True, capture_output=True, timeout=120)
    return path


@pytest.mark.parametrize("command", [["status"], ["flows"], ["stats"], ["reload"], ["ban", "list"],
                                     ["ban", "del", "192.0.2.1"]])
def test_no_sensor_running_is_one_line(command, tmp_path):
    result = cli(*command, sock=tmp_path / "none.sock")
    one_line_error(result, 2, r"no sensor is running \(no control socket at .*none.sock\)")


@pytest.mark.parametrize("args,match", [
    (["ban", "add", "192.0.2.300"], r"not an address or prefix: '192.0.2.300'"),
    (["ban", "add", "192.0.2.0/33"], "not an address or prefix"),
    (["ban", "del", "mail.example"], "not an address or prefix"),
    (["ban", "add", "192.0.2.1", "--ttl", "-5"], "ttl must be more than 0"),
    (["ban", "add", "192.0.2.1", "--ttl", "inf"], "ttl must be more than 0"),
    (["rules", "check", "/nonexistent/rules"], "rules directory /nonexistent/rules does not exist"),
    (["replay", "/nonexistent.pcap"], "no such file"),
])
def test_user_mistakes_are_one_line(args, match, tmp_path):
    one_line_error(cli(*args, *(["--control-socket", tmp_path / "none.sock"] if args[0] == "ban" else [])),
                   2, match)


def test_argument_mistakes_exit_2():
    assert cli().returncode == 2
    bad = cli("run", "--metrics", "9100")
    assert bad.returncode == 2 and "--metrics: not ADDR:PORT" in bad.stderr
    assert cli("ban", "add").returncode == 2
    assert cli("frobnicate").returncode == 2


def test_an_unwritable_log_file_is_one_line(tmp_path):
    one_line_error(cli("run", "-i", "ssnope0", "--log-file", tmp_path / "missing" / "x.log"), 2,
                   r"cannot write the log file .*/missing/x.log: No such file or directory")


def test_a_metrics_port_in_use_is_one_line_before_anything_is_loaded(tmp_path):
    require_module("prometheus_client")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # a namespace and an interface that do not exist: even if the port were
        # free, nothing of the host would be touched
        result = cli("run", "-i", "ssnope0", "--netns", "ss-no-such-ns", "--pin-dir", tmp_path / "pins",
                     "--control-socket", tmp_path / "c.sock", "--metrics", f"127.0.0.1:{port}", "--workers", "1")
    one_line_error(result, 2, rf"cannot serve metrics on 127.0.0.1:{port}: Address already in use")
    assert not (tmp_path / "pins").exists()


def test_unload_with_nothing_running(tmp_path):
    result = cli("unload", "--pin-dir", tmp_path / "pins", "--control-socket", tmp_path / "none.sock")
    assert result.returncode == 0, result.stderr
    assert "no sensor running" in result.stdout and "no pinned maps" in result.stdout


def test_replay(capture, tmp_path):
    out, passed = tmp_path / "records.json", tmp_path / "passed.pcap"
    result = cli("replay", capture, "-o", out, "--rules", REPO / "rules", "--write-passed", passed)
    assert result.returncode == 0, result.stderr
    assert "SMTP flows" in result.stderr and "rules:" in result.stderr
    assert "\r" not in result.stderr      # no progress line: stderr is not a terminal
    assert all(json.loads(line) for line in out.read_text().splitlines())
    assert [stat.S_IMODE(os.stat(p).st_mode) for p in (out, passed)] == [0o600, 0o600]


def broken_rules(tmp_path) -> tuple[Path, str]:
    rules = tmp_path / "broken-rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    path = rules / "spam_filter.py"
    good = path.read_text()
    path.write_text(good + "\ndef broken(:\n    pass\n")
    return rules, f"{path}:{good.count(chr(10)) + 2}"


def test_rules_check(tmp_path):
    good = cli("rules", "check", REPO / "rules")
    assert good.returncode == 0, good.stdout + good.stderr
    assert re.search(r"^ok +spam_filter\.mail_from rev \d+ \(command\) .*/rules/spam_filter\.py:\d+$",
                     good.stdout, re.M), good.stdout
    assert re.search(r"^\d+ rules, 0 errors in ", good.stdout, re.M)
    rules, where = broken_rules(tmp_path)
    bad = cli("rules", "check", rules)
    assert bad.returncode == 1, bad.stdout
    assert re.search(rf"^error +{re.escape(where)}.*SyntaxError", bad.stdout, re.M), bad.stdout
    assert re.search(r"^\d+ rules, 1 errors in ", bad.stdout, re.M)


BUSY_RULE = """
from sensor.rules import hooks, rule

@rule(hooks.command, id="busy.loop")
def loop(flow, command):
    while True:                  # interrupted at its budget, 50 ms
        pass
"""


def test_replay_with_a_rule_that_loops_forever_finishes_and_says_so(capture, tmp_path):
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (rules / "busy.py").write_text(BUSY_RULE)
    out = tmp_path / "records.json"
    result = cli("replay", capture, "-o", out, "--rules", rules)
    assert result.returncode == 0, result.stderr
    assert "3 calls over budget, 1 rules disabled" in result.stderr, result.stderr
    assert "rule disabled until its file changes" in result.stderr
    assert all(json.loads(line) for line in out.read_text().splitlines())


def test_rules_check_of_a_file_that_blocks_at_import(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "stuck.py").write_text("import time\ntime.sleep(3600)\n")
    result = cli("rules", "check", rules)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(rf"^error +{re.escape(str(rules / 'stuck.py'))}:2: RuleTimeout: past its time budget "
                     r"of 2000 ms ; not loaded$", result.stdout, re.M), result.stdout


def test_ctrl_c_stops_a_replay_even_inside_a_rule(capture, tmp_path):
    """A KeyboardInterrupt a rule raises is that rule's error; the operator's
    Ctrl-C while a rule runs still stops the replay (exit 0, as before)."""
    rules = tmp_path / "rules"
    rules.mkdir()
    started = tmp_path / "started"
    (rules / "slow.py").write_text(f"""
import time
from sensor.rules import hooks, rule

@rule(hooks.command, id="slow.sleeps", budget_ms=1000)
def sleeps(flow, command):
    open({str(started)!r}, "a").close()
    time.sleep(0.2)              # under its budget: the whole replay would take minutes
""")
    proc = subprocess.Popen([sys.executable, "-m", "sensor.cli", "replay", str(capture), "-o", str(tmp_path / "out"),
                             "--rules", str(rules)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), proc.communicate()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "rule raised" not in err, err


# ---------------------------------------------------------------- the lab and one sensor

class SensorRun:
    """`smtp-sensor run` with its files in `work`; log lines read from the log file."""

    def __init__(self, lab: Lab, work: Path, pin_dir: Path, rules: Path | None = None):
        work.mkdir(parents=True, exist_ok=True)
        self.lab, self.work, self.pin_dir = lab, work, pin_dir
        self.sock = work / "control.sock"
        self.log_path = work / "sensor.log"
        self.records_path = work / "records.json"
        argv = [sys.executable, "-m", "sensor.cli", "run", "-i", lab.server_if, "--netns", lab.server_ns,
                "--pin-dir", str(pin_dir), "--control-socket", str(self.sock), "-o", str(self.records_path),
                "--log-file", str(self.log_path), "--stats-interval", "0.5", "--reload-interval", "0.2",
                # one process: these tests read its log lines and its Prometheus endpoint
                # (tests/lab/test_lab_workers.py drives the same commands through a supervisor)
                "--workers", "1"]
        if rules is not None:
            argv += ["--rules", str(rules)]
            if _has_prometheus():
                argv += ["--metrics", "127.0.0.1:0"]
        self.stdio = open(work / "stdio.txt", "w")
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=self.stdio, stderr=subprocess.STDOUT)
        self.running = self.wait_log(lambda e: e.get("event") == "running", timeout=90)

    def logs(self, path: Path | None = None) -> list[dict]:
        try:
            text = (path or self.log_path).read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def describe(self) -> str:
        tail = "\n".join(json.dumps(e) for e in self.logs()[-15:])
        return f"log (last 15):\n{tail}\nstdout/stderr:\n{(self.work / 'stdio.txt').read_text()[-3000:]}"

    def wait_log(self, pred, timeout: float = 10.0, path: Path | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.logs(path):
                if pred(entry):
                    return entry
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no such log line ({'exited ' + str(self.proc.returncode) if self.proc.poll() is not None else 'timeout'})"
                            f"\n{self.describe()}", pytrace=False)
            time.sleep(0.05)

    def records(self, path: Path | None = None) -> list[dict]:
        try:
            text = (path or self.records_path).read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def wait_record(self, pred, timeout: float = 10.0, path: Path | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records(path) if pred(r)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                pytest.fail(f"no such record within {timeout} s\n{self.describe()}", pytrace=False)
            time.sleep(0.05)

    def cli(self, *args, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        return cli(*args, sock=self.sock, timeout=timeout)

    def call(self, *args) -> object:
        result = self.cli(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr, self.describe())
        return json.loads(result.stdout)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stdio.close()
        return self.proc.returncode


def _has_prometheus() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def pin_dir(test_pin_root):
    return test_pin_root / "cli" / f"v{abi.ABI_VERSION}"


@pytest.fixture(scope="module")
def sensor(lab, pin_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("cli-sensor")
    rules = work / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run = SensorRun(lab, work / "run", pin_dir, rules=rules)
    run.rules = rules
    try:
        yield run
    finally:
        run.stop()


def xdp_prog_id(lab) -> int | None:
    link = subprocess.run(["ip", "-n", lab.server_ns, "-d", "link", "show", lab.server_if],
                          capture_output=True, text=True, check=True).stdout
    found = re.search(r"prog/xdp id (\d+)", link)
    return int(found.group(1)) if found else None


@contextlib.contextmanager
def smtp_session(lab, source: str = CLIENT_V4, helo: str = "cli.lab.example", timeout: float = 5.0):
    """An SMTP session from the client namespace, open until the block ends."""
    sock = socket_in(lab.client_ns)
    sock.settimeout(timeout)
    try:
        sock.bind((source, 0))
        sock.connect((SERVER_V4, 25))
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220")
        sock.sendall(f"EHLO {helo}\r\n".encode())
        while not f.readline()[3:4] == b" ":
            pass
        yield sock, sock.getsockname()[1]
        sock.sendall(b"QUIT\r\n")
        f.readline()
    finally:
        sock.close()


def swaks_mail(lab, sender: str) -> None:
    result = lab.swaks("--from", sender, "--to", "bob@example.net", "--timeout", "5", timeout=30)
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-500:]


# ---------------------------------------------------------------- tests against the sensor

@pytest.mark.lab
def test_status(lab, sensor):
    swaks_mail(lab, "status@allowed.example")
    status = sensor.call("status")
    assert status["pid"] == sensor.proc.pid
    [iface] = status["interfaces"]
    assert iface["interface"] == lab.server_if and iface["netns"] == lab.server_ns
    assert iface["xdp_mode"] in ("native", "generic")
    assert iface["xdp_prog_id"] == xdp_prog_id(lab) and iface["tc_prog_id"] > 0
    for direction in ("ingress", "egress"):
        assert status["counters"][direction]["pushed"] > 0
    assert isinstance(status["active_flows"], int)
    assert {r["id"] for r in status["rules"]} >= {"spam_filter.mail_from", "rcpt_rejects.harvest"}
    assert status["rule_errors"] == {} and status["rule_engine"]["errors"] == 0
    assert 0 <= status["last_reload_age"] < 60
    assert status["pipeline"]["flows"] >= 1 and status["events"] > 0
    assert status["spam_stats"]["connections"] >= 1
    if _has_prometheus():
        assert status["metrics"] == sensor.running["metrics"]


@pytest.mark.lab
def test_flows_lists_an_open_session(lab, sensor):
    with smtp_session(lab, helo="flows.lab.example") as (_, port):
        orig = f"{CLIENT_V4}:{port}"
        deadline = time.monotonic() + 10
        while True:
            flows = sensor.call("flows")
            mine = [f for f in flows if f["orig"] == orig]
            if mine and mine[0]["helo"] == "flows.lab.example" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert mine, flows
        assert mine[0]["resp"] == f"{SERVER_V4}:25" and mine[0]["helo"] == "flows.lab.example"
        assert mine[0]["dropped"] is False and mine[0]["uid"]
        assert sensor.call("status")["active_flows"] >= 1
        assert len(sensor.call("flows", "--limit", "1")) == 1


@pytest.mark.lab
def test_stats(lab, sensor):
    swaks_mail(lab, "stats@allowed.example")
    report = sensor.call("stats", "--limit", "5")
    hosts = {h["host"]: h for h in report["hosts"]}
    assert hosts[CLIENT_V4]["total"] >= 1 and hosts[CLIENT_V4]["rejects"] == 0
    assert report["thresholds"]["total"] > 0 and report["counters"]["connections"] >= 1


def connect_from(lab, source: str, timeout: float) -> bytes:
    """The server's greeting to a connection from `source`, or b"" if none came."""
    sock = socket_in(lab.client_ns)
    sock.settimeout(timeout)
    try:
        sock.bind((source, 0))
        sock.connect((SERVER_V4, 25))
        return sock.recv(100)
    except OSError:
        return b""
    finally:
        sock.close()


@pytest.mark.lab
def test_ban_add_list_del_and_the_ban_drops_in_xdp(lab, sensor):
    assert connect_from(lab, SPAMMER_V4, 5).startswith(b"220")
    drops_before = sensor.call("status")["counters"]["ingress"]["drop_ban"]
    added = sensor.call("ban", "add", "192.0.2.66", "--ttl", "3600", "--reason", "cli smoke test")
    assert added == {"banned": "192.0.2.66/32", "ttl": 3600.0, "note": "cli smoke test"}
    record = sensor.wait_record(lambda r: r["event_type"] == "drop" and r.get("target") == "192.0.2.66/32"
                                and r["action"] == "ban_source" and r.get("note") == "cli smoke test")
    check_record(record)
    assert record["reason"] == "manual" and record["ttl"] == 3600 and record["enforced_by"] == "kernel"
    # the SYN (and its retransmissions) never reach the server
    assert connect_from(lab, SPAMMER_V4, 1.5) == b""
    # the other client is not concerned
    assert connect_from(lab, CLIENT_V4, 5).startswith(b"220")
    [ban] = [b for b in sensor.call("ban", "list") if b["target"] == "192.0.2.66/32"]
    assert ban["reason"] == "manual" and ban["note"] == "cli smoke test"
    assert 3000 < ban["ttl_left"] <= 3600
    assert ban["packets"] >= 1 and ban["bytes"] > 0
    assert sensor.call("status")["counters"]["ingress"]["drop_ban"] >= drops_before + 1
    # the same prefix written otherwise is the same ban; mistakes are refused before asking
    one_line_error(sensor.cli("ban", "add", "192.0.2.666"), 2, "not an address or prefix")
    one_line_error(sensor.cli("ban", "add", "192.0.2.66", "--ttl", "0"), 2, "ttl must be more than 0")
    assert sensor.call("ban", "del", "192.0.2.66/32") == {"unbanned": "192.0.2.66/32"}
    one_line_error(sensor.cli("ban", "del", "192.0.2.66"), 1, r"192.0.2.66/32 is not banned")
    assert not [b for b in sensor.call("ban", "list") if b["target"] == "192.0.2.66/32"]
    assert connect_from(lab, SPAMMER_V4, 5).startswith(b"220")


@pytest.mark.lab
def test_reload(sensor):
    result = sensor.call("reload")
    assert result["errors"] == {} and "spam_filter.mail_from" in result["rules"]
    path = sensor.rules / "spam_filter.py"
    good = path.read_text()
    path.write_text(good + "\ndef broken(:\n    pass\n")
    try:
        bad = sensor.cli("reload")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        errors = json.loads(bad.stdout)["errors"]
        assert f"{path}:{good.count(chr(10)) + 2}" in errors[str(path)] and "SyntaxError" in errors[str(path)]
        assert "spam_filter.mail_from" in json.loads(bad.stdout)["rules"]     # the last good version
        assert sensor.call("status")["rule_errors"]
    finally:
        path.write_text(good)
    assert sensor.call("reload")["errors"] == {}
    assert sensor.call("status")["rule_errors"] == {}


def scrape(url: str) -> tuple[str, dict]:
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    return text, samples


def _is_address(token: str) -> bool:
    token = token.strip("[]")
    if not re.fullmatch(r"[0-9a-fA-F:.]+", token) or ("." not in token and ":" not in token):
        return False
    try:
        ipaddress.ip_address(token)
        return True
    except ValueError:
        return False


@pytest.mark.lab
def test_metrics_match_the_kernel_counters(lab, sensor):
    require_module("prometheus_client")
    url = sensor.running["metrics"]
    assert url.startswith("http://127.0.0.1:")
    swaks_mail(lab, "metrics@allowed.example")
    with smtp_session(lab, helo="metrics.lab.example"):
        before = sensor.call("status")
        text, got = scrape(url)
        after = sensor.call("status")
    compared = 0
    for direction in ("ingress", "egress"):
        for counter in abi.Counter:
            name = counter.name.lower()
            if counter < abi.VERDICT_COUNTERS:
                key = ("smtp_sensor_kernel_packets_total", (("direction", direction), ("verdict", name)))
            else:
                key = ("smtp_sensor_kernel_marked_packets_total", (("direction", direction), ("mark", name)))
            low, high = before["counters"][direction][name], after["counters"][direction][name]
            assert low <= got[key] <= high, (key, low, got[key], high)
            compared += 1
    assert compared == 2 * len(abi.Counter)
    assert before["counters"]["ingress"]["pushed"] > 0
    # userland counters, between the same two readings
    for key, read in ((("smtp_sensor_events_total", ()), lambda s: s["events"]),
                      (("smtp_sensor_lost_samples_total", ()), lambda s: s["lost"]),
                      (("smtp_sensor_flows_total", ()), lambda s: s["pipeline"]["flows"]),
                      (("smtp_sensor_transactions_total", ()), lambda s: s["pipeline"]["transactions"]),
                      (("smtp_sensor_anomalies_total", ()), lambda s: s["pipeline"]["anomalies"]),
                      (("smtp_sensor_alerts_total", ()), lambda s: s["rule_engine"]["alerts"]),
                      (("smtp_sensor_rule_reload_errors_total", ()), lambda s: s["rule_engine"]["reload_errors"]),
                      (("smtp_sensor_notices_total", ()), lambda s: s["spam_stats"]["notices"])):
        assert read(before) <= got[key] <= read(after), (key, read(before), got[key], read(after))
    assert got[("smtp_sensor_events_total", ())] > 0
    assert got[("smtp_sensor_active_flows", ())] >= 1
    for rule in after["rules"]:
        key = ("smtp_sensor_rule_alerts_total", (("rule", rule["id"]),))
        low = next(r for r in before["rules"] if r["id"] == rule["id"])["alerts"]
        assert low <= got[key] <= rule["alerts"]
        assert ("smtp_sensor_rule_seconds_total", (("rule", rule["id"]),)) in got
    assert got[("smtp_sensor_rules_loaded", ())] == len(after["rules"])
    # no address anywhere: not in a name, not in a label, not in the text at all
    for (name, labels) in got:
        for token in [name, *(k for k, _ in labels), *(v for _, v in labels)]:
            assert not _is_address(token) and not any(_is_address(t) for t in re.split(r"[\s,=/]", token)), \
                (name, labels)
    for address in LAB_ADDRESSES:
        assert address not in text


@pytest.mark.lab
def test_log_and_record_files_reopen_on_sigusr1(lab, sensor):
    swaks_mail(lab, "before-rotate@allowed.example")
    sensor.wait_record(lambda r: r["event_type"] == "smtp" and r.get("mailfrom") == "before-rotate@allowed.example")
    sensor.wait_log(lambda e: e.get("event") == "stats")
    old_log, old_records = sensor.work / "sensor.log.1", sensor.work / "records.json.1"
    os.rename(sensor.log_path, old_log)             # logrotate: rename, then signal
    os.rename(sensor.records_path, old_records)
    kept = (len(sensor.logs(old_log)), len(sensor.records(old_records)))
    assert kept[0] > 0 and kept[1] > 0
    sensor.proc.send_signal(signal.SIGUSR1)
    reopened = sensor.wait_log(lambda e: e.get("event") == "files reopened")
    assert set(reopened["files"]) == {str(sensor.log_path), str(sensor.records_path)}
    for path in (old_log, old_records, sensor.log_path, sensor.records_path):   # owner-only
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    old_sizes = (old_log.stat().st_size, old_records.stat().st_size)
    # activity after the signal: records and log lines land in the new files
    swaks_mail(lab, "after-rotate@allowed.example")
    new = sensor.wait_record(lambda r: r["event_type"] == "smtp" and r.get("mailfrom") == "after-rotate@allowed.example")
    sensor.wait_log(lambda e: e.get("event") == "stats" and e["pipeline"]["flows"] >= 1
                    and e["ts"] > reopened["ts"])
    assert new["uid"] not in {r.get("uid") for r in sensor.records(old_records)}
    # the old files kept their lines, and got nothing after the reopen
    assert (old_log.stat().st_size, old_records.stat().st_size) == old_sizes
    assert len(sensor.logs(old_log)) >= kept[0] and len(sensor.records(old_records)) >= kept[1]
    assert not [e for e in sensor.logs(old_log) if e.get("event") == "files reopened"]
    for record in sensor.records(old_records) + sensor.records():   # whole lines, each a valid record
        check_record(record)
    assert sensor.call("status")["pid"] == sensor.proc.pid
    if _has_prometheus():
        assert scrape(sensor.running["metrics"])[1][("smtp_sensor_log_reopens_total", ())] == 1


@pytest.mark.lab
def test_unload_keep_maps(lab, sensor, pin_dir):
    """Last of this sensor: it stops (exit 0), XDP is gone, the pins stay."""
    sensor.call("ban", "add", "203.0.113.0/24", "--reason", "kept across unload")
    result = sensor.cli("unload", "--keep-maps")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sensor stopped" in result.stdout and "pinned maps kept" in result.stdout
    assert sensor.proc.wait(timeout=20) == 0, sensor.describe()
    assert not sensor.sock.exists()
    assert xdp_prog_id(lab) is None
    link = subprocess.run(["ip", "-n", lab.server_ns, "link", "show", lab.server_if],
                          capture_output=True, text=True, check=True).stdout
    assert "xdp" not in link, link
    for name in ("ss_ban_v4", "ss_ban_v6", "ss_flow_drop", "ss_bypass"):
        assert (pin_dir / name).exists(), name
    one_line_error(sensor.cli("status"), 2, "no sensor is running")


@pytest.mark.lab
def test_unload_removes_the_maps(lab, sensor, pin_dir, tmp_path):
    """A second sensor on the kept pins: the ban is still there; unload
    without --keep-maps removes them."""
    assert sensor.proc.poll() is not None, "test_unload_keep_maps stops the first sensor"
    second = SensorRun(lab, tmp_path / "second", pin_dir)
    try:
        assert [b["target"] for b in second.call("ban", "list")] == ["203.0.113.0/24"]
        assert second.call("status")["interfaces"][0]["xdp_prog_id"] == xdp_prog_id(lab)
        result = second.cli("unload", "--pin-dir", pin_dir)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"removed the pinned maps in {pin_dir}" in result.stdout
        assert second.proc.wait(timeout=20) == 0, second.describe()
        assert not pin_dir.exists()
        assert xdp_prog_id(lab) is None
        filters = subprocess.run(["tc", "-n", lab.server_ns, "filter", "show", "dev", lab.server_if, "egress"],
                                 capture_output=True, text=True).stdout
        assert "ss_tc_egress" not in filters
    finally:
        second.stop()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_pin_folder_not_on_a_bpffs_is_one_line_before_anything_is_loaded(tmp_path, workers):
    result = cli("run", "-i", "ssnope0", "--netns", "ss-no-such-ns", "--pin-dir", tmp_path / "pins",
                 "--control-socket", tmp_path / "c.sock", "--metrics", "127.0.0.1:0", "--workers", workers)
    one_line_error(result, 2, r"--pin-dir .*pins is on .*, not on a bpffs: choose a folder under /sys/fs/bpf")
    assert not (tmp_path / "pins").exists()
