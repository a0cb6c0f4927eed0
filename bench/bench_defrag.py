#!/usr/bin/env python3
"""The IP defragmenter's memory bound and speed (sensor/stream/defrag.py), in
one process, no root:

1. memory: datagrams left incomplete (their first fragment, or a middle
   one, never completed) until the byte bound evicts: the Python memory
   they really take (tracemalloc) against what the defragmenter charges to
   ``max_bytes`` (its ``held``), for a flood of 1480-byte first fragments,
   of 8-byte fragments, and of many small fragments of one datagram each;
2. speed: datagrams reassembled per second through ``packet.decode`` (raw
   IP frames), split into 2 fragments of ~750 bytes, and into 8-byte ones.

    .venv/bin/python bench/bench_defrag.py [--json]

Benchmarks, not tests: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from scapy.layers.inet import IP, TCP, fragment  # noqa: E402
from scapy.packet import Raw, raw  # noqa: E402

from sensor.stream import defrag  # noqa: E402
from sensor.stream.packet import LINKTYPE_RAW, decode  # noqa: E402


def frag4(ident: int, offset: int, data: bytes, more: bool, src: str = "198.51.100.7") -> bytes:
    return raw(IP(src=src, dst="192.0.2.25", id=ident & 0xFFFF, proto=6, flags="MF" if more else 0,
                  frag=offset // 8) / Raw(data))


def flood(kind: str, limits: defrag.DefragLimits) -> dict:
    """Incomplete datagrams until the bound evicts: real bytes against charged ones."""
    d = defrag.Defragmenter(limits)
    reasons: dict = {}
    if kind == "1480-byte first fragments":
        frames = [frag4(i, 0, b"x" * 1480, True, src=f"198.51.{100 + i // 60000}.{i % 250}")
                  for i in range(12000)]
    elif kind == "8-byte first fragments":
        frames = [frag4(i, 0, b"x" * 8, True, src=f"198.51.{100 + i // 60000}.{i % 250}") for i in range(12000)]
    else:  # 8-byte fragments of few datagrams, every other one missing
        frames = [frag4(i // 500, 16 * (i % 500) + 8, b"x" * 8, True, src=f"203.0.113.{(i // 500) % 250}")
                  for i in range(40000)]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    pending = d.pending
    for f in frames:
        decode(LINKTYPE_RAW, f, -1, reasons, d, 1.0)
        pending.clear()              # the pipeline drains them after every frame
    real = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    d.pending.clear()
    return {"kind": kind, "datagrams": len(d), "fragments": sum(len(dg.frags) for dg in d._table.values()),
            "charged": d.held, "real": real, "bound": limits.max_bytes,
            "evicted": sum(d.counters.discarded.values())}


def speed(pieces: int) -> dict:
    seg = raw(IP(src="198.51.100.7", dst="192.0.2.25", id=1) / TCP(sport=40000, dport=25, flags="PA")
              / Raw(b"x" * 1460))
    size = 8 if pieces > 2 else 752
    frames = [raw(f) for f in fragment(IP(seg), fragsize=size)]
    d = defrag.Defragmenter()
    reasons: dict = {}
    n = 2000 if pieces > 2 else 20000
    done = 0
    started = time.perf_counter()
    for _ in range(n):
        for f in frames:
            if decode(LINKTYPE_RAW, f, -1, reasons, d, 1.0) is not None:
                done += 1
        d.pending.clear()
    took = time.perf_counter() - started
    return {"fragments per datagram": len(frames), "datagrams/s": round(done / took),
            "fragments/s": round(done * len(frames) / took), "reassembled": done}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    limits = defrag.DefragLimits(max_bytes=4 << 20, max_datagrams=100_000, per_source=100_000)
    memory = [flood(k, limits) for k in ("1480-byte first fragments", "8-byte first fragments",
                                         "8-byte fragments, 500 per datagram")]
    speeds = [speed(2), speed(183)]
    if args.json:
        print(json.dumps({"memory": memory, "speed": speeds}))
        return
    print("memory, bound max_bytes = 4 MiB:")
    for m in memory:
        print(f"  {m['kind']:38} {m['datagrams']:6} datagrams {m['fragments']:6} fragments "
              f"charged {m['charged'] / 2**20:5.2f} MiB  real {m['real'] / 2**20:5.2f} MiB "
              f"({m['real'] / max(1, m['charged']):.2f} of charged)  evicted {m['evicted']}")
    print("speed (packet.decode + Defragmenter, raw IP frames):")
    for s in speeds:
        print(f"  {s['fragments per datagram']:4} fragments a datagram: {s['datagrams/s']:7} datagrams/s, "
              f"{s['fragments/s']:8} fragments/s")


if __name__ == "__main__":
    main()
