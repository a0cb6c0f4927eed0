"""The userland gate's cost per SMTP segment against the number of bans
(issue 15 §2: it must not grow with them), and the memory the bans take.

    .venv/bin/python bench/bench_gate.py [--segments 200000]

Bans are /32s of 10.0.0.0/8 plus one /24 for every hundred of them (two
prefix lengths to look up); the segments come from hosts that are not
banned (the common case: every lookup misses) and, in a second column, from
banned ones.  ``Verdicts.passes`` is what the pipeline calls per segment.
Benchmarks, not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sensor.rules.enforce import Verdicts  # noqa: E402
from sensor.stream.flowid import pack_addr  # noqa: E402
from sensor.stream.packet import ACK, Segment  # noqa: E402


def segments(n: int, banned: bool) -> list:
    out = []
    for i in range(n):
        host = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" if banned else f"192.0.2.{i & 255}"
        out.append(Segment(4, pack_addr(host), pack_addr("198.51.100.25"), 40000 + (i & 1023), 25, 0, 0, ACK,
                           b"x", 1, 60))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=200_000)
    args = parser.parse_args()
    print("| bans | ns per segment, host not banned | ns per segment, host banned | memory of the bans |")
    print("|---:|---:|---:|---:|")
    for count in (1, 10, 100, 1_000, 10_000, 100_000):
        tracemalloc.start()
        v = Verdicts(ports=(25,))
        for i in range(count):
            v.add_ban(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/32")
            if i % 100 == 0:
                v.add_ban(f"172.{16 + (i >> 16) % 16}.{(i >> 8) & 255}.0/24")
        memory = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        row = []
        for banned in (False, True):
            segs = segments(min(args.segments, count) if banned else args.segments, banned)
            reps = max(1, args.segments // len(segs))
            passes = v.passes
            t0 = time.perf_counter_ns()
            for _ in range(reps):
                for seg in segs:
                    passes(seg, 1.0)
            row.append((time.perf_counter_ns() - t0) / (reps * len(segs)))
        print(f"| {count} | {row[0]:.0f} | {row[1]:.0f} | {memory / 2**20:.1f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
