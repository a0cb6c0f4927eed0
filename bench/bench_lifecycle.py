"""Lifecycle under load, in the netns lab (root, bcc):

1. SIGTERM under a flood: how long `smtp-sensor run` takes to detach (fail
   open) and to exit while a client namespace floods the server's veth.
2. What a SIGKILL loses: the statistics snapshot's cost per write (it is
   taken every ``snapshot_interval``, so a SIGKILL loses at most that), in
   the caller and by the forked child the loop uses (what the fork costs it).
3. The control socket's ``flows`` with 100 000 flows: the longest turn of
   the serving loop while it streams, and a ``status`` asked meanwhile.

    .venv/bin/python bench/bench_lifecycle.py [--rate 120000] [--flows 20000] [--load 8] [--rules] [--workers N] [--json]

(1) A real `smtp-sensor run` (the shipped rules with --rules, reject
statistics with a state file) on the server's veth; bench/pktsend.c in the
client namespace sends ``--rate`` 1.4 KB SMTP-port segments a second cycling
through ``--flows`` source ports (each a connection to the sensor), a
destination MAC that is not the server's (the stack drops them after XDP,
nothing answers). After ``--load`` seconds, SIGTERM, the flood going on;
this process polls the interface's XDP program every 5 ms. Reported: the
time from SIGTERM to the XDP program gone and to the process's exit, the
phases of its shutdown as its `stopped` log line gives them (with workers:
the slowest worker's, the counts summed), and the flows
it followed at the signal (the last `stats` line).

(2) write_snapshot of ``--hosts`` hosts (each with recipients and samples),
the median of 5 writes, on this machine's file system, then the same by
sensor.service.snapshots.SnapshotWriter; (3) a ControlServer over 100 000
fake flows served by a thread as the sensor's loop serves it. (2) and (3)
need no root (``--only snapshot``, ``--only control``).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def sigterm_under_flood(rate: int, flows: int, load: float, rules: bool, workdir: Path, workers: int = 0) -> dict:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    from bench_drop import build_pktsend
    from sensor.kernel.datapath import attached_xdp
    from sensor.kernel.netns import iproute
    from sensor.lab.network import CLIENT_V4, SERVER_V4, Lab

    pktsend = build_pktsend(workdir)
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:99") / IP(src=CLIENT_V4, dst=SERVER_V4)
                  / TCP(sport=1024, dport=25, flags="PA", seq=1000) / Raw(b"x" * 1400))
    with Lab() as lab:
        lab.start_server()
        argv = [sys.executable, "-m", "sensor.cli", "--log-format", "json", "run", "-i", lab.server_if,
                "--netns", lab.server_ns, "--pin-dir", f"/sys/fs/bpf/smtp-sensor-bench-{lab.tag}/v1",
                "--control-socket", str(workdir / "control.sock"), "-o", str(workdir / "records.json"),
                "--state-file", str(workdir / "state.msgpack"), "--stats-interval", "1",
                "--workers", str(workers)]
        if rules:
            argv += ["--rules", str(REPO / "rules")]
        logs: list[dict] = []
        sensor = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

        def read():
            for line in sensor.stdout:
                try:
                    logs.append(json.loads(line))
                except ValueError:
                    pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        flood = None
        try:
            deadline = time.monotonic() + 120
            while not any(e.get("event") == "running" for e in logs):
                if sensor.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the sensor did not start: {logs[-5:]}")
                time.sleep(0.05)
            flood = subprocess.Popen(lab.exec_argv(lab.client_ns, str(pktsend), lab.client_if, frame.hex(),
                                                   str(load + 60), str(rate), str(flows)),
                                     stdout=subprocess.PIPE, text=True)
            time.sleep(load)
            stats = [e for e in logs if e.get("event") == "stats"]
            t0 = time.monotonic()
            sensor.send_signal(signal.SIGTERM)
            detached = None
            with iproute(lab.server_ns) as ipr:
                idx = ipr.link_lookup(ifname=lab.server_if)[0]
                while sensor.poll() is None and time.monotonic() - t0 < 60:
                    if detached is None and attached_xdp(ipr.get_links(idx)[0])[0] is None:
                        detached = time.monotonic() - t0
                    time.sleep(0.005)
            try:
                sensor.wait(timeout=60)
            except subprocess.TimeoutExpired:
                sensor.kill()
                sensor.wait()
            exited = time.monotonic() - t0
            if detached is None:
                detached = exited       # found gone at the exit (between two polls)
        finally:
            if flood is not None:
                flood.kill()
                flood.wait()
            if sensor.poll() is None:
                sensor.kill()
                sensor.wait()
            reader.join(5)
            subprocess.run(["rm", "-rf", f"/sys/fs/bpf/smtp-sensor-bench-{lab.tag}"], check=False)
    # a sensor of workers logs a `stopped` line per worker (with the phases)
    # and one of the supervisor's; the flood's flows are one client's, so
    # one worker's: the slowest worker's phases, every worker's counts summed
    stopped = [e for e in logs if e.get("event") == "stopped" and e.get("shutdown")]
    slowest = max(stopped, key=lambda e: e["shutdown"].get("total_s", 0), default={})
    last = {}
    for e in stats:                          # the last stats line of each worker
        last[e.get("worker")] = e
    return {"rate": rate, "flows": flows, "load_s": load, "rules": rules, "exit_status": sensor.returncode,
            "detached_s": round(detached, 3), "exited_s": round(exited, 3),
            "shutdown": slowest.get("shutdown"),
            "active_flows_at_signal": sum(e.get("active_flows") or 0 for e in last.values()),
            "flows_unfinished": sum(e.get("pipeline", {}).get("unfinished") or 0 for e in stopped),
            "events_discarded": sum(e.get("discarded") or 0 for e in stopped),
            "events_at_signal": sum(e.get("events") or 0 for e in last.values()),
            "lost_at_signal": sum(e.get("lost") or 0 for e in last.values())}


def snapshot_cost(hosts: int, workdir: Path) -> dict:
    from sensor.spamstats import write_snapshot

    stats = _stats_of(hosts)
    path = workdir / "state.msgpack"
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        write_snapshot(path, stats)
        times.append(time.perf_counter() - t0)
    return {"hosts": hosts, "write_ms": round(statistics.median(times) * 1000, 1),
            "bytes": path.stat().st_size}


def snapshot_fork_cost(hosts: int, workdir: Path) -> dict:
    """What the loop pays for a periodic snapshot with ``hosts`` hosts: the
    fork (SnapshotWriter.start), and how long the child takes to write."""
    from sensor.service.snapshots import SnapshotWriter

    stats = _stats_of(hosts)
    path = workdir / "state-bg.msgpack"
    from sensor.spamstats import write_snapshot

    class Log:
        def error(self, *a, **kw):
            raise RuntimeError(f"snapshot failed: {kw}")

    writer = SnapshotWriter(lambda: write_snapshot(path, stats), Log())
    forks, child = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        writer.start()
        forks.append(time.perf_counter() - t0)
        while writer.busy:
            writer.poll()
            time.sleep(0.001)
        child.append(time.perf_counter() - t0)
    return {"hosts": hosts, "fork_ms": round(statistics.median(forks) * 1000, 2),
            "child_ms": round(statistics.median(child) * 1000, 1), "written": writer.counters.written}


def flows_answer(flows: int, workdir: Path) -> dict:
    """`flows` with ``flows`` open flows over the control socket: the longest
    turn of the serving loop (one chunk made and written), the turns, the
    whole answer's time, and a `status` asked meanwhile."""
    import socket as socketlib
    import struct
    import threading as th
    from types import SimpleNamespace

    import msgpack

    from sensor.service.control import ControlClient, ControlServer

    conn = SimpleNamespace(state="COMMAND", helo="flood.example")
    sessions = [SimpleNamespace(flow=SimpleNamespace(uid=f"C{i}", orig_h="192.0.2.10", orig_p=1024 + i % 60000,
                                                     resp_h="192.0.2.25", resp_p=25, community_id=f"1:{i}",
                                                     start_ts=0.0, last_ts=1.0),
                                conn=conn, scratch={}, transactions=0, tls=False) for i in range(flows)]
    sensor = SimpleNamespace(pipeline=SimpleNamespace(sessions=sessions), status=lambda: {"pid": 1})
    server = ControlServer(workdir / "bench.sock", sensor)
    stop, turns = th.Event(), []

    def serve():
        while not stop.is_set():
            t0 = time.perf_counter()
            server.serve_pending(0.001)
            turns.append(time.perf_counter() - t0)

    loop = th.Thread(target=serve, daemon=True)
    loop.start()
    try:
        t0 = time.perf_counter()
        got = {}
        reader = th.Thread(target=lambda: got.update(rows=ControlClient(server.path, 60).call("flows", limit=flows)))
        reader.start()
        time.sleep(0.05)
        s0 = time.perf_counter()
        ControlClient(server.path).call("status")
        status_s = time.perf_counter() - s0
        reader.join()
        total = time.perf_counter() - t0
    finally:
        stop.set()
        loop.join(5)
        server.close()
    busy = sorted(t for t in turns if t > 0.0015)      # the turns that did something
    return {"flows": flows, "rows": len(got.get("rows", [])), "answer_s": round(total, 2),
            "status_meanwhile_ms": round(status_s * 1000, 1),
            "longest_turn_ms": round(max(turns) * 1000, 1), "busy_turns": len(busy)}


def _stats_of(hosts: int):
    from sensor.config import SpamStatsConfig
    from sensor.spamstats import ConnState, RejectStats

    stats = RejectStats(SpamStatsConfig(max_hosts=max(hosts, 1)))
    now = time.time()
    for i in range(hosts):
        addr = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        conn = ConnState()
        stats.observe_reply(addr, now, 220, conn, text="mx ESMTP", uid=f"C{i}")
        for n in range(3):
            stats.observe_recipient(addr, f"rcpt{n}@example.org", conn)
            stats.observe_reply(addr, now, 550, conn, enhanced="5.1.1", text="no such user", uid=f"C{i}")
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=120_000, help="flood frames per second")
    parser.add_argument("--flows", type=int, default=20_000, help="source ports the flood cycles through")
    parser.add_argument("--load", type=float, default=8.0, help="seconds of flood before SIGTERM")
    parser.add_argument("--rules", action="store_true", help="run the shipped rules")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="the sensor's --workers (0: one per CPU)")
    parser.add_argument("--hosts", type=int, default=100_000, help="hosts in the snapshot benchmark")
    parser.add_argument("--only", choices=["sigterm", "snapshot", "control"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="ss-lifecycle-") as tmp:
        if args.only in (None, "sigterm"):
            report["sigterm"] = [sigterm_under_flood(args.rate, args.flows, args.load, args.rules, Path(tmp), args.workers)
                                 for _ in range(args.runs)]
        if args.only in (None, "snapshot"):
            report["snapshot"] = [snapshot_cost(n, Path(tmp)) for n in sorted({1000, args.hosts})]
            report["snapshot_fork"] = [snapshot_fork_cost(n, Path(tmp)) for n in sorted({1000, args.hosts})]
        if args.only in (None, "control"):
            report["flows_answer"] = [flows_answer(100_000, Path(tmp))]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for r in report.get("sigterm", []):
        print(f"SIGTERM under {r['rate']} frames/s over {r['flows']} flows ({r['active_flows_at_signal']} "
              f"followed, rules {'on' if r['rules'] else 'off'}): detached after {r['detached_s']} s, "
              f"exited after {r['exited_s']} s (status {r['exit_status']}); shutdown phases {r['shutdown']}; "
              f"{r['flows_unfinished']} flows left undissected, {r['events_discarded']} ring events")
    for r in report.get("snapshot", []):
        print(f"snapshot of {r['hosts']} hosts in the caller: {r['write_ms']} ms a write, {r['bytes']} bytes")
    for r in report.get("snapshot_fork", []):
        print(f"snapshot of {r['hosts']} hosts by a child: the fork {r['fork_ms']} ms, written after {r['child_ms']} ms")
    for r in report.get("flows_answer", []):
        print(f"flows of {r['flows']} flows: {r['rows']} rows in {r['answer_s']} s, longest loop turn "
              f"{r['longest_turn_ms']} ms, a status meanwhile {r['status_meanwhile_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
