"""The commit hold's benchmark (root, bcc, the netns lab): what it stops and
what it costs, in three settings: the hold on ([enforce] hold = "commit")
with the released frames put into the stack at once (inject = true, the
default), the hold on without that (inject = false: a released segment
waits for the client's retransmission), and the hold off.

1. senders the sensor must stop, pipelining: after the EHLO reply, one
   write of MAIL FROM a banned domain, RCPT, DATA, a message of
   --banned-sizes, ".", QUIT (as bench_enforce.py, section 3); the same with
   the end of data written in pieces of their own (".", then CRLF: "split");
   and a message from an allowed sender ended by LF.LF and followed by a
   second MAIL in the same write ("smuggle": the smuggling rule drops the
   flow): how many messages the server accepted (its journal), and what the
   sensor counted (held, dropped at commit);
2. legitimate senders, one message per connection, every reply waited for
   as an MTA does (MAIL, RCPT and DATA as one pipelined group, then the
   message after the 354), and senders that write the whole session at once:
   the delivery latency per message (from the write of the message to the
   server's "250" for it, p50 / p99) one session at a time, and the
   throughput (messages/s) and the sensor's CPU per message with
   --throughput-concurrency sessions at a time.  With the hold on, the
   segment that ends the message is dropped until userland has judged it;
   then userland puts that frame into the stack (inject), or the client's
   retransmission brings it.  Per held segment the benchmark reads the
   kernel's time of its first (held) copy, when userland wrote its release,
   when it injected the frame, and when a later copy passed XDP (released,
   or timed out).

Two layouts: "host", the sensor on the server's veth (an MTA host); and
"gateway", the sensor on the client-facing interface of a router namespace
between client and server (sensor.lab.gateway).

    .venv/bin/python bench/bench_hold.py [--sessions 300] [--layouts host,gateway] [--json]

The sensor is the `run` loop in this process (LiveFeed.step(50), the shipped
rules, a wakeup per event, CommitHold when the hold is on); clients run in
the client namespace (another process); the server is aiosmtpd.  Benchmarks,
not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sensor.assembly import Userland  # noqa: E402
from sensor.config import Config, SensorConfig, SpamStatsConfig  # noqa: E402
from sensor.inputs.hold import CommitHold  # noqa: E402
from sensor.inputs.live import LiveFeed  # noqa: E402
from sensor.kernel import abi  # noqa: E402
from sensor.kernel.datapath import Datapath, DatapathConfig  # noqa: E402
from sensor.kernel.maps import monotonic_ns  # noqa: E402
from sensor.lab.gateway import GATEWAY_SERVER_V4, GatewayLab  # noqa: E402
from bench_enforce import pct  # noqa: E402
from client_pool import SESSION_POOL  # noqa: E402
from sensor.lab.network import SERVER_V4, Lab  # noqa: E402
from sensor.rules.enforce import KernelEnforcer  # noqa: E402
from sensor.service import log as sensor_log  # noqa: E402

RULES = REPO / "rules"
HOLD_MAX_MS = 400
PASSED = abi.EVF_RELEASED | abi.EVF_HOLD_TIMEOUT

CLIENT = r"""
import json, socket, struct, sys, threading, time
server, mode, sessions, concurrency, size, linger, tag = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
    int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), sys.argv[7])
domain = {"banned": "spam.example", "split": "spam.example", "smuggle": "smuggle.example"}.get(mode, "allowed.example")
line = b"X" * 76 + b"\r\n"

def body(sender):
    head = b"From: <%s>\r\nSubject: bench\r\n\r\n" % sender
    return head + line * max(1, (size - len(head)) // len(line))

class Replies:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""
    def read(self, want, timeout):
        # (code, perf_counter when its last line came) of the next `want` replies
        out, deadline = [], time.monotonic() + timeout
        while len(out) < want:
            while b"\r\n" in self.buf and len(out) < want:
                ln, self.buf = self.buf.split(b"\r\n", 1)
                if ln[3:4] == b" ":
                    out.append((ln[:3].decode(), time.perf_counter()))
            if len(out) >= want:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, OSError):
                break
            if not data:
                break
            self.buf += data
        return out

def session(i):
    sender = b"%s-%d@%s" % (tag.encode(), i, domain.encode())
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    s.settimeout(5)
    rst = True
    try:
        s.connect((server, 25))
        port = s.getsockname()[1]
        r = Replies(s)
        if [c for c, _ in r.read(1, 5)] != ["220"]:
            return {"i": i, "port": port, "error": "no banner"}
        s.sendall(b"EHLO bench.lab.example\r\n")
        if [c for c, _ in r.read(1, 5)] != ["250"]:
            return {"i": i, "port": port, "error": "no EHLO reply"}
        envelope = b"MAIL FROM:<%s>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n" % sender
        if mode == "compliant":
            s.sendall(envelope)
            got = r.read(3, 5)
            if [c for c, _ in got] != ["250", "250", "354"]:
                return {"i": i, "port": port, "error": "envelope refused", "codes": [c for c, _ in got]}
            t0 = time.perf_counter()
            s.sendall(body(sender) + b".\r\n")
            got = r.read(1, 10)
            if [c for c, _ in got] != ["250"]:
                return {"i": i, "port": port, "error": "message refused", "codes": [c for c, _ in got]}
            latency = got[0][1] - t0
            s.sendall(b"QUIT\r\n")
            r.read(1, 5)
            rst = False
            return {"i": i, "port": port, "latency": latency}
        t0 = time.perf_counter()
        if mode == "split":
            # the end of data in pieces of their own: the body's last CRLF, ".", CRLF
            s.sendall(envelope + body(sender))
            for piece in (b".", b"\r\n", b"QUIT\r\n"):
                time.sleep(0.002)
                s.sendall(piece)
        elif mode == "smuggle":
            # a message ended by LF.LF (an MTA that honours it commits it there), then a second one
            hidden = b"hidden-" + sender
            s.sendall(envelope + body(sender) + b"\n.\n" + b"MAIL FROM:<%s>\r\nRCPT TO:<bob@example.net>\r\n"
                      b"DATA\r\n" % hidden + body(hidden) + b".\r\nQUIT\r\n")
        else:
            s.sendall(envelope + body(sender) + b".\r\nQUIT\r\n")
        got = r.read(5, 10 if mode == "one write" else linger)
        codes = [c for c, _ in got]
        out = {"i": i, "port": port, "codes": codes}
        if codes[:4] == ["250", "250", "354", "250"]:
            out["latency"] = got[3][1] - t0
            rst = mode != "one write"
        return out
    except OSError as exc:
        return {"i": i, "error": str(exc)}
    finally:
        if rst:   # a banned session: RST, no retransmissions into the next one
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

""" + SESSION_POOL


class Sink:
    def __init__(self):
        self.counts = Counter()

    def __call__(self, record):
        self.counts[record["event_type"]] += 1


class HoldTap:
    """Reads the ring's events for the benchmark as they go to the feed: per
    held segment (client port, first sequence number), the kernel's time of
    the first held copy and of the copy that passed."""

    def __init__(self, reader):
        self.reader = reader
        self.first_held: dict[tuple, int] = {}
        self.passed: dict[tuple, int] = {}
        self.timed_out = 0

    def poll(self, timeout_ms):
        events = self.reader.poll(timeout_ms)
        for ev in events:
            h = ev.header
            if not h.flags & (abi.EVF_HELD | PASSED):
                continue
            key = (h.sport, h.seq)
            if h.flags & abi.EVF_HELD:
                self.first_held.setdefault(key, h.ts_ns)
            elif key in self.first_held and key not in self.passed:
                self.passed[key] = h.ts_ns
                self.timed_out += bool(h.flags & abi.EVF_HOLD_TIMEOUT)
        return events

    def __getattr__(self, name):
        return getattr(self.reader, name)


class TimedMaps:
    """The maps, with the time of every release point written, by client port."""

    def __init__(self, maps):
        self.maps = maps
        self.released: dict[int, list[int]] = defaultdict(list)

    def release(self, key, seq, **flags):
        self.maps.release(key, seq, **flags)
        self.released[key.sport].append(monotonic_ns())

    def __getattr__(self, name):
        return getattr(self.maps, name)


class TimedInjector:
    """The injector, with the time each frame went into the stack, by client port."""

    def __init__(self, injector):
        self.injector = injector
        self.injected: dict[int, list[int]] = defaultdict(list)

    def inject(self, frame: bytes, ifindex: int) -> bool:
        ok = self.injector.inject(frame, ifindex)
        if ok and len(frame) >= 40 and frame[12:14] == b"\x08\x00":
            tcp = 14 + (frame[14] & 0x0F) * 4
            self.injected[int.from_bytes(frame[tcp:tcp + 2], "big")].append(monotonic_ns())
        return ok

    def __getattr__(self, name):
        return getattr(self.injector, name)


def dist_ms(values) -> dict:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "p50_ms": round(pct(ms, 0.5), 2), "p99_ms": round(pct(ms, 0.99), 2),
            "max_ms": round(max(ms), 2) if ms else float("nan"),
            "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan")}


def journal_count(journal: Path, domain: str) -> int:
    try:
        lines = journal.read_text().splitlines()
    except FileNotFoundError:
        return 0
    return sum(1 for line in lines if '"message"' in line and f"@{domain}" in line)


def settled_count(journal: Path, domain: str, quiet: float = 0.5, timeout: float = 5.0) -> int:
    """The journal's count once it stopped moving for `quiet` s (aiosmtpd writes after its reply)."""
    last, since, deadline = journal_count(journal, domain), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.05)
        now = journal_count(journal, domain)
        if now != last:
            last, since = now, time.monotonic()
    return last


def first_after(times: dict, port: int, t: int):
    after = [w for w in times.get(port, ()) if w >= t]
    return (after[0] - t) / 1e9 if after else None


def run_case(lab, layout: str, pin_dir: Path, hold: bool, inject: bool, mode: str, size: int, sessions: int,
             concurrency: int, linger: float, tag: str) -> dict:
    iface, netns, server = ((lab.server_if, lab.server_ns, SERVER_V4) if layout == "host"
                            else (lab.router_if, lab.router_ns, GATEWAY_SERVER_V4))
    domain = STOPPED_DOMAINS.get(mode, "allowed.example")
    before = journal_count(lab.journal, domain)
    with Datapath(DatapathConfig(pin_dir=pin_dir, hold=hold, hold_max_ms=HOLD_MAX_MS)) as dp:
        dp.maps.flow_drop.clear()
        dp.attach(iface, netns=netns)
        sink = Sink()
        config = Config(sensor=SensorConfig(rules=RULES), spam_stats=SpamStatsConfig(enabled=False))
        enforcer = KernelEnforcer(dp.maps)
        enforcer._keep = sessions + 10
        userland = Userland(config, sink, enforcer, uid_seed=os.urandom(12))
        maps = TimedMaps(dp.maps)
        injector = TimedInjector(dp.injector(netns)) if hold and inject else None
        commit_hold = CommitHold(userland.pipeline, maps, HOLD_MAX_MS, injector) if hold else None
        tap = HoldTap(dp.event_reader(wake_batch=False))
        feed = LiveFeed(tap, userland.pipeline, dp.maps, commit_hold)
        client = subprocess.Popen(lab.exec_argv(lab.client_ns, sys.executable, "-c", CLIENT, server, mode,
                                                str(sessions), str(concurrency), str(size), str(linger), tag),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        cpu0 = time.process_time()
        while client.poll() is None:
            feed.step(50)
        feed.drain(rounds=10, timeout_ms=50)
        cpu = time.process_time() - cpu0
        out, err = client.communicate()
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        elapsed = lines[0]["elapsed"] if lines else float("nan")
        results = lines[1:]
        counters = dp.maps.counters()["ingress"]
        held_for = [(tap.passed[k] - t) / 1e9 for k, t in tap.first_held.items() if k in tap.passed]
        answered = [d for (port, _), t in tap.first_held.items()
                    if (d := first_after(maps.released, port, t)) is not None]
        injected = ([d for (port, _), t in tap.first_held.items()
                     if (d := first_after(injector.injected, port, t)) is not None] if injector else [])
        holds_per_flow = Counter(port for port, _ in tap.first_held)
        latencies = [r["latency"] for r in results if "latency" in r]
        errors = [r for r in results if "error" in r]
        result = {
            "layout": layout, "hold": hold, "inject": bool(injector), "mode": mode, "size": size, "sessions": sessions,
            "concurrency": concurrency, "elapsed_s": round(elapsed, 2),
            "delivered_per_s": round(len(latencies) / elapsed, 1) if latencies and elapsed else 0.0,
            "client_errors": len(errors),
            "server_accepted": settled_count(lab.journal, domain) - before,
            "latency": dist_ms(latencies),
            "sensor_cpu_ms_per_session": round(cpu * 1000 / max(1, sessions), 3),
            "kernel": {k: counters[k] for k in ("held", "released", "hold_timeout", "drop_flow", "pushed")},
            "lost": feed.reader.lost,
            "drops": userland.engine.counters.drops,
            "held_segments": len(tap.first_held),
            "held_per_flow_max": max(holds_per_flow.values(), default=0),
            "flows_with_more_than_one_hold": sum(1 for n in holds_per_flow.values() if n > 1),
            "held_to_passed": dist_ms(held_for),
            "passed_by_timeout": tap.timed_out,
            "held_to_release_written": dist_ms(answered),
            "held_to_injected": dist_ms(injected),
        }
        if commit_hold is not None:
            c = commit_hold.counters.as_dict()
            result["commit_hold"] = {k: c[k] for k in ("releases", "dropped_at_commit", "late", "gone",
                                                       "release_errors", "hold_time", "injected", "inject_errors")}
        if errors:
            result["client_error_sample"] = errors[:3]
        if err.strip():
            result["client_stderr"] = err.strip()[-500:]
        dp.maps.flow_drop.clear()
        return result


#: the sessions the sensor must stop, by mode: the domain of the senders whose messages it must keep out
STOPPED_DOMAINS = {"banned": "spam.example", "split": "spam.example", "smuggle": "smuggle.example"}


def cases(args):
    """(name, mode, size, sessions, concurrency) of every case, per layout and hold setting."""
    wanted = set(args.cases.split(","))
    if "banned" in wanted:
        for size in args.banned_sizes:
            yield "banned", "banned", size, args.sessions, args.concurrency
        yield "banned", "split", args.sizes[0], args.sessions, args.concurrency
        yield "banned", "smuggle", args.sizes[0], args.sessions, args.concurrency
    if "latency" in wanted:
        for size in args.sizes:
            yield "latency", "compliant", size, args.sessions, 1
        yield "latency", "one write", args.sizes[0], args.sessions, 1
    if "throughput" in wanted:
        for size in args.sizes:
            yield "throughput", "compliant", size, args.throughput_sessions, args.throughput_concurrency


SETTINGS = (("on", True, True), ("on, no inject", True, False), ("off", False, False))


def setting_name(run: dict) -> str:
    return next(name for name, hold, inject in SETTINGS if (hold, inject) == (run["hold"], run["inject"]))


def print_report(report: dict) -> None:
    for run in report["runs"]:
        head = (f"{run['layout']:<7} hold {setting_name(run):<13} {run['case']:<10} {run['mode']:<9} "
                f"{run['size']:>6} B {run['sessions']} x{run['concurrency']}: ")
        if run["mode"] in STOPPED_DOMAINS:
            extra = ""
            if run["hold"]:
                ch = run["commit_hold"]
                extra = f", held {run['kernel']['held']}, dropped at commit {ch['dropped_at_commit']}"
            print(head + f"accepted {run['server_accepted']} of {run['sessions']} (drops {run['drops']}{extra}, "
                  f"lost {run['lost']})")
            continue
        lat, held = run["latency"], run["held_to_passed"]
        line = (f"delivered {run['server_accepted']}, latency p50 {lat['p50_ms']} ms p99 {lat['p99_ms']} ms, "
                f"{run['delivered_per_s']}/s, sensor {run['sensor_cpu_ms_per_session']} ms CPU/session")
        if run["hold"]:
            ans, inj = run["held_to_release_written"], run["held_to_injected"]
            line += (f"; held {run['held_segments']} (flows with >1: {run['flows_with_more_than_one_hold']}), "
                     f"held->release written p50 {ans['p50_ms']} p99 {ans['p99_ms']} ms, "
                     f"->injected p50 {inj['p50_ms']} p99 {inj['p99_ms']} ms, "
                     f"->a later copy passed p50 {held['p50_ms']} p99 {held['p99_ms']} ms (by timeout "
                     f"{run['passed_by_timeout']})")
        print(head + line + (f" [client errors {run['client_errors']}]" if run["client_errors"] else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=300, help="sessions per case (banned, latency)")
    parser.add_argument("--concurrency", type=int, default=20, help="sessions at a time for the banned senders")
    parser.add_argument("--throughput-sessions", type=int, default=600)
    parser.add_argument("--throughput-concurrency", type=int, default=32)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[2048, 32768],
                        help="message sizes in bytes (comma-separated)")
    parser.add_argument("--banned-sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=[2048, 32768, 1 << 20], help="message sizes of the banned senders")
    parser.add_argument("--cases", default="banned,latency,throughput",
                        help="which of banned, latency, throughput (comma-separated)")
    parser.add_argument("--linger", type=float, default=0.15,
                        help="seconds a banned client waits for replies after its write")
    parser.add_argument("--layouts", default="host,gateway", help="host, gateway or both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_hold: needs root (BPF, namespaces)", file=sys.stderr)
        return 2
    sensor_log.configure("warning", json=False, stream=sys.stderr)
    pin_root = Path(tempfile.mkdtemp(prefix="ss-bench-hold-", dir="/sys/fs/bpf"))
    pin_dir = pin_root / f"v{abi.ABI_VERSION}"
    work = Path(tempfile.mkdtemp(prefix="ss-bench-hold-"))
    report: dict = {"runs": [], "hold_max_ms": HOLD_MAX_MS}
    try:
        for layout in args.layouts.split(","):
            lab_class = Lab if layout == "host" else GatewayLab
            with lab_class() as lab:
                lab.journal = work / f"journal-{layout}.jsonl"
                lab.start_server(journal=lab.journal,
                                 addresses=(SERVER_V4,) if layout == "host" else (GATEWAY_SERVER_V4,))
                for n, (case, mode, size, sessions, concurrency) in enumerate(cases(args)):
                    for k, (_name, hold, inject) in enumerate(SETTINGS):
                        run = run_case(lab, layout, pin_dir, hold, inject, mode, size, sessions, concurrency,
                                       args.linger, f"{layout}{n}s{k}")
                        run["case"] = case
                        report["runs"].append(run)
                        if not args.json:
                            print_report({"runs": [run]})
                            sys.stdout.flush()
    finally:
        shutil.rmtree(pin_root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
