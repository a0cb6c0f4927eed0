#!/usr/bin/env python3
"""Benchmark: what finding SMTP by content and reading a corrupt capture cost a replay.

    python bench/bench_by_content.py [--size-mb 50] [--runs 3]

On bench/gen_capture.py's capture (every flow on 25 or 587):

* ``ports``: replay through ``Userland(by_content=False)`` (``replay --ports-only``,
  the live sensor's view);
* ``content``: ``Userland(by_content=True)`` (``smtp-sensor replay``): every
  packet also pays the check that its ports are not SMTP ports;
* ``content, mixed``: the same capture with every second TCP flow moved to a
  port that is not an SMTP port (2525..2588, as by a relay on another port):
  those flows go through the second reassembler and the probe, then the
  dissector (the records must be the same number);
* ``lenient scan``: the reader's resynchronisation after a corrupt record
  header, byte by byte over a region of garbage (MB/s of garbage skipped).

Medians of ``--runs`` runs, CPU seconds per run (single-threaded), MB/s of
SMTP payload per CPU second.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def replay_once(path, by_content: bool):
    from sensor.assembly import Userland
    from sensor.config import Config
    from sensor.inputs.replay import replay

    n = [0]

    def sink(record):
        n[0] += 1

    t0 = cpu()
    result = replay(path, Userland(Config(), sink, by_content=by_content))
    return cpu() - t0, result.counters, n[0]


def move_ports(src, dst, ports=(25, 587)):
    """Copy a little-endian Ethernet pcap, every second flow's SMTP port moved
    to 2525 + (client port % 64), its TCP checksum updated (RFC 1624)."""
    data = bytearray(open(src, "rb").read())
    pos, flows = 24, {}
    while pos + 16 <= len(data):
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        f = pos + 16
        eth = 14
        etype = struct.unpack_from("!H", data, f + 12)[0]
        if etype == 0x8100:
            eth, etype = 18, struct.unpack_from("!H", data, f + 16)[0]
        ip = f + eth
        if etype == 0x0800 and data[ip + 9] == 6:
            tcp = ip + (data[ip] & 0x0F) * 4
            hosts = frozenset((bytes(data[ip + 12:ip + 16]), bytes(data[ip + 16:ip + 20])))
        elif etype == 0x86DD and data[ip + 6] == 6:
            tcp = ip + 40
            hosts = frozenset((bytes(data[ip + 8:ip + 24]), bytes(data[ip + 24:ip + 40])))
        else:
            pos = f + incl
            continue
        sport, dport = struct.unpack_from("!HH", data, tcp)
        client = sport if dport in ports else dport
        key = (hosts, client)
        if key not in flows:
            flows[key] = len(flows) % 2 == 1
        if flows[key]:
            at = tcp + 2 if dport in ports else tcp
            old = struct.unpack_from("!H", data, at)[0]
            new = 2525 + client % 64
            struct.pack_into("!H", data, at, new)
            # RFC 1624: the checksum updated for the one 16-bit word changed
            csum = struct.unpack_from("!H", data, tcp + 16)[0]
            total = (~csum & 0xFFFF) + (~old & 0xFFFF) + new
            total = (total & 0xFFFF) + (total >> 16)
            total = (total & 0xFFFF) + (total >> 16)
            struct.pack_into("!H", data, tcp + 16, ~total & 0xFFFF)
        pos = f + incl
    open(dst, "wb").write(bytes(data))


def scan_once(mb: float) -> float:
    from sensor.inputs.pcapfile import CaptureReader
    hdr = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    rec = struct.pack("<IIII", 1_700_000_000, 0, 60, 60) + b"\0" * 60
    garbage = b"\xff" * int(mb * 1e6)          # no plausible header anywhere in it
    data = hdr + rec + struct.pack("<IIII", 1_700_000_000, 0, 0x7FFFFFFF, 60) + garbage + rec
    with tempfile.NamedTemporaryFile(suffix=".pcap") as f:
        f.write(data)
        f.flush()
        t0 = cpu()
        r = CaptureReader(f.name, strict=False)
        packets = list(r)
        dt = cpu() - t0
    assert len(packets) == 2 and r.skipped == 1, (len(packets), r.warnings)
    return dt


def child(args) -> None:
    if args.child == "scan":
        print(scan_once(args.scan_mb))
        return
    dt, counters, records = replay_once(args.capture, args.child == "content")
    print(f"{dt} {counters['payload_bytes']} {counters['transactions']} {records} "
          f"{sum(counters['by_content'].values())}")


def run_child(*argv) -> list[float]:
    out = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True, text=True)
    return [float(x) for x in out.stdout.split()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=float, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scan-mb", type=float, default=2.0)
    ap.add_argument("--child", choices=("ports", "content", "scan"), help=argparse.SUPPRESS)
    ap.add_argument("--capture", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    tmp = tempfile.mkdtemp(prefix="bench-by-content-")
    cap = os.path.join(tmp, "smtp.pcap")
    mixed = os.path.join(tmp, "mixed.pcap")
    subprocess.run([sys.executable, os.path.join(HERE, "gen_capture.py"), "--size-mb", str(args.size_mb),
                    "--seed", str(args.seed), "-o", cap], check=True, capture_output=True)
    move_ports(cap, mixed)
    rows = []
    for label, mode, path in (("ports", "ports", cap), ("content", "content", cap),
                              ("content, mixed", "content", mixed), ("ports, mixed", "ports", mixed)):
        runs = [run_child("--child", mode, "--capture", path) for _ in range(args.runs)]
        dt = statistics.median(r[0] for r in runs)
        payload, txns, records, found = runs[0][1:]
        rows.append((label, dt, payload / 1e6 / dt, int(txns), int(records), int(found)))
    print(f"capture: {args.size_mb:g} MB from gen_capture.py --seed {args.seed}; medians of {args.runs} runs")
    print(f"{'replay':<16} {'CPU s':>7} {'MB/s':>7} {'txns':>7} {'records':>8} {'by content':>10}")
    for label, dt, rate, txns, records, found in rows:
        print(f"{label:<16} {dt:7.2f} {rate:7.1f} {txns:7d} {records:8d} {found:10d}")
    scans = [run_child("--child", "scan", "--scan-mb", str(args.scan_mb))[0] for _ in range(args.runs)]
    dt = statistics.median(scans)
    print(f"lenient scan over {args.scan_mb:g} MB of garbage: {dt:.2f} CPU s ({args.scan_mb / dt:.2f} MB/s)")
    for p in (cap, cap + ".json", mixed):
        if os.path.exists(p):
            os.unlink(p)
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
