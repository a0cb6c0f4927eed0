"""The whole benchmark suite in one command, one table at the end (issue 7):

    sudo .venv/bin/python bench/run_all.py [--quick] [--runs 3] [--only xdp,consumer,...] [--json FILE]

Stages (each also runs alone, see its script):

  xdp       XDP ns/packet by BPF_PROG_TEST_RUN per path, next to an empty
            program (bench_datapath.testrun_table, --runs times, medians), and
            what the pieces cost (xdp_profile.py)
  consumer  1.4 KB events from a client namespace (pktsend.c) through XDP
            into the event ring, one Python thread consuming: the highest rate
            with zero loss (bench_datapath.consume_at, flat out and paced)
  replay    bench_replay.py on a generated 200 MB capture (its CLI; MB/s per
            CPU second and tshark's time over ours by CPU)
  sessions  SMTP sessions against aiosmtpd with the sensor following them
            (bench_sessions.py): the highest rate with zero lost events
  enforce   bench_enforce.py: verdict -> kernel map (flow.drop()) p50/p99,
            packet -> map written, what passed after the verdict
  hold      bench_hold.py: the commit hold on (with and without injecting
            released frames) vs off, on an MTA host: banned pipelined messages
            accepted, delivery latency p50/p99 and throughput of legitimate
            mail
  drop      bench_drop.py: a SYN flood from a banned source, XDP ban vs an
            nftables rule: receiver CPU per dropped packet, ratio
  memory    bench_memory.py: userland RSS per open flow (100 k flows), the
            kernel maps' memory

Benchmarks, not tests: nothing here asserts; "met?" only compares with the
goals of issue 7. The machine is shared: stages that are noisy run --runs
times and report the median. Root, bcc, the lab's tools (./run setup).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

STAGES = ("xdp", "consumer", "replay", "sessions", "enforce", "hold", "drop", "memory")


class Table:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, stage: str, metric: str, value, goal: str = "", met: bool | None = None, unit: str = ""):
        self.rows.append({"stage": stage, "metric": metric, "value": value, "unit": unit, "goal": goal,
                          "met": met})

    def render(self) -> str:
        def fmt(v):
            if isinstance(v, float):
                return f"{v:,.1f}" if abs(v) < 100 else f"{v:,.0f}"
            if isinstance(v, int):
                return f"{v:,}"
            return str(v)
        lines = ["| stage | metric | value | goal | met? |", "|---|---|---:|---|---|"]
        for r in self.rows:
            met = {True: "yes", False: "**no**", None: ""}[r["met"]]
            value = fmt(r["value"]) + (f" {r['unit']}" if r["unit"] else "")
            lines.append(f"| {r['stage']} | {r['metric']} | {value} | {r['goal']} | {met} |")
        return "\n".join(lines)


def median(values):
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------- stages

def stage_xdp(table: Table, args, report: dict) -> None:
    import bcc

    import bench_datapath
    import xdp_profile
    from sensor.kernel import abi
    from sensor.kernel.datapath import Datapath, DatapathConfig

    runs = {}
    pin_root = Path(tempfile.mkdtemp(prefix="ss-bench-all-", dir="/sys/fs/bpf"))
    try:
        empty = bcc.BPF(text=b"int empty(struct xdp_md *ctx) { return XDP_PASS; }")
        empty_fd = empty.load_func(b"empty", bcc.BPF.XDP).fd
        with Datapath(DatapathConfig(pin_dir=pin_root / f"v{abi.ABI_VERSION}")) as dp:
            for _ in range(args.runs):
                for name, value in bench_datapath.testrun_table(dp, empty_fd).items():
                    runs.setdefault(name, []).append(value)
        empty.cleanup()
    finally:
        import shutil
        shutil.rmtree(pin_root, ignore_errors=True)
    med = {name: median(v) for name, v in runs.items()}
    report["xdp"] = {"runs": runs, "median": med}
    floor = med["empty XDP program (floor)"]
    table.add("1 XDP", "empty program (test-run floor)", floor, unit="ns")
    rows = [("not SMTP (TCP port 80)", "not SMTP", 35), ("SMTP pushed, 64 B payload", "SMTP pushed, 64 B", None),
            ("SMTP pushed, 1.4 KB payload", "SMTP pushed, 1.4 KB", 400),
            ("SMTP pushed, IPv6 + VLAN, 1.4 KB", "SMTP pushed, IPv6 + VLAN, 1.4 KB", None),
            ("banned source (/24), dropped", "banned source, dropped", 65), ("dropped flow", "dropped flow", None)]
    for key, label, goal in rows:
        value = med[key]
        table.add("1 XDP", f"{label} ({value - floor:.0f} above floor)", value, f"≤ {goal} ns" if goal else "",
                  value <= goal if goal else None, unit="ns")
    pieces = xdp_profile.measure(rounds=max(3, args.runs))
    report["xdp"]["pieces"] = pieces
    p_floor = pieces["empty program (the floor)"]
    for key, label in (("parse Ethernet/IPv4/TCP", "piece: parse Ethernet/IPv4/TCP"),
                       ("LPM trie lookup, hit (/24)", "piece: LPM ban lookup"),
                       ("LRU hash lookup (flow key), miss", "piece: LRU flow lookup (miss)"),
                       ("bpf_ktime_get_ns()", "piece: bpf_ktime_get_ns()"),
                       ("perf_event_output, 8 B", "piece: bpf_perf_event_output of 8 B (the old push)"),
                       ("ring reserve + submit, 80 B", "piece: ring record of 80 B (the push now)"),
                       ("ring reserve + submit, 80 B, forced wakeup", "piece: ring record + wakeup of the reader"),
                       ("ring reserve 2 KB + xdp_load_bytes 1454 B + submit", "piece: ring record with 1.4 KB")):
        table.add("1 XDP", label + " (above floor)", pieces[key] - p_floor, unit="ns")


def stage_consumer(table: Table, args, report: dict) -> None:
    import bench_datapath
    from bench_drop import build_pktsend
    from sensor.kernel import abi
    from sensor.kernel.datapath import Datapath, DatapathConfig
    from sensor.lab.network import Lab

    pktsend = build_pktsend(Path(tempfile.mkdtemp(prefix="ss-bench-all-")))
    pin_root = Path(tempfile.mkdtemp(prefix="ss-bench-all-", dir="/sys/fs/bpf"))
    rates = [0] * args.runs + ([] if args.quick else [200_000, 300_000])
    rows = []
    try:
        with Lab() as lab:
            for rate in rates:
                with Datapath(DatapathConfig(pin_dir=pin_root / f"v{abi.ABI_VERSION}")) as dp:
                    dp.attach(lab.server_if, netns=lab.server_ns)
                    rows.append(bench_datapath.consume_at(dp, lab, rate, 3.0 if not args.quick else 2.0,
                                                          wakeup=64, pktsend=pktsend))
    finally:
        import shutil
        shutil.rmtree(pin_root, ignore_errors=True)
    report["consumer"] = rows
    clean = [r["achieved_rate"] for r in rows if r["lost"] == 0]
    best = max(clean, default=0)
    flat = [r for r in rows if r["target_rate"] == 0]
    table.add("2 kernel→Python", "1.4 KB events/s consumed with zero loss (highest)", best,
              "≥ 300 k/s (stretch 500 k)", best >= 300_000, unit="/s")
    table.add("2 kernel→Python", "offered by the sender, flat out (median)",
              median([r["offered_rate"] for r in flat]), unit="/s")
    lost = sum(r["lost"] for r in rows)
    table.add("2 kernel→Python", "events lost over all runs", lost)
    cpu_per = median([r["consumer_cpu_s"] / max(1, r["received"]) * 1e6 for r in rows])
    table.add("2 kernel→Python", "consumer CPU per event (→ events/s one core takes)",
              f"{cpu_per:.2f} µs (→ {1e6 / cpu_per:,.0f}/s)")


def stage_replay(table: Table, args, report: dict) -> None:
    size = 50 if args.quick else 200
    argv = [sys.executable, str(BENCH / "bench_replay.py"), "--size-mb", str(size), "--runs", str(args.runs),
            "--json-runs", "0", "--tshark-runs", "1"]
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    report["replay"] = {"argv": argv[1:], "stdout": out}
    ours = theirs = None
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| smtp-sensor replay, records to a counting sink"):
            ours = cells
        elif line.startswith("| tshark"):
            theirs = cells
    if ours is None:
        table.add("3 replay", "bench_replay.py failed", out[-200:] or "no output")
        return
    # | what | runs | wall s | CPU s | MB/s (wall) | MB/s per CPU s | tx/s | peak RSS MiB | tshark/ours wall | CPU |
    mb_cpu = float(ours[5])
    table.add("3 replay", f"SMTP payload MB/s per CPU second ({size} MB capture)", mb_cpu, "≥ 250 MB/s per core",
              mb_cpu >= 250, unit="MB/s")
    table.add("3 replay", "transactions/s (wall)", ours[6].replace(",", " "))
    table.add("3 replay", "peak RSS", float(ours[7]), unit="MiB")
    if "checks against the generator's sidecar: FAILED" in out:
        table.add("3 replay", "replay checks against the capture's sidecar", "FAILED", "OK", False)
    if theirs is not None and ours[9] != "-":
        ratio = float(ours[9].rstrip("x"))
        table.add("3 replay", "tshark CPU time / ours", ratio, "≥ 20×", ratio >= 20, unit="×")
        table.add("3 replay", "tshark MB/s per CPU second", float(theirs[5]), unit="MB/s")


def stage_sessions(table: Table, args, report: dict) -> None:
    import bench_sessions

    res = bench_sessions.run("aiosmtpd", (4, 16) if args.quick else (1, 4, 16, 32), 3.0 if args.quick else 4.0)
    report["sessions"] = res
    table.add("4 end to end", "SMTP sessions/s with zero lost events (aiosmtpd, rules on)",
              res["best_sessions_per_s"], unit="/s")
    if res["sensor_cpu_us_per_session"]:
        us = res["sensor_cpu_us_per_session"]
        table.add("4 end to end", "sensor CPU per session (→ sessions/s one core follows)",
                  f"{us / 1000:.2f} ms (→ {1e6 / us:,.0f}/s)")


def stage_enforce(table: Table, args, report: dict) -> None:
    argv = [sys.executable, str(BENCH / "bench_enforce.py"), "--json", "--flows", "2000" if args.quick else "5000",
            "--sessions", "200" if args.quick else "500", "--wakeups", "1"]
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    try:
        res = json.loads(out)
    except ValueError:
        table.add("4 end to end", "bench_enforce.py failed", out[-200:] or "no output")
        return
    report["enforce"] = res
    syn = res.get("synthetic")
    if syn:
        w = syn["map_write"]
        table.add("4 end to end", "verdict → kernel map, synthetic flows (p50 / p99)",
                  f"{w['p50_us']:.0f} / {w['p99_us']:.0f} µs", "p99 ≤ 1 ms", w["p99_us"] <= 1000)
    for run in res.get("live", []):
        w, e = run["map_write"], run["event_to_map"]
        table.add("4 end to end", "verdict → kernel map, live, 20 sessions at a time (p50 / p99)",
                  f"{w['p50_us']:.0f} / {w['p99_us']:.0f} µs", "p99 ≤ 1 ms", w["p99_us"] <= 1000)
        table.add("4 end to end", "MAIL packet's kernel timestamp → drop in place (p50 / p99)",
                  f"{e['p50_us']:.0f} / {e['p99_us'] / 1000:.1f} ms" if e["p99_us"] >= 1000
                  else f"{e['p50_us']:.0f} / {e['p99_us']:.0f} µs")
        g = run["gated_per_flow"]
        table.add("4 end to end", "packets after the verdict: ring stragglers per flow (mean / p99)",
                  f"{g['mean']} / {g['p99']}")
        table.add("4 end to end", "packets after the verdict: dropped in XDP + TC per flow (mean)",
                  round(run["kernel_dropped_per_flow_ingress"]["mean"] + run["kernel_dropped_per_flow_egress"]["mean"],
                        1))
        table.add("4 end to end", "pipelined 32 KB messages accepted despite the drop",
                  f"{run['server_accepted']} of {run['sessions']}")
        table.add("4 end to end", "events lost (enforce run)", run["lost"])


def stage_hold(table: Table, args, report: dict) -> None:
    n = "100" if args.quick else "300"
    argv = [sys.executable, str(BENCH / "bench_hold.py"), "--json", "--layouts", "host", "--sessions", n,
            "--throughput-sessions", "200" if args.quick else "600"]
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    try:
        res = json.loads(out)
    except ValueError:
        table.add("4 hold", "bench_hold.py failed", out[-200:] or "no output")
        return
    report["hold"] = res
    runs = {(r["case"], r["mode"], r["size"], r["hold"], r["inject"]): r for r in res["runs"]}
    for (case, mode, size, hold, _inject), off in runs.items():
        if hold:
            continue
        on, plain = runs.get((case, mode, size, True, True)), runs.get((case, mode, size, True, False))
        if on is None or plain is None:
            continue
        what = f"{mode}, {size // 1024} KB"
        if case == "banned":
            table.add("4 hold", f"banned sender pipelining {size // 1024} KB: accepted, hold on / off",
                      f"{on['server_accepted']} / {off['server_accepted']} of {off['sessions']}", "0 with the hold",
                      on["server_accepted"] == 0)
        elif case == "latency":
            table.add("4 hold", f"{what}: delivery latency p50 / p99, hold on (no inject; off)",
                      " ".join([f"{on['latency']['p50_ms']:.1f} / {on['latency']['p99_ms']:.1f} ms",
                                f"({plain['latency']['p50_ms']:.0f} / {plain['latency']['p99_ms']:.0f};",
                                f"{off['latency']['p50_ms']:.1f} / {off['latency']['p99_ms']:.1f})"]))
        else:
            table.add("4 hold", f"{what}: messages/s at {off['concurrency']} at a time, hold on (no inject; off)",
                      f"{on['delivered_per_s']:.0f} ({plain['delivered_per_s']:.0f}; {off['delivered_per_s']:.0f})")


def stage_drop(table: Table, args, report: dict) -> None:
    import bench_drop

    runs = [bench_drop.run(3.0 if args.quick else 4.0) for _ in range(args.runs)]
    report["drop"] = runs
    for mode in ("xdp", "xdp drop-all", "nft input", "nft ingress"):
        ns = median([r[mode]["receiver_ns_per_packet"] for r in runs if mode in r])
        rate = median([r[mode]["drop_rate"] for r in runs if mode in r])
        table.add("5 drop", f"{mode}: receiver CPU per dropped packet (drops/s)", f"{ns:,.0f} ns ({rate:,.0f}/s)")
    ratio = median([r["nft input"]["ratio_cpu_vs_xdp"] for r in runs])
    table.add("5 drop", "nftables input rule / XDP ban, CPU per dropped packet", ratio, "≥ 3×", ratio >= 3, unit="×")
    ratio = median([r["nft ingress"]["ratio_cpu_vs_xdp"] for r in runs])
    table.add("5 drop", "nftables netdev ingress rule / XDP ban", ratio, unit="×")


def stage_memory(table: Table, args, report: dict) -> None:
    import bench_memory

    flows = 20_000 if args.quick else 100_000
    user = bench_memory.userland(flows, trace=False)
    maps = bench_memory.kernel_maps()
    report["memory"] = {"userland": user, "kernel_maps": maps}
    per = user["bytes_per_flow"]
    table.add("6 memory", f"userland RSS per open flow ({flows:,} flows after EHLO)", per, "≤ 2 KB", per <= 2048,
              unit="B")
    total = sum(m["memlock"] or 0 for m in maps)
    table.add("6 memory", "kernel maps memlock (all maps)", round(total / 2**20, 1), unit="MiB")
    for m in maps:
        if m["map"] in ("ss_events", "ss_flow_drop", "ss_bypass", "ss_ban_v4", "ss_ban_v6"):
            mem = f"{m['memlock'] / 2**20:.1f} MiB memlock" if m["memlock"] else "allocated per entry"
            size = ("ring" if m["type"] == "ringbuf" else f"{m['max_entries']:,} × ({m['key']}+{m['value']}) B")
            table.add("6 memory", f"{m['map']} ({m['type']}, {size})", mem)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs, smaller capture (a smoke run)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions of the noisy stages (medians)")
    parser.add_argument("--only", default=",".join(STAGES), help=f"stages to run, of {','.join(STAGES)}")
    parser.add_argument("--json", metavar="FILE", help="also write everything measured to FILE")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run_all: needs root (BPF, namespaces)", file=sys.stderr)
        return 2
    from sensor.service import log as sensor_log
    sensor_log.configure("warning", json=False, stream=sys.stderr)
    stages = [s for s in args.only.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}")
    table, report = Table(), {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:],
                              "kernel": os.uname().release, "cpus": os.cpu_count()}
    for stage in STAGES:
        if stage not in stages:
            continue
        t0 = time.monotonic()
        print(f"[{time.strftime('%H:%M:%S')}] {stage} ...", file=sys.stderr, flush=True)
        try:
            globals()[f"stage_{stage}"](table, args, report)
        except Exception as exc:  # noqa: BLE001 - one broken stage should not hide the others
            table.add(stage, "stage failed", f"{type(exc).__name__}: {exc}"[:160])
        report.setdefault("seconds", {})[stage] = round(time.monotonic() - t0, 1)
    print(f"\nsmtp-sensor benchmarks, {report['started']}, kernel {report['kernel']}, {report['cpus']} CPUs "
          f"(medians of {args.runs} runs where noisy)\n")
    print(table.render())
    report["table"] = table.rows
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
