#!/usr/bin/env python3
"""What the verifier spent on each kernel program (root, bcc): instructions
processed to accept it (struct bpf_prog_info.verified_insns, Linux 5.16+;
the limit is 1 000 000) and the size of the translated program (instructions),
for each number of workers (-DSS_WORKERS) asked; a program the kernel refuses
is reported as such, the others still loaded.

    .venv/bin/python bench/bench_verifier.py [--json] [--workers 1,2,4]

Runs with only bcc and the sensor's tree (no venv needed: python3 works on a
host that has python3-bpfcc). Compile-time numbers, not a speed: nothing here
asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sensor.kernel import bpfsys  # noqa: E402
from sensor.kernel.datapath import PROGRAMS, Datapath, DatapathConfig, ensure_bpffs, import_bcc  # noqa: E402

LIMIT = 1_000_000


def worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    return counts


@contextlib.contextmanager
def quiet_stderr(verbose: bool):
    """bcc prints a refused program's whole verifier log to fd 2: keep it off unless asked."""
    if verbose:
        yield
        return
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def verify(workers: int, verbose: bool) -> dict[str, dict]:
    """{program: {"insns": n, "size": n} or {"refused": why}} for one build."""
    bcc = import_bcc()
    ensure_bpffs()
    with tempfile.TemporaryDirectory(dir="/sys/fs/bpf", prefix="ss-bench-verifier-") as pins:
        dp = Datapath(DatapathConfig(pin_dir=Path(pins) / "v1", workers=workers))
        dp.config.pin_dir.mkdir()
        bpf = bcc.BPF(text=dp.source().encode(), cflags=dp.cflags())
        out = {}
        try:
            for name, kind in PROGRAMS:
                try:
                    with quiet_stderr(verbose):
                        fn = bpf.load_func(name.encode(), getattr(bcc.BPF, kind))
                except Exception as exc:  # bcc raises bare Exception
                    out[name] = {"refused": str(exc)}
                    continue
                insns, size = bpfsys.verified_insns(fn.fd)
                out[name] = {"insns": insns, "size": size}
        finally:
            bpf.cleanup()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    ap.add_argument("--workers", type=worker_counts, default=[1],
                    help="event rings (-DSS_WORKERS), comma-separated: one build each")
    ap.add_argument("--verbose", action="store_true", help="let bcc print a refused program's verifier log")
    args = ap.parse_args()
    results = {str(n): verify(n, args.verbose) for n in args.workers}
    if args.json:
        print(json.dumps({"kernel": os.uname().release, "workers": results}))
        return
    print(f"kernel {os.uname().release}")
    for workers, progs in results.items():
        for name, r in progs.items():
            if "refused" in r:
                print(f"workers {workers}  {name:16} refused ({r['refused']})")
            else:
                print(f"workers {workers}  {name:16} {r['insns']:>9} instructions processed "
                      f"({r['insns'] / LIMIT:.1%} of the verifier's 1M), {r['size']} translated")


if __name__ == "__main__":
    main()
