#!/usr/bin/env python3
"""Benchmark: offline replay of a large SMTP capture, against tshark on the same file.

    python bench/bench_replay.py [--size-mb 200] [--seed 1] [--runs 5] [--mime both] [--profile]
    python bench/bench_replay.py --workers 1,2 --runs 5     # replay --workers: 1 against 2

Generates the capture with bench/gen_capture.py (or reuses it when its sidecar
JSON matches), then, each in a fresh process so peak RSS and CPU time are its own:

* our replay (``sensor.inputs.replay.replay`` through the sensor's userland,
  ``sensor.assembly.Userland``, without rules or reject statistics: the
  dissection tshark also does) with records going to a counting sink,
  ``--runs`` times;
* the same with records rendered by ``JsonLinesSink`` to /dev/null (the
  ``smtp-sensor replay`` output path), ``--json-runs`` times;
* with ``--mime both`` (the default), the counting-sink replays twice over,
  with the MIME parser on (``[mime] enabled``, the default) and off,
  alternating, to give the MIME work's cost per MB of SMTP payload;
* ``tshark -r CAP -Y smtp -T fields -e smtp.req.command`` (TCP and SMTP
  reassembly on, as by default: the display filter makes tshark dissect every
  frame fully), ``--tshark-runs`` times.

Prints medians: wall time, CPU time, SMTP payload MB/s (TCP payload of SMTP
flows, ``pipeline.counters.payload_bytes``) per wall second and per CPU second
(both are single-threaded: per CPU second is per core, and is what to compare
on a shared machine), transactions/s, peak RSS, and tshark's time over ours.  Checks the replay against what the
generator says the capture holds (transactions, messages, bytes, recipients,
anomalies); tshark's count of MAIL commands is printed beside the expected one
(tshark takes the lines after a pipelined DATA that was refused for message
content, so it misses the MAIL commands that follow).  ``--profile`` adds one
cProfile run and prints its top 25 functions by own time.
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
# --sensor-root DIR: time the sensor package of another checkout (before/after)
if "--sensor-root" in sys.argv[:-1]:
    ROOT = os.path.abspath(sys.argv[sys.argv.index("--sensor-root") + 1])
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)


# ---------------------------------------------------------------- child side

class CountingSink:
    """Counts what the checks need; cheap enough not to matter."""

    def __init__(self):
        self.files = 0
        self.smtp = 0
        self.anomalies: dict[str, int] = {}
        self.messages = 0
        self.message_bytes = 0
        self.delivered = 0
        self.recipients = 0
        self.tls = 0

    def __call__(self, rec):
        if rec["event_type"] == "smtp":
            self.smtp += 1
            if "msg_size" in rec:
                self.messages += 1
                self.message_bytes += rec["msg_size"]
            self.delivered += rec["delivered"]
            self.recipients += len(rec.get("rcptto", ()))
            self.tls += rec["tls"]
        elif rec["event_type"] == "files":
            self.files += 1
        else:
            name = rec["name"]
            self.anomalies[name] = self.anomalies.get(name, 0) + 1


def child(mode: str, path: str, profile: bool, mime: bool = True) -> None:
    from sensor.assembly import Userland
    from sensor.config import Config, MimeConfig, SpamStatsConfig
    from sensor.inputs.replay import replay
    from sensor.records.sinks import JsonLinesSink

    counting = CountingSink()
    devnull = None
    if mode == "json":
        devnull = open(os.devnull, "w", encoding="utf-8")
        jsink = JsonLinesSink(devnull)

        def sink(rec):
            counting(rec)
            jsink(rec)
    else:
        sink = counting
    userland = Userland(Config(spam_stats=SpamStatsConfig(enabled=False),
                               mime=MimeConfig(enabled=mime)), sink)
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    t = time.perf_counter()
    res = replay(path, userland)
    wall = time.perf_counter() - t
    if prof is not None:
        prof.disable()
        import io
        import pstats
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
        sys.stderr.write(buf.getvalue())
    if devnull is not None:
        devnull.close()
    c = res.counters
    print(json.dumps({
        "wall": wall, "packets": res.packets, "payload_bytes": c["payload_bytes"],
        "transactions": c["transactions"], "flows": c["flows"], "counters": c,
        "sink": vars(counting),
    }))


def child_workers(path: str, workers: int) -> None:
    """``smtp-sensor replay --workers N --monitor-only`` as the command runs it:
    records rendered as JSON lines (to /dev/null), MIME on, no statistics."""
    from sensor.assembly import Userland
    from sensor.config import Config, SpamStatsConfig
    from sensor.inputs.replay import replay
    from sensor.inputs.workers import replay_workers
    from sensor.records.sinks import JsonLinesSink

    config = Config(spam_stats=SpamStatsConfig(enabled=False))
    with open(os.devnull, "w", encoding="utf-8") as out:
        t = time.perf_counter()
        cpu0 = time.process_time()
        if workers == 1:
            res = replay(path, Userland(config, JsonLinesSink(out)))
            worker_cpu = [time.process_time() - cpu0]
        else:
            res = replay_workers(path, lambda sink: Userland(config, sink), workers, JsonLinesSink(out))
            worker_cpu = res.worker_cpu
        wall = time.perf_counter() - t
        parent_cpu = time.process_time() - cpu0 if workers > 1 else 0.0
    c = res.counters
    print(json.dumps({"wall": wall, "packets": res.packets, "payload_bytes": c["payload_bytes"],
                      "transactions": c["transactions"], "flows": c["flows"],
                      "worker_cpu": worker_cpu, "parent_cpu": parent_cpu}))


def compare_workers(me, ex, counts, runs):
    """``runs`` replays with each worker count of ``counts``, interleaved (the
    machine is shared: a change in its load falls on every count alike)."""
    walls = {n: [] for n in counts}
    paths = {n: [] for n in counts}      # CPU of the longest worker + the parent's: the wall time on idle cores
    for _ in range(runs):
        for n in counts:
            wall, cpu, _peak, out = run_child(me + ["--child", "workers", "--child-workers", str(n)])
            res = json.loads(out)
            if res["transactions"] != ex["transactions"] or res["payload_bytes"] != ex["payload_bytes"]:
                raise SystemExit(f"MISMATCH with {n} workers: {res}")
            walls[n].append(res["wall"])
            paths[n].append(max(res["worker_cpu"]) + res["parent_cpu"])
            print(f"  {n} worker(s): {res['wall']:.2f} s in replay, {wall:.2f} s process, {cpu:.2f} s CPU; "
                  f"workers' CPU {', '.join(f'{c:.2f}' for c in res['worker_cpu'])} s, "
                  f"parent {res['parent_cpu']:.2f} s", file=sys.stderr)
    mb = ex["payload_bytes"] / 1e6
    base = statistics.median(walls[counts[0]])
    print()
    print("| workers | runs | wall s (min–max) | median | SMTP payload MB/s (range) | speed-up (median; range) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in counts:
        w = walls[n]
        ratios = [a / b for a, b in zip(walls[counts[0]], w)]
        print(f"| {n} | {len(w)} | {min(w):.2f}–{max(w):.2f} | {statistics.median(w):.2f} | "
              f"{mb / max(w):.0f}–{mb / min(w):.0f} | {base / statistics.median(w):.2f}x; "
              f"{min(ratios):.2f}–{max(ratios):.2f}x |")
    print()
    print("| workers | CPU s of the longest worker + parent (min–max) | median | "
          "speed-up by CPU path (median; range) |")
    print("|---:|---:|---:|---:|")
    cbase = statistics.median(paths[counts[0]])
    for n in counts:
        p = paths[n]
        ratios = [a / b for a, b in zip(paths[counts[0]], p)]
        print(f"| {n} | {min(p):.2f}–{max(p):.2f} | {statistics.median(p):.2f} | "
              f"{cbase / statistics.median(p):.2f}x; {min(ratios):.2f}–{max(ratios):.2f}x |")
    print("\nwall time of the replay (records to JSON lines on /dev/null, MIME on, no statistics), "
          "runs interleaved; speed-up range: run i of 1 worker over run i of N.  The CPU path is "
          "what the wall time would be with a free core per worker, at most (the parent's CPU is added as if it came after the workers; it relays their records while they run).")


# --------------------------------------------------------------- parent side

def run_child(argv, capture_out=True):
    """Run argv; return (wall seconds, cpu seconds, peak RSS bytes, stdout)."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE if capture_out else subprocess.DEVNULL,
                         stderr=None)
    out = p.stdout.read() if capture_out else b""
    _pid, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"{argv[0]} failed with status {p.returncode}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024, out


def ensure_capture(path, size_mb, seed, regen):
    import gen_capture
    side = path + ".json"
    if not regen and os.path.exists(path) and os.path.exists(side):
        with open(side) as f:
            info = json.load(f)
        if info.get("size_mb") == size_mb and info.get("seed") == seed and \
                info.get("file_bytes") == os.path.getsize(path):
            return info
    t = time.perf_counter()
    info = gen_capture.generate(path, size_mb, seed)
    print(f"generated {path} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return info


def check(expect, res):
    sink, counters = res["sink"], res["counters"]
    pairs = [
        ("transactions (smtp records)", expect["transactions"], sink["smtp"]),
        ("transactions (counters)", expect["transactions"], counters["transactions"]),
        ("flows", expect["sessions"], counters["flows"]),
        ("messages", expect["messages"], sink["messages"]),
        ("message bytes", expect["message_bytes"], sink["message_bytes"]),
        ("delivered", expect["delivered"], sink["delivered"]),
        ("recipients", expect["recipients"], sink["recipients"]),
        ("tls transactions", expect["starttls"], sink["tls"]),
        ("TCP payload bytes", expect["payload_bytes"], counters["payload_bytes"]),
        ("anomalies", expect["anomalies"], sink["anomalies"]),
        ("gap bytes", 0, counters["gap_bytes"]),
    ]
    bad = [(n, e, g) for n, e, g in pairs if e != g]
    for n, e, g in bad:
        print(f"MISMATCH {n}: expected {e}, replay gave {g}", file=sys.stderr)
    return not bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--capture",
                    help="capture path (default /tmp/smtp-bench-<size>mb-s<seed>.pcap)")
    ap.add_argument("--size-mb", type=float, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--regen", action="store_true", help="regenerate the capture")
    ap.add_argument("--runs", type=int, default=5, help="replays with the counting sink")
    ap.add_argument("--json-runs", type=int, default=1, help="replays through JsonLinesSink")
    ap.add_argument("--tshark-runs", type=int, default=1)
    ap.add_argument("--no-tshark", action="store_true")
    ap.add_argument("--profile", action="store_true", help="one extra run under cProfile")
    ap.add_argument("--sensor-root", metavar="DIR",
                    help="import the sensor package from DIR (another checkout) instead")
    ap.add_argument("--mime", choices=("on", "off", "both"), default="both",
                    help="counting replays with the MIME parser on, off, or both (the cost of MIME)")
    ap.add_argument("--workers", metavar="N,M", help="only compare replays with these worker counts, "
                    "e.g. 1,2 (--runs each, interleaved)")
    ap.add_argument("--child", choices=("counting", "json", "workers"), help=argparse.SUPPRESS)
    ap.add_argument("--child-workers", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--child-mime-off", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    path = args.capture or f"/tmp/smtp-bench-{args.size_mb:g}mb-s{args.seed}.pcap"

    if args.child == "workers":
        child_workers(path, args.child_workers)
        return 0
    if args.child:
        child(args.child, path, args.profile, mime=not args.child_mime_off)
        return 0

    info = ensure_capture(path, args.size_mb, args.seed, args.regen)
    ex = info["expect"]
    print(f"capture: {path}: {info['file_bytes'] / 1e6:.1f} MB, {ex['packets']} packets, "
          f"{ex['sessions']} sessions ({ex['ipv6_sessions']} IPv6), {ex['transactions']} "
          f"transactions, {ex['messages']} messages, {ex['payload_bytes'] / 1e6:.1f} MB TCP "
          f"payload  (python {sys.version.split()[0]})")
    me = [sys.executable, os.path.abspath(__file__), "--capture", path]
    if args.sensor_root:
        me += ["--sensor-root", args.sensor_root]
        print(f"sensor package from {ROOT}")
    if args.workers:
        compare_workers(me, ex, [int(n) for n in args.workers.split(",")], args.runs)
        return 0
    rows = []
    ok = True
    mimes = {"on": (True,), "off": (False,), "both": (True, False)}[args.mime]
    runs_of = [("counting", m, args.runs) for m in mimes] + [("json", True, args.json_runs)]
    samples = {(mode, m): ([], [], [], [], None) for mode, m, runs in runs_of if runs > 0}
    # the MIME on and off runs alternate, so a change in the machine's load
    # falls on both alike
    order = [(mode, m) for i in range(max(args.runs, args.json_runs))
             for mode, m, runs in runs_of if i < runs]
    for mode, m in order:
        walls, cpus, rss, inner, _ = samples[(mode, m)]
        wall, cpu, peak, out = run_child(me + ["--child", mode] + ([] if m else ["--child-mime-off"]))
        res = json.loads(out)
        ok &= check(ex, res)
        if m and not res["sink"]["files"] >= ex["messages"] > 0:
            print(f"MISMATCH files records: {res['sink']['files']} for {ex['messages']} messages",
                  file=sys.stderr)
            ok = False
        walls.append(wall)
        cpus.append(cpu)
        rss.append(peak)
        inner.append(res["wall"])
        samples[(mode, m)] = (walls, cpus, rss, inner, res)
        print(f"  ours ({mode}, MIME {'on' if m else 'off'}): {res['wall']:.2f} s in replay(), "
              f"{wall:.2f} s process, {cpu:.2f} s CPU, {peak / 2**20:.0f} MiB", file=sys.stderr)
    for (mode, m), (walls, cpus, rss, inner, res) in samples.items():
        what = "a counting sink" if mode == "counting" else "JsonLinesSink -> /dev/null"
        rows.append((f"smtp-sensor replay, records to {what}, MIME {'on' if m else 'off'}",
                     len(walls), statistics.median(inner), statistics.median(walls),
                     statistics.median(cpus), statistics.median(rss), res))
    tshark_row = None
    if not args.no_tshark:
        walls, cpus, rss = [], [], []
        argv = ["tshark", "-n", "-r", path, "-Y", "smtp", "-T", "fields", "-e", "smtp.req.command"]
        for _ in range(args.tshark_runs):
            wall, cpu, peak, out = run_child(argv)
            walls.append(wall)
            cpus.append(cpu)
            rss.append(peak)
            mails = sum(f == b"MAIL" for ln in out.split(b"\n") for f in ln.split(b","))
            print(f"  tshark: {wall:.2f} s, {cpu:.2f} s CPU, {peak / 2**20:.0f} MiB, "
                  f"{mails} of {ex['mail_commands']} MAIL commands", file=sys.stderr)
        tshark_row = (statistics.median(walls), statistics.median(cpus), statistics.median(rss))

    payload = ex["payload_bytes"]
    tx = ex["transactions"]
    print()
    print("| what | runs | wall s | CPU s | SMTP payload MB/s (wall) | MB/s per CPU s | "
          "transactions/s | peak RSS MiB | tshark / ours (wall) | tshark / ours (CPU) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, runs, inner, wall, cpu, peak, _res in rows:
        rw = f"{tshark_row[0] / wall:.1f}x" if tshark_row else "-"
        rc = f"{tshark_row[1] / cpu:.1f}x" if tshark_row else "-"
        print(f"| {label} | {runs} | {wall:.2f} | {cpu:.2f} | {payload / wall / 1e6:.1f} | "
              f"{payload / cpu / 1e6:.1f} | {tx / wall:,.0f} | {peak / 2**20:.0f} | {rw} | {rc} |")
    if tshark_row:
        wall, cpu, peak = tshark_row
        print(f"| tshark -Y smtp -T fields -e smtp.req.command | {args.tshark_runs} | "
              f"{wall:.2f} | {cpu:.2f} | {payload / wall / 1e6:.1f} | {payload / cpu / 1e6:.1f} | "
              f"{tx / wall:,.0f} | {peak / 2**20:.0f} | 1.0x | 1.0x |")
    print()
    print("medians; wall and CPU of the whole process (interpreter start, imports, file read, "
          "all records); replay() alone (median wall): "
          f"{', '.join(f'{r[2]:.2f} s' for r in rows)}.")
    if ("counting", True) in samples and ("counting", False) in samples:
        on, off = samples[("counting", True)], samples[("counting", False)]
        cpu_on, cpu_off = statistics.median(on[1]), statistics.median(off[1])
        in_on, in_off = statistics.median(on[3]), statistics.median(off[3])
        mb = payload / 1e6
        print(f"MIME cost (counting sink, medians): CPU {cpu_off:.2f} s off, {cpu_on:.2f} s on: "
              f"{(cpu_on / cpu_off - 1) * 100:+.1f} % ({(cpu_on - cpu_off) / mb * 1e3:.2f} ms per MB "
              f"of SMTP payload); replay() {in_off:.2f} s off, {in_on:.2f} s on: "
              f"{(in_on / in_off - 1) * 100:+.1f} %; {on[4]['sink']['files']} files records.")
    print("checks against the generator's sidecar: " + ("OK" if ok else "FAILED"))
    if tshark_row:
        print(f"tshark reported {mails} of the {ex['mail_commands']} MAIL commands (it reads "
              "the client's lines after a refused pipelined DATA as message content).")

    if args.profile:
        print("\nprofile (one run, counting sink, cProfile; top 25 by own time):", flush=True)
        subprocess.run(me + ["--child", "counting", "--profile"], stdout=subprocess.DEVNULL,
                       check=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
