"""What is done about a notice: its record, and a ban of the host.

``SpamStatsActor`` writes a ``notice`` record for each notice and, when the
notice type has a ban TTL (``[spam_stats.ban]``) and the host is not in
``allow``, bans the host (/32 or /128) through the enforcer (reason
SPAM_STATS) with a ``drop`` record.  It keeps the bans it made, to sweep and
to snapshot.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sensor.config import SpamStatsConfig
from sensor.counters import Counters, counter, gauge
from sensor.kernel import abi
from sensor.records.drop import BAN_SOURCE, SPAM_STATS, drop_record
from sensor.records.notice import notice_record
from sensor.spamstats.hosts import in_networks
from sensor.spamstats.snapshot import Restored, read_snapshot, write_snapshot
from sensor.spamstats.stats import Notice, RejectStats

__all__ = ["SpamStatsActor", "ActorCounters", "Ban"]


@dataclass(slots=True)
class Ban:
    """A ban the statistics made: the prefix, why, and until when (the stats' clock)."""

    network: str
    note: str
    since: float
    expires: float
    ttl: float


class ActorCounters(Counters):
    """``owner``: the SpamStatsActor."""

    METRIC_PREFIX = "spam_stats_"
    hosts = gauge("hosts the reject statistics track now", read=lambda actor: len(actor.stats))
    bans = counter("source bans asked for, by who asked", metric="bans", labels={"by": "spam_stats"})
    allow_listed = counter("bans not made: the host is in [spam_stats] allow")
    ban_errors = counter("bans the enforcer failed to write")


class SpamStatsActor:
    """Acts on the notices of ``stats`` (records to ``sink``, bans through
    ``enforcer``: see the module); keeps the bans it made."""

    def __init__(self, stats: RejectStats, sink, enforcer=None, config: SpamStatsConfig | None = None):
        self.stats = stats
        self.sink = sink
        self.enforcer = enforcer
        self.config = config if config is not None else stats.config
        self.bans: dict[str, Ban] = {}
        self.counters = ActorCounters(self)
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
        changed; a capture's clock stops at its last packet, so a replay of a
        capture shorter than ``check_interval`` would otherwise give no notice
        where the live sensor gives one.  Only windows changed since their last
        evaluation are looked at: no notice is raised twice."""
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
            if in_networks(notice.src, self.config.allow):
                self.counters.allow_listed += 1
            else:
                ip = ipaddress.ip_address(notice.src)
                network = f"{ip}/{ip.max_prefixlen}"
                try:
                    self.enforcer.ban(network, ttl, now, abi.Reason.SPAM_STATS)
                except Exception as exc:       # bcc raises plain Exception; a ban must not stop us
                    self.counters.ban_errors += 1
                    self.last_error = f"ban of {network} failed: {exc}"
                    network = None
                else:
                    actions, ban_ttl = ["ban"], ttl
                    self.bans[network] = Ban(network, notice.note, now, now + ttl, ttl)
                    self.counters.bans += 1
        rec = notice_record(notice, actions=actions, ban_ttl=ban_ttl)
        self.sink(rec)
        if network is not None:
            self.sink(drop_record(now, BAN_SOURCE, network, SPAM_STATS, self.enforcer.mode, ttl=ttl))
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
        """Write the statistics and these bans to ``path`` (``write_snapshot``)."""
        write_snapshot(path, self.stats, self)

    def restore(self, path, *, reapply: bool = True) -> Restored:
        """Restore the statistics and the bans from ``path`` (``read_snapshot``)."""
        return read_snapshot(path, self.stats, self, reapply=reapply)

    def restore_bans(self, rows, reapply: bool) -> int:
        """Replace the bans held with a snapshot's, (network, note, since,
        expires, ttl) each in the stats' clock; with ``reapply``, write them
        again through the enforcer for the TTL they have left.  Returns how many."""
        now = self.stats.clock()
        self.bans = {row[0]: Ban(*row) for row in rows}
        if reapply and self.enforcer is not None:
            for ban in self.bans.values():
                try:
                    self.enforcer.ban(ban.network, ban.expires - now, now, abi.Reason.SPAM_STATS)
                except Exception as exc:       # bcc raises plain Exception; a ban must not stop us
                    self.counters.ban_errors += 1
                    self.last_error = f"ban of {ban.network} failed: {exc}"
        return len(self.bans)
