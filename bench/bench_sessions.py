"""End to end in the netns lab: the highest SMTP session rate the sensor
follows with zero lost events.

    .venv/bin/python bench/bench_sessions.py [--server aiosmtpd|postfix] [--concurrency 1,4,16] [--json]

A client process in the lab's client namespace opens short sessions, each
on a new connection (banner, EHLO, MAIL, RCPT, DATA, a 1 KB message, ".",
QUIT, waiting for every reply), from --concurrency threads for --seconds per
step, against a real server in the server namespace (aiosmtpd through
sensor.lab.server, or Postfix through lab.start_postfix). The sensor is the
`run` loop in this process (datapath on the server's veth, LiveFeed.step(50),
the userland (sensor.assembly, the shipped rules unless --no-rules, no reject
statistics); wakeups as `run` chooses: every
record with rules, batched without). A step counts when no event was lost
(ring full) and the sensor saw as many mail transactions as the client
completed sessions. Also reported: the sensor's CPU time per session (this
process, which does nothing else), i.e. the rate one core of sensor would
follow if the client and server were not sharing the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sensor.kernel import abi  # noqa: E402
from sensor.service import log as sensor_log  # noqa: E402
from sensor.lab.network import SERVER_V4, Lab  # noqa: E402

CLIENT = r"""
import json, socket, sys, threading, time
server, seconds, concurrency = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
body = b"From: <a@example.org>\r\nTo: <bob@lab.example>\r\nSubject: bench\r\n\r\n" + b"x" * 76 * 12 + b"\r\n"
lock, done, errors = threading.Lock(), [0], [0]

def reply(f):
    while True:
        line = f.readline()
        if not line:
            raise OSError("closed")
        if line[3:4] != b"-":
            return line[:3]

def session(i):
    s = socket.create_connection((server, 25), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    try:
        steps = [(None, b"220"), (b"EHLO c%d.example.org\r\n" % i, b"250"),
                 (b"MAIL FROM:<user%d@example.org>\r\n" % i, b"250"), (b"RCPT TO:<bob@lab.example>\r\n", b"250"),
                 (b"DATA\r\n", b"354"), (body + b".\r\n", b"250"), (b"QUIT\r\n", b"221")]
        for send, want in steps:
            if send:
                s.sendall(send)
            if reply(f) != want:
                raise OSError(f"expected {want}")
    finally:
        f.close()
        s.close()

def worker(k):
    deadline = time.monotonic() + seconds
    i = k * 1000000
    while time.monotonic() < deadline:
        i += 1
        try:
            session(i)
            with lock:
                done[0] += 1
        except OSError:
            with lock:
                errors[0] += 1

t0 = time.monotonic()
threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"sessions": done[0], "errors": errors[0], "seconds": time.monotonic() - t0}))
""".replace("lock, done, errors = threading.Lock(), [0], [0]", "lock, done, errors = threading.Lock(), [0], [0]")


class Sink:
    def __init__(self):
        self.counts = Counter()

    def __call__(self, record):
        self.counts[record["event_type"]] += 1


def step(lab: Lab, sensor, concurrency: int, seconds: float) -> dict:
    feed, pipeline, sink = sensor
    tx0, lost0, cpu0 = pipeline.counters.transactions, feed.reader.lost, time.process_time()
    client = subprocess.Popen(lab.exec_argv(lab.client_ns, sys.executable, "-c", CLIENT, SERVER_V4,
                                            str(seconds), str(concurrency)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while client.poll() is None:
        feed.step(50)
    feed.drain(rounds=20, timeout_ms=50)
    out, err = client.communicate()
    cpu = time.process_time() - cpu0
    res = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"sessions": 0, "errors": -1, "seconds": 0}
    seen = pipeline.counters.transactions - tx0
    lost = feed.reader.lost - lost0
    rate = res["sessions"] / res["seconds"] if res["seconds"] else 0
    return {"concurrency": concurrency, "sessions": res["sessions"], "client_errors": res["errors"],
            "sessions_per_s": round(rate), "transactions_seen": seen, "lost": lost,
            "ok": lost == 0 and seen >= res["sessions"] and res["sessions"] > 0,
            "sensor_cpu_s": round(cpu, 3),
            "sensor_cpu_us_per_session": round(cpu * 1e6 / max(1, res["sessions"]), 1),
            **({"client_stderr": err.strip()[-300:]} if err.strip() else {})}


def run(server: str = "aiosmtpd", concurrencies=(1, 4, 16), seconds: float = 4.0, rules: bool = True) -> dict:
    from sensor.assembly import Userland
    from sensor.config import Config, SensorConfig, SpamStatsConfig
    from sensor.inputs.live import LiveFeed
    from sensor.kernel.datapath import Datapath, DatapathConfig
    from sensor.rules.enforce import KernelEnforcer

    pin_root = Path(tempfile.mkdtemp(prefix="ss-bench-sessions-", dir="/sys/fs/bpf"))
    steps = []
    try:
        with Lab() as lab:
            if server == "postfix":
                lab.start_postfix(reject=(), tls=False)
            else:
                lab.start_server()
            with Datapath(DatapathConfig(pin_dir=pin_root / f"v{abi.ABI_VERSION}")) as dp:
                dp.attach(lab.server_if, netns=lab.server_ns)
                sink = Sink()
                # the sensor's userland, with the shipped rules or none, no reject statistics
                config = Config(sensor=SensorConfig(rules=REPO / "rules" if rules else None),
                                spam_stats=SpamStatsConfig(enabled=False))
                pipeline = Userland(config, sink, KernelEnforcer(dp.maps), uid_seed=os.urandom(12)).pipeline
                feed = LiveFeed(dp.event_reader(wake_batch=not rules), pipeline, dp.maps)
                for c in concurrencies:
                    steps.append(step(lab, (feed, pipeline, sink), c, seconds))
    finally:
        import shutil
        shutil.rmtree(pin_root, ignore_errors=True)
    ok = [s for s in steps if s["ok"]]
    best = max(ok, key=lambda s: s["sessions_per_s"]) if ok else None
    return {"server": server, "rules": rules, "steps": steps,
            "best_sessions_per_s": best["sessions_per_s"] if best else 0,
            "sensor_cpu_us_per_session": min((s["sensor_cpu_us_per_session"] for s in ok), default=None)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=("aiosmtpd", "postfix"), default="aiosmtpd")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--no-rules", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_sessions: needs root (BPF, namespaces)", file=sys.stderr)
        return 2
    sensor_log.configure("warning", json=False, stream=sys.stderr)
    report = run(args.server, [int(c) for c in args.concurrency.split(",")], args.seconds, not args.no_rules)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"server {report['server']}, rules {'on' if report['rules'] else 'off'}")
    print(f"{'threads':>7} {'sessions':>9} {'errors':>7} {'sessions/s':>11} {'tx seen':>8} {'lost':>5} "
          f"{'sensor CPU s':>13} {'us/session':>11} ok")
    for s in report["steps"]:
        print(f"{s['concurrency']:>7} {s['sessions']:>9} {s['client_errors']:>7} {s['sessions_per_s']:>11} "
              f"{s['transactions_seen']:>8} {s['lost']:>5} {s['sensor_cpu_s']:>13} "
              f"{s['sensor_cpu_us_per_session']:>11} {s['ok']}")
    print(f"highest rate with zero lost events: {report['best_sessions_per_s']} sessions/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
