#!/usr/bin/env python3
"""Benchmark: what writing the records as Zeek logs costs, against the native JSON lines.

    python bench/bench_zeek_logs.py [--records 100000] [--runs 3]

The records of every capture in tests/data/pcaps (smtp, files, anomaly),
repeated to ``--records``, written to a temporary folder by:

* ``native``: ``JsonLinesSink`` (``[sensor] output``, today's records);
* ``zeek tsv``: ``ZeekLogs(format="tsv")`` (smtp.log, files.log, weird.log);
* ``zeek json``: ``ZeekLogs(format="json")``.

Medians of ``--runs`` runs: CPU seconds per run (single-threaded, the files
flushed and closed inside the timing), records per CPU second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def capture_records() -> list[dict]:
    from pathlib import Path

    from sensor.assembly import Userland
    from sensor.config import Config
    from sensor.inputs.replay import replay
    from sensor.records.sinks import ListSink

    sink = ListSink()
    for path in sorted(Path(ROOT, "tests", "data", "pcaps").glob("*.pcap")):
        replay(path, Userland(Config(), sink))
    return list(sink)


def write_native(records, folder) -> None:
    from sensor.records.sinks import JsonLinesSink

    with open(os.path.join(folder, "records.json"), "w", encoding="utf-8") as f:
        sink = JsonLinesSink(f)
        for rec in records:
            sink(rec)


def write_zeek(records, folder, fmt) -> None:
    from sensor.outputs.zeek import ZeekLogs

    with ZeekLogs(folder, format=fmt) as zeek:
        for rec in records:
            zeek(rec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    base = capture_records()
    records = (base * (args.records // len(base) + 1))[:args.records]
    kinds = {"native": write_native,
             "zeek tsv": lambda r, d: write_zeek(r, d, "tsv"),
             "zeek json": lambda r, d: write_zeek(r, d, "json")}
    print(f"{len(records)} records ({len(base)} distinct, from the shipped captures), "
          f"median of {args.runs} runs")
    print(f"{'writer':<10} {'CPU s':>7} {'records/s':>10}")
    for name, write in kinds.items():
        times = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as folder:
                t = time.process_time()
                write(records, folder)
                times.append(time.process_time() - t)
        med = statistics.median(times)
        print(f"{name:<10} {med:7.2f} {len(records) / med:10.0f}")


if __name__ == "__main__":
    main()
