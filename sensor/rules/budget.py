"""Time and memory budgets for rule code: a rule that loops, sleeps, blocks
or allocates without bound is stopped, and the sensor goes on.

    call = GUARD.arm(seconds, memory_pages)   # before the rule's code
    ...                                        # the rule: RuleTimeout / RuleMemoryError raised in it
    GUARD.disarm(call)                         # after it, on every path

How.  Rules run in the sensor's one thread, in line with the packets (the
design keeps them there: a verdict written before the next packet is
dissected).  A call is interrupted by a signal: the process's real-time
interval timer (``setitimer(ITIMER_REAL)``, SIGALRM) ticks while rule code
runs, and its handler, run between two bytecodes of the rule, raises
``RuleTimeout`` there; a blocking call the rule makes (``time.sleep``, a
socket, ``select``, a lock) returns EINTR and raises it too.  ITIMER_REAL
counts wall time, as the packets waiting behind the rule do (ITIMER_VIRTUAL
or ITIMER_PROF would let a sleeping rule sleep).  A thread watching
deadlines needs the interpreter to run, so it can neither interrupt a sleep
(it can only inject an exception between bytecodes) nor a ``re`` search
that holds the interpreter; the kernel's timer needs nothing.

The timer ticks every ``CHECK_S`` (10 ms).  ``arm`` starts it unless it
runs already; ``disarm`` only marks the call over, and the next tick that
finds no call running stops the timer.  So the timer never runs more than
one tick past the last rule call (that tick may cut one of the sensor's own
waits short, as any signal does: the wait goes on), and a busy link, with
rule calls in a row, costs no syscall per call: 0.5 us per call where a
timer set and stopped around each call cost 1.8 us (docs/benchmarks.md).
At each tick while a call runs:

* past its deadline, ``RuleTimeout`` is raised, and again at every later
  tick (a rule that catches it and goes on is stopped again); it derives
  from BaseException, so ``except Exception`` in a rule does not swallow it;
  a deadline closer than the next tick gets a tick of its own;
* before, the process's data size (``/proc/self/statm``: what
  ``RLIMIT_DATA`` counts) is compared with its size at the call's first tick:
  a call that grew it by more than its memory budget gets ``RuleMemoryError``.
  Calls shorter than a tick pay nothing for this.

A garbage collection during a call (of the sensor's whole heap: not the
rule's doing) moves its deadline on by its length (``gc.callbacks``).

It raises only inside the rule: never while the interrupted frame is the
engine's, the loader's or this module's own code (the few bytecodes between
a rule's return and ``disarm``), nor inside a ``critical`` section (a verdict
being written to the kernel's maps, a record to the sink: done whole or not
at all).  A tick that falls there waits for the next one.

What a signal cannot interrupt: C code that holds the interpreter and never
checks for signals, until it returns (measured, docs/rules.md "Time budgets"):
``sum(range(10**10))``, ``sorted`` of a huge list, ``bytes.find`` or ``*`` on
gigabytes, ``collections.deque(itertools.count(), maxlen=0)`` (forever).
``re`` (even catastrophic backtracking), big-integer arithmetic and
``str(int)`` do check, and are interrupted.  A call that returns late is
still counted over budget; one that never returns is the watchdog's
(``sensor.service.loop``: faulthandler's C thread, which needs no
interpreter, writes the stacks and ends the process).  Meanwhile the kernel
lets held segments pass after ``hold_max_ms``: mail is delayed, not lost.

Only the main thread can be interrupted this way (Python runs signal
handlers there): rules called from another thread (the demo's sensor thread)
are measured, not interrupted, and ``enforced()`` says so.  SIGALRM is taken
only while nobody else handles it; the previous handler is put back by
``release()``.
"""

from __future__ import annotations

import atexit
import gc
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass

__all__ = ["RuleLimits", "OverBudget", "RuleTimeout", "RuleMemoryError", "Guard", "GUARD",
           "CHECK_S", "limit_process_memory", "data_bytes"]

#: seconds between two checks of an armed call (memory, and a timeout the rule swallowed)
CHECK_S = 0.010


@dataclass(frozen=True)
class RuleLimits:
    """``[limits.rules]``: what a rule's code may cost (docs/rules.md, "Time budgets")."""

    #: milliseconds a rule call may take when its ``@rule`` does not say (then interrupted)
    budget_ms: float = 50.0
    #: the most a rule may give itself with ``@rule(budget_ms=...)``
    max_budget_ms: float = 1000.0
    #: milliseconds a rule file's import may take (then the file is not loaded)
    import_ms: float = 2000.0
    #: offences (calls over their time or memory budget) within ``strike_window``
    #: that disable a rule until its file changes
    strikes: int = 3
    #: seconds over which offences are counted
    strike_window: float = 60.0
    #: MB by which one call may grow the process's data (0: not checked)
    memory_mb: float = 256.0
    #: the live sensor's data size limit in MB (RLIMIT_DATA: allocations past it
    #: fail with MemoryError; 0: none), the backstop for what a rule keeps
    process_memory_mb: float = 4096.0
    #: seconds the live sensor's loop may stay in one turn (a rule stuck in C
    #: code) before its stacks are written to stderr and it exits (status 1); 0: never
    watchdog_s: float = 30.0

    def budget_s(self, declared_ms: float | None) -> float:
        """A rule's budget in seconds: its own, else the default, at most ``max_budget_ms``."""
        ms = self.budget_ms if declared_ms is None else declared_ms
        return min(ms, self.max_budget_ms) / 1000.0

    @property
    def memory_pages(self) -> int:
        return int(self.memory_mb * 2 ** 20) // _PAGE


class OverBudget(BaseException):
    """Raised inside rule code that went past its budget.  A BaseException,
    so that a rule's ``except Exception`` does not swallow it."""


class RuleTimeout(OverBudget):
    """The call ran past its time budget."""


class RuleMemoryError(OverBudget):
    """The call grew the process's data past its memory budget."""


_PAGE = os.sysconf("SC_PAGE_SIZE")
# frames the handler never raises in: the code that calls rules and arms the timer
_PROTECTED = frozenset({"sensor.rules.engine", "sensor.rules.loader", __name__})


class Guard:
    """The process's one SIGALRM timer, ticking while rule code runs (``GUARD``)."""

    def __init__(self):
        self._main = threading.main_thread().ident
        self._installed = False
        self._previous = None
        self._refused: str | None = None     # why budgets are not enforced, when they are not
        self._statm = -1                     # fd of /proc/self/statm (-1: not open, -2: none)
        self._armed = 0                      # the armed call's number; 0: none
        self._running = False                # the timer is set (it may outlive a call by one tick)
        self._at_exit = False
        self._calls = 0
        self._deadline = 0.0
        self._budget = 0.0
        self._memory = 0                     # pages a call may add; 0: not checked
        self._base = -1                      # data pages at the call's first tick
        #: > 0 while the code that called the rule writes something that must be
        #: whole (a verdict, a record): the handler waits for the next tick
        self.critical = 0
        #: RuleTimeout/RuleMemoryError raised so far (also those a rule swallowed)
        self.raised = 0
        #: times ``arm`` had to start the timer (a syscall; calls in a row do not)
        self.starts = 0
        #: seconds the garbage collector ran while installed: a collection of
        #: the sensor's whole heap is not the rule's time (its deadline moves on)
        self.paused = 0.0
        self._in_gc = False
        self._gc_t0 = 0.0

    # ------------------------------------------------------------ the hot path
    def arm(self, seconds: float, memory_pages: int = 0) -> int:
        """Start the budget of a call; returns its number for ``disarm`` (0:
        not armed: another thread, SIGALRM not ours, or a call is armed already
        and this one runs under its budget)."""
        if self._armed or threading.get_ident() != self._main:
            return 0
        if not self._installed and not self._install():
            return 0
        self._calls = call = self._calls + 1
        self._budget = seconds
        self._memory = memory_pages
        self._base = -1
        self._deadline = time.perf_counter() + seconds
        self._armed = call                       # before the timer: its tick sees a call from here on
        if seconds < CHECK_S or not self._running:
            signal.setitimer(signal.ITIMER_REAL, seconds if seconds < CHECK_S else CHECK_S, CHECK_S)
            self._running = True
            self.starts += 1
        return call

    def disarm(self, call: int) -> None:
        """End call ``call``'s budget (idempotent; 0 does nothing).  The timer
        goes on: its next tick finds no call and stops it, so calls in a row
        (a busy link) cost no syscall each."""
        if call and self._armed == call:
            self._armed = 0                      # a tick from here on does nothing but stop the timer

    # ------------------------------------------------------------ the handler
    def _on_alarm(self, signum, frame) -> None:
        if not self._armed:                      # no rule runs: stop until the next call
            if self._running:
                signal.setitimer(signal.ITIMER_REAL, 0)
                self._running = False
            return
        left = self._deadline - time.perf_counter()
        kind = message = None
        if left <= 0:
            kind, message = RuleTimeout, f"past its time budget of {self._budget * 1000:g} ms"
        else:
            if self._memory:
                pages = self._data_pages()
                if self._base < 0:
                    self._base = pages
                elif pages - self._base > self._memory:
                    kind = RuleMemoryError
                    message = (f"grew the sensor's data by {(pages - self._base) * _PAGE >> 20} MB, "
                               f"past its memory budget of {self._memory * _PAGE >> 20} MB")
            if left < CHECK_S:                   # the deadline before the next tick
                signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), CHECK_S)
        if (kind is None or self.critical or self._in_gc or frame is None
                or frame.f_globals.get("__name__") in _PROTECTED):
            return                               # the next tick tries again
        self.raised += 1
        # made in the raise, not kept in a local: the traceback holds this
        # frame, and a local holding the exception would be a cycle keeping
        # the rule's frames (and what they allocated) until a collection
        raise kind(message)

    def _on_gc(self, phase: str, info) -> None:
        if phase == "start":
            self._in_gc, self._gc_t0 = True, time.perf_counter()
            return
        dt = time.perf_counter() - self._gc_t0
        self._in_gc = False
        self.paused += dt
        if self._armed:
            self._deadline += dt

    def _data_pages(self) -> int:
        if self._statm == -1:
            try:
                self._statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._statm = -2
        if self._statm < 0:
            return 0
        return int(os.pread(self._statm, 128, 0).split()[5])

    # ------------------------------------------------------------ the signal
    def _install(self) -> bool:
        if self._refused is not None:
            return False
        previous = signal.getsignal(signal.SIGALRM)
        if previous not in (signal.SIG_DFL, signal.SIG_IGN, None):
            self._refused = f"SIGALRM already has a handler ({previous!r})"
            return False
        signal.signal(signal.SIGALRM, self._on_alarm)
        self._previous, self._installed = previous, True
        gc.callbacks.append(self._on_gc)
        if not self._at_exit:
            # the timer may still tick once after the last call: not into an
            # interpreter that has given SIGALRM back to its default (exit)
            atexit.register(self.release)
            self._at_exit = True
        return True

    def enforced(self) -> str | None:
        """None when calls from this thread are interrupted at their budget,
        else why they are only measured."""
        if threading.get_ident() != self._main:
            return "rules run outside the main thread"
        if not self._installed:
            self._install()
        return self._refused

    def release(self) -> None:
        """Stop any timer and give SIGALRM back to its previous handler."""
        self._armed = 0
        if self._installed and threading.get_ident() == self._main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._running = False
            signal.signal(signal.SIGALRM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False
            if self._on_gc in gc.callbacks:
                gc.callbacks.remove(self._on_gc)
        self._refused = None


#: the process's guard: one SIGALRM, one timer
GUARD = Guard()


def data_bytes() -> int:
    """The process's data size now (what RLIMIT_DATA limits)."""
    return GUARD._data_pages() * _PAGE


def limit_process_memory(mb: float) -> int | None:
    """Set the soft RLIMIT_DATA of the process to ``mb`` MB (0: leave it);
    returns the limit set in bytes, or None.  Past it an allocation fails with
    MemoryError, in the rule that asks for it or, if the sensor's own code
    asks, ending the process (systemd starts it again) before the kernel's
    OOM killer picks a process of the host, the MTA perhaps."""
    if mb <= 0:
        return None
    limit = int(mb * 2 ** 20)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit
