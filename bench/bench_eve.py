#!/usr/bin/env python3
"""Benchmark: what the EVE output costs, against the native output, both
through ``[[output]]`` (``sensor.outputs``: a file destination, each line
flushed as written).

    python bench/bench_eve.py [--records 100000] [--runs 3]

The records of every capture in tests/data/pcaps (the same as
bench_zeek_logs.py), repeated to ``--records``, written to a temporary file
by ``native`` and by ``eve``; and ``eve_record`` alone (the conversion, no
JSON, no file).  Medians of ``--runs`` runs: CPU seconds per run (one
thread), records per CPU second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)


def through_output(kind: str):
    def write(records, folder) -> None:
        from sensor.config import OutputConfig
        from sensor.outputs import build_output

        output = build_output(OutputConfig(type=kind, path=os.path.join(folder, "out.json")))
        for rec in records:
            output.write(rec)
        output.close()
    return write


def convert_only(records, folder) -> None:
    from sensor.outputs.eve import eve_record

    for rec in records:
        eve_record(rec)


def main() -> None:
    from bench_zeek_logs import capture_records

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    base = capture_records()
    records = (base * (args.records // len(base) + 1))[:args.records]
    kinds = {"native": through_output("native"), "eve": through_output("eve"), "eve_record": convert_only}
    print(f"{len(records)} records ({len(base)} distinct, from the shipped captures), median of {args.runs} runs")
    print(f"{'output':<11} {'CPU s':>7} {'records/s':>10}")
    for name, write in kinds.items():
        times = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as folder:
                t = time.process_time()
                write(records, folder)
                times.append(time.process_time() - t)
        med = statistics.median(times)
        print(f"{name:<11} {med:7.2f} {len(records) / med:10.0f}")


if __name__ == "__main__":
    main()
