#!/usr/bin/env python3
"""Benchmark: the compiled per-packet modules against their pure-Python source, layer by layer.

    python bench/bench_compiled.py [--size-mb 200] [--seed 1] [--runs 5] [--layers read,decode,reassembly,replay-nomime,replay]

The capture is bench/gen_capture.py's (made or reused as bench_replay.py does).
Each layer runs in a fresh process, once with the compiled modules and once with
``SMTP_SENSOR_PURE=1``, the two alternating so that a change in the shared
machine's load falls on both alike.  Each child reports the CPU time
(``time.process_time``) of its loop alone, imports and start-up excluded:

* ``read``: the pcap records (``CaptureReader``);
* ``decode``: and each frame decoded (``packet.decode``);
* ``reassembly``: and each segment fed to a ``Reassembler`` (its events dropped);
* ``replay-nomime``: the whole replay (``sensor.inputs.replay.replay``
  through ``Userland``, reject statistics off, records to bench_replay's
  counting sink, checked against the generator's sidecar) with ``[mime]
  enabled = false``: the SMTP dissection bench_replay's first table measured;
* ``replay``: the same with MIME on (the default: every entity decoded and hashed).

Prints, per layer, the median and the fastest CPU seconds of each build, SMTP
payload MB per CPU second (TCP payload of the SMTP flows, from the sidecar) and
the speed-up.  A child whose modules are not what was asked for (not built, or
stale) makes the benchmark fail rather than print a false comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

LAYERS = ("read", "decode", "reassembly", "replay-nomime", "replay")


def child(layer: str, path: str) -> dict:
    from sensor import compiled
    from sensor.inputs.pcapfile import CaptureReader
    from sensor.stream import packet, reassembly
    from sensor.inputs import replay as replay_mod
    from bench_replay import CountingSink
    from sensor.assembly import Userland
    from sensor.config import Config, MimeConfig, SpamStatsConfig
    out: dict = {}
    t = time.process_time()
    if layer.startswith("replay"):
        sink = CountingSink()
        config = Config(spam_stats=SpamStatsConfig(enabled=False), mime=MimeConfig(enabled=layer == "replay"))
        res = replay_mod.replay(path, Userland(config, sink))
        out.update(counters=res.counters, sink=vars(sink))
    else:
        reader = CaptureReader(path)
        decode = packet.decode
        reasons: dict = {}
        feed = reassembly.Reassembler(reassembly.DEFAULT_PORTS).feed if layer == "reassembly" else None
        n = 0
        for ts, linktype, frame, wirelen in reader:
            n += 1
            if layer == "read":
                continue
            seg = decode(linktype, frame, wirelen, reasons)
            if feed is not None and seg is not None:
                feed(seg, ts)
        reader.close()
        out["packets"] = n
    out["cpu"] = time.process_time() - t
    out["status"] = compiled.status()
    return out


def run_child(me: list[str], layer: str, pure: bool) -> dict:
    env = dict(os.environ)
    env.pop("SMTP_SENSOR_PURE", None)
    if pure:
        env["SMTP_SENSOR_PURE"] = "1"
    done = subprocess.run(me + ["--child", layer], env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"child {layer} (pure={pure}) failed:\n{done.stderr[-3000:]}")
    res = json.loads(done.stdout)
    want = "pure: SMTP_SENSOR_PURE is set" if pure else "compiled"
    wrong = {name: how for name, how in res["status"].items() if how != want}
    if wrong:
        raise SystemExit(f"child {layer} (pure={pure}): modules not as asked: {wrong}")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capture", help="capture path (default /tmp/smtp-bench-<size>mb-s<seed>.pcap)")
    ap.add_argument("--size-mb", type=float, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5, help="runs of each layer and build")
    ap.add_argument("--layers", default=",".join(LAYERS), help=f"comma-separated, of {', '.join(LAYERS)}")
    ap.add_argument("--child", choices=LAYERS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    path = args.capture or f"/tmp/smtp-bench-{args.size_mb:g}mb-s{args.seed}.pcap"
    if args.child:
        print(json.dumps(child(args.child, path)))
        return 0

    from bench_replay import check, ensure_capture
    info = ensure_capture(path, args.size_mb, args.seed, False)
    ex = info["expect"]
    payload = ex["payload_bytes"]
    print(f"capture: {path}: {info['file_bytes'] / 1e6:.1f} MB, {ex['packets']} packets, "
          f"{payload / 1e6:.1f} MB TCP payload (python {sys.version.split()[0]})")
    me = [sys.executable, os.path.abspath(__file__), "--capture", path]
    layers = [name for name in args.layers.split(",") if name]
    cpus = {(layer, pure): [] for layer in layers for pure in (False, True)}
    ok = True
    for i in range(args.runs):
        for layer in layers:
            for pure in ((False, True) if i % 2 == 0 else (True, False)):
                res = run_child(me, layer, pure)
                if layer.startswith("replay"):
                    ok &= check(ex, res)
                elif res["packets"] != ex["packets"]:
                    print(f"MISMATCH packets: {res['packets']} for {ex['packets']}", file=sys.stderr)
                    ok = False
                cpus[(layer, pure)].append(res["cpu"])
                print(f"  {layer:<10} {'pure' if pure else 'compiled':<8} {res['cpu']:.3f} s CPU",
                      file=sys.stderr)
    print()
    print("| layer (cumulative) | runs | pure CPU s (median / fastest) | compiled CPU s (median / fastest) "
          "| pure MB/s per CPU s | compiled MB/s per CPU s | speed-up (medians) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for layer in layers:
        p, c = cpus[(layer, True)], cpus[(layer, False)]
        pm, cm = statistics.median(p), statistics.median(c)
        print(f"| {layer} | {len(p)} | {pm:.3f} / {min(p):.3f} | {cm:.3f} / {min(c):.3f} | "
              f"{payload / pm / 1e6:.0f} | {payload / cm / 1e6:.0f} | {pm / cm:.2f}x |")
    print("\nCPU time of each child's loop alone (imports and start-up excluded); "
          "checks against the generator's sidecar: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
