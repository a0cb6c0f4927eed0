"""The writer thread: what the event loop hands over goes to Redis in
batched pipelines, and what comes back is handed to the loop.

The event loop never waits for Redis.  It calls ``count``, ``claim`` and
``publish`` (a dict update or a ``put_nowait``: no I/O) and, about every
turn, takes the answers with ``answers()``.  The thread wakes when there is
something to send (counts: at most every ``FLUSH_INTERVAL``, so that one
pipeline carries many; a claim or a ban: at once), sends it all in one
pipeline, and queues the answers:

* counts: a connection or its reject, summed per (host, bucket) until the
  next flush: one HINCRBY per field and an EXPIRE per bucket, then an HMGET
  of the host's buckets of a window (the fleet's counts, including what the
  other sensors wrote before: the sensor whose flush comes last sees them
  all), answered as ``("fleet", host, {slot: (total, rejects)})``;
* claims: SET NX EX of a notice key, answered as ``("claim", token, won)``,
  ``won`` None when Redis could not be asked (the caller fails open);
* bans: XADD to the ban stream.

Bounds: the counts waiting are at most ``max_pending`` (host, bucket) pairs,
claims and bans waiting at most ``max_pending`` each; past that they are
counted (``dropped``) and not kept.  While Redis is unreachable the counts
keep being summed, the bans and the claims (as marks: the notice was raised
locally, the key tells the other sensors) are kept, and all of it goes out
when it returns, ``MAX_BATCH`` (host, bucket) pairs per pipeline.
"""

from __future__ import annotations

import collections
import itertools
import queue
import threading

import redis

from sensor.cluster.connection import UNAVAILABLE
from sensor.cluster.keys import STREAM_MAXLEN, Keys, parse_count
from sensor.counters import Counters, counter, gauge

__all__ = ["Shipper", "ShipperCounters", "FLUSH_INTERVAL", "MAX_BATCH"]

#: seconds between two flushes at most while there is something to send
FLUSH_INTERVAL = 0.02
#: (host, bucket) counts sent by one pipeline at most (after an outage the
#: rest follow in the next ones: no pipeline longer than ``timeout`` allows)
MAX_BATCH = 2000


class ShipperCounters(Counters):
    """``owner``: the Shipper."""

    METRIC_PREFIX = "cluster_"
    pending = gauge("(host, bucket) counts waiting for Redis", read=lambda s: len(s._counts))
    flushes = counter("pipelines sent to Redis")
    commands = counter("commands sent to Redis in those pipelines")
    counts_sent = counter("connections and rejects added to the shared statistics")
    claims = counter("notice claims asked (SET NX)")
    claims_won = counter("notice claims this sensor won")
    bans_published = counter("bans published on the stream")
    dropped = counter("counts, claims or bans not kept: max_pending reached", by="what")
    bad_values = counter("values in Redis rejected (wrong type, not a count, too large)")


#: error replies that say this client may not use Redis at all (an outage, not a bad value)
REFUSED = ("NOAUTH", "NOPERM", "WRONGPASS")


def _refused(results) -> None:
    for res in results:
        if isinstance(res, redis.AuthenticationError) or \
                (isinstance(res, redis.ResponseError) and str(res).startswith(REFUSED)):
            raise redis.AuthenticationError(str(res))


class Shipper:
    def __init__(self, client, keys: Keys, link, *, window_buckets: int, bucket_ttl: int, max_pending: int,
                 sensor: str):
        self.client = client
        self.keys = keys
        self.link = link
        self.window_buckets = window_buckets
        self.bucket_ttl = bucket_ttl
        self.max_pending = max_pending
        self.sensor = sensor
        self.counters = ShipperCounters(self)
        self._lock = threading.Lock()
        self._counts: dict[tuple, list] = {}       # (host, slot) -> [connections, rejects]
        self._ops: queue.Queue = queue.Queue(maxsize=max_pending)
        self._bans: collections.OrderedDict = collections.OrderedDict()   # network -> fields, to publish
        self._marks: collections.OrderedDict = collections.OrderedDict()  # key -> ttl, SET NX after an outage
        self._answers: collections.deque = collections.deque()
        self._wake = threading.Event()        # something to send
        self._urgent = threading.Event()      # a claim or a ban: not worth waiting for more counts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-shipper", daemon=True)

    # ------------------------------------------------------------ the loop's side (no I/O)
    def count(self, host: str, slot: int, reject: int) -> None:
        key = (host, slot)
        with self._lock:
            c = self._counts.get(key)
            if c is None:
                if len(self._counts) >= self.max_pending:
                    self.counters.dropped["counts"] = self.counters.dropped.get("counts", 0) + 1
                    return
                c = self._counts[key] = [0, 0]
            c[reject] += 1
        if not self._wake.is_set():
            self._wake.set()

    def claim(self, note: str, host: str, ttl: float, token) -> bool:
        """Ask for the notice key; False when the queue is full (not asked)."""
        return self._put(("claim", self.keys.notice(note, host), max(1, int(ttl)), token))

    def mark(self, note: str, host: str, ttl: float) -> bool:
        """Set the notice key when Redis can be reached (a notice raised without a claim)."""
        return self._put(("mark", self.keys.notice(note, host), max(1, int(ttl))))

    def publish(self, network: str, note: str, expires: float, ttl: float) -> bool:
        return self._put(("ban", network, {"sensor": self.sensor, "network": network, "note": note,
                                           "expires": repr(float(expires)), "ttl": repr(float(ttl))}))

    def answers(self) -> list:
        """What came back since the last call (in the loop's thread)."""
        out, popleft = [], self._answers.popleft
        while self._answers:
            out.append(popleft())
        return out

    def _put(self, op) -> bool:
        try:
            self._ops.put_nowait(op)
        except queue.Full:
            self._drop(op[0])
            return False
        self._urgent.set()
        self._wake.set()
        return True

    def _drop(self, what: str) -> None:
        self.counters.dropped[what] = self.counters.dropped.get(what, 0) + 1

    # ------------------------------------------------------------ the thread
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """One last flush (if Redis answers within ``timeout``), then end the thread."""
        self._stop.set()
        self._urgent.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait(max(FLUSH_INTERVAL, self.link.wait_s()))
            stopping = self._stop.is_set()
            self._wake.clear()
            self._urgent.clear()
            try:
                self.flush()
            except Exception as exc:        # a bug here must not end the sharing silently
                self.link.log.error("cluster flush failed", error=f"{type(exc).__name__}: {exc}")
            if stopping:
                return
            # counts wait a little for more (one pipeline carries many); claims and bans do not
            self._urgent.wait(FLUSH_INTERVAL)

    def flush(self) -> None:
        """Send what waits (one pipeline); on an outage keep it for the next time."""
        claims, ops = [], []
        while True:
            try:
                ops.append(self._ops.get_nowait())
            except queue.Empty:
                break
        for op in ops:
            if op[0] == "claim":
                claims.append(op)
            elif op[0] == "mark":
                self._keep_mark(op[1], op[2])
            else:
                self._bans[op[1]] = op[2]
                self._bans.move_to_end(op[1])
                while len(self._bans) > self.max_pending:
                    self._bans.popitem(last=False)
                    self._drop("bans")
        if not self.link.may_try():
            self._unanswered(claims)
            return
        with self._lock:
            if len(self._counts) <= MAX_BATCH:
                counts, self._counts = self._counts, {}
            else:
                counts = {k: self._counts.pop(k) for k in list(itertools.islice(self._counts, MAX_BATCH))}
                self._wake.set()
        bans, marks = list(self._bans.items()), list(self._marks.items())
        if not (counts or claims or bans or marks):
            return
        try:
            pipe = self.client.get().pipeline(transaction=False)
            reads = self._queue_counts(pipe, counts)
            for _, key, ttl, _ in claims:
                pipe.set(key, self.sensor, nx=True, ex=ttl)
            for key, ttl in marks:
                pipe.set(key, self.sensor, nx=True, ex=ttl)
            for _, fields in bans:
                pipe.xadd(self.keys.bans, fields, maxlen=STREAM_MAXLEN, approximate=True)
            n = len(pipe)
            results = pipe.execute(raise_on_error=False)
            _refused(results)
        except UNAVAILABLE as exc:
            self.link.failed(exc)
            self._restore(counts)
            self._unanswered(claims)
            return
        self.link.succeeded()
        self.counters.flushes += 1
        self.counters.commands += n
        self._read_counts(results, counts, reads)
        at = len(results) - len(claims) - len(marks) - len(bans)
        for (_, key, ttl, token), res in zip(claims, results[at:]):
            self.counters.claims += 1
            if isinstance(res, Exception):      # not asked, in effect: raised locally, the key set later
                self.counters.bad_values += 1
                self._answers.append(("claim", token, None))
                self._keep_mark(key, ttl)
                continue
            self.counters.claims_won += res is True
            self._answers.append(("claim", token, res is True))
        at += len(claims)
        for (key, _), res in zip(marks, results[at:]):
            self._marks.pop(key, None)
        at += len(marks)
        for (network, fields), res in zip(bans, results[at:]):
            if self._bans.get(network) is fields:
                del self._bans[network]
            if isinstance(res, Exception):
                self.counters.bad_values += 1
            else:
                self.counters.bans_published += 1

    def _queue_counts(self, pipe, counts) -> list:
        """HINCRBY and EXPIRE each (host, bucket), then HMGET each host's window; the reads' order."""
        latest: dict[str, int] = {}
        for (host, slot), (total, rejects) in counts.items():
            key = self.keys.bucket(host, slot)
            if total:
                pipe.hincrby(key, "t", total)
            if rejects:
                pipe.hincrby(key, "r", rejects)
            pipe.expire(key, self.bucket_ttl)
            if slot > latest.get(host, slot - 1):
                latest[host] = slot
        reads = []
        for host, last in latest.items():
            slots = range(last - self.window_buckets, last + 1)
            for slot in slots:
                pipe.hmget(self.keys.bucket(host, slot), "t", "r")
            reads.append((host, slots))
        return reads

    def _read_counts(self, results, counts, reads) -> None:
        i = 0
        for (host, slot), (total, rejects) in counts.items():
            for res in results[i:i + bool(total) + bool(rejects)]:
                if isinstance(res, Exception):       # WRONGTYPE: the key is not a hash
                    self.counters.bad_values += 1
            i += bool(total) + bool(rejects) + 1
            self.counters.counts_sent += total + rejects
        for host, slots in reads:
            buckets = {}
            for slot, res in zip(slots, results[i:i + len(slots)]):
                if isinstance(res, Exception) or not isinstance(res, list) or len(res) != 2:
                    self.counters.bad_values += 1
                    continue
                t, r = parse_count(res[0]), parse_count(res[1])
                if t is None or r is None:
                    self.counters.bad_values += 1
                    continue
                if t:
                    buckets[slot] = (t, min(r, t))
            i += len(slots)
            self._answers.append(("fleet", host, buckets))

    def _restore(self, counts) -> None:
        """Counts not sent go back, summed with those counted meanwhile (bounded)."""
        with self._lock:
            for key, (total, rejects) in counts.items():
                c = self._counts.get(key)
                if c is None:
                    if len(self._counts) >= self.max_pending:
                        self._drop("counts")
                        continue
                    c = self._counts[key] = [0, 0]
                c[0] += total
                c[1] += rejects

    def _unanswered(self, claims) -> None:
        """Claims Redis could not take: answered None (raised locally), kept as marks."""
        for _, key, ttl, token in claims:
            self._answers.append(("claim", token, None))
            self._keep_mark(key, ttl)

    def _keep_mark(self, key: str, ttl: int) -> None:
        self._marks[key] = ttl
        while len(self._marks) > self.max_pending:
            self._marks.popitem(last=False)
            self._drop("marks")
