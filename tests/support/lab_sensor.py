"""A real `smtp-sensor run` process in the netns lab, for the lab tests
that drive the sensor through its command line (rules, statistics)."""

from __future__ import annotations

import ctypes as ct
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sensor.kernel import abi, bpfsys
from sensor.lab.network import Lab

REPO = Path(__file__).resolve().parents[2]


class SensorProcess:
    """`smtp-sensor run` on the lab server's veth (or `interface` in
    `netns`: a gateway's) in a subprocess, with the test's own pin folder,
    control socket and records file; its JSON log lines are collected by a
    thread.  ``args``: more `run` flags.  ``workers``: `run --workers`; 1 (one
    process) by default, for the tests that read a single process's log lines
    (its ``running`` and ``stopped`` lines and their counters); None: the
    sensor's default (one worker per CPU)."""

    def __init__(self, lab: Lab, records: Path, pin_dir: Path, control: Path, *args: str,
                 interface: str | None = None, netns: str | None = None, workers: int | None = 1):
        self.lab, self.records_path, self.pin_dir, self.control = lab, records, pin_dir, control
        self.logs: list[dict] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        argv = [sys.executable, "-m", "sensor.cli", "--log-format", "json", "run",
                "-i", interface or lab.server_if, "--netns", netns or lab.server_ns, "--pin-dir", str(pin_dir),
                "--control-socket", str(control), "-o", str(records),
                *(["--workers", str(workers)] if workers is not None else []), *args]
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True)]
        for t in self._threads:
            t.start()

    def _read(self, stream, is_log: bool) -> None:
        for line in stream:
            with self._cond:
                if is_log:
                    try:
                        self.logs.append(json.loads(line))
                    except ValueError:
                        self.logs.append({"event": "<not json>", "text": line.rstrip()})
                else:
                    self.stderr.append(line.rstrip())
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def describe(self) -> str:
        with self._cond:
            logs = "\n".join(json.dumps(e) for e in self.logs[-20:])
            err = "\n".join(self.stderr[-20:])
        return f"sensor logs (last 20):\n{logs}\nsensor stderr:\n{err}"

    def mark(self) -> int:
        """Where the log is now: wait_log(after=mark) sees only what comes next."""
        with self._cond:
            return len(self.logs)

    def wait_log(self, pred, after: int = 0, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for entry in self.logs[after:]:
                    if pred(entry):
                        return entry
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not any(t.is_alive() for t in self._threads)):
                    break
                self._cond.wait(min(left, 0.2))
        why = (f"the sensor exited ({self.proc.returncode})" if self.proc.poll() is not None
               else f"no such log line within {timeout} s")
        pytest.fail(f"{why}\n{self.describe()}", pytrace=False)

    def records(self) -> list[dict]:
        try:
            text = self.records_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def record_mark(self) -> int:
        """How many records there are now: wait_record(after=mark) sees only later ones
        (a client port can come back in a later session of the same sensor)."""
        return len(self.records())

    def wait_record(self, pred, timeout: float = 5.0, after: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records()[after:] if pred(r)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                pytest.fail(f"no such record within {timeout} s; records:\n"
                            + "\n".join(json.dumps(r) for r in self.records()[-10:]) + "\n" + self.describe(),
                            pytrace=False)
            time.sleep(0.02)

    def cli_result(self, *args: str) -> subprocess.CompletedProcess:
        """A control command through the real CLI, as it ended (exit code, output)."""
        return subprocess.run([sys.executable, "-m", "sensor.cli", *args, "--control-socket", str(self.control)],
                              cwd=REPO, capture_output=True, text=True, timeout=30)

    def cli(self, *args: str) -> object:
        """A control command through the real CLI (`smtp-sensor stats` etc.), its JSON output."""
        result = self.cli_result(*args)
        assert result.returncode == 0, f"smtp-sensor {' '.join(args)}: {result.stderr}\n{self.describe()}"
        return json.loads(result.stdout)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(timeout=5)
        return self.proc.returncode


def assert_detached(lab: Lab) -> None:
    """Nothing of ours is left on the lab server's interface: no XDP program, no TC filter."""
    link = subprocess.run(["ip", "-n", lab.server_ns, "link", "show", lab.server_if],
                          capture_output=True, text=True, check=True).stdout
    assert "xdp" not in link, link
    filters = subprocess.run(["tc", "-n", lab.server_ns, "filter", "show", "dev", lab.server_if, "egress"],
                             capture_output=True, text=True).stdout
    assert "ss_tc_egress" not in filters, filters


class _MapElemAttr(ct.Structure):
    _fields_ = [("map_fd", ct.c_uint32), ("_pad", ct.c_uint32), ("key", ct.c_uint64),
                ("value", ct.c_uint64), ("flags", ct.c_uint64)]


BPF_MAP_LOOKUP_ELEM = 1


def flow_drop_entry(pin_dir: Path, src: str, sport: int, dst: str, dport: int) -> abi.Verdict | None:
    """The kernel's flow-drop entry of one direction, read from the pinned map."""
    fd = bpfsys.obj_get(str(pin_dir / "ss_flow_drop"))
    try:
        key, value = abi.flow_key(src, sport, dst, dport), abi.Verdict()
        bpfsys.bpf(BPF_MAP_LOOKUP_ELEM, bpfsys.bpf_attr(_MapElemAttr(
            map_fd=fd, key=ct.addressof(key), value=ct.addressof(value))))
        return value
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    finally:
        os.close(fd)
