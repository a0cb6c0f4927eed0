"""Several sensors through Redis (issue 15 §3): what the event loop pays per
counted connection with ``[cluster]`` on, and how long a ban takes from one
sensor to another.

    .venv/bin/python bench/bench_cluster.py [--connections 20000] [--hosts 1000] [--bans 50]

A real redis-server on loopback (tests/support/redis_server.py), started
and stopped here.  (1) ``RejectStats.observe_reply`` for a greeting and a
550 per connection over ``--hosts`` hosts, with the statistics alone, with
the cluster's hook and its writer thread stopped (what the hook itself
costs), and with the writer thread running against Redis (it shares the
interpreter's lock with the caller: its encoding of the pipelines slows the
loop down): the time in the caller (the event loop's), then how many
pipelines and commands carried the counts.  (2) Two ``Cluster``s in this process (two sensors):
``ClusterActor.handle`` of a notice on A (its ban) to B's enforcer having
the ban, B's loop polling every millisecond; ``--bans`` times, one host
each.  The lab test (tests/lab/test_lab_cluster.py, run with ``-s``) prints
the same delay between two `smtp-sensor run` processes, from A's drop record
to B's (B's is written once its XDP ban map holds the entry).
Benchmarks, not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from sensor.cluster import Cluster  # noqa: E402
from sensor.config import ClusterConfig, Config, SpamStatsConfig  # noqa: E402
from sensor.rules.enforce import ReplayEnforcer  # noqa: E402
from sensor.spamstats import ConnState, Notice, RejectStats  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402


def config(url: str, name: str) -> Config:
    st = SpamStatsConfig(threshold=10**6, period=3600, check_interval=1)
    return Config(spam_stats=st, cluster=ClusterConfig(enabled=True, url=url, sensor_name=name))


def per_reject(stats, n: int, hosts: int, t0: float) -> float:
    """ns per connection (greeting + 550) in the caller."""
    addrs = [f"10.{(i >> 8) & 255}.{i & 255}.1" for i in range(hosts)]
    start = time.perf_counter_ns()
    for i in range(n):
        conn = ConnState()
        host, ts = addrs[i % hosts], t0 + i * 1e-4
        stats.observe_reply(host, ts, 220, conn)
        stats.observe_reply(host, ts, 550, conn, text="no such user")
    return (time.perf_counter_ns() - start) / n


def propagation(url: str, bans: int) -> list[float]:
    a = Cluster(config(url, "bench-a"), lambda rec: None, ReplayEnforcer()).start()
    b = Cluster(config(url, "bench-b"), lambda rec: None, ReplayEnforcer()).start()
    out = []
    try:
        time.sleep(0.3)
        for i in range(bans):
            host = f"203.0.113.{i % 250 + 1}"
            now = time.time()
            notice = Notice(ts=now, note="SMTP_PossibleSpam", src=host, msg="bench", sub=None, total=1,
                            rejects=1, percent=100, window="fixed", window_start=now, window_end=now,
                            suppress_for=60)
            t0 = time.perf_counter()
            a.actor.handle(notice, now)
            while not b.actor.enforcer.verdicts.banned(host, time.time()):
                b.poll()
                time.sleep(0.001)
            out.append(time.perf_counter() - t0)
            b.actor.enforcer.unban(f"{host}/32")
            b.actor.bans.pop(f"{host}/32", None)
    finally:
        a.close()
        b.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--hosts", type=int, default=1_000)
    parser.add_argument("--bans", type=int, default=50)
    args = parser.parse_args()
    with RedisServer() as server:
        t0 = time.time()
        alone = per_reject(RejectStats(config(server.url, "x").spam_stats), args.connections, args.hosts, t0)
        idle = Cluster(config(server.url, "bench-idle"), lambda rec: None, ReplayEnforcer())
        hook_only = per_reject(idle.stats, args.connections, args.hosts, t0)
        cluster = Cluster(config(server.url, "bench"), lambda rec: None, ReplayEnforcer()).start()
        shared = per_reject(cluster.stats, args.connections, args.hosts, t0)
        time.sleep(0.5)
        cluster.close()
        c = cluster.shipper.counters
        print(f"per connection (greeting + 550), {args.connections} connections over {args.hosts} hosts:")
        print(f"  statistics alone: {alone / 1000:.1f} µs; with the hook, writer thread stopped: "
              f"{hook_only / 1000:.1f} µs; with [cluster] (the writer thread sharing the GIL): {shared / 1000:.1f} µs")
        print(f"  {c.counts_sent} counts in {c.flushes} pipelines, {c.commands} commands "
              f"({c.commands / max(1, c.flushes):.0f} per pipeline); dropped {c.dropped}")
        delays = propagation(server.url, args.bans)
        q = statistics.quantiles(delays, n=20)
        print(f"ban A -> B's enforcer, {args.bans} bans: median {statistics.median(delays) * 1000:.2f} ms, "
              f"p95 {q[18] * 1000:.2f} ms, max {max(delays) * 1000:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
