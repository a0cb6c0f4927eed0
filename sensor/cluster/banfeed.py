"""The reader thread: the bans the other sensors publish, from the stream.

A blocking XREAD (``BLOCK`` ``READ_BLOCK_MS``) on its own connection, so a ban
reaches this sensor as soon as Redis has it; each entry is checked
(``keys.parse_ban``) and queued for the event loop as ``("ban", RemoteBan)``.
The thread reads on from the last entry it saw, so after an outage it gets
every ban published meanwhile (the stream keeps ``STREAM_MAXLEN``); at start
it reads from ``max_remote_ban`` seconds ago, so a sensor that starts (or
restarts) gets the bans still in force.  Entries it cannot use are counted
(``bad_values``) and skipped.
"""

from __future__ import annotations

import collections
import threading
import time

import redis

from sensor.cluster.connection import UNAVAILABLE
from sensor.cluster.keys import parse_ban
from sensor.counters import Counters, counter

__all__ = ["BanFeed", "BanFeedCounters", "READ_BLOCK_MS", "READ_COUNT"]

READ_BLOCK_MS = 500
#: entries taken by one XREAD at most
READ_COUNT = 500


class BanFeedCounters(Counters):
    """``owner``: the BanFeed."""

    METRIC_PREFIX = "cluster_"
    bans_read = counter("bans read from the stream (this sensor's own included)")
    bad_bans = counter("stream entries rejected (missing or garbled fields, not a network)")


class BanFeed:
    def __init__(self, client, stream: str, link, *, since_s: float, wall=time.time):
        self.client = client
        self.stream = stream
        self.link = link
        self.counters = BanFeedCounters(self)
        self.last_id = f"{max(0, int((wall() - since_s) * 1000))}-0"
        self._answers: collections.deque = collections.deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-banfeed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout + READ_BLOCK_MS / 1000)

    def answers(self) -> list:
        out, popleft = [], self._answers.popleft
        while self._answers:
            out.append(popleft())
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.link.may_try():
                self._stop.wait(self.link.wait_s())
                continue
            if self.step(READ_BLOCK_MS) is None:
                self._stop.wait(1.0 if self.link.up else 0.0)

    def step(self, block_ms: int | None = None) -> int | None:
        """``read_once`` with its failures counted (an outage: the link's);
        the entries read, None when the read failed."""
        try:
            return self.read_once(block_ms)
        except UNAVAILABLE as exc:
            self.link.failed(exc)
        except redis.ResponseError:         # the stream key is not a stream
            self.counters.bad_bans += 1
        except Exception as exc:            # a bug here must not end the sharing silently
            self.link.log.error("cluster ban feed failed", error=f"{type(exc).__name__}: {exc}")
        return None

    def read_once(self, block_ms: int | None = None) -> int:
        """One XREAD from the last entry seen; returns the entries read."""
        reply = self.client.get().xread({self.stream: self.last_id}, count=READ_COUNT, block=block_ms)
        self.link.succeeded()
        n = 0
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                n += 1
                self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                ban = parse_ban(fields)
                if ban is None:
                    self.counters.bad_bans += 1
                    continue
                self.counters.bans_read += 1
                self._answers.append(("ban", ban))
        return n
