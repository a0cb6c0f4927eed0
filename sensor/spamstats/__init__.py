"""Reject statistics: the Bro spam-sender detector (seed 004), with notices and bans.

What it means (faithful to ``shared/seeds/004_7a4976e4f34d1696.txt``)
---------------------------------------------------------------------
Per originating host (the client of an SMTP connection), within an inspection
window of ``period`` seconds (60 min):

* ``total``: connections that got a server reply of any code (the greeting
  counts, as Bro's ``smtp_reply`` fires for it);
* ``rejects``: connections that got at least one reply whose code is in
  ``reject_codes`` ({550, 551, 553, 554});
* the recipients (RCPT TO) of the rejected connections.

A check finds the hosts with ``total >= threshold`` (300) and
``rejects*100 // total >= percent`` (30, integer arithmetic like the seed) and
raises one notice each: ``SMTP_StrangeRejectBehavior`` when the host is in
``local_mail`` (a known mail server), else ``SMTP_PossibleInternalSpam`` when
it is in ``local_networks``, else ``SMTP_PossibleSpam``.  The message is the
seed's: ``"%s - sent: %d rejected: %d percent"``, plus ``" mailto: %s"`` (the
recipients, comma-separated) for the internal case.  Like Zeek's SSH
brute-forcing notice, a few sampled reject replies (code, enhanced code,
text) go with it (``sub`` and ``samples``).

What we fixed, and how
----------------------
1. **Repeated notices.**  The seed raises a notice at every check for as long
   as the host qualifies.  Here a notice of a type for a host suppresses the
   next one for ``suppress_for`` seconds (default ``period``, Zeek's
   ``$suppress_for``/``$identifier``), and a window is only re-evaluated when
   its counts changed: the same evidence never raises two notices.
2. **Windows that escape evaluation.**  The seed's checker runs every
   ``period`` while each host's entry expires ``period`` after its creation
   (``&create_expire``), so a host is looked at once, at a moment unrelated to
   its window, with partial data, and whatever it did between that check and
   its entry's expiry is never looked at.  Here a window is evaluated at every
   periodic check (every ``check_interval``) *and* when it ends: a fixed
   window when it closes, a sliding window each time a bucket slides out, and
   any window before its host is evicted.  Due closes and checks run in time
   order before each observation is counted, so the outcome depends on the
   event timestamps only, not on how often ``tick`` is called (a replay gives
   the notices a live run gave).
3. **The window, stated.**  ``window = "fixed"`` (default, the seed's
   semantics): a window opens at a host's first reply and lasts ``period``;
   the next reply after it opens a new one.  ``window = "sliding"``: the last
   ``period``, kept as ``sliding_buckets`` buckets; a bucket is evaluated with
   its ``sliding_buckets - 1`` successors just before it slides out.  A
   connection is counted in the window (fixed) or bucket (sliding) of its
   first reply there; a reject is counted where the connection was counted,
   so ``rejects <= total`` everywhere.  A connection alive across two windows
   is counted in both, as in the seed.
4. **Unbounded memory.**  The seed keeps a set of connection ids per host
   (``connects``, ``rej_conns``) and a recipient string that grows forever.
   Here the once-per-connection flags live in the connection's own state
   (``session.scratch``, gone with the flow), hosts are capped at
   ``max_hosts`` (past it, the least active of the oldest few is evaluated,
   then evicted), recipients at ``max_recipients`` per host and per
   connection, distinct samples at ``max_samples`` per host, suppression
   entries at ``max_hosts``.  Every eviction and every dropped item is
   counted (:class:`Counters`).
5. **Recipients.**  The seed copies the session's recipients at the first
   reject only (later RCPTs of that connection are lost) and may read a
   session that is already gone.  Here every recipient of a rejected
   connection is kept (up to the cap), before and after the reject.
6. **Nothing survives a restart** in the seed.  Here :func:`write_snapshot`
   / :func:`read_snapshot` keep the statistics, the suppressions, the check
   schedule and the bans in a msgpack file, times in wall-clock terms, written
   atomically; a corrupt file is set aside, never fatal.  A window that ended
   while the sensor was down is evaluated at the first tick after the restart.

Using it
--------
::

    stats = RejectStats(config.spam_stats)                 # clock: time.time
    actor = SpamStatsActor(stats, sink, KernelEnforcer(maps))
    pipeline = Pipeline(sink, listeners=[RejectStatsListener(stats, actor)])
    read_snapshot(state_file, stats, actor)                # at start
    ... actor.tick(now) every second or so; write_snapshot(state_file, stats, actor)
        every snapshot_interval and at shutdown.

``RejectStats`` owns no clock: every call takes the time (the events' own
timestamps, capture time in a replay); ``clock`` only serves as the default
``now`` and, with ``wall``, to convert times to wall-clock in snapshots.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import msgpack

from sensor.config import NOTICE_TYPES, POSSIBLE_INTERNAL_SPAM, POSSIBLE_SPAM, STRANGE_REJECT_BEHAVIOR, SpamStatsConfig
from sensor.errors import SensorError
from sensor.kernel import abi
from sensor.smtp import events as sev

__all__ = [
    "RejectStats", "RejectStatsListener", "SpamStatsActor", "ConnState", "Notice", "Sample",
    "Counters", "Ban", "Restored", "SnapshotError", "notice_record", "ban_record",
    "write_snapshot", "read_snapshot", "NOTICE_TYPES", "POSSIBLE_SPAM",
    "POSSIBLE_INTERNAL_SPAM", "STRANGE_REJECT_BEHAVIOR",
]

#: characters of a reply's text kept in a sample
SAMPLE_TEXT = 200
#: hosts looked at (from the least recently active) to choose which to evict
EVICTION_SAMPLE = 8
SNAPSHOT_FORMAT = "smtp-sensor/spam-stats"
SNAPSHOT_VERSION = 1


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


class Counters:
    """What the statistics did, for metrics and the stats line."""

    __slots__ = ("replies", "connections", "rejected", "checks", "evaluations", "windows_closed",
                 "notices", "suppressed", "hosts_evicted", "recipients_dropped", "samples_dropped",
                 "suppressions_evicted")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


class ConnState:
    """Per-connection flags (kept in ``session.scratch``): where the connection
    was counted and whether its reject was; the recipients it named."""

    __slots__ = ("counted", "rejected", "recipients")

    def __init__(self):
        self.counted = None      # (host generation, bucket or None)
        self.rejected = None     # the key it was counted as rejected under
        self.recipients: list[str] = []


class _Host:
    __slots__ = ("addr", "gen", "start", "last_seen", "total", "rejects", "buckets", "recipients",
                 "recipients_dropped", "samples", "samples_dropped")

    def __init__(self, addr: str, gen: int, start: float):
        self.addr = addr
        self.gen = gen
        self.start = start
        self.last_seen = start
        self.total = 0                      # fixed window
        self.rejects = 0
        self.buckets: dict[int, list] = {}  # sliding: bucket number -> [total, rejects]
        self.recipients: dict[str, None] = {}
        self.recipients_dropped = 0
        self.samples: dict[tuple, list] = {}   # (code, enhanced, text) -> [count, uid, ts]
        self.samples_dropped = 0


def _in(addr: str, networks) -> bool:
    if not networks:
        return False
    ip = ipaddress.ip_address(addr)
    return any(ip.version == net.version and ip in net for net in networks)


class RejectStats:
    """Per-host connection and reject counts, checked against the thresholds."""

    def __init__(self, config: SpamStatsConfig | None = None, *, clock=time.time, wall=time.time):
        self.config = config if config is not None else SpamStatsConfig()
        self.clock = clock
        self.wall = wall
        self.counters = Counters()
        cfg = self.config
        self._sliding = cfg.window == "sliding"
        self._period = cfg.period
        self._nbuckets = cfg.sliding_buckets
        self._width = cfg.period / cfg.sliding_buckets
        self._interval = cfg.check_every
        self._suppress_for = cfg.suppression
        self._reject_codes = cfg.reject_codes
        self._hosts: OrderedDict[str, _Host] = OrderedDict()    # least recently active first
        self._deadlines: list = []          # heap of (time, seq, addr, gen): a window ends
        self._seq = 0
        self._gen = 0
        self._dirty: dict[str, None] = {}   # hosts whose counts changed since their last evaluation
        self._suppressed: dict[tuple, float] = {}   # (note, addr) -> until, in insertion order
        self._pending: list[Notice] = []
        self._next_check: float | None = None
        self._now = -math.inf

    # ------------------------------------------------------------ input
    def observe_reply(self, host: str, ts: float, code: int, conn: ConnState, *,
                      enhanced: str | None = None, text: str = "", uid: str | None = None) -> None:
        """A server reply on a connection from ``host``; ``conn`` is that connection's state."""
        now = self._advance(ts)
        self.counters.replies += 1
        h = self._touch(host, now)
        if conn.counted is None or not self._live(h, conn.counted):
            conn.counted = (h.gen, self._slot(now) if self._sliding else None)
            self._add(h, conn.counted, 0)
            self.counters.connections += 1
            self._dirty[host] = None
        if code in self._reject_codes:
            if conn.rejected != conn.counted:
                conn.rejected = conn.counted
                self._add(h, conn.counted, 1)
                self.counters.rejected += 1
                self._dirty[host] = None
                for rcpt in conn.recipients:
                    self._add_recipient(h, rcpt)
            self._sample(h, code, enhanced, text, uid, now)

    def observe_recipient(self, host: str, address: str, conn: ConnState) -> None:
        """A RCPT TO on a connection from ``host``."""
        if len(conn.recipients) < self.config.max_recipients:
            if address not in conn.recipients:
                conn.recipients.append(address)
        else:
            self.counters.recipients_dropped += 1
        h = self._hosts.get(host)
        if h is not None and conn.rejected is not None and conn.rejected == conn.counted \
                and self._live(h, conn.rejected):
            self._add_recipient(h, address)

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
        return self._window(h, self._now)

    def recipients(self, host: str) -> list[str]:
        h = self._hosts.get(host)
        return list(h.recipients) if h is not None else []

    def classify(self, host: str) -> str:
        """The notice type a host would get."""
        cfg = self.config
        if _in(host, cfg.local_mail):
            return STRANGE_REJECT_BEHAVIOR
        if _in(host, cfg.local_networks):
            return POSSIBLE_INTERNAL_SPAM
        return POSSIBLE_SPAM

    def report(self, limit: int = 100) -> dict:
        """Per host (most connections first, at most ``limit``): window counts,
        percent rejected, the notice type it would get, recipients of its
        rejected connections; plus the counters (``smtp-sensor stats``)."""
        rows = []
        for addr, h in self._hosts.items():
            total, rejects = self._window(h, self._now)
            rows.append({"host": addr, "total": total, "rejects": rejects,
                         "percent": rejects * 100 // total if total else 0,
                         "class": self.classify(addr), "recipients": list(h.recipients)[:20]})
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

    # ------------------------------------------------------------ persistence
    def snapshot(self, path) -> None:
        """Write the statistics (no bans: see SpamStatsActor.snapshot) atomically."""
        write_snapshot(path, self)

    def restore(self, path) -> "Restored":
        return read_snapshot(path, self)

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
        for addr in list(self._dirty):
            h = self._hosts.get(addr)
            if h is None:
                del self._dirty[addr]
                continue
            total, rejects = self._window(h, t)
            if self._sliding:
                start, end = t - self._period, t
            else:
                start, end = h.start, h.start + self._period
            self._evaluate(h, total, rejects, t, start, end)
        self._prune_suppressed(t)

    def _window_end(self, h: _Host, t: float) -> None:
        """A fixed window closes, or a sliding window's oldest bucket slides out."""
        if not self._sliding:
            self._evaluate(h, h.total, h.rejects, t, h.start, t)
            self._forget(h)
            self.counters.windows_closed += 1
            return
        oldest = next(iter(h.buckets))
        # the full window that ends now: the oldest bucket and its successors
        # (computed from bucket numbers: no float arithmetic on timestamps)
        total = rejects = 0
        for slot, (tot, rej) in h.buckets.items():
            if slot < oldest + self._nbuckets:
                total += tot
                rejects += rej
        self._evaluate(h, total, rejects, t, oldest * self._width, t)
        del h.buckets[oldest]
        self.counters.windows_closed += 1
        if h.buckets:
            # what is left is a window too (a share can rise as accepted
            # connections slide out): evaluated now, not at the next check
            self._dirty[h.addr] = None
            total, rejects = self._window(h, t)
            self._evaluate(h, total, rejects, t, t - self._period, t)
            self._push(self._bucket_end(next(iter(h.buckets))), h)
        else:
            self._forget(h)

    def _evaluate(self, h: _Host, total: int, rejects: int, t: float, start: float, end: float) -> None:
        """One window of one host against the thresholds (only if it changed)."""
        if h.addr not in self._dirty:
            return          # evaluated already with these very counts
        del self._dirty[h.addr]
        self.counters.evaluations += 1
        cfg = self.config
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
        recipients = tuple(h.recipients)
        msg = f"{h.addr} - sent: {total} rejected: {percent} percent"
        if note == POSSIBLE_INTERNAL_SPAM:
            msg += f" mailto: {','.join(recipients)}"
        samples = tuple(Sample(code, enh, text, s[0], s[1], s[2])
                        for (code, enh, text), s in h.samples.items())
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

    def _touch(self, addr: str, now: float) -> _Host:
        h = self._hosts.get(addr)
        if h is not None:
            self._hosts.move_to_end(addr)
            h.last_seen = now
            return h
        if len(self._hosts) >= self.config.max_hosts:
            self._evict(now)
        self._gen += 1
        h = self._hosts[addr] = _Host(addr, self._gen, now)
        if not self._sliding:
            self._push(now + self._period, h)
        return h

    def _evict(self, now: float) -> None:
        """Evaluate, then forget, the least active of the least recently active hosts."""
        candidates = []
        for i, h in enumerate(self._hosts.values()):
            if i >= EVICTION_SAMPLE:
                break
            candidates.append((self._window(h, now)[0], i, h))
        _, _, victim = min(candidates, key=lambda c: c[:2])
        total, rejects = self._window(victim, now)
        if self._sliding:
            start = next(iter(victim.buckets), 0) * self._width
        else:
            start = victim.start
        self._evaluate(victim, total, rejects, now, start, now)
        self._forget(victim)
        self.counters.hosts_evicted += 1

    def _forget(self, h: _Host) -> None:
        del self._hosts[h.addr]
        self._dirty.pop(h.addr, None)

    def _push(self, t: float, h: _Host) -> None:
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

    def _slot(self, t: float) -> int:
        return math.floor(t / self._width)

    def _bucket_end(self, slot: int) -> float:
        return (slot + self._nbuckets) * self._width

    def _live(self, h: _Host, key) -> bool:
        gen, slot = key
        return gen == h.gen and (slot is None or slot in h.buckets)

    def _add(self, h: _Host, key, reject: int) -> None:
        _, slot = key
        if slot is None:
            if reject:
                h.rejects += 1
            else:
                h.total += 1
            return
        b = h.buckets.get(slot)
        if b is None:
            b = h.buckets[slot] = [0, 0]
            if len(h.buckets) == 1:
                self._push(self._bucket_end(slot), h)
        b[reject] += 1

    def _window(self, h: _Host, t: float) -> tuple[int, int]:
        if not self._sliding:
            return h.total, h.rejects
        first = self._slot(t) - self._nbuckets
        total = rejects = 0
        for slot, (tot, rej) in h.buckets.items():
            if slot > first:
                total += tot
                rejects += rej
        return total, rejects

    def _add_recipient(self, h: _Host, address: str) -> None:
        if address in h.recipients:
            return
        if len(h.recipients) < self.config.max_recipients:
            h.recipients[address] = None
        else:
            h.recipients_dropped += 1
            self.counters.recipients_dropped += 1

    def _sample(self, h: _Host, code, enhanced, text, uid, now) -> None:
        key = (code, enhanced, text[:SAMPLE_TEXT])
        s = h.samples.get(key)
        if s is not None:
            s[0] += 1
        elif len(h.samples) < self.config.max_samples:
            h.samples[key] = [1, uid, now]
        else:
            h.samples_dropped += 1
            self.counters.samples_dropped += 1

    # ------------------------------------------------------------ state
    def _state(self) -> dict:
        """Everything, times in wall-clock seconds (for the snapshot)."""
        off = self.wall() - self.clock()
        hosts = []
        for h in self._hosts.values():
            buckets = [[slot * self._width + off, tot, rej] for slot, (tot, rej) in h.buckets.items()]
            samples = [[code, enh, text, s[0], s[1], s[2] + off]
                       for (code, enh, text), s in h.samples.items()]
            hosts.append([h.addr, h.start + off, h.last_seen + off, h.total, h.rejects, buckets,
                          list(h.recipients), h.recipients_dropped, samples, h.samples_dropped,
                          h.addr in self._dirty])
        return {
            "window": self.config.window,
            "period": self._period,
            "next_check": None if self._next_check is None else self._next_check + off,
            "hosts": hosts,
            "suppressed": [[note, addr, until + off] for (note, addr), until in self._suppressed.items()],
            "counters": self.counters.as_dict(),
        }

    def _load_state(self, state: dict) -> int:
        """Replace everything with a snapshot's state (already type-checked by the caller)."""
        off = self.wall() - self.clock()
        hosts: OrderedDict[str, _Host] = OrderedDict()
        dirty: dict[str, None] = {}
        rows = sorted(state["hosts"], key=lambda r: r[2])      # least recently active first
        for (addr, start, last_seen, total, rejects, buckets, recipients, rdropped,
             samples, sdropped, is_dirty) in rows[-self.config.max_hosts:]:
            ipaddress.ip_address(addr)
            self._gen += 1
            h = _Host(addr, self._gen, start - off)
            h.last_seen = last_seen - off
            if self._sliding:
                if buckets:
                    for bstart, tot, rej in buckets:
                        b = h.buckets.setdefault(self._slot(bstart - off + self._width / 2), [0, 0])
                        b[0] += int(tot)
                        b[1] += int(rej)
                else:       # a fixed window, restored as one bucket
                    h.buckets[self._slot(h.start)] = [int(total), int(rejects)]
                h.buckets = dict(sorted(h.buckets.items()))
                if not h.buckets:
                    continue
            else:
                if buckets:     # a sliding window, restored as a fixed one from its oldest bucket
                    h.start = min(b[0] for b in buckets) - off
                    total = sum(int(b[1]) for b in buckets)
                    rejects = sum(int(b[2]) for b in buckets)
                h.total, h.rejects = int(total), int(rejects)
            h.recipients = dict.fromkeys(str(r) for r in recipients[:self.config.max_recipients])
            h.recipients_dropped = int(rdropped)
            for code, enh, text, count, uid, ts in samples[:self.config.max_samples]:
                h.samples[(int(code), enh, str(text))] = [int(count), uid, ts - off]
            h.samples_dropped = int(sdropped)
            hosts[addr] = h
            if is_dirty:
                dirty[addr] = None
        self._hosts = hosts
        self._dirty = dirty
        self._deadlines = []
        for h in hosts.values():
            self._push(self._bucket_end(next(iter(h.buckets))) if self._sliding
                       else h.start + self._period, h)
        self._suppressed = {(str(note), str(addr)): until - off
                            for note, addr, until in sorted(state["suppressed"], key=lambda r: r[2])}
        nc = state.get("next_check")
        self._next_check = None if nc is None else nc - off
        for name, value in state.get("counters", {}).items():
            if name in Counters.__slots__:
                setattr(self.counters, name, int(value))
        return len(hosts)


class RejectStatsListener:
    """A pipeline listener: ``Pipeline(listeners=[RejectStatsListener(stats)])``.

    Counts each connection once at its first server reply, and once more as
    rejected at its first reject reply, with the flags in ``session.scratch``;
    hands RCPT TO addresses over.  With ``actor``, notices raised while
    counting (a window that ended) are acted on at once."""

    KEY = "spam_stats"

    def __init__(self, stats: RejectStats, actor: "SpamStatsActor | None" = None):
        self.stats = stats
        self.actor = actor

    def __call__(self, session, event) -> None:
        kind = type(event)
        if kind is sev.Reply:
            conn = session.scratch.get(self.KEY)
            if conn is None:
                conn = session.scratch[self.KEY] = ConnState()
            flow = session.flow
            text = " ".join(event.lines)
            enhanced = event.enhanced
            if enhanced and text.startswith(enhanced):
                text = text[len(enhanced):].lstrip()
            self.stats.observe_reply(flow.orig_h, event.ts, event.code, conn, enhanced=enhanced,
                                     text=text, uid=flow.uid)
            if self.actor is not None and self.stats.pending:
                self.actor.act(self.stats.drain(), event.ts)
        elif kind is sev.RcptTo:
            conn = session.scratch.get(self.KEY)
            if conn is None:
                conn = session.scratch[self.KEY] = ConnState()
            address = event.address if event.address is not None else event.raw
            self.stats.observe_recipient(session.flow.orig_h, address, conn)


# ---------------------------------------------------------------- records

def notice_record(notice: Notice, *, actions=(), ban_ttl: float | None = None) -> dict:
    """The ``notice`` record (Zeek's notice.log fields, plus the counts)."""
    rec = {"ts": notice.ts, "event_type": "notice", "note": notice.note, "msg": notice.msg}
    if notice.sub:
        rec["sub"] = notice.sub
    rec.update({
        "src": notice.src, "n": notice.rejects, "total": notice.total, "rejects": notice.rejects,
        "percent": notice.percent, "window": notice.window, "window_start": notice.window_start,
        "window_end": notice.window_end, "suppress_for": notice.suppress_for,
    })
    if notice.recipients:
        rec["recipients"] = list(notice.recipients)
    if notice.recipients_dropped:
        rec["recipients_dropped"] = notice.recipients_dropped
    if notice.samples:
        samples = []
        for s in notice.samples:
            d = {"code": s.code}
            if s.enhanced:
                d["enhanced"] = s.enhanced
            d["text"] = s.text
            d["count"] = s.count
            if s.uid:
                d["uid"] = s.uid
            samples.append(d)
        rec["samples"] = samples
    rec["actions"] = list(actions)
    if ban_ttl:
        rec["ban_ttl"] = ban_ttl
    return rec


def ban_record(ts: float, network: str, ttl: float, enforced_by: str) -> dict:
    """The ``drop`` record of a source ban made by the reject statistics."""
    return {"ts": ts, "event_type": "drop", "action": "ban_source", "target": network,
            "reason": "spam_stats", "ttl": ttl, "enforced_by": enforced_by}


# ---------------------------------------------------------------- actions

@dataclass(slots=True)
class Ban:
    """A ban this module made: the prefix, why, and until when (the stats' clock)."""

    network: str
    note: str
    since: float
    expires: float
    ttl: float


class SpamStatsActor:
    """Acts on notices: a ``notice`` record each, and, when the notice type has
    a ban TTL (``[spam_stats.ban]``) and the host is not in ``allow``, a ban of
    the host (/32 or /128) through ``enforcer`` (reason SPAM_STATS) and a
    ``drop`` record.  Keeps the bans it made, to sweep and to snapshot."""

    def __init__(self, stats: RejectStats, sink, enforcer=None, config: SpamStatsConfig | None = None):
        self.stats = stats
        self.sink = sink
        self.enforcer = enforcer
        self.config = config if config is not None else stats.config
        self.bans: dict[str, Ban] = {}
        self.banned = 0            # bans made
        self.allowed = 0           # bans not made: the host is in the allow list
        self.ban_errors = 0        # bans the enforcer failed to write
        self.last_error: str | None = None

    def tick(self, now: float | None = None) -> list[Notice]:
        """``stats.tick(now)``, act on its notices, sweep expired bans; returns the notices."""
        now = self.stats.clock() if now is None else now
        notices = self.stats.tick(now)
        self.act(notices, now)
        self.sweep(now)
        return notices

    def finish(self) -> list[Notice]:
        """The input ended (the end of a replayed capture): run the checker once
        more at the last time seen and act on its notices; returns them.

        A live sensor's clock goes on after the last packet, so its next check
        (at most ``check_interval`` later) judges what the last connections
        changed; a capture's clock stops at its last packet.  Without this a
        replay of exactly the spam sessions (a capture ending within
        ``check_interval`` of the burst, any capture shorter than the default
        interval of an hour) gave no notice where the live sensor gave one.
        Only windows changed since their last evaluation are looked at: no
        notice is raised twice."""
        now = self.stats.now
        if now is None:
            return []
        notices = self.stats.check(now)
        self.act(notices, now)
        return notices

    def act(self, notices, now: float | None = None) -> None:
        for notice in notices:
            self.handle(notice, now)

    def handle(self, notice: Notice, now: float | None = None) -> dict:
        """Log one notice, ban if configured; returns the notice record."""
        now = notice.ts if now is None else max(now, notice.ts)
        ttl = self.config.ban_ttl(notice.note)
        actions, ban_ttl, network = [], None, None
        if ttl > 0 and self.enforcer is not None:
            if _in(notice.src, self.config.allow):
                self.allowed += 1
            else:
                ip = ipaddress.ip_address(notice.src)
                network = f"{ip}/{ip.max_prefixlen}"
                try:
                    self.enforcer.ban(network, ttl, now, abi.Reason.SPAM_STATS)
                except Exception as exc:       # bcc raises plain Exception; a ban must not stop us
                    self.ban_errors += 1
                    self.last_error = f"ban of {network} failed: {exc}"
                    network = None
                else:
                    actions, ban_ttl = ["ban"], ttl
                    self.bans[network] = Ban(network, notice.note, now, now + ttl, ttl)
                    self.banned += 1
        rec = notice_record(notice, actions=actions, ban_ttl=ban_ttl)
        self.sink(rec)
        if network is not None:
            self.sink(ban_record(now, network, ttl, getattr(self.enforcer, "mode", "kernel")))
        return rec

    def sweep(self, now: float | None = None) -> int:
        """Forget the bans that have expired (the kernel ignores them; the
        datapath's sweep removes them from the maps); returns how many."""
        now = self.stats.clock() if now is None else now
        expired = [net for net, ban in self.bans.items() if ban.expires <= now]
        for net in expired:
            del self.bans[net]
        return len(expired)

    def snapshot(self, path) -> None:
        write_snapshot(path, self.stats, self)

    def restore(self, path, *, reapply: bool = True) -> "Restored":
        return read_snapshot(path, self.stats, self, reapply=reapply)

    def _state(self) -> list:
        off = self.stats.wall() - self.stats.clock()
        return [[b.network, b.note, b.since + off, b.expires + off, b.ttl] for b in self.bans.values()]

    def _parse_state(self, rows) -> dict:
        """The bans of a snapshot, still running, in the stats' clock (raises if malformed)."""
        off = self.stats.wall() - self.stats.clock()
        now = self.stats.clock()
        bans = {}
        for row in rows:
            network, note, since, expires, ttl = row
            network = str(ipaddress.ip_network(network, strict=False))
            ban = Ban(network, str(note), float(since) - off, float(expires) - off, float(ttl))
            if ban.expires > now:
                bans[network] = ban
        return bans

    def _load_state(self, bans: dict, reapply: bool) -> int:
        now = self.stats.clock()
        self.bans = bans
        if reapply and self.enforcer is not None:
            for ban in bans.values():
                try:
                    self.enforcer.ban(ban.network, ban.expires - now, now, abi.Reason.SPAM_STATS)
                except Exception as exc:       # bcc raises plain Exception; a ban must not stop us
                    self.ban_errors += 1
                    self.last_error = f"ban of {ban.network} failed: {exc}"
        return len(bans)


# ---------------------------------------------------------------- snapshots

class SnapshotError(SensorError):
    """A snapshot could not be written (one line: the path and why)."""


@dataclass(frozen=True)
class Restored:
    """What ``read_snapshot`` did; ``message`` is one line for the log."""

    ok: bool
    message: str
    hosts: int = 0
    bans: int = 0
    set_aside: Path | None = None


def write_snapshot(path, stats: RejectStats, actor: SpamStatsActor | None = None) -> None:
    """Write the statistics (and the actor's bans) to ``path`` atomically:
    a temporary file in the same folder, fsync, rename, fsync of the folder.
    A crash at any point leaves the previous snapshot whole."""
    path = Path(path)
    state = {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "saved_at": stats.wall()}
    state.update(stats._state())
    state["bans"] = actor._state() if actor is not None else []
    data = msgpack.packb(state, use_bin_type=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise SnapshotError(f"cannot write the snapshot {path}: {exc.strerror or exc}") from None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Corrupt(Exception):
    pass


def read_snapshot(path, stats: RejectStats, actor: SpamStatsActor | None = None, *,
                  reapply: bool = True) -> Restored:
    """Restore what ``write_snapshot`` wrote.  Never raises: a missing file is
    a fresh start; an unreadable or corrupt one is reported and renamed to
    ``<path>.corrupt-<timestamp>``, and the statistics start empty.  With
    ``reapply``, the bans still running are written again through the actor's
    enforcer (their remaining TTL), for a datapath whose pins were lost."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Restored(True, f"{path}: no snapshot yet, starting empty")
    except OSError as exc:
        return _set_aside(path, f"unreadable ({exc.strerror or exc})", stats)
    try:
        state = msgpack.unpackb(data, raw=False, strict_map_key=False)
        _check_state(state)
    except Exception as exc:       # msgpack raises several types; any of them means corrupt
        return _set_aside(path, f"corrupt ({type(exc).__name__}: {_one_line(exc)})", stats)
    # load into fresh objects first, so a bad row leaves the live ones untouched
    fresh = RejectStats(stats.config, clock=stats.clock, wall=stats.wall)
    try:
        hosts = fresh._load_state(state)
        bans = actor._parse_state(state["bans"]) if actor is not None else {}
    except Exception as exc:
        return _set_aside(path, f"corrupt ({type(exc).__name__}: {_one_line(exc)})", stats)
    stats.__dict__.update({k: v for k, v in fresh.__dict__.items()
                           if k not in ("config", "clock", "wall")})
    nbans = actor._load_state(bans, reapply) if actor is not None else 0
    age = stats.wall() - state["saved_at"]
    return Restored(True, f"{path}: restored {hosts} hosts and {nbans} bans, saved {age:.0f} s ago",
                    hosts, nbans)


def _one_line(exc) -> str:
    text = " ".join(str(exc).split())
    return text[:160]


def _check_state(state) -> None:
    if not isinstance(state, dict):
        raise _Corrupt("not a map")
    if state.get("format") != SNAPSHOT_FORMAT:
        raise _Corrupt(f"format {state.get('format')!r}, expected {SNAPSHOT_FORMAT!r}")
    if state.get("version") != SNAPSHOT_VERSION:
        raise _Corrupt(f"version {state.get('version')!r}, expected {SNAPSHOT_VERSION}")
    for key, kind in (("saved_at", (int, float)), ("hosts", list), ("suppressed", list),
                      ("bans", list)):
        if not isinstance(state.get(key), kind):
            raise _Corrupt(f"{key} missing or of the wrong type")
    for row in state["hosts"]:
        if not isinstance(row, list) or len(row) != 11:
            raise _Corrupt("a host row is not an 11-item array")
        if not all(isinstance(row[i], (int, float)) for i in (1, 2, 3, 4, 7, 9)):
            raise _Corrupt("a host row holds a non-number where a number belongs")
        if not all(isinstance(row[i], list) for i in (5, 6, 8)):
            raise _Corrupt("a host row holds a non-array where an array belongs")


def _set_aside(path: Path, why: str, stats: RejectStats) -> Restored:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(stats.wall()))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    try:
        os.replace(path, target)
    except OSError as exc:
        return Restored(False, f"{path}: snapshot {why}; starting empty; could not set it aside: "
                        f"{exc.strerror or exc}")
    return Restored(False, f"{path}: snapshot {why}; set aside as {target.name}, starting empty",
                    set_aside=target)
