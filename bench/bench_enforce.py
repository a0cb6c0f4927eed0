"""Rules enforcement benchmarks (root, bcc, the netns lab):

1. verdict -> kernel: how long ``flow.drop()`` takes to put the flow-drop
   entry in the kernel map (``KernelEnforcer.latencies_ns``: both directions'
   keys written before it returns).  Synthetic flows (EHLO, MAIL FROM a banned
   domain) through the real pipeline and rule engine onto the real maps, and
   the same number from the live run below;
2. end to end, live: from the kernel's timestamp of the packet that carries
   the MAIL FROM (the perf event's ts, CLOCK_MONOTONIC) to the moment the map
   write returned; its parts: the wait for the consumer (wakeup, poll), the
   userland pipeline and rule engine, the map write;
3. stragglers, live: a client that pipelines its whole dialogue in one write
   (MAIL FROM a banned domain, RCPT, DATA, a message of --message-bytes,
   ".", QUIT) right behind the EHLO: per dropped flow, how many of its
   segments still came out of the perf ring after the drop (kept from the
   dissector by the pipeline's gate: ``pipeline.counters.gated``), how many the
   kernel dropped (the flow-drop entry's packet count, client -> server, and
   XDP's drop_flow counter), and how many of those messages the server
   accepted anyway (its journal).

    .venv/bin/python bench/bench_enforce.py [--sessions 1000] [--wakeups 1,64] [--json]

The live part runs the sensor's own loop (LiveFeed.step(50), as
``smtp-sensor run``) in this process, with the shipped rules (rules/), on the
server's veth; clients run in the client namespace (another process,
--concurrency sessions at a time). Each session waits --linger seconds for
replies after its write, then resets the connection.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sensor.kernel import abi  # noqa: E402

from sensor.stream import packet  # noqa: E402
from sensor.service import log as sensor_log  # noqa: E402
from sensor.kernel.datapath import Datapath, DatapathConfig  # noqa: E402
from client_pool import SESSION_POOL  # noqa: E402
from sensor.lab.network import SERVER_V4, Lab  # noqa: E402
from sensor.inputs.live import LiveFeed  # noqa: E402
from sensor.assembly import Userland  # noqa: E402
from sensor.config import Config, SensorConfig, SpamStatsConfig  # noqa: E402
from sensor.errors import SensorError  # noqa: E402
from sensor.rules.enforce import KernelEnforcer  # noqa: E402

RULES = REPO / "rules"
SYN, ACK, PSH = 0x02, 0x10, 0x08


class Sink:
    """Records counted by type (the bench does not keep them)."""

    def __init__(self):
        self.counts = Counter()

    def __call__(self, record):
        self.counts[record["event_type"]] += 1


class TimedEnforcer(KernelEnforcer):
    """KernelEnforcer that also notes, per drop, when the map write returned
    (CLOCK_MONOTONIC ns, the kernel timestamps' clock) and for which event."""

    def __init__(self, maps):
        super().__init__(maps)
        self.drops: list[tuple] = []       # (flow tuple, event ts (wall s), done ns, write ns)

    def drop_flow(self, flow, ttl, now, reset=True):
        super().drop_flow(flow, ttl, now, reset)
        done = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.drops.append(((flow.orig_h, flow.orig_p, flow.resp_h, flow.resp_p), now, done,
                           self.latencies_ns[-1]))


def userland_for(sink, maps, uid_seed) -> Userland:
    """The sensor's userland with the shipped rules (no reject statistics),
    its verdicts onto the real maps."""
    config = Config(sensor=SensorConfig(rules=RULES), spam_stats=SpamStatsConfig(enabled=False))
    try:
        return Userland(config, sink, TimedEnforcer(maps), uid_seed=uid_seed)
    except SensorError as exc:
        raise SystemExit(f"bench_enforce: {exc}") from None


def pct(values, q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary_us(ns_values) -> dict:
    us = [v / 1000 for v in ns_values]
    return {"n": len(us), "p50_us": round(pct(us, 0.50), 1), "p99_us": round(pct(us, 0.99), 1),
            "max_us": round(max(us), 1) if us else float("nan"),
            "mean_us": round(statistics.fmean(us), 1) if us else float("nan")}


# ---------------------------------------------------------------- 1. synthetic flows

def synthetic(dp: Datapath, flows: int) -> dict:
    """``flows`` connections (handshake, banner, EHLO, MAIL FROM a banned
    domain) fed as segments through pipeline + engine; every MAIL is a drop."""
    sink = Sink()
    userland = userland_for(sink, dp.maps, uid_seed=1)
    pipeline, engine, enforcer = userland.pipeline, userland.engine, userland.enforcer
    enforcer._keep = flows + 10
    server = ipaddress.ip_address(SERVER_V4).packed
    feed = pipeline.feed_segment
    userland_ns = []
    for i in range(flows):
        client = bytes([198, 51, 100, i % 250 + 1])       # TEST-NET-2, a distinct 4-tuple per flow
        cport = 1024 + i // 250
        ts = 1000.0 + i * 0.01
        c, s = 1000, 5000

        def seg(from_client, flags, payload=b"", _c=client, _p=cport):
            nonlocal c, s
            if from_client:
                out = packet.Segment(4, _c, server, _p, 25, c, s, flags, payload, len(payload), 54 + len(payload))
                c += len(payload) + (1 if flags & SYN else 0)
            else:
                out = packet.Segment(4, server, _c, 25, _p, s, c, flags, payload, len(payload), 54 + len(payload))
                s += len(payload) + (1 if flags & SYN else 0)
            return out

        feed(seg(True, SYN), ts)
        feed(seg(False, SYN | ACK), ts)
        feed(seg(True, ACK), ts)
        feed(seg(False, PSH | ACK, b"220 mx.lab.example ESMTP\r\n"), ts)
        feed(seg(True, PSH | ACK, b"EHLO bench.lab.example\r\n"), ts)
        feed(seg(False, PSH | ACK, b"250-mx.lab.example\r\n250 PIPELINING\r\n"), ts)
        mail = seg(True, PSH | ACK, f"MAIL FROM:<spam{i}@spam.example>\r\n".encode())
        t0 = time.perf_counter_ns()
        feed(mail, ts)
        userland_ns.append(time.perf_counter_ns() - t0)
    pipeline.finish()
    assert engine.counters.drops == flows, (engine.counters.drops, flows, sink.counts, engine.counters.errors)
    result = {"flows": flows, "map_write": summary_us(enforcer.latencies_ns),
              "mail_segment_to_drop": summary_us(userland_ns), "records": dict(sink.counts)}
    dp.maps.flow_drop.clear()
    return result


# ---------------------------------------------------------------- 2 and 3. live sessions

CLIENT = r"""
import json, socket, struct, sys, threading, time
server, sessions, concurrency, msg_bytes, linger = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
line = b"X" * 76 + b"\r\n"
body = b"From: <spam@spam.example>\r\nSubject: bench\r\n\r\n" + line * max(1, msg_bytes // len(line))

def replies(sock, want, timeout):
    sock.settimeout(timeout)
    buf, codes, deadline = b"", [], time.monotonic() + timeout
    while len(codes) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except (socket.timeout, OSError):
            break
        if not data:
            break
        buf += data
        while b"\r\n" in buf:
            ln, buf = buf.split(b"\r\n", 1)
            if ln[3:4] == b" ":
                codes.append(ln[:3].decode())
    return codes

def session(i):
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)   # the whole write fits: never blocks
    s.settimeout(5)
    try:
        s.connect((server, 25))
        port = s.getsockname()[1]
        if replies(s, 1, 5) != ["220"]:
            return {"i": i, "port": port, "error": "no banner"}
        s.sendall(b"EHLO bench.lab.example\r\n")
        if replies(s, 1, 5) != ["250"]:
            return {"i": i, "port": port, "error": "no EHLO reply"}
        s.sendall(b"MAIL FROM:<spam%d@spam.example>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n" % i
                  + body + b".\r\nQUIT\r\n")
        codes = replies(s, 5, linger)
        return {"i": i, "port": port, "codes": codes}
    except OSError as exc:
        return {"i": i, "error": str(exc)}
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # RST: no retransmissions
        s.close()

""" + SESSION_POOL


def live(lab: Lab, pin_dir: Path, wakeup: int, args) -> dict:
    journal = lab.journal
    delivered_before = _spam_messages(journal)
    with Datapath(DatapathConfig(pin_dir=pin_dir)) as dp:
        dp.maps.flow_drop.clear()
        dp.attach(lab.server_if, netns=lab.server_ns)
        sink = Sink()
        userland = userland_for(sink, dp.maps, uid_seed=os.urandom(12))
        pipeline, engine, enforcer = userland.pipeline, userland.engine, userland.enforcer
        feed = LiveFeed(dp.event_reader(wake_batch=wakeup > 1), pipeline, dp.maps)
        enforcer._keep = args.sessions + 10
        gated = Counter()
        passes = enforcer.passes

        def gate(seg, ts):                  # the userland's gate, counting per flow (by the client's port)
            ok = passes(seg, ts)
            if not ok:
                gated[seg.sport if seg.dport == 25 else seg.dport] += 1
            return ok

        pipeline.gate = gate
        client = subprocess.Popen(lab.exec_argv(lab.client_ns, sys.executable, "-c", CLIENT, SERVER_V4,
                                                str(args.sessions), str(args.concurrency),
                                                str(args.message_bytes), str(args.linger)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        while client.poll() is None:
            feed.step(50)
        feed.drain(rounds=10, timeout_ms=50)
        elapsed = time.monotonic() - t0
        out, err = client.communicate()
        sessions = [r for r in (json.loads(line) for line in out.splitlines() if line.startswith("{"))
                    if "elapsed" not in r]
        counters = dp.maps.counters()
        entries = {e.target: e.packets for e in dp.maps.drops()}
        offset = feed._offset
        e2e = []
        for (oh, op, rh, rp), now, done, write in enforcer.drops:
            event_ns = round((now - offset) * 1e9)      # back to the kernel's clock
            e2e.append(done - event_ns)
        per_flow_gated = [gated.get(op, 0) for (oh, op, rh, rp), *_ in enforcer.drops]
        per_flow_kernel = [entries.get(f"{oh}:{op} > {rh}:{rp}", 0) for (oh, op, rh, rp), *_ in enforcer.drops]
        per_flow_kernel_egress = [entries.get(f"{rh}:{rp} > {oh}:{op}", 0)
                                  for (oh, op, rh, rp), *_ in enforcer.drops]
        queued = sum(1 for s in sessions if "250" in s.get("codes", [])[3:4])
        errors = [s for s in sessions if "error" in s]
        result = {
            "wakeup": wakeup, "sessions": args.sessions, "ok_sessions": len(sessions) - len(errors),
            "client_errors": len(errors), "elapsed_s": round(elapsed, 2), "drops": engine.counters.drops,
            "alerts": sink.counts.get("alert", 0), "rule_errors": engine.counters.errors,
            "map_write": summary_us(enforcer.latencies_ns),
            "event_to_map": summary_us(e2e),
            "gated_per_flow": _dist(per_flow_gated), "gated_total": pipeline.counters.gated,
            "kernel_dropped_per_flow_ingress": _dist(per_flow_kernel),
            "kernel_dropped_per_flow_egress": _dist(per_flow_kernel_egress),
            "xdp_drop_flow": counters["ingress"]["drop_flow"], "tc_drop_flow": counters["egress"]["drop_flow"],
            "lost": feed.reader.lost,
            "client_saw_queued": queued,
            "server_accepted": _spam_messages(journal) - delivered_before,
        }
        if errors:
            result["client_error_sample"] = errors[:3]
        if err.strip():
            result["client_stderr"] = err.strip()[-500:]
        dp.maps.flow_drop.clear()
        return result


NOOP_CLIENT = r"""
import socket, sys, time
n, gap = int(sys.argv[2]), float(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.connect((sys.argv[1], 25))
s.recv(1000)
for i in range(n):
    s.sendall(b"NOOP\r\n")
    s.recv(1000)
    time.sleep(gap)
s.sendall(b"QUIT\r\n")
s.recv(1000)
"""


def wakeup_floor(lab: Lab, pin_dir: Path, wakeup: int, samples: int = 200) -> dict:
    """One packet at a time (a NOOP every 10 ms): from its kernel timestamp to
    the consumer holding it (poll returned, event decoded): what any verdict
    waits before userland even sees the packet."""
    with Datapath(DatapathConfig(pin_dir=pin_dir)) as dp:
        dp.attach(lab.server_if, netns=lab.server_ns)
        reader = dp.event_reader(wake_batch=wakeup > 1)
        client = subprocess.Popen(lab.exec_argv(lab.client_ns, sys.executable, "-c", NOOP_CLIENT, SERVER_V4,
                                                str(samples), "0.01"))
        waits = []
        while client.poll() is None:
            events = reader.poll(50)
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            waits += [now - e.header.ts_ns for e in events
                      if e.header.direction == abi.Direction.INGRESS and e.payload.startswith(b"NOOP")]
        return {"wakeup": wakeup, **summary_us(waits)}


def _dist(values) -> dict:
    if not values:
        return {"mean": float("nan"), "p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"mean": round(statistics.fmean(values), 2), "p50": pct(values, 0.5), "p99": pct(values, 0.99),
            "max": max(values)}


def _spam_messages(journal: Path) -> int:
    try:
        lines = journal.read_text().splitlines()
    except FileNotFoundError:
        return 0
    return sum(1 for line in lines if '"message"' in line and "@spam.example" in line)


# ---------------------------------------------------------------- report

def print_report(report: dict, args) -> None:
    syn = report.get("synthetic")
    if syn:
        print(f"1. verdict -> kernel map entry, synthetic: {syn['flows']} flows through pipeline + rules "
              "onto the real maps")
        _row("   map write (flow.drop(), both keys)", syn["map_write"])
        _row("   MAIL segment fed -> drop in place", syn["mail_segment_to_drop"])
    for floor in report.get("wakeup_floor", []):
        _row(f"\n2a. wakeup {floor['wakeup']}: lone packet's kernel ts -> in userland", floor)
    for run in report.get("live", []):
        print(f"\nlive, wakeup every {run['wakeup']} sample(s): {run['sessions']} sessions "
              f"({run['ok_sessions']} completed, {run['client_errors']} client errors), "
              f"{args.concurrency} at a time, {args.message_bytes} B messages pipelined behind MAIL FROM, "
              f"{run['elapsed_s']} s")
        print(f"   drops {run['drops']}, alerts {run['alerts']}, rule errors {run['rule_errors']}, "
              f"ring lost {run['lost']}")
        _row("   1. map write (flow.drop())", run["map_write"])
        _row("   2b. MAIL packet's kernel ts -> map written", run["event_to_map"])
        g, ki, ke = run["gated_per_flow"], run["kernel_dropped_per_flow_ingress"], run["kernel_dropped_per_flow_egress"]
        print(f"   3. per dropped flow          {'mean':>8} {'p50':>8} {'p99':>8} {'max':>8}")
        for name, d in (("ring stragglers (gated)", g), ("XDP-dropped, client->server", ki),
                        ("TC-dropped, server->client", ke)):
            print(f"      {name:<27} {d['mean']:>8} {d['p50']:>8} {d['p99']:>8} {d['max']:>8}")
        print(f"      totals: gated {run['gated_total']}, XDP drop_flow {run['xdp_drop_flow']}, "
              f"TC drop_flow {run['tc_drop_flow']}")
        print(f"      messages the server accepted anyway: {run['server_accepted']} "
              f"(client saw '250' for its message: {run['client_saw_queued']})")


def _row(name: str, s: dict) -> None:
    print(f"{name:<46} p50 {s['p50_us']:>8} us  p99 {s['p99_us']:>8} us  max {s['max_us']:>9} us  (n={s['n']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=10_000, help="synthetic flows (0: skip)")
    parser.add_argument("--sessions", type=int, default=1000, help="live sessions per wakeup setting")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--message-bytes", type=int, default=32_768)
    parser.add_argument("--linger", type=float, default=0.15,
                        help="seconds a client waits for replies after its write (below the 200 ms RTO)")
    parser.add_argument("--wakeups", default="1,64", help="samples per consumer wakeup to compare")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_enforce: needs root (BPF, namespaces)", file=sys.stderr)
        return 2
    sensor_log.configure("warning", json=False, stream=sys.stderr)     # stdout: the report only
    pin_root = Path(tempfile.mkdtemp(prefix="ss-bench-enforce-", dir="/sys/fs/bpf"))
    pin_dir = pin_root / f"v{abi.ABI_VERSION}"
    work = Path(tempfile.mkdtemp(prefix="ss-bench-enforce-"))
    report: dict = {}
    try:
        if args.flows:
            with Datapath(DatapathConfig(pin_dir=pin_dir)) as dp:
                report["synthetic"] = synthetic(dp, args.flows)
        report["live"] = []
        if args.sessions:
            with Lab() as lab:
                lab.journal = work / "journal.jsonl"
                lab.start_server(journal=lab.journal)
                report["wakeup_floor"] = []
                for wakeup in (int(w) for w in args.wakeups.split(",")):
                    report["wakeup_floor"].append(wakeup_floor(lab, pin_dir, wakeup))
                    report["live"].append(live(lab, pin_dir, wakeup, args))
    finally:
        shutil.rmtree(pin_root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
