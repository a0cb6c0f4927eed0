"""Memory: userland bytes per open SMTP flow, and the kernel maps' memory.

    .venv/bin/python bench/bench_memory.py [--flows 100000] [--trace] [--json]

1. Userland: a fresh process feeds ``--flows`` synthetic connections through
   ``sensor.pipeline.Pipeline`` (handshake, banner, EHLO and its reply, each
   flow left open: nothing expires) and reports the growth of its RSS per
   flow, after a garbage collection. ``--trace`` adds tracemalloc's top
   allocation sites for 10 000 flows (what holds the memory).
2. Kernel: the datapath loaded once; per map its type, key/value size,
   max_entries, key+value bytes at max_entries, and the memlock the kernel
   charges (``/proc/self/fdinfo`` of the map's fd). Root and bcc needed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SYN, ACK, PSH = 0x02, 0x10, 0x08


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def feed_flows(pipeline, flows: int, start: int = 0) -> None:
    """Open `flows` SMTP connections (v4, distinct client address/port), each
    through its EHLO reply, and leave them open."""
    from sensor.stream import packet

    server = bytes([192, 0, 2, 25])
    feed = pipeline.feed_segment
    ts = 1000.0
    for i in range(start, start + flows):
        client = bytes([198, 51, 100 + (i >> 16) % 4, (i >> 8) & 0xFF])
        cport = 1024 + (i & 0xFF)
        c, s = 1000, 5000
        for from_client, flags, payload in (
                (True, SYN, b""), (False, SYN | ACK, b""), (True, ACK, b""),
                (False, PSH | ACK, b"220 mx.lab.example ESMTP\r\n"),
                (True, PSH | ACK, b"EHLO client%d.example.org\r\n" % i),
                (False, PSH | ACK, b"250-mx.lab.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n")):
            n = len(payload)
            if from_client:
                feed(packet.Segment(4, client, server, cport, 25, c, s, flags, payload, n, 54 + n), ts)
                c += n + (flags & SYN and 1)
            else:
                feed(packet.Segment(4, server, client, 25, cport, s, c, flags, payload, n, 54 + n), ts)
                s += n + (flags & SYN and 1)
        ts += 0.00001  # 100 k flows within one second: none idles out


def child(flows: int, trace: bool) -> dict:
    from sensor.pipeline import Pipeline

    records = []
    pipeline = Pipeline(records.append)
    feed_flows(pipeline, 200)  # warm up: code objects, caches, interned strings
    gc.collect()
    before = rss_bytes()
    feed_flows(pipeline, flows, start=200)
    gc.collect()
    after = rss_bytes()
    open_flows = len(pipeline.reassembler.flows) if hasattr(pipeline.reassembler, "flows") else None
    result = {"flows": flows, "open_flows": open_flows, "rss_before": before, "rss_after": after,
              "bytes_per_flow": round((after - before) / flows), "records": len(records)}
    if trace:
        import tracemalloc

        pipeline2 = Pipeline(records.append)
        feed_flows(pipeline2, 200)
        tracemalloc.start(1)
        snap0 = tracemalloc.take_snapshot()
        feed_flows(pipeline2, 10_000, start=1_000_000)
        gc.collect()
        snap1 = tracemalloc.take_snapshot()
        stats = snap1.compare_to(snap0, "lineno")
        result["trace_top"] = [
            {"where": f"{os.path.relpath(s.traceback[0].filename, REPO)}:{s.traceback[0].lineno}",
             "bytes_per_flow": round(s.size_diff / 10_000), "blocks_per_flow": round(s.count_diff / 10_000, 2)}
            for s in stats[:15]]
        result["trace_total_per_flow"] = round(sum(s.size_diff for s in stats) / 10_000)
    return result


def userland(flows: int, trace: bool) -> dict:
    """In a fresh process, so nothing else in this one is counted."""
    argv = [sys.executable, __file__, "--child", "--flows", str(flows)] + (["--trace"] if trace else [])
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


MAP_TYPES = {3: "prog_array", 1: "hash", 2: "array", 4: "perf_event_array", 6: "percpu_array", 9: "lru_hash",
             11: "lpm_trie", 27: "ringbuf"}


def memlock(fd: int) -> int | None:
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("memlock:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def kernel_maps() -> list[dict]:
    from sensor.kernel import abi, bpfsys
    from sensor.kernel.datapath import Datapath, DatapathConfig

    pin_root = Path(tempfile.mkdtemp(prefix="ss-bench-mem-", dir="/sys/fs/bpf"))
    rows = []
    try:
        with Datapath(DatapathConfig(pin_dir=pin_root / f"v{abi.ABI_VERSION}")) as dp:
            for name in (b"ss_events", b"ss_counters", b"ss_ports", b"ss_config", b"ss_ban_v4", b"ss_ban_v6",
                         b"ss_flow_drop", b"ss_bypass", b"ss_release", b"ss_hold", b"ss_flow_state",
                         b"ss_scratch", b"ss_tail"):
                fd = dp.bpf[name].map_fd
                info = bpfsys.map_info(fd)
                entry = info.key_size + info.value_size
                rows.append({"map": name.decode(), "type": MAP_TYPES.get(info.type, str(info.type)),
                             "key": info.key_size, "value": info.value_size, "max_entries": info.max_entries,
                             "kv_bytes_at_max": entry * info.max_entries if info.type != 27 else info.max_entries,
                             "memlock": memlock(fd)})
    finally:
        import shutil
        shutil.rmtree(pin_root, ignore_errors=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--trace", action="store_true", help="tracemalloc's top allocation sites")
    parser.add_argument("--no-kernel", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.flows, args.trace)))
        return 0
    report = {"userland": userland(args.flows, args.trace)}
    if not args.no_kernel and os.geteuid() == 0:
        report["kernel_maps"] = kernel_maps()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    u = report["userland"]
    print(f"userland: {u['flows']} open flows: RSS {u['rss_before'] / 2**20:.1f} -> {u['rss_after'] / 2**20:.1f} MiB, "
          f"{u['bytes_per_flow']} bytes per flow")
    for row in u.get("trace_top", []):
        print(f"  {row['bytes_per_flow']:>6} B/flow {row['blocks_per_flow']:>6} blocks/flow  {row['where']}")
    if "trace_total_per_flow" in u:
        print(f"  tracemalloc total: {u['trace_total_per_flow']} B/flow")
    if "kernel_maps" in report:
        print(f"\nkernel maps: {'map':<14} {'type':<13} {'key':>4} {'value':>6} {'max':>7} "
              f"{'k+v at max':>11} {'memlock':>10}")
        for r in report["kernel_maps"]:
            print(f"             {r['map']:<14} {r['type']:<13} {r['key']:>4} {r['value']:>6} {r['max_entries']:>7} "
                  f"{r['kv_bytes_at_max']:>11} {r['memlock'] or '-':>10}")
        total = sum(r["memlock"] or 0 for r in report["kernel_maps"])
        print(f"             total memlock {total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
