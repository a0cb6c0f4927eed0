"""Kernel datapath benchmarks (root, bcc):

1. ns/packet of the XDP program by BPF_PROG_TEST_RUN for each path, next to an
   empty XDP program (the floor);
2. the event consumer: the highest rate of 1.4 KB events userland takes on
   one core with zero loss, and the loss beyond it.

    .venv/bin/python bench/bench_datapath.py [--seconds 2] [--json]

The consumer benchmark pushes real events: a client namespace sends 1.4 KB
SMTP-port frames over the lab's veth (AF_PACKET, another process, paced), XDP
pushes each into the event ring, and the main thread consumes with
EventReader. Numbers are from this shared 2-core machine; run it a few times
(bench/run_all.py takes medians).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # support.testrun

from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Dot1Q, Ether  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from sensor.kernel import abi  # noqa: E402
from sensor.kernel.datapath import Datapath, DatapathConfig  # noqa: E402
from sensor.kernel.maps import FlowEnds  # noqa: E402
from sensor.lab.network import CLIENT_V4, SERVER_V4, Lab  # noqa: E402
from support.testrun import prog_test_run  # noqa: E402

CLIENT, SERVER = "198.51.100.7", "192.0.2.25"


def frame(payload_len: int, dport: int = 25, src: str = CLIENT, v6: bool = False, vlan: bool = False,
          tail: bytes = b"") -> bytes:
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if vlan:
        eth = eth / Dot1Q(vlan=10)
    ip = IPv6(src="2001:db8:1::7", dst="2001:db8:2::25") if v6 else IP(src=src, dst=SERVER)
    body = b"x" * (payload_len - len(tail)) + tail
    return bytes(eth / ip / TCP(sport=40000, dport=dport, flags="PA") / Raw(body))


def ns_per_packet(fd: int, data: bytes, repeat: int = 200_000, rounds: int = 5, drain=None) -> float:
    """Median over `rounds` of the kernel's mean ns per run; `drain` empties
    the event ring between rounds so pushes measure success, not a full ring."""
    durations = []
    for _ in range(rounds):
        durations.append(prog_test_run(fd, data, repeat=repeat).duration_ns)
        if drain:
            drain()
    return statistics.median(durations)


def testrun_table(dp: Datapath, empty_fd: int) -> dict[str, float]:
    maps = dp.maps
    results = {"empty XDP program (floor)": ns_per_packet(empty_fd, frame(0, dport=80))}
    results["not SMTP (TCP port 80)"] = ns_per_packet(dp.xdp_fd, frame(64, dport=80))
    # adaptive wakeups with a reader that reads only between runs: one wakeup
    # per run, so the rows are the program's own cost (a wakeup, an irq_work,
    # costs ~3.4 us on this VM: bench/xdp_profile.py)
    reader = dp.event_reader(wake_batch=False)
    drain = lambda: reader.poll_raw(0)  # noqa: E731
    # 400 x 1.6 KB records fit the ring many times over: every push succeeds
    results["SMTP pushed, 64 B payload"] = ns_per_packet(dp.xdp_fd, frame(64), 400, 25, drain)
    results["SMTP pushed, 1.4 KB payload"] = ns_per_packet(dp.xdp_fd, frame(1400), 400, 25, drain)
    results["SMTP pushed, IPv6 + VLAN, 1.4 KB"] = ns_per_packet(
        dp.xdp_fd, frame(1400, v6=True, vlan=True), 400, 25, drain)
    # the commit hold: every client segment is read for an end of data
    maps.set_config(hold=True)
    results["hold on: 1.4 KB client segment read, passed and pushed"] = ns_per_packet(
        dp.xdp_fd, frame(1400, tail=b"text\r\n"), 400, 25, drain)
    results["hold on: 1.4 KB ending CRLF.CRLF, held and pushed"] = ns_per_packet(
        dp.xdp_fd, frame(1400, tail=b"\r\n.\r\n"), 400, 25, drain)
    maps.set_config()
    counters = maps.counters()["ingress"]
    results["(push failures during the push runs)"] = counters["push_failed"]
    maps.ban("198.51.100.0/24")
    results["banned source (/24), dropped"] = ns_per_packet(dp.xdp_fd, frame(64))
    maps.unban("198.51.100.0/24")
    maps.drop_flow(FlowEnds(CLIENT, 40000, SERVER, 25))
    results["dropped flow"] = ns_per_packet(dp.xdp_fd, frame(64))
    maps.flow_drop.clear()
    return results


PRODUCER = r"""
import socket, sys, time
ifname, rate, seconds, frame_hex = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
frame = bytes.fromhex(frame_hex)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
send, now = s.send, time.perf_counter
start, sent = now(), 0
while True:
    elapsed = now() - start
    if elapsed >= seconds:
        break
    due = int(elapsed * rate)
    while sent < due:
        send(frame)
        sent += 1
print(sent)
"""


def consume_at(dp: Datapath, lab: Lab, rate: int, seconds: float, wakeup: int = 64,
               pktsend: Path | None = None) -> dict:
    """A client namespace sends `rate` frames/s (0: flat out, with pktsend) of
    1.4 KB SMTP payload over the veth (AF_PACKET, another process: the Python
    loop below, or bench/pktsend.c built by bench_drop.build_pktsend, which
    goes past the Python loop's ~300 k/s); XDP pushes each; this thread
    consumes."""
    # a destination MAC that is not the server's: the stack drops the frame
    # after XDP instead of answering with an RST
    data = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:99") / IP(src=CLIENT_V4, dst=SERVER_V4)
                 / TCP(sport=40000, dport=25, flags="PA") / Raw(b"x" * 1400))
    reader = dp.event_reader(wake_batch=wakeup > 1)
    dp.maps.counters_map.clear()
    if pktsend is not None:
        argv = [str(pktsend), lab.client_if, data.hex(), str(seconds), str(rate)]
    else:
        argv = [sys.executable, "-c", PRODUCER, lab.client_if, str(rate), str(seconds), data.hex()]
    producer = subprocess.Popen(lab.exec_argv(lab.client_ns, *argv), stdout=subprocess.PIPE, text=True)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    received = 0
    while producer.poll() is None:
        received += len(reader.poll_raw(10))
    for _ in range(50):
        got = len(reader.poll_raw(10))
        received += got
        if not got:
            break
    elapsed = time.perf_counter() - t0
    out = producer.stdout.read().strip() or "0"
    sent = json.loads(out)["sent"] if out.startswith("{") else int(out)
    producer.stdout.close()
    counters = dp.maps.counters()["ingress"]
    # a full ring: the kernel's push fails (push_failed, which reader.lost reads)
    return {"target_rate": rate, "sent": sent, "pushed": counters["pushed"], "received": received,
            "lost": max(reader.lost, counters["push_failed"]), "achieved_rate": round(received / seconds),
            "offered_rate": round(sent / seconds),
            "consumer_cpu_s": round(time.process_time() - cpu0, 2), "elapsed_s": round(elapsed, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="per consumer rate step")
    parser.add_argument("--rates", default="50000,100000,200000,300000,400000,600000")
    parser.add_argument("--pages", type=int, default=DatapathConfig.ring_pages,
                        help="pages of the event ring (all CPUs)")
    parser.add_argument("--wakeup", type=int, default=64,
                        help="(perf buffer era; the ring buffer wakes adaptively and ignores it)")
    parser.add_argument("--producer", choices=("c", "python"), default="c",
                        help="the frame sender: bench/pktsend.c (built with cc) or a Python loop")
    parser.add_argument("--skip-testrun", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_datapath: needs root (BPF)", file=sys.stderr)
        return 2
    import bcc

    pin_root = Path(tempfile.mkdtemp(prefix="ss-bench-", dir="/sys/fs/bpf"))
    report: dict = {}
    try:
        empty = bcc.BPF(text=b"int empty(struct xdp_md *ctx) { return XDP_PASS; }")
        empty_fd = empty.load_func(b"empty", bcc.BPF.XDP).fd
        if not args.skip_testrun:
            with Datapath(DatapathConfig(pin_dir=pin_root / f"v{abi.ABI_VERSION}")) as dp:
                report["xdp_ns_per_packet"] = testrun_table(dp, empty_fd)
        report["consumer"] = []
        pktsend = None
        if args.producer == "c" and args.rates:
            from bench_drop import build_pktsend
            pktsend = build_pktsend(Path(tempfile.mkdtemp(prefix="ss-bench-")))
        with Lab() as lab:
            for rate in (int(r) for r in args.rates.split(",") if r):
                config = DatapathConfig(pin_dir=pin_root / f"v{abi.ABI_VERSION}", ring_pages=args.pages)
                with Datapath(config) as dp:
                    dp.attach(lab.server_if, netns=lab.server_ns)
                    report["consumer"].append(consume_at(dp, lab, rate, args.seconds, args.wakeup, pktsend))
    finally:
        import shutil
        shutil.rmtree(pin_root, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print("XDP program cost by BPF_PROG_TEST_RUN (median of the runs, ns/packet)")
    for name, value in report.get("xdp_ns_per_packet", {}).items():
        print(f"  {name:<40} {value:>8.1f}" if isinstance(value, float) else f"  {name:<40} {value:>8}")
    print(f"\nevent consumer, 1.4 KB events, one Python thread consuming "
          f"(ring of {args.pages} pages)")
    print(f"  {'target/s':>9} {'sent':>9} {'pushed':>9} {'received':>9} {'lost':>8} {'received/s':>11} "
          f"{'consumer cpu s':>15}")
    for row in report["consumer"]:
        print(f"  {row['target_rate']:>9} {row['sent']:>9} {row['pushed']:>9} {row['received']:>9} "
              f"{row['lost']:>8} {row['achieved_rate']:>11} {row['consumer_cpu_s']:>15}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
