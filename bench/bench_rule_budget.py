#!/usr/bin/env python3
"""Benchmark: what the rules' budget (sensor.rules.budget) costs and how well it stops rules.

    .venv/bin/python bench/bench_rule_budget.py [--sessions 3000] [--runs 9] [--json]

1. Cost per call: one engine call of a rule doing nothing, with and without
   the budget (best of 7 runs of 100 000); the shipped rules (rules/) on ``--sessions`` synthetic
   sessions (tests/support/sessions.py: EHLO, MAIL, 2 RCPT, DATA with a
   message, QUIT) through the pipeline and the rule engine, with the budget
   (the SIGALRM timer armed and disarmed around every rule call) and without
   (a guard that arms nothing); CPU seconds of the process, best of
   ``--runs`` each, per session and per rule call.  Also the bare timer: one
   ``setitimer`` arm and disarm.
2. How late a call is stopped past its budget (50 ms, the default): a busy
   loop, ``time.sleep``, a catastrophic ``re`` backtrack, a big-integer
   power; p50 / max over ``--stops`` calls each.
3. What cannot be interrupted: C code that never checks for signals, run
   with a 50 ms budget (each bounded so it ends): how long it held the sensor.
4. Memory: a rule allocating 1 MB blocks without end under a 32 MB budget
   (a little work per MB, ~4 MB/ms): MB it got before it was stopped.

Not a test: nothing asserts.  One process, one core.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from sensor.records.sinks import ListSink  # noqa: E402
from sensor.rules import hooks, rule  # noqa: E402
from sensor.rules.budget import GUARD, RuleLimits, data_bytes  # noqa: E402
from sensor.rules.engine import RuleEngine  # noqa: E402
from sensor.rules.enforce import ReplayEnforcer  # noqa: E402
from sensor.rules.loader import RuleSet  # noqa: E402
from support.rules_helpers import DIALOGUE, StaticRules  # noqa: E402
from support.sessions import session_segments  # noqa: E402


class NoGuard:
    """The engine's guard, arming nothing: the cost of the calls without a budget."""

    critical = 0
    paused = 0.0

    def arm(self, seconds, memory_pages=0):
        return 0

    def disarm(self, call):
        pass

    def enforced(self):
        return None

    def release(self):
        pass


class Sink(list):
    def __call__(self, record):
        pass


def sessions_cpu(n: int, guard) -> tuple[float, int]:
    """CPU seconds to run ``n`` sessions through pipeline + shipped rules, and the rule calls made."""
    from sensor.pipeline import Pipeline

    ruleset = RuleSet(REPO / "rules")
    engine = RuleEngine(ruleset, Sink(), ReplayEnforcer(), guard=guard)
    pipe = Pipeline(Sink(), listeners=[engine])
    batches = [session_segments(DIALOGUE, cport=1024 + i % 60000, cisn=1000 + i) for i in range(n)]
    t0 = time.process_time()
    ts = 100.0
    for segs in batches:
        for seg in segs:
            ts += 0.0001
            pipe.feed_segment(seg, ts)
    pipe.finish()
    dt = time.process_time() - t0
    calls = sum(r.counters.calls for r in ruleset.rules)
    return dt, calls


def call_ns(guard, n: int = 100_000, repeat: int = 7) -> float:
    """ns of one RuleEngine._call of a rule doing nothing (the engine's own
    cost per call: context, clock, budget, accounting), best of ``repeat``."""
    import timeit
    from types import SimpleNamespace

    @rule(hooks.command, id="bench.nothing")
    def nothing(flow, command):
        pass

    engine = RuleEngine(StaticRules(nothing), Sink(), ReplayEnforcer(), guard=guard)
    flow = SimpleNamespace(uid="C1")
    r = nothing.__rule__
    best = min(timeit.repeat(lambda: engine._call(r, flow, nothing, flow, None), number=n, repeat=repeat))
    return best / n * 1e9


def timer_ns(n: int = 200_000) -> float:
    import signal
    GUARD.enforced()          # installed
    t0 = time.perf_counter()
    for _ in range(n):
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.01)
        signal.setitimer(signal.ITIMER_REAL, 0)
    return (time.perf_counter() - t0) / n * 1e9


def stopped_after(fn, budget_ms=50.0, calls=20) -> list[float]:
    """ms each call of ``fn`` (as a command rule) took, budget ``budget_ms``,
    as the engine measured it (its "over budget" warnings)."""
    from sensor.pipeline import Pipeline
    from support.rules_helpers import RecordingLogger

    @rule(hooks.command, id="bench.stop", budget_ms=budget_ms)
    def stop(flow, command):
        fn()

    limits = RuleLimits(strikes=10 ** 9, memory_mb=0)
    logger = RecordingLogger()
    for _ in range(-(-calls // 6)):
        engine = RuleEngine(StaticRules(stop), ListSink(), ReplayEnforcer(), logger=logger, limits=limits)
        pipe = Pipeline(ListSink(), listeners=[engine])
        for i, seg in enumerate(session_segments(DIALOGUE)):
            pipe.feed_segment(seg, 100.0 + i * 0.001)
        pipe.finish()
    return [kw["ms"] for m, kw in logger.of("warning") if m == "rule over its time budget"][:calls]


def spin():
    end = time.monotonic() + 30
    while time.monotonic() < end:
        pass


STOPPABLE = {
    "busy loop (while True)": spin,
    "time.sleep(30)": lambda: time.sleep(30),
    "re (a+)+$ on 1023 a + '!'": lambda: re.search(r"(a+)+$", "a" * 1023 + "!"),
    "3 ** 10**9 (big int)": lambda: 3 ** (10 ** 9),
}

UNSTOPPABLE = {
    "sum(range(3 * 10**8))": lambda: sum(range(3 * 10 ** 8)),
    "sorted(range(10**7, 0, -1))": lambda: sorted(range(10 ** 7, 0, -1)),
    "(b'a' * 10**9).find(b'b')": lambda: (b"a" * 10 ** 9).find(b"b"),
    # the bounded form of deque(itertools.count(), maxlen=0), which never returns
    "deque(repeat(0, 10**9), maxlen=0)": lambda: collections.deque(itertools.repeat(0, 10 ** 9), maxlen=0),
}


def memory_stop() -> dict:
    got = [0]

    @rule(hooks.command, id="bench.hog", budget_ms=20_000)
    def hog(flow, command):
        if command.verb != "MAIL":
            return
        kept = []
        for _ in range(8192):
            kept.append(bytearray(1 << 20))
            got[0] += 1
            sum(range(20_000))

    before = data_bytes()
    engine = RuleEngine(StaticRules(hog), ListSink(), ReplayEnforcer(),
                        limits=RuleLimits(memory_mb=32, max_budget_ms=20_000))
    from sensor.pipeline import Pipeline
    pipe = Pipeline(ListSink(), listeners=[engine])
    for i, seg in enumerate(session_segments(DIALOGUE)):
        pipe.feed_segment(seg, 100.0 + i * 0.001)
    pipe.finish()
    return {"allocated_mb": got[0], "budget_mb": 32, "stopped": hog.__rule__.counters.over_memory == 1,
            "data_after_mb": (data_bytes() - before) >> 20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--stops", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict = {}

    on, off = [], []
    calls = 0
    GUARD.enforced()        # installed first: both variants pay its garbage-collector callback
    starts = []
    for _ in range(args.runs):
        dt, calls = sessions_cpu(args.sessions, NoGuard())
        off.append(dt)
        before = GUARD.starts
        dt, calls = sessions_cpu(args.sessions, GUARD)
        on.append(dt)
        starts.append(GUARD.starts - before)
    m_on, m_off = min(on), min(off)      # the least disturbed run of each (a shared machine)
    out["cost"] = {
        "sessions": args.sessions, "rule_calls_per_session": calls / args.sessions,
        "us_per_session_without": m_off / args.sessions * 1e6, "us_per_session_with": m_on / args.sessions * 1e6,
        "ns_per_call": (m_on - m_off) / calls * 1e9, "setitimer_arm_disarm_ns": timer_ns(),
        "call_ns_without": call_ns(NoGuard()), "call_ns_with": call_ns(GUARD),
        "timer_starts_per_call": statistics.median(starts) / (calls * 1.0),
    }
    out["stops"] = {}
    for name, fn in STOPPABLE.items():
        took = stopped_after(fn, calls=args.stops)
        out["stops"][name] = {"p50_ms": statistics.median(took), "max_ms": max(took), "calls": len(took)}
    out["unstoppable"] = {}
    for name, fn in UNSTOPPABLE.items():
        (took,) = stopped_after(fn, calls=1)
        out["unstoppable"][name] = {"ms": took}
    out["memory"] = memory_stop()

    if args.json:
        print(json.dumps(out, indent=2))
        return
    c = out["cost"]
    print(f"cost: {c['rule_calls_per_session']:.1f} rule calls/session; "
          f"{c['us_per_session_without']:.1f} us/session without the budget, {c['us_per_session_with']:.1f} with; "
          f"{c['ns_per_call']:.0f} ns per call; setitimer arm+disarm {c['setitimer_arm_disarm_ns']:.0f} ns")
    print(f"one engine call of a rule doing nothing (best of 7): {c['call_ns_without']:.0f} ns without the budget, "
          f"{c['call_ns_with']:.0f} ns with; the timer started (a syscall) at "
          f"{c['timer_starts_per_call'] * 100:.1f} % of the sessions' rule calls")
    print("stopped, 50 ms budget (ms the call took):")
    for name, v in out["stops"].items():
        print(f"  {name:34s} p50 {v['p50_ms']:7.2f}  max {v['max_ms']:7.2f}  ({v['calls']} calls)")
    print("not interruptible, 50 ms budget (ms the call held the sensor):")
    for name, v in out["unstoppable"].items():
        print(f"  {name:34s} {v['ms']:9.1f}")
    m = out["memory"]
    print(f"memory: stopped={m['stopped']} after {m['allocated_mb']} MB under a {m['budget_mb']} MB budget; "
          f"data size after the call +{m['data_after_mb']} MB")


if __name__ == "__main__":
    main()
