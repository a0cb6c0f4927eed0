"""The gate's cost per SMTP segment against the number of bans (issue 15 §2:
it must not grow with them), and the memory the bans take: the userland
gate (``Verdicts.passes``) and, with ``--kernel`` (root, bcc), the XDP
program's LPM tries.

    .venv/bin/python bench/bench_gate.py [--segments 200000] [--kernel]

Bans are /32s of 10.0.0.0/8 plus one /24 for every hundred of them (two
prefix lengths to look up); the segments come from hosts that are not
banned (the common case: every lookup misses) and, in a second column, from
banned ones.  ``Verdicts.passes`` is what the pipeline calls per segment
(ns of CPU time of this thread: the machine is shared).
The kernel rows load the datapath (pins in a temporary folder under
/sys/fs/bpf), write the same bans into ``ss_ban_v4`` and time the XDP
program on one SMTP frame by BPF_PROG_TEST_RUN (events not pushed, so the
rows are the parse and the ban lookup): from the host next to the last one
banned (not banned, but its lookup walks as deep as a miss can) and from
one banned in the middle; the trie's memory is the memlock the kernel
charges for it (``/proc/self/fdinfo``).  A trie holds ``abi.BAN_MAX``
(16 384) prefixes: a row of a full one stands in for 100 000.
Benchmarks, not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sensor.rules.enforce import Verdicts  # noqa: E402
from sensor.stream.flowid import pack_addr  # noqa: E402
from sensor.stream.packet import ACK, Segment  # noqa: E402

COUNTS = (1, 10, 100, 1_000, 10_000, 100_000)
FULL_TRIE = 16_222        # /32s whose ban_list (with its /24s) fills a trie of 16 384


def banned_host(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def ban_list(count: int) -> list[str]:
    """``count`` /32s and a /24 for every hundred of them."""
    out = []
    for i in range(count):
        out.append(banned_host(i) + "/32")
        if i % 100 == 0:
            out.append(f"172.{16 + (i >> 16) % 16}.{(i >> 8) & 255}.0/24")
    return out


def segments(n: int, banned: bool) -> list:
    out = []
    for i in range(n):
        host = banned_host(i) if banned else f"192.0.2.{i & 255}"
        out.append(Segment(4, pack_addr(host), pack_addr("198.51.100.25"), 40000 + (i & 1023), 25, 0, 0, ACK,
                           b"x", 1, 60))
    return out


def userland(count: int, n_segments: int) -> tuple[float, float, int]:
    """(ns per segment not banned, banned; bytes the bans take)."""
    tracemalloc.start()
    v = Verdicts(ports=(25,))
    for network in ban_list(count):
        v.add_ban(network)
    memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    row = []
    for banned in (False, True):
        segs = segments(min(n_segments, count) if banned else n_segments, banned)
        reps = max(1, n_segments // len(segs))
        passes = v.passes
        t0 = time.thread_time_ns()
        for _ in range(reps):
            for seg in segs:
                passes(seg, 1.0)
        row.append((time.thread_time_ns() - t0) / (reps * len(segs)))
    return row[0], row[1], memory


def kernel(counts) -> dict[int, tuple[float, float, int, int]]:
    """Per count of bans (each at most a full trie): (ns per frame not
    banned, banned; the trie's memlock; prefixes in it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))   # support.testrun
    from bench_datapath import frame, ns_per_packet
    from bench_memory import memlock

    from sensor.kernel import abi
    from sensor.kernel.datapath import Datapath, DatapathConfig

    pin_root = Path(tempfile.mkdtemp(prefix="ss-bench-gate-", dir="/sys/fs/bpf"))
    out = {}
    try:
        with Datapath(DatapathConfig(pin_dir=pin_root / f"v{abi.ABI_VERSION}", ports=(25,))) as dp:
            maps = dp.maps
            maps.set_config(push=False)
            fd = dp.bpf[b"ss_ban_v4"].map_fd
            empty = memlock(fd)
            written = 0
            for count in counts:
                wanted = ban_list(count)[: abi.BAN_MAX]
                for network in wanted[written:]:
                    maps.ban(network)
                written = len(wanted)
                hosts = [n[:-3] for n in wanted if n.endswith("/32")]
                free = ns_per_packet(dp.xdp_fd, frame(64, src=banned_host(len(hosts))), repeat=100_000)
                dropped = ns_per_packet(dp.xdp_fd, frame(64, src=hosts[len(hosts) // 2]), repeat=100_000)
                out[count] = (free, dropped, memlock(fd) - empty, written)
    finally:
        shutil.rmtree(pin_root, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, default=200_000)
    parser.add_argument("--kernel", action="store_true", help="the XDP program's LPM tries too (root, bcc)")
    args = parser.parse_args()
    if args.kernel and os.geteuid() != 0:
        parser.error("--kernel needs root (it loads the datapath)")
    kern = kernel(COUNTS[:-1] + (FULL_TRIE,)) if args.kernel else {}
    head = "| bans | ns per segment, host not banned | ns per segment, host banned | memory of the bans |"
    rule = "|---:|---:|---:|---:|"
    if kern:
        head += " XDP ns per frame, not banned | XDP ns per frame, banned | trie memlock (prefixes) |"
        rule += "---:|---:|---:|"
    print(head)
    print(rule)
    for count in sorted(set(COUNTS) | set(kern)):
        free, banned, memory = userland(count, args.segments)
        line = f"| {count} | {free:.0f} | {banned:.0f} | {memory / 2**20:.1f} MiB |"
        if kern:
            if count in kern:
                free, dropped, mem, written = kern[count]
                line += f" {free:.0f} | {dropped:.0f} | {mem / 2**20:.2f} MiB ({written}) |"
            else:
                line += " (a trie holds 16 384) | | |"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
