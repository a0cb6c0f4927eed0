#!/usr/bin/env python3
"""What the verifier spent on each kernel program (root, bcc): instructions
processed to accept it (struct bpf_prog_info.verified_insns, Linux 5.16+;
the limit is 1 000 000) and the size of the translated program (instructions).

    .venv/bin/python bench/bench_verifier.py [--json] [--workers N]

Compile-time numbers, not a speed: nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sensor.kernel import bpfsys  # noqa: E402
from sensor.kernel.datapath import Datapath, DatapathConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    ap.add_argument("--workers", type=int, default=1, help="event rings (-DSS_WORKERS): 1 or more")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir="/sys/fs/bpf", prefix="ss-bench-verifier-") as pins:
        dp = Datapath(DatapathConfig(pin_dir=Path(pins) / "v1", workers=args.workers)).load()
        try:
            progs = {"ss_xdp_ingress": dp.xdp_fd, "ss_tc_egress": dp.tc_fd}
            out = {name: bpfsys.verified_insns(fd) for name, fd in progs.items()}
        finally:
            dp.close()
    if args.json:
        print(json.dumps(out))
        return
    for name, (insns, size) in out.items():
        print(f"{name:16} {insns:>9} instructions processed ({insns / 1e6:.1%} of the verifier's 1M), "
              f"{size} translated")


if __name__ == "__main__":
    main()
