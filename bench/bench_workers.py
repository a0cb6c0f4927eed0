#!/usr/bin/env python3
"""Live throughput with 1 and N workers (issue 15 §1): events the sensor's
userland dissects per second when the kernel offers more than it can take.

    .venv/bin/python bench/bench_workers.py [--workers 1,2,1,2] [--rate 300000] [--seconds 8] [--json]

In the netns lab (aiosmtpd in the server namespace), the real CLI sensor
(`smtp-sensor run --workers N --monitor-only`, no rules, records to
/dev/null, batched wakeups) on the server's veth, and two flooders
(bench/pktsend.c) in the client namespace, one per client address, the two
addresses chosen so that the kernel's hash gives them to different workers
(with 2 workers: one each). Each sends 1 400-byte segments of pipelined
`RCPT TO` lines to port 25 (half of --rate frames/s each, through 2 000
source ports: as many flows, each picked up mid-stream; the server answers
each with an RST, which TC egress pushes too); a SYN for each flow comes
first, since under ring pressure the kernel pushes only the segments of
connections it saw open. The rate is the sensor's
events read from the flood's start until the sensor has read what the rings held
(`smtp-sensor status`: ``events``), divided by that time, and by the CPU
time the sensor's processes spent (their /proc stat): push_failed says the
kernel offered more than was read (the sensor was the limit).

The runs are interleaved as --workers says (default 1,2,1,2), since the
machine may be shared; each line is one run. Everything (flooders, the
kernel's XDP and TC work, which runs on the sending CPU, the workers and
the supervisor) shares the machine's cores: read the numbers with that.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from sensor import shard  # noqa: E402
from sensor.kernel import abi  # noqa: E402
from sensor.lab.network import SERVER_V4, Lab  # noqa: E402
from sensor.service.control import ControlClient  # noqa: E402

CANDIDATES = [f"192.0.2.{i}" for i in range(10, 40)]
FLOWS = 2000


def addresses_for(workers: int) -> tuple[str, str]:
    """Two client addresses of different workers (of 2; with 1 worker any two)."""
    by = {}
    for a in CANDIDATES:
        by.setdefault(shard.worker_of_address(ipaddress.ip_address(a).packed, 2), a)
    return by[0], by[1]


def cpu_seconds(pids) -> float:
    """User and system CPU time of the processes, in seconds."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def flood_frame(src: str, src_mac: str, dst_mac: str, syn: bool = False) -> bytes:
    """A data segment of the flood, or (syn) the SYN that opens its flows."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    ip = Ether(src=src_mac, dst=dst_mac) / IP(src=src, dst=SERVER_V4)
    if syn:
        return bytes(ip / TCP(sport=20000, dport=25, flags="S", seq=0))
    payload = (b"RCPT TO:<victim@lab.example>\r\n" * 47)[:1400]
    return bytes(ip / TCP(sport=20000, dport=25, flags="PA", seq=1, ack=1) / payload)


def flood(lab, pktsend: Path, frames, seconds: float, rate: int) -> list:
    procs = [subprocess.Popen(lab.exec_argv(lab.client_ns, str(pktsend), lab.client_if, frame.hex(), str(seconds),
                                            str(rate), str(FLOWS)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for frame in frames]
    return [json.loads(p.communicate()[0] or "{}").get("sent", 0) for p in procs]


def one_run(lab, pktsend: Path, workers: int, rate: int, seconds: float, work: Path) -> dict:
    from bench_drop import mac_of

    pins = Path(tempfile.mkdtemp(prefix="ss-bench-workers-", dir="/sys/fs/bpf"))
    control = work / f"control-{workers}-{time.monotonic_ns()}.sock"
    argv = [sys.executable, "-m", "sensor.cli", "--log-format", "json", "run", "-i", lab.server_if,
            "--netns", lab.server_ns, "--pin-dir", str(pins / f"v{abi.ABI_VERSION}"), "--monitor-only",
            "--control-socket", str(control), "-o", "/dev/null", "--workers", str(workers),
            "--stats-interval", "3600", "--wakeup", "64"]
    sensor = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = ControlClient(str(control), timeout=10)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status = client.call("status")
                if workers == 1 or all(r.get("answered") for r in status.get("workers", [])):
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if sensor.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sensor did not start: {sensor.stderr.read()[-2000:]}")
            time.sleep(0.2)
        pids = [r["pid"] for r in status["workers"]] if workers > 1 else [status["pid"]]
        src_mac, dst_mac = mac_of(lab.client_ns, lab.client_if), mac_of(lab.server_ns, lab.server_if)
        # the flows' SYNs first (each port about 5 times): under ring pressure the
        # kernel still pushes the segments of connections it saw open
        flood(lab, pktsend, [flood_frame(a, src_mac, dst_mac, syn=True) for a in addresses_for(workers)],
              0.5, FLOWS * 10)
        time.sleep(0.5)
        ev0, cpu0 = client.call("status")["events"], cpu_seconds(pids)
        t0 = time.monotonic()
        sent = flood(lab, pktsend, [flood_frame(a, src_mac, dst_mac) for a in addresses_for(workers)],
                     seconds, rate // 2)
        # on until the sensor has read what the rings still hold: its events stop growing
        last, t_last = client.call("status"), time.monotonic()
        while time.monotonic() - t_last < 1.5:
            time.sleep(0.2)
            now = client.call("status")
            if now["events"] != last["events"]:
                last, t_last = now, time.monotonic()
        cpu = cpu_seconds(pids) - cpu0
        events = last["events"] - ev0

        def kernel(name):
            return last["counters"]["ingress"][name] + last["counters"]["egress"][name]

        per_worker = [r.get("events", 0) for r in last["workers"]] if workers > 1 else [last["events"]]
        return {"workers": workers, "events": events, "busy_s": round(t_last - t0, 2),
                "events_per_s": round(events / (t_last - t0)), "cpu_s": round(cpu, 2),
                "events_per_cpu_s": round(events / cpu) if cpu else None,
                "push_failed": kernel("push_failed"), "events_by_worker": per_worker,
                "sent_per_s": round(sum(sent) / seconds), "loadavg": os.getloadavg()[0]}
    finally:
        if sensor.poll() is None:
            sensor.terminate()
            try:
                sensor.wait(timeout=60)
            except subprocess.TimeoutExpired:
                sensor.kill()
        shutil.rmtree(pins, ignore_errors=True)


def main() -> int:
    from bench_drop import build_pktsend

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,1,2", help="the runs, in order")
    ap.add_argument("--rate", type=int, default=300_000, help="frames per second offered (both flooders)")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_workers: needs root (BPF, netns)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ss-bench-workers-"))
    try:
        pktsend = build_pktsend(work)
        with Lab(client_addrs=addresses_for(2)) as lab:
            lab.start_server()
            results = [one_run(lab, pktsend, int(n), args.rate, args.seconds, work) for n in args.workers.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"workers {r['workers']}: {r['events_per_s']:>7} events/s ({r['events']} in {r['busy_s']} s; "
                  f"{r['events_per_cpu_s']} per CPU second of the workers), per worker {r['events_by_worker']}, "
                  f"push_failed {r['push_failed']}, flooders sent {r['sent_per_s']}/s, load {r['loadavg']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
