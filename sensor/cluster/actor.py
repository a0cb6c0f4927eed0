"""The reject statistics' actor in a fleet: notices claimed across the
sensors, bans published and applied from the others.

``ClusterActor`` is the ``SpamStatsActor`` with three differences:

* a notice is raised only if this sensor wins its key (``claim``: SET NX for
  ``suppress_for``), so one host and type give one notice across the fleet
  within that time; the notice waits for the answer (a few ms, the next turn
  of the loop).  When Redis cannot be asked the notice is raised at once
  (fail open) and the key is set when Redis returns;
* a ban it makes is published on the stream;
* a ban another sensor published is applied through the same enforcer (the
  XDP ban map), for what is left of its TTL (at most ``max_remote_ban``),
  unless the host is in ``[spam_stats] allow``, and kept with the others (so
  it is swept, snapshot and restored like them), with a ``drop`` record
  whose note names the sensor that made it.

In a sensor of several workers (``sensor.service.supervisor``) every worker
reads the stream, and the kernel's ban map is one for all: a remote ban
(always of one host: ``keys.parse_ban``) is applied by the worker that owns
the host (``sensor.shard``: its flows are that worker's to tear down), the
others leave it.  One ban of another sensor is one ``drop`` record and one
``remote_bans`` in the summed status, whatever the number of workers.
"""

from __future__ import annotations

import ipaddress
import itertools

from sensor.counters import Counters, counter, gauge
from sensor.kernel import abi
from sensor.records.drop import BAN_SOURCE, SPAM_STATS, drop_record
from sensor.spamstats import Ban, SpamStatsActor
from sensor.spamstats.hosts import in_networks

__all__ = ["ClusterActor", "ClusterActorCounters"]


class ClusterActorCounters(Counters):
    """``owner``: the ClusterActor."""

    METRIC_PREFIX = "cluster_"
    claims_waiting = gauge("notices waiting for their claim's answer", read=lambda actor: len(actor._claims))
    claimed_elsewhere = counter("notices not raised: another sensor raised it (its key was taken)")
    raised_unclaimed = counter("notices raised without a claim (Redis unreachable or the queue full)")
    remote_bans = counter("bans of other sensors applied here")
    remote_ban_errors = counter("bans of other sensors the enforcer failed to write")
    remote_expired = counter("bans of other sensors read after their expiry")
    remote_allow_listed = counter("bans of other sensors not applied: the host is in [spam_stats] allow")


class ClusterActor(SpamStatsActor):
    def __init__(self, stats, sink, enforcer, shipper, sensor: str, *, max_remote_ban: float, config=None,
                 worker: int = 0, workers: int = 1):
        super().__init__(stats, sink, enforcer, config)
        self.worker, self.workers = worker, workers
        self.shipper = shipper
        self.sensor = sensor
        self.max_remote_ban = max_remote_ban
        self.cluster_counters = ClusterActorCounters(self)
        self._claims: dict[int, tuple] = {}      # token -> (notice, now)
        self._tokens = itertools.count()

    def act(self, notices, now: float | None = None) -> None:
        for notice in notices:
            token = next(self._tokens)
            if self.shipper.link.up and self.shipper.claim(notice.note, notice.src, notice.suppress_for, token):
                self._claims[token] = (notice, now)
            else:
                self.cluster_counters.raised_unclaimed += 1
                self.shipper.mark(notice.note, notice.src, notice.suppress_for)
                self.handle(notice, now)

    def claimed(self, token, won: bool | None) -> None:
        """The answer to a claim: won (raise it), lost (another sensor did), None (raise it: fail open)."""
        notice, now = self._claims.pop(token, (None, None))
        if notice is None:
            return
        if won is False:
            self.cluster_counters.claimed_elsewhere += 1
            return
        if won is None:
            self.cluster_counters.raised_unclaimed += 1
        self.handle(notice, now)

    def handle(self, notice, now: float | None = None) -> dict:
        rec = super().handle(notice, now)
        if "ban" in rec["actions"]:
            ip = ipaddress.ip_address(notice.src)
            ban = self.bans.get(f"{ip}/{ip.max_prefixlen}")
            if ban is not None:
                self.shipper.publish(ban.network, ban.note, self.stats.wall() + (ban.expires - ban.since), ban.ttl)
        return rec

    def apply_remote(self, remote) -> bool:
        """A ban from the stream (``keys.RemoteBan``); True when it was applied."""
        if remote.sensor == self.sensor or self.enforcer is None:
            return False
        if not self._owns(remote.network):
            return False
        now = self.stats.clock()
        expires = min(remote.expires, now + self.max_remote_ban)
        left = expires - now
        if left <= 0:
            self.cluster_counters.remote_expired += 1
            return False
        if in_networks(remote.network.split("/")[0], self.config.allow):
            self.cluster_counters.remote_allow_listed += 1
            return False
        held = self.bans.get(remote.network)
        if held is not None and held.expires >= expires:
            return False
        note = f"banned by sensor {remote.sensor}"
        try:
            self.enforcer.ban(remote.network, left, now, abi.Reason.SPAM_STATS, note=note)
        except Exception as exc:       # bcc raises plain Exception; a ban must not stop us
            self.cluster_counters.remote_ban_errors += 1
            self.last_error = f"ban of {remote.network} (from {remote.sensor}) failed: {exc}"
            return False
        self.bans[remote.network] = Ban(remote.network, remote.note, now, expires, left)
        self.cluster_counters.remote_bans += 1
        self.sink(drop_record(now, BAN_SOURCE, remote.network, SPAM_STATS, self.enforcer.mode, ttl=left, note=note))
        return True

    def _owns(self, network: str) -> bool:
        """Whether the host of ``network`` is this worker's (always, with one worker)."""
        if self.workers <= 1:
            return True
        from sensor import shard
        return shard.worker_of_address(ipaddress.ip_network(network, strict=False).network_address.packed,
                                       self.workers) == self.worker
