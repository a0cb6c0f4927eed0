"""One sensor's part of the fleet: the pieces of ``sensor.cluster`` wired
together from ``[cluster]`` and ``[spam_stats]``.

    cluster = Cluster(config, sink, enforcer, log)   # no I/O yet
    cluster.stats, cluster.actor                     # RejectStats with the hook, ClusterActor
    cluster.start()                                  # the writer and reader threads
    ... cluster.poll() every turn of the loop (the answers: fleet counts,
        claims, remote bans), the actor ticked as usual ...
    cluster.close()                                  # a last flush, the threads ended
"""

from __future__ import annotations

import math
import time

import structlog

from sensor.cluster.actor import ClusterActor
from sensor.cluster.banfeed import BanFeed
from sensor.cluster.connection import Lazy, Link, make_client
from sensor.cluster.keys import Keys
from sensor.cluster.shared import SharedStats
from sensor.cluster.shipper import Shipper
from sensor.counters import Group

__all__ = ["Cluster"]


class Cluster:
    def __init__(self, config, sink, enforcer, log=None, *, clock=time.time, worker: int = 0, workers: int = 1):
        from sensor.spamstats import RejectStats

        cc, st = config.cluster, config.spam_stats
        self.config = cc
        self.log = log or structlog.get_logger("cluster")
        self.link = Link(self.log)
        keys = Keys(cc.key_prefix)
        width = st.period / st.sliding_buckets
        cc.secret()                     # a password file that cannot be read: one line, at start
        self.shipper = Shipper(Lazy(lambda: make_client(cc)), keys, self.link, window_buckets=st.sliding_buckets,
                               bucket_ttl=math.ceil(st.period + 2 * width), max_pending=cc.max_pending,
                               sensor=cc.name)
        self.feed = BanFeed(Lazy(lambda: make_client(cc, timeout=cc.timeout + 1.0)), keys.bans, self.link,
                            since_s=cc.max_remote_ban)
        self.shared = SharedStats(st, self.shipper)
        self.stats = RejectStats(st, clock=clock, wall=clock, hook=self.shared)
        self.actor = ClusterActor(self.stats, sink, enforcer, self.shipper, cc.name,
                                  max_remote_ban=cc.max_remote_ban, config=st, worker=worker, workers=workers)
        self._started = False

    def start(self) -> "Cluster":
        if not self._started:
            self._started = True
            self.shipper.start()
            self.feed.start()
        return self

    def poll(self) -> int:
        """Act on what came back from Redis (in the loop's thread); returns how many answers."""
        answers = self.shipper.answers() + self.feed.answers()
        for answer in answers:
            kind = answer[0]
            if kind == "fleet":
                self.shared.update(answer[1], answer[2])
            elif kind == "claim":
                self.actor.claimed(answer[1], answer[2])
            else:
                self.actor.apply_remote(answer[1])
        return len(answers)

    def close(self, timeout: float = 1.0) -> None:
        """Hand over what is left (within ``timeout``), end the threads."""
        if self._started:
            self._started = False
            self.shipper.stop(timeout)
            self.feed.stop(timeout)
            self.poll()

    def counter_groups(self):
        yield Group(("cluster",), self.link.counters)
        yield Group(("cluster",), self.shipper.counters)
        yield Group(("cluster",), self.feed.counters)
        yield Group(("cluster",), self.actor.cluster_counters)
