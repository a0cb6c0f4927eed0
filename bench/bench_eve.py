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

import os
import sys

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
    from bench_zeek_logs import compare

    compare(__doc__, {"native": through_output("native"), "eve": through_output("eve"),
                      "eve_record": convert_only})


if __name__ == "__main__":
    main()
