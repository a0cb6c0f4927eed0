"""sensor.rules.budget, through the engine and the loader: a rule that loops,
sleeps, blocks or allocates without bound is stopped inside its call and the
session goes on; its third offence within the window disables it until its
file changes; an import that blocks is a file that does not load; whatever a
rule raises (KeyboardInterrupt, SystemExit, CancelledError) is its error,
the operator's stop goes through; a verdict being written is never cut in
half; the timer stops itself once no rule runs and SIGALRM is given back.

Every loop or wait in these rules is bounded (30 s) so that a broken budget
fails the test instead of hanging it: the assertion is that the code after
the loop never ran."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest

from sensor.config import ConfigError, loads
from sensor.errors import Shutdown
from sensor.records.sinks import ListSink
from sensor.rules import RuleError, hooks, rule
from sensor.rules.budget import CHECK_S, GUARD, RuleLimits
from sensor.rules.engine import RuleEngine
from sensor.rules.loader import RuleSet
from support.rules_helpers import DIALOGUE, RecordingEnforcer, RecordingLogger, Run, StaticRules, run, write

REPO = Path(__file__).resolve().parents[2]
BOUND = 30.0          # seconds any loop below may run if the budget failed
FAST = RuleLimits(budget_ms=20)
VERBS = ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]


def spin(seconds: float = BOUND) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def itimer() -> tuple[float, float]:
    return signal.getitimer(signal.ITIMER_REAL)


def timer_stopped() -> bool:
    """The timer goes on one tick past the last rule call, then stops itself
    (a tick finding no rule running): after three ticks it is stopped."""
    time.sleep(3 * CHECK_S)
    return itimer() == (0.0, 0.0)


def witness():
    """A rule that sees every command, and what it saw."""
    seen = []

    @rule(hooks.command, id="t.witness")
    def see(flow, command):
        seen.append(command.verb)

    return see, seen


# ---------------------------------------------------------------- time

def test_a_busy_loop_is_interrupted_in_the_rule_and_the_session_goes_on():
    finished = []
    see, seen = witness()

    @rule(hooks.command, id="t.busy")
    def busy(flow, command):
        spin()
        finished.append(command.verb)

    r = run(StaticRules(busy, see), limits=FAST)
    assert finished == []
    assert seen == VERBS                      # the other rule saw every command
    assert len(r.sink.of("smtp")) == 1        # and the session was recorded
    c = busy.__rule__.counters
    assert c.calls == c.over_budget == 3 and c.errors == 0
    assert busy.__rule__.disabled is not None
    # where it was interrupted: the loop, in this file
    _, kw = r.logger.of("warning")[0]
    assert kw["at"].startswith(__file__ + ":") and kw["error"] == "RuleTimeout: past its time budget of 20 ms"
    assert timer_stopped()


@pytest.mark.parametrize("how", ["sleep", "lock", "socket", "select"])
def test_a_blocking_call_is_interrupted(how):
    finished = []
    lock = threading.Lock()
    lock.acquire()
    a, b = socket.socketpair()

    @rule(hooks.command, id="t.blocks")
    def blocks(flow, command):
        if command.verb != "MAIL":
            return
        if how == "sleep":
            time.sleep(BOUND)
        elif how == "lock":
            lock.acquire(timeout=BOUND)
        elif how == "socket":
            a.settimeout(BOUND)
            a.recv(1)
        else:
            select.select([a], [], [], BOUND)
        finished.append(how)

    try:
        r = run(StaticRules(blocks), limits=FAST)
    finally:
        a.close()
        b.close()
    assert finished == []
    assert blocks.__rule__.counters.over_budget == 1 and r.engine.counters.errors == 0
    assert blocks.__rule__.disabled is None
    assert timer_stopped()


def test_a_rule_that_swallows_its_timeout_is_interrupted_again():
    caught, finished = [], []

    @rule(hooks.command, id="t.stubborn")
    def stubborn(flow, command):
        if command.verb != "MAIL":
            return
        try:
            spin()
        except Exception:                     # not a RuleTimeout: it is no Exception
            caught.append("Exception")
        except BaseException as exc:
            caught.append(type(exc).__name__)
        spin()                                # interrupted again, a tick later
        finished.append(True)

    run(StaticRules(stubborn), limits=FAST)
    assert caught == ["RuleTimeout"] and finished == []
    assert stubborn.__rule__.counters.over_budget == 1


def test_a_streamed_rule_looping_on_a_chunk_is_stopped_for_the_rest_of_the_message():
    steps, closed = [], []

    @rule(hooks.mail_content, id="t.stream", streamed=True)
    async def stream(flow, content):
        try:
            async for chunk in content:
                steps.append(len(chunk))
                if len(steps) == 2:
                    spin()
        finally:
            closed.append(True)               # runs as the timeout leaves the rule: interrupted again
            spin()
            closed.append("after")

    r = run(StaticRules(stream), content_chunk=256, limits=FAST)
    assert steps == [256, 256] and closed == [True]
    assert stream.__rule__.counters.over_budget == 1 and r.engine.counters.errors == 0
    assert len(r.sink.of("smtp")) == 1


def test_closing_a_stream_cut_short_is_under_the_budget_too():
    closed = []

    @rule(hooks.mail_content, id="t.closing", streamed=True)
    async def closing(flow, content):
        try:
            async for chunk in content:
                pass
        finally:                              # the connection ends mid-message: closed
            closed.append(True)
            spin()
            closed.append("after")

    cut_short = DIALOGUE[:11] + [(True, b"Subject: cut short\r\n\r\n" + b"body line\r\n" * 40)]
    r = run(StaticRules(closing), cut_short, limits=FAST)
    assert closed == [True]
    assert closing.__rule__.counters.over_budget == 1 and r.engine.counters.errors == 0


def test_a_late_return_counts_and_strikes_are_counted_within_their_window():
    # a clock that jumps 1000 s per reading: every call "returns late" (as C
    # code a signal cannot interrupt would), and offences are 2000 s apart
    def late_rule():
        @rule(hooks.command, id="t.late")
        def late(flow, command):
            pass
        return late

    late = late_rule()
    r = run(StaticRules(late), clock=itertools.count(0, 1000).__next__)
    assert late.__rule__.counters.over_budget == 6 and late.__rule__.disabled is None
    assert all(kw["interrupted"] is False for _, kw in r.logger.of("warning"))

    late = late_rule()
    run(StaticRules(late), clock=itertools.count(0, 1000).__next__,
        limits=RuleLimits(strike_window=1e9, strikes=4))
    assert late.__rule__.counters.over_budget == 4
    assert late.__rule__.disabled == "4 calls over budget within 1e+09 s"


def test_a_rule_declares_its_own_budget_within_the_sensors_maximum():
    @rule(hooks.command, id="t.own", budget_ms=5)
    def own(flow, command):
        pass

    @rule(hooks.command, id="t.greedy", budget_ms=60_000)
    def greedy(flow, command):
        pass

    engine = RuleEngine(StaticRules(own, greedy), ListSink(), RecordingEnforcer(),
                        limits=RuleLimits(budget_ms=50, max_budget_ms=200))
    assert engine._budget_s(own.__rule__) == 0.005
    assert engine._budget_s(greedy.__rule__) == 0.2
    assert engine._budget_s(witness()[0].__rule__) == 0.05
    for bad in (0, -1, "10", True, float("nan")):
        with pytest.raises(RuleError, match="budget_ms"):
            rule(hooks.command, budget_ms=bad)


def test_a_garbage_collection_during_a_call_is_not_the_rules_time():
    heap = [(i, [i]) for i in range(1_000_000)]      # a collection of this takes a while
    paused = GUARD.paused

    @rule(hooks.command, id="t.collects", budget_ms=5)
    def collects(flow, command):
        if command.verb == "MAIL":
            gc.collect()

    r = run(StaticRules(collects))
    del heap
    assert GUARD.paused - paused > 0.005              # the collection was longer than the budget
    assert collects.__rule__.counters.over_budget == 0 and r.engine.counters.errors == 0


# ---------------------------------------------------------------- what a rule raises

@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(0), asyncio.CancelledError(), GeneratorExit()],
                         ids=lambda e: type(e).__name__)
def test_what_a_rule_raises_is_its_error_not_the_end_of_the_sensor(exc):
    see, seen = witness()

    @rule(hooks.command, id="t.raises")
    def raises(flow, command):
        raise exc

    @rule(hooks.mail_content, id="t.stream_raises", streamed=True)
    async def stream_raises(flow, content):
        async for chunk in content:
            raise exc

    r = run(StaticRules(raises, see, stream_raises))
    assert seen == VERBS and len(r.sink.of("smtp")) == 1
    assert raises.__rule__.counters.errors == 6 and stream_raises.__rule__.counters.errors == 1
    assert r.engine.counters.errors == 7
    message, kw = r.logger.of("error")[0]
    assert message == "rule raised" and type(exc).__name__ in kw["traceback"]


def test_the_operators_stop_goes_through_a_rule():
    @rule(hooks.command, id="t.stopped")
    def stopped(flow, command):
        raise Shutdown()          # as SIGTERM's handler raises it while this rule runs

    from support.rules_helpers import session_segments
    with pytest.raises(Shutdown):
        Run(StaticRules(stopped)).feed(session_segments(DIALOGUE))
    assert stopped.__rule__.counters.errors == 0
    assert timer_stopped()


# ---------------------------------------------------------------- verdicts are whole

class SlowEnforcer(RecordingEnforcer):
    """Writes a drop in two steps with a pause between, past any budget."""

    def drop_flow(self, flow, ttl, now, reset=True):
        self.calls.append(("first half", flow.uid))
        time.sleep(0.1)
        super().drop_flow(flow, ttl, now, reset)


class SlowSink(ListSink):
    def __call__(self, record):
        time.sleep(0.1)
        super().__call__(record)


def test_a_budget_running_out_while_a_verdict_is_written_waits_until_it_is_whole():
    from sensor.rules import alert

    after = []

    @rule(hooks.command, id="t.verdict", budget_ms=5)
    def verdict(flow, command):
        if command.verb == "MAIL":
            alert(description="slow sink", severity="low")
            flow.drop()
            spin()
            after.append(True)

    enforcer = SlowEnforcer()
    r = Run(StaticRules(verdict), enforcer=enforcer)
    r.sink = r.engine.sink = SlowSink()
    from support.rules_helpers import session_segments
    r.feed(session_segments(DIALOGUE)).finish()
    assert [c[0] for c in enforcer.calls] == ["first half", "drop_flow"]
    assert [rec["event_type"] for rec in r.sink if rec["event_type"] in ("alert", "drop")] == ["alert", "drop"]
    assert after == [] and verdict.__rule__.counters.over_budget == 1
    assert r.engine.counters.drops == 1 and r.engine.counters.errors == 0


# ---------------------------------------------------------------- memory

class Block(bytearray):
    """A MB the rule allocates (a subclass: it can have a weak reference)."""


def test_a_rule_that_allocates_without_bound_is_stopped_at_its_memory_budget():
    allocated, first = [0], []

    @rule(hooks.command, id="t.hog", budget_ms=20_000)
    def hog(flow, command):
        if command.verb != "MAIL":
            return
        kept = []
        for _ in range(4096):                 # 4 GB if nothing stopped it
            kept.append(Block(1 << 20))
            allocated[0] += 1
            if not first:
                first.append(weakref.ref(kept[0]))
            sum(range(20_000))                # a little work per MB

    gc.disable()                              # what it held goes without a collection
    try:
        r = run(StaticRules(hog), limits=RuleLimits(memory_mb=32, max_budget_ms=20_000))
        assert first[0]() is None
    finally:
        gc.enable()
    assert 0 < allocated[0] < 4096
    assert hog.__rule__.counters.over_memory == 1 and r.engine.counters.memory_stops == 1
    assert hog.__rule__.counters.over_budget == 0 and r.engine.counters.errors == 0
    message, kw = r.logger.of("warning")[0]
    assert message == "rule over its memory budget" and kw["error"].startswith("RuleMemoryError: grew")


def test_a_memory_error_in_a_rule_is_a_memory_offence():
    @rule(hooks.command, id="t.oom")
    def oom(flow, command):
        raise MemoryError()

    r = run(StaticRules(oom))
    assert oom.__rule__.counters.over_memory == 3 and oom.__rule__.disabled is not None
    assert r.engine.counters.errors == 0


PROCESS_LIMIT = r'''
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from sensor.rules import hooks, rule
from sensor.rules.budget import data_bytes, limit_process_memory
from support.rules_helpers import StaticRules, run

@rule(hooks.command, id="t.huge")
def huge(flow, command):
    if command.verb == "MAIL":
        bytearray(16 << 30)              # 16 GB: past the process's limit

seen = []
@rule(hooks.command, id="t.after")
def after(flow, command):
    seen.append(command.verb)

limit = limit_process_memory((data_bytes() >> 20) + 512)
r = run(StaticRules(huge, after))
ours = bytearray(256 << 20)              # the process's own allocation under the limit still works
print(json.dumps({"limit": limit, "over_memory": huge.__rule__.counters.over_memory,
                  "errors": r.engine.counters.errors, "seen": seen, "ours": len(ours)}))
'''


def test_past_the_process_memory_limit_an_allocation_fails_in_the_rule_that_asks():
    out = subprocess.run([sys.executable, "-c", PROCESS_LIMIT, str(REPO)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["limit"] > 0 and result["over_memory"] == 1 and result["errors"] == 0
    assert result["seen"] == VERBS and result["ours"] == 256 << 20


# ---------------------------------------------------------------- the timer and the signal

def test_the_timer_runs_only_around_rule_code_and_sigalrm_is_given_back():
    GUARD.release()
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    inside = []

    @rule(hooks.command, id="t.looks")
    def looks(flow, command):
        inside.append(itimer()[0] > 0)
        if command.verb == "RCPT":
            raise ValueError("an error path too")
        if command.verb == "DATA":
            spin()

    r = run(StaticRules(looks), limits=FAST)
    assert inside == [True] * 6
    assert timer_stopped()
    assert signal.getsignal(signal.SIGALRM) == GUARD._on_alarm
    r.engine.close()
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
    assert timer_stopped()


def test_a_sigalrm_handler_of_someone_else_is_left_alone_and_budgets_are_only_measured():
    GUARD.release()

    def theirs(signum, frame):
        pass

    signal.signal(signal.SIGALRM, theirs)
    finished = []

    @rule(hooks.command, id="t.slowish", budget_ms=5)
    def slowish(flow, command):
        if command.verb == "MAIL":
            time.sleep(0.05)
            finished.append(True)

    try:
        r = run(StaticRules(slowish))
        assert signal.getsignal(signal.SIGALRM) is theirs
    finally:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        GUARD.release()
    ((message, kw), *rest) = r.logger.of("warning")
    assert message == "rule budgets are measured, not enforced" and "SIGALRM" in kw["reason"]
    assert finished == [True] and slowish.__rule__.counters.over_budget == 1
    assert rest[0][1]["interrupted"] is False


def test_rules_run_from_another_thread_are_measured_not_interrupted():
    finished, runs = [], []

    @rule(hooks.command, id="t.threaded", budget_ms=5)
    def threaded(flow, command):
        if command.verb == "MAIL":
            time.sleep(0.05)
            finished.append(True)

    t = threading.Thread(target=lambda: runs.append(run(StaticRules(threaded))))
    t.start()
    t.join(BOUND)
    (r,) = runs
    assert finished == [True] and threaded.__rule__.counters.over_budget == 1
    message, kw = r.logger.of("warning")[0]
    assert message == "rule budgets are measured, not enforced" and kw["reason"] == "rules run outside the main thread"


# ---------------------------------------------------------------- the loader

@pytest.fixture
def rules(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    return d


GOOD = '''
from sensor.rules import hooks, rule

@rule(hooks.command, id="{stem}.cmd")
def cmd(flow, command):
    pass
'''


@pytest.mark.parametrize("how", ["loop", "sleep"])
def test_an_import_that_blocks_is_interrupted_and_the_file_not_loaded_until_it_changes(rules, tmp_path, how):
    imports = tmp_path / "imports"
    block = "while time.monotonic() < end: pass" if how == "loop" else "time.sleep(30)"
    write(rules / "blocks.py", f'''
    import time
    with open({str(imports)!r}, "a") as f:
        f.write("import\\n")
    end = time.monotonic() + 30
    {block}
    ''')
    write(rules / "good.py", GOOD.format(stem="good"))
    rs = RuleSet(rules, RecordingLogger(), RuleLimits(import_ms=50))
    assert [r.id for r in rs.rules] == ["good.cmd"]
    error = rs.errors[rules / "blocks.py"]
    assert error.startswith(f"{rules / 'blocks.py'}:6: RuleTimeout: past its time budget of 50 ms")
    assert error.endswith("; not loaded")
    assert timer_stopped()
    rs.poll()
    rs.poll()
    assert imports.read_text() == "import\n"          # not tried again: unchanged
    write(rules / "blocks.py", GOOD.format(stem="blocks"))
    assert rs.poll() and [r.id for r in rs.rules] == ["blocks.cmd", "good.cmd"] and rs.errors == {}


@pytest.mark.parametrize("raised", ["KeyboardInterrupt", "SystemExit(0)", "asyncio.CancelledError"])
def test_an_import_raising_what_ends_programs_is_a_file_that_does_not_load(rules, raised):
    write(rules / "ends.py", f'''
    import asyncio
    raise {raised}
    ''')
    write(rules / "good.py", GOOD.format(stem="good"))
    rs = RuleSet(rules)
    assert [r.id for r in rs.rules] == ["good.cmd"]
    assert rs.errors[rules / "ends.py"].startswith(f"{rules / 'ends.py'}:3: ")


BUSY = '''
import time
from sensor.rules import hooks, rule

@rule(hooks.command, id="busy.cmd")
def cmd(flow, command):
    end = time.monotonic() + 30
    while time.monotonic() < end:
        pass
'''


@pytest.mark.parametrize("back_by", ["change", "forced reload"])
def test_a_disabled_rule_stays_out_until_its_file_is_loaded_again(rules, back_by):
    write(rules / "busy.py", BUSY)
    write(rules / "other.py", GOOD.format(stem="other"))
    logger = RecordingLogger()
    rs = RuleSet(rules, logger, FAST)
    r = run(rs, limits=FAST, logger=logger)
    (busy,) = [x for x in rs.rules if x.id == "busy.cmd"]
    assert busy.disabled is not None and busy.counters.calls == 3
    assert rs.counters.rules_disabled == 1
    assert [x.id for x in rs.for_hook(hooks.command)] == ["other.cmd"]
    # another file's change re-indexes: the disabled rule stays out
    write(rules / "other.py", GOOD.format(stem="other"))
    assert rs.poll()
    assert [x.id for x in rs.for_hook(hooks.command)] == ["other.cmd"]
    status_line = next(kw for m, kw in logger.of("error") if m == "rule disabled until its file changes")
    assert status_line["file"] == str(rules / "busy.py")
    if back_by == "change":
        write(rules / "busy.py", BUSY.replace("30", "0"))
        assert rs.poll()
    else:
        rs.reload(force=True)                 # SIGHUP
    assert [x.id for x in rs.for_hook(hooks.command)] == ["busy.cmd", "other.cmd"]
    assert rs.counters.rules_disabled == 0
    assert r.engine.counters.disabled == 1


# ---------------------------------------------------------------- configuration

def test_limits_rules_in_the_config_file():
    limits = loads('[limits.rules]\nbudget_ms = 20\nstrikes = 5\nmemory_mb = 0\nwatchdog_s = 0\n').limits.rules
    assert (limits.budget_ms, limits.strikes, limits.memory_mb, limits.watchdog_s) == (20.0, 5, 0.0, 0.0)
    assert limits.memory_pages == 0
    for bad, match in (("budget_ms = 0", "budget_ms: must be > 0"), ("strikes = 0", "strikes"),
                       ("budgetms = 5", 'did you mean "budget_ms"')):
        with pytest.raises(ConfigError, match=match):
            loads(f"[limits.rules]\n{bad}\n")
