"""Per-host connection and reject counts, checked against the thresholds.

``RejectStats`` owns no clock: every call takes the time (the events' own
timestamps, capture time in a replay); ``clock`` only serves as the default
``now`` and, with ``wall``, to convert times to wall-clock in snapshots.

When a window is judged
-----------------------
At every periodic check (every ``check_interval``) *and* when it ends: a
fixed window when it closes, a sliding window each time a bucket slides out,
and any window before its host is evicted, so no window escapes being judged
whole (a checker that only runs every ``period``, as the seed's, looks at a
host once, with partial data).  Due closes and checks run in time order before each
observation is counted, so the outcome depends on the event timestamps only,
not on how often ``tick`` is called: a replay gives the notices a live run
gave.  A window is judged only when its counts changed since it was last
judged, and a notice of a type for a host suppresses the next one for
``suppress_for`` seconds (Zeek's ``$suppress_for``/``$identifier``): the same
evidence never raises two notices.

Bounds
------
Hosts are capped at ``max_hosts`` (past it, the least active of the
``EVICTION_SAMPLE`` least recently active is judged, then evicted), and so are
the suppression entries; recipients and samples per host as ``hosts.py``
says (with what a host holds at most).  Every eviction and every item not
kept is counted (``RejectStatsCounters``).
"""

from __future__ import annotations

import heapq
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from sensor.config import POSSIBLE_INTERNAL_SPAM, POSSIBLE_SPAM, STRANGE_REJECT_BEHAVIOR, SpamStatsConfig
from sensor.counters import Counters, counter
from sensor.spamstats.hosts import RECIPIENT_OCTETS, ConnState, Host, held_text, in_networks, shown_text
from sensor.spamstats.window import window_for

__all__ = ["RejectStats", "RejectStatsCounters", "Notice", "Sample", "StatsState", "EVICTION_SAMPLE"]

#: hosts looked at (from the least recently active) to choose which to evict
EVICTION_SAMPLE = 8


@dataclass(frozen=True, slots=True)
class Sample:
    """A distinct reject reply seen from a host, with how often."""

    code: int
    enhanced: str | None
    text: str
    count: int
    uid: str | None       #: the first connection that got it
    ts: float             #: when it was first seen


@dataclass(frozen=True, slots=True)
class Notice:
    """One host found sending with too many rejects."""

    ts: float
    note: str                      #: one of NOTICE_TYPES
    src: str                       #: the host
    msg: str                       #: the seed's message
    sub: str | None                #: the sampled rejects, as text
    total: int
    rejects: int
    percent: int
    window: str                    #: "fixed" or "sliding"
    window_start: float
    window_end: float
    suppress_for: float
    recipients: tuple[str, ...] = ()
    recipients_dropped: int = 0
    samples: tuple[Sample, ...] = ()


class RejectStatsCounters(Counters):
    """What the statistics did, for metrics and the stats line."""

    METRIC_PREFIX = "spam_stats_"
    replies = counter("server replies counted")
    connections = counter("connections counted (once per window, at their first reply there)")
    rejected = counter("connections counted as rejected")
    checks = counter("periodic checks run")
    evaluations = counter("windows evaluated against the thresholds")
    windows_closed = counter("windows (sliding: buckets) that ended")
    notices = counter("reject statistics notices raised", metric="notices")
    suppressed = counter("notices not raised: the same type for the host within suppress_for")
    hosts_evicted = counter("hosts evicted (max_hosts)")
    recipients_dropped = counter("recipients not kept (max_recipients)")
    samples_dropped = counter("reject samples not kept (max_samples)")
    suppressions_evicted = counter("suppression entries evicted (max_hosts)")


@dataclass
class StatsState:
    """What ``RejectStats`` holds between two calls, in its clock: what a
    snapshot keeps and ``RejectStats.load`` puts back."""

    hosts: list                    #: ``Host``s, least recently active first
    dirty: list                    #: hosts changed since they were last judged, in that order
    suppressed: dict               #: (note, host) -> until, in expiry order
    next_check: float | None       #: the next periodic check (None: not scheduled yet)
    counters: dict                 #: ``RejectStatsCounters`` by name


class RejectStats:
    """Per-host connection and reject counts, checked against the thresholds."""

    def __init__(self, config: SpamStatsConfig | None = None, *, clock=time.time, wall=time.time, hook=None):
        self.config = config if config is not None else SpamStatsConfig()
        #: counts shared with other sensors (``sensor.cluster.shared.SharedStats``), or None:
        #: ``counted(host, ts, reject)`` for each count, ``changed()`` the hosts to judge
        #: again, ``counts(host, start, end, total, rejects)`` the counts to judge
        self.hook = hook
        self.clock = clock
        self.wall = wall
        self.counters = RejectStatsCounters()
        cfg = self.config
        #: the inspection window: ``window.FixedWindow`` or ``window.SlidingWindow``
        self.window = window_for(cfg)
        self._interval = cfg.check_every
        self._suppress_for = cfg.suppression
        self._reject_codes = cfg.reject_codes
        self._hosts: OrderedDict[str, Host] = OrderedDict()    # least recently active first
        self._deadlines: list = []          # heap of (time, seq, addr, gen): a window ends
        self._seq = 0
        self._gen = 0
        self._dirty: dict[str, None] = {}   # hosts whose counts changed since their last evaluation
        self._suppressed: dict[tuple, float] = {}   # (note, addr) -> until, in insertion order
        self._pending: list[Notice] = []
        self._next_check: float | None = None
        self._now = -math.inf

    def reconfigure(self, config: SpamStatsConfig) -> None:
        """New thresholds and lists (a reload), the counts kept: they apply
        from the next evaluation.  The window's shape (``window``, ``period``,
        ``sliding_buckets``) is the counts' own layout: the caller refuses a
        change of it (sensor.service.reload)."""
        self.config = config
        self._interval = config.check_every
        self._suppress_for = config.suppression
        self._reject_codes = config.reject_codes

    # ------------------------------------------------------------ input
    def observe_reply(self, host: str, ts: float, code: int, conn: ConnState, *,
                      enhanced: str | None = None, text: str = "", uid: str | None = None) -> None:
        """A server reply on a connection from ``host``; ``conn`` is that connection's state."""
        now = self._advance(ts)
        self.counters.replies += 1
        h = self._touch(host, now)
        if conn.counted is None or not self._live(h, conn.counted):
            conn.counted = (h.gen, self.window.slot_at(h, now))
            self._add(h, conn.counted, 0)
            self.counters.connections += 1
            self._dirty[h.addr] = None
        if code in self._reject_codes:
            if conn.rejected != conn.counted:
                conn.rejected = conn.counted
                self._add(h, conn.counted, 1)
                self.counters.rejected += 1
                self._dirty[h.addr] = None
                for rcpt in conn.recipients:
                    self._add_recipient(h, rcpt)
            if not h.add_sample(code, enhanced, text, uid, now, self.config.max_samples):
                self.counters.samples_dropped += 1

    def observe_recipient(self, host: str, address: str, conn: ConnState) -> None:
        """A RCPT TO on a connection from ``host``."""
        held = held_text(address, RECIPIENT_OCTETS)
        if len(conn.recipients) < self.config.max_recipients:
            if held not in conn.recipients:
                conn.recipients.append(held)
        else:
            self.counters.recipients_dropped += 1
        h = self._hosts.get(host)
        if h is not None and conn.rejected is not None and conn.rejected == conn.counted \
                and self._live(h, conn.rejected):
            self._add_recipient(h, held)

    # ------------------------------------------------------------ checking
    def tick(self, now: float | None = None) -> list[Notice]:
        """Run what is due up to ``now`` (windows that ended, periodic checks
        every ``check_interval``); return the notices raised since the last call."""
        self._advance(self.clock() if now is None else now)
        return self.drain()

    def check(self, now: float | None = None) -> list[Notice]:
        """The seed's periodic checker, run now (out of schedule): every window
        changed since it was last evaluated is evaluated; returns new notices."""
        now = self._advance(self.clock() if now is None else now)
        self._check_all(now)
        return self.drain()

    def drain(self) -> list[Notice]:
        """Notices raised so far and not yet returned."""
        out, self._pending = self._pending, []
        return out

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def counts(self, host: str, now: float | None = None) -> tuple[int, int]:
        """(total, rejects) of ``host``'s current window (after what is due at ``now``)."""
        if now is not None:
            self._advance(now)
        h = self._hosts.get(host)
        if h is None:
            return 0, 0
        return self.window.counts(h, self._now)

    def recipients(self, host: str) -> list[str]:
        h = self._hosts.get(host)
        return h.recipient_texts() if h is not None else []

    def classify(self, host: str) -> str:
        """The notice type a host would get."""
        cfg = self.config
        if in_networks(host, cfg.local_mail):
            return STRANGE_REJECT_BEHAVIOR
        if in_networks(host, cfg.local_networks):
            return POSSIBLE_INTERNAL_SPAM
        return POSSIBLE_SPAM

    def report(self, limit: int = 100) -> dict:
        """Per host (most connections first, at most ``limit``): window counts,
        percent rejected, the notice type it would get, recipients of its
        rejected connections; plus the counters (``smtp-sensor stats``)."""
        rows = []
        for addr, h in self._hosts.items():
            total, rejects = self.window.counts(h, self._now)
            rows.append({"host": addr, "total": total, "rejects": rejects,
                         "percent": rejects * 100 // total if total else 0,
                         "class": self.classify(addr), "recipients": h.recipient_texts()[:20]})
        rows.sort(key=lambda r: (-r["total"], r["host"]))
        return {"hosts": rows[: max(0, limit)], "tracked": len(self._hosts),
                "thresholds": {"total": self.config.threshold, "percent": self.config.percent,
                               "period": self.config.period, "window": self.config.window},
                "counters": self.counters.as_dict()}

    def __len__(self) -> int:
        return len(self._hosts)

    def __contains__(self, host) -> bool:
        return host in self._hosts

    @property
    def next_check(self) -> float | None:
        return self._next_check

    @property
    def now(self) -> float | None:
        """The latest time seen (a reply's or a tick's); None before any."""
        return self._now if self._now > -math.inf else None

    # ------------------------------------------------------------ state
    def state(self) -> StatsState:
        """What is held now (live objects: read it before the next call)."""
        return StatsState(hosts=list(self._hosts.values()), dirty=list(self._dirty),
                          suppressed=dict(self._suppressed), next_check=self._next_check,
                          counters=self.counters.as_dict())

    def load(self, state: StatsState) -> None:
        """Replace everything held with ``state`` (a snapshot's, built and
        checked by the caller): hosts, their window ends, what is to be judged,
        suppressions, the check schedule, the counters.  Notices not drained
        yet and the latest time seen go too; each host gets a new generation,
        so no connection counted before counts into it."""
        self._hosts = OrderedDict()
        self._deadlines = []
        for h in state.hosts:
            self._gen += 1
            h.gen = self._gen
            self._hosts[h.addr] = h
        for h in self._hosts.values():
            self._push(self.window.end(h), h)
        self._dirty = dict.fromkeys(a for a in state.dirty if a in self._hosts)
        self._suppressed = dict(state.suppressed)
        self._next_check = state.next_check
        self._pending = []
        self._now = -math.inf
        self.counters.update({name: int(state.counters.get(name, 0)) for name in RejectStatsCounters.FIELDS})

    # ------------------------------------------------------------ internals
    def _advance(self, ts: float) -> float:
        """Run due window ends and periodic checks up to ``ts``, in time order.
        Timestamps never go backwards here: a late one counts as the latest."""
        now = ts if ts > self._now else self._now
        self._now = now
        if self._next_check is None:
            self._next_check = now + self._interval
        while True:
            heap = self._deadlines          # (_push may compact it into a new list)
            t_close = heap[0][0] if heap else math.inf
            t_check = self._next_check
            if t_close > now and t_check > now:
                return now
            if t_close <= t_check:
                _, _, addr, gen = heapq.heappop(heap)
                h = self._hosts.get(addr)
                if h is not None and h.gen == gen:
                    self._window_end(h, t_close)
            else:
                self._check_all(t_check)
                nxt = t_check + self._interval
                if not self._dirty:
                    # nothing changed: skip the empty checks up to the next event
                    # (a long pause in a capture, a restart after days)
                    limit = min(now, heap[0][0] if heap else math.inf)
                    if nxt < limit:
                        skip = math.floor((limit - nxt) / self._interval)
                        nxt += skip * self._interval
                        self.counters.checks += skip
                self._next_check = nxt

    def _check_all(self, t: float) -> None:
        self.counters.checks += 1
        if self.hook is not None:
            for addr in self.hook.changed():
                if addr in self._hosts:
                    self._dirty[addr] = None
        window = self.window
        for addr in list(self._dirty):
            h = self._hosts.get(addr)
            if h is None:
                del self._dirty[addr]
                continue
            total, rejects = window.counts(h, t)
            start, end = window.check_span(h, t)
            self._evaluate(h, total, rejects, t, start, end)
        self._prune_suppressed(t)

    def _window_end(self, h: Host, t: float) -> None:
        """A fixed window closes, or a sliding window's oldest bucket slides out."""
        window = self.window
        total, rejects, start = window.closing(h)
        self._evaluate(h, total, rejects, t, start, t)
        self.counters.windows_closed += 1
        next_end = window.slide_out(h)
        if next_end is None:
            self._forget(h)
            return
        # what is left is a window too (a share can rise as accepted
        # connections slide out): evaluated now, not at the next check
        self._dirty[h.addr] = None
        total, rejects = window.counts(h, t)
        start, end = window.check_span(h, t)
        self._evaluate(h, total, rejects, t, start, end)
        self._push(next_end, h)

    def _evaluate(self, h: Host, total: int, rejects: int, t: float, start: float, end: float) -> None:
        """One window of one host against the thresholds (only if it changed)."""
        if h.addr not in self._dirty:
            return          # evaluated already with these very counts
        del self._dirty[h.addr]
        self.counters.evaluations += 1
        cfg = self.config
        if self.hook is not None:
            total, rejects = self.hook.counts(h.addr, start, end, total, rejects)
        if total < cfg.threshold or total <= 0:
            return
        percent = rejects * 100 // total
        if percent < cfg.percent:
            return
        note = self.classify(h.addr)
        key = (note, h.addr)
        until = self._suppressed.get(key)
        if until is not None and t < until:
            self.counters.suppressed += 1
            return
        self._suppressed.pop(key, None)
        self._suppressed[key] = t + self._suppress_for
        if len(self._suppressed) > cfg.max_hosts:
            del self._suppressed[next(iter(self._suppressed))]
            self.counters.suppressions_evicted += 1
        recipients = tuple(h.recipient_texts())
        msg = f"{h.addr} - sent: {total} rejected: {percent} percent"
        if note == POSSIBLE_INTERNAL_SPAM:
            msg += f" mailto: {','.join(recipients)}"
        samples = tuple(Sample(s.code, s.enhanced, shown_text(s.text), s.count, s.uid, s.ts)
                        for s in h.samples)
        sub = None
        if samples:
            sub = "Sampled rejects: " + "; ".join(
                " ".join(str(x) for x in (s.code, s.enhanced, s.text) if x) + f" (x{s.count})"
                for s in samples)
        self._pending.append(Notice(
            ts=t, note=note, src=h.addr, msg=msg, sub=sub, total=total, rejects=rejects,
            percent=percent, window=cfg.window, window_start=start, window_end=end,
            suppress_for=self._suppress_for, recipients=recipients,
            recipients_dropped=h.recipients_dropped, samples=samples))
        self.counters.notices += 1

    def _prune_suppressed(self, t: float) -> None:
        # entries are in insertion order, which is expiry order (a constant
        # suppress_for added to a time that never goes back)
        sup = self._suppressed
        while sup:
            key = next(iter(sup))
            if sup[key] > t:
                break
            del sup[key]

    def _touch(self, addr: str, now: float) -> Host:
        h = self._hosts.get(addr)
        if h is not None:
            self._hosts.move_to_end(addr)
            h.last_seen = now
            return h
        if len(self._hosts) >= self.config.max_hosts:
            self._evict(now)
        self._gen += 1
        h = self._hosts[addr] = Host(addr, self._gen, now, self.window.new_counts())
        deadline = self.window.opened(h, now)
        if deadline is not None:
            self._push(deadline, h)
        return h

    def _evict(self, now: float) -> None:
        """Evaluate, then forget, the least active of the least recently active hosts."""
        window = self.window
        candidates = []
        for i, h in enumerate(self._hosts.values()):
            if i >= EVICTION_SAMPLE:
                break
            candidates.append((window.counts(h, now)[0], i, h))
        _, _, victim = min(candidates, key=lambda c: c[:2])
        total, rejects = window.counts(victim, now)
        self._evaluate(victim, total, rejects, now, window.start(victim), now)
        self._forget(victim)
        self.counters.hosts_evicted += 1

    def _forget(self, h: Host) -> None:
        del self._hosts[h.addr]
        self._dirty.pop(h.addr, None)

    def _push(self, t: float, h: Host) -> None:
        self._seq += 1
        heap = self._deadlines
        heapq.heappush(heap, (t, self._seq, h.addr, h.gen))
        if len(heap) > 2 * len(self._hosts) + 64:
            # entries of evicted hosts wait for their time: drop them (a host
            # has one live entry), so churn through max_hosts cannot grow it
            hosts = self._hosts
            live = [e for e in heap if (x := hosts.get(e[2])) is not None and x.gen == e[3]]
            heapq.heapify(live)
            self._deadlines = live

    def _live(self, h: Host, key) -> bool:
        gen, slot = key
        return gen == h.gen and self.window.holds(h, slot)

    def _add(self, h: Host, key, reject: int) -> None:
        if self.hook is not None:
            self.hook.counted(h.addr, self._now, reject)
        deadline = self.window.add(h, key[1], reject)
        if deadline is not None:
            self._push(deadline, h)

    def _add_recipient(self, h: Host, address: bytes) -> None:
        if not h.add_recipient(address, self.config.max_recipients):
            self.counters.recipients_dropped += 1
