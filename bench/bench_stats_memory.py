"""The reject statistics against the number of hosts (issue 15 §2): memory per
host and cost per event with 10^2 ... 10^6 hosts tracked.

    .venv/bin/python bench/bench_stats_memory.py [--hosts 100,1000,10000,100000,1000000]
        [--load caps|light] [--window fixed|sliding] [--connections 100000] [--trace] [--json]

Each size runs in a fresh process with ``max_hosts`` set to it, so the table
is full at that size:

* ``caps``: every host at its caps, as hostile as the statistics allow: an
  IPv6 address of 39 characters, ``max_recipients`` recipients of 256 octets,
  ``max_samples`` distinct reject texts of 200 octets (each with its 18-
  character uid), a sliding window's every bucket; threshold and percent at 1
  so every host has raised a notice and holds its suppression entry.  The
  worst case per host.
* ``light``: a host of a spam wave seen once: an IPv4 address, one rejected
  connection, one short recipient, one sample; the seed's thresholds.

Memory: the RSS growth per host after a garbage collection (pymalloc's
rounding and free room included) and, with ``--trace``, what tracemalloc
traces per host (another process, sizes up to 10^5; the allocation sites of
the largest).  Cost per event: then ``--connections`` connections
(greeting, a RCPT, a 550: three events) from hosts already held, drawn at
random, and as many from hosts not held (each evicts one: the table is
full), in ns of CPU time (of this thread: the machine is shared) per event.
Benchmarks, not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_memory import rss_bytes  # noqa: E402

T0 = 1_000_000.0


def address(i: int, load: str) -> str:
    if load == "caps":
        return "2001:db8:%04x:%04x:%04x:%04x:%04x:%04x" % (0x8000 | i >> 16 & 0xFFF, i & 0xFFFF, 0xA000, 0xB000,
                                                          0xC000, 0xD000 | i & 0xFFF)
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def make_stats(hosts: int, load: str, window: str):
    from sensor.config import SpamStatsConfig
    from sensor.spamstats import RejectStats

    kw = dict(max_hosts=hosts, window=window)
    if load == "caps":
        kw.update(threshold=1, percent=1, suppress_for=10 * 86400.0)
    return RejectStats(SpamStatsConfig(**kw), clock=lambda: T0)


def fill(stats, first: int, count: int, load: str) -> None:
    """``count`` hosts from number ``first``, each at the load's size, after
    the latest time ``stats`` has seen."""
    from sensor.spamstats import ConnState

    cfg = stats.config
    t0 = T0 if stats.now is None else stats.now + 1
    reply, rcpt = stats.observe_reply, stats.observe_recipient
    if load == "light":
        for i in range(first, first + count):
            host, conn = address(i, load), ConnState()
            reply(host, t0, 220, conn, text="mx ESMTP", uid=f"C{i:017d}")
            rcpt(host, f"u{i}@example.org", conn)
            reply(host, t0, 550, conn, enhanced="5.1.1", text=f"<u{i}@example.org>: User unknown",
                  uid=f"C{i:017d}")
        return
    # in rounds over all hosts, so that time never goes back: round r is
    # connection r of every host (the sliding window's bucket r)
    rounds = max(cfg.max_samples, cfg.sliding_buckets if cfg.window == "sliding" else 1)
    step = cfg.period / cfg.sliding_buckets if cfg.window == "sliding" else 0.001
    pad = "x" * 256
    # the check after every thousand hosts judges them: in round 0 each
    # raises its notice (and keeps its suppression entry), later they are
    # suppressed; the notices are built a thousand at a time, as a live
    # sensor builds a few at a time, not all at once
    for r in range(rounds):
        ts = t0 + r * step
        for batch in range(first, first + count, 1000):
            for i in range(batch, min(batch + 1000, first + count)):
                host, conn, uid = address(i, load), ConnState(), f"C{r:05d}{i:012d}"
                reply(host, ts, 220, conn, text="mx ESMTP", uid=uid)
                if r == 0:
                    for j in range(cfg.max_recipients):
                        rcpt(host, f"{j:02d}{i:012d}{pad}"[:256], conn)
                reply(host, ts, 550, conn, enhanced="5.1.1", text=f"{r:03d}{i:012d}{pad}"[:200], uid=uid)
            stats.check(ts)
            stats.drain()


def connections(stats, hosts: list[str], n: int) -> float:
    """CPU ns per event of ``n`` connections (three events each) from
    ``hosts`` in turn, 0.1 ms apart (no window ends meanwhile)."""
    from sensor.spamstats import ConnState

    reply, rcpt = stats.observe_reply, stats.observe_recipient
    ts = stats.now
    gc.collect()
    t0 = time.thread_time_ns()
    for k in range(n):
        host, conn = hosts[k], ConnState()
        reply(host, ts, 220, conn, text="mx ESMTP", uid="Cbench")
        rcpt(host, "someone@example.org", conn)
        reply(host, ts, 550, conn, enhanced="5.1.1", text="<someone@example.org>: User unknown", uid="Cbench")
        ts += 0.0001
    elapsed = time.thread_time_ns() - t0
    stats.drain()
    return elapsed / (3 * n)


def child(hosts: int, load: str, window: str, n: int) -> dict:
    warm = make_stats(1000, load, window)
    fill(warm, 0, 1000, load)               # code objects, caches: then a fresh table is measured
    stats = make_stats(hosts, load, window)
    gc.collect()
    before = rss_bytes()
    t0 = time.perf_counter()
    fill(stats, 0, hosts, load)
    fill_s = time.perf_counter() - t0
    gc.collect()
    after = rss_bytes()
    out = {"hosts": hosts, "load": load, "window": window, "held": len(stats),
           "buckets": sum(stats.window.buckets_held(h) for h in stats._hosts.values()) / hosts,
           "rss_per_host": round((after - before) / hosts),
           "rss_mib": round((after - before) / 2**20, 1), "fill_s": round(fill_s, 2)}
    rng = random.Random(15)
    held = [address(rng.randrange(hosts), load) for _ in range(n)]
    out["ns_per_event_held"] = round(connections(stats, held, n))
    fresh = [address(hosts + 10 + k, load) for k in range(n)]
    out["ns_per_event_new"] = round(connections(stats, fresh, n))
    out["evicted"] = stats.counters.hosts_evicted
    return out


def traced(hosts: int, load: str, window: str) -> dict:
    """What tracemalloc traces per host, by allocation site (in a process of its own)."""
    warm = make_stats(1000, load, window)
    fill(warm, 0, 1000, load)
    stats = make_stats(hosts, load, window)
    gc.collect()
    tracemalloc.start(1)
    snap0 = tracemalloc.take_snapshot()
    fill(stats, 0, hosts, load)
    gc.collect()
    snap1 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    diff = snap1.compare_to(snap0, "lineno")
    return {"traced_per_host": round(sum(s.size_diff for s in diff) / hosts),
            "trace_top": [{"where": f"{Path(s.traceback[0].filename).name}:{s.traceback[0].lineno}",
                           "bytes_per_host": round(s.size_diff / hosts, 1)}
                          for s in diff[:14] if s.size_diff > 0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="100,1000,10000,100000,1000000")
    parser.add_argument("--load", choices=("caps", "light"), default="light")
    parser.add_argument("--window", choices=("fixed", "sliding"), default="fixed")
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--trace", action="store_true",
                        help="also what tracemalloc traces per host (sizes up to 10^5; its sites at the largest)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--trace-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.load, args.window, args.connections)))
        return 0
    if args.trace_child:
        print(json.dumps(traced(args.trace_child, args.load, args.window)))
        return 0

    def run(flag: str, hosts: int) -> dict:
        argv = [sys.executable, __file__, flag, str(hosts), "--load", args.load, "--window", args.window,
                "--connections", str(args.connections)]
        return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)

    rows = []
    for hosts in (int(h) for h in args.hosts.split(",")):
        row = run("--child", hosts)
        if args.trace and hosts <= 100_000:
            row.update(run("--trace-child", hosts))
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"load {args.load}, window {args.window}, {args.connections} connections each way")
    print("| hosts | RSS growth | per host (RSS) | per host (traced) | ns per event, host held | "
          "ns per event, new host (evicts one) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['hosts']} | {r['rss_mib']} MiB | {r['rss_per_host']} B | {r.get('traced_per_host', '-')} B | "
              f"{r['ns_per_event_held']} | {r['ns_per_event_new']} |")
    traced_rows = [r for r in rows if "trace_top" in r]
    if traced_rows:
        r = traced_rows[-1]
        print(f"\ntracemalloc, {r['hosts']} hosts: {r['traced_per_host']} B per host"
              + (f" ({r['buckets']:.0f} buckets each)" if args.window == "sliding" else ""))
        for t in r["trace_top"]:
            print(f"  {t['bytes_per_host']:>8} B  {t['where']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
