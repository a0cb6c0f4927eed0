"""The connection to Redis: a redis-py client made from ``[cluster]``, and
the link's health (outages counted and logged, reconnection with back-off).

* ``mode = "single"``: ``redis.Redis.from_url(url)``; ``rediss://`` is TLS
  (``tls_ca_file``, ``tls_cert_file``/``tls_key_file``, ``tls_verify``);
  the password is ``password`` or the first line of ``password_file``.
* ``mode = "cluster"``: ``redis.cluster.RedisCluster.from_url(url)``: ``url``
  is any node, the client learns the others and follows the slots' moves.

redis-py reconnects by itself on the next command after a dropped
connection; ``Link`` decides when the next attempt may be made (0.1 s after
the failure, doubling to ``MAX_BACKOFF``), so an unreachable Redis costs a
few attempts a minute, never a busy loop, and says once when an outage begins
and once when it ends (with how long it lasted).
"""

from __future__ import annotations

import threading
import time

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from sensor.config import ClusterConfig
from sensor.counters import Counters, counter, gauge

__all__ = ["make_client", "Lazy", "Link", "LinkCounters", "UNAVAILABLE", "FIRST_BACKOFF", "MAX_BACKOFF"]

FIRST_BACKOFF, MAX_BACKOFF = 0.1, 10.0

#: what redis-py raises when the server cannot be reached or answer in time (a
#: RedisCluster's constructor: RedisClusterException, when no node answers)
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, redis.cluster.ClusterDownError,
               redis.exceptions.RedisClusterException, OSError)


def make_client(cfg: ClusterConfig, *, timeout: float | None = None):
    """A redis-py client for ``cfg``.  ``redis.Redis`` connects on its first
    command, but ``RedisCluster`` asks a node for the slots in its constructor:
    call this in the thread that uses the client (``Lazy``), never in the loop.
    ``timeout``: a socket timeout other than ``cfg.timeout`` (a blocking read's)."""
    # no retries inside redis-py (its default: 10 per command): Link backs off,
    # so a Redis that does not answer costs ``timeout`` per attempt, not ten
    kw = {"socket_timeout": cfg.timeout if timeout is None else timeout,
          "socket_connect_timeout": cfg.timeout, "retry": Retry(NoBackoff(), 0)}
    password = cfg.secret()
    if password is not None:
        kw["password"] = password
    if cfg.url.lower().startswith("rediss://"):
        kw["ssl_cert_reqs"] = "required" if cfg.tls_verify else "none"
        kw["ssl_check_hostname"] = cfg.tls_verify
        if cfg.tls_ca_file is not None:
            kw["ssl_ca_certs"] = str(cfg.tls_ca_file)
        if cfg.tls_cert_file is not None:
            kw["ssl_certfile"] = str(cfg.tls_cert_file)
            kw["ssl_keyfile"] = str(cfg.tls_key_file)
    if cfg.mode == "cluster":
        return redis.cluster.RedisCluster.from_url(cfg.url, **kw)
    return redis.Redis.from_url(cfg.url, **kw)


class Lazy:
    """A client made on first use, in the thread that uses it (``get``); a
    failure to make it is the caller's to count, as a command's would be."""

    def __init__(self, make):
        self._make = make
        self._client = None

    def get(self):
        if self._client is None:
            self._client = self._make()
        return self._client


class LinkCounters(Counters):
    """``owner``: the Link."""

    METRIC_PREFIX = "cluster_"
    up = gauge("1 while Redis answers, 0 during an outage", read=lambda link: int(link.up), combine="min")
    outages = counter("times Redis became unreachable")
    failures = counter("Redis commands or pipelines that failed (unreachable, timed out)")
    outage_seconds = counter("seconds Redis was unreachable (ended outages)")


class Link:
    """The health of the connection, shared by the threads that use it."""

    def __init__(self, log, clock=time.monotonic):
        self.log = log
        self.clock = clock
        self.up = True
        self.counters = LinkCounters(self)
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._backoff = 0.0
        self._next_try = 0.0

    def may_try(self) -> bool:
        """Whether a command may be sent now (False while backing off)."""
        return self.up or self.clock() >= self._next_try

    def wait_s(self) -> float:
        """Seconds until the next attempt may be made (0 when up)."""
        return 0.0 if self.up else max(0.0, self._next_try - self.clock())

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            now = self.clock()
            self.counters.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._backoff = FIRST_BACKOFF if self.up else min(MAX_BACKOFF, self._backoff * 2)
            self._next_try = now + self._backoff
            if self.up:
                self.up = False
                self._down_since = now
                self.counters.outages += 1
                self.log.warning("redis unreachable: statistics and bans are local until it returns",
                                 error=self.last_error)

    def succeeded(self) -> None:
        if self.up:
            return
        with self._lock:
            if self.up:
                return
            took = self.clock() - self._down_since
            self.up = True
            self._backoff = 0.0
            self.counters.outage_seconds += round(took, 3)
            self.log.info("redis reachable again: catching up", outage_s=round(took, 3))
