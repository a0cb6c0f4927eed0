"""The sensor's userland, built once from a ``Config``: the same assembly for
the live sensor, a replay, the demo, the tests and the benchmarks.

    userland = Userland(config, sink, enforcer, uid_seed=...)

``config.sensor`` gives the ports, the rules folder and ``enforce``;
``config.limits`` the reassembler's, the dissector's, the MIME parser's and the
rules' limits; ``config.mime`` whether messages are parsed into entities;
``config.spam_stats`` the reject statistics; with ``cluster`` (the live
sensor: a replay judges its capture alone) and ``[cluster] enabled``, shared
with the other sensors through Redis (``sensor.cluster``: ``start_cluster()``
starts its threads, ``poll()`` every turn of the loop takes their answers).
The caller passes where records go (``sink``, a callable taking one record)
and where verdicts go (``enforcer``: ``KernelEnforcer`` live,
``ReplayEnforcer`` offline, the default).  What is built:

* the ``Pipeline`` (ports, limits, uid seed; ``by_content``: also the flows on
  other ports found SMTP by their first bytes, what a replay does), with its listeners in this
  order: the rule engine (when a rules folder is given; rules that do not
  load are a one-line ``SensorError``) and the reject statistics (listener
  and actor, when enabled);
* the enforcer's ban ports (the kernel bans on the SMTP ports only) and the open flows
  (a ban tears down the connections it covers);
* enforcing (``enforce = true``): the pipeline's gate is ``enforcer.passes``,
  so a dropped flow's packets are not dissected, as the kernel drops them;
  monitor only (``enforce = false``, a SPAN port): no gate, every packet is
  dissected, and the enforcer's mode is ``monitor``, so drop records say what
  would have been done (``enforced_by: "monitor"``).

The caller feeds frames to ``pipeline``, calls ``tick(now)`` about every
second of its clock (a capture's own in a replay: ``tickers``), and at the end
``finish(ts)`` when the input ended (a capture) or ``shutdown(now)`` when the
live sensor stops.  ``counter_groups()`` is every counter of the userland, for
status and metrics; ``summary()`` the verdicts in one line.
"""

from __future__ import annotations

from sensor.config import Config
from sensor.counters import Group
from sensor.errors import SensorError
from sensor.pipeline import Pipeline

__all__ = ["Userland", "verdict_summary"]


class Userland:
    def __init__(self, config: Config, sink, enforcer=None, *, uid_seed=0, by_content: bool = False,
                 cluster: bool = False, worker: int = 0, workers: int = 1):
        cfg = config.sensor
        if enforcer is None:
            from sensor.rules.enforce import ReplayEnforcer
            enforcer = ReplayEnforcer()
        self.enforcer = enforcer
        mime = None
        if config.mime.enabled:
            from sensor.mime.stage import MimeStage
            mime = MimeStage(config.mime, config.limits.mime)
        self.pipeline = Pipeline(sink, ports=cfg.ports, uid_seed=uid_seed, by_content=by_content,
                                 reassembly_limits=config.limits.reassembly, smtp_limits=config.limits.smtp,
                                 defrag_limits=config.limits.defrag, defrag_policy=config.stream.defrag_policy,
                                 receiver=config.stream.receiver, mime=mime)
        self.engine = self.reject_stats = self.actor = self.cluster = None
        if cfg.rules is not None:
            self.engine = _rule_engine(cfg.rules, sink, enforcer, config.limits.rules)
            self.pipeline.listeners.append(self.engine)
            if mime is not None:
                mime.wants_entity_data = self.engine.wants_entity_data
        st = config.spam_stats
        if st.enabled:
            from sensor.spamstats import RejectStats, RejectStatsListener, SpamStatsActor
            if cluster and config.cluster.enabled:
                from sensor.cluster import Cluster
                self.cluster = Cluster(config, sink, enforcer, worker=worker, workers=workers)
                self.reject_stats, self.actor = self.cluster.stats, self.cluster.actor
            else:
                self.reject_stats = RejectStats(st)
                self.actor = SpamStatsActor(self.reject_stats, sink, enforcer, st)
            self.pipeline.listeners.append(RejectStatsListener(self.reject_stats, self.actor))
        enforcer.verdicts.ports = frozenset(cfg.ports)
        enforcer.open_flows = lambda: self.pipeline.flows
        if cfg.enforce:
            self.pipeline.gate = enforcer.passes
        else:
            enforcer.mode = "monitor"

    # ------------------------------------------------------------ the clock
    @property
    def tickers(self) -> tuple:
        """What to call with the time about every second (nothing without statistics)."""
        return (self.tick,) if self.actor is not None else ()

    def tick(self, now: float) -> None:
        self.poll()
        if self.actor is not None:
            self.actor.tick(now)

    def poll(self) -> None:
        """Act on what the other sensors shared (``cluster``; cheap: call it every turn)."""
        if self.cluster is not None:
            self.cluster.poll()

    def finish(self, ts: float | None = None) -> None:
        """The input ended at ``ts`` (a capture's last packet): end every flow,
        tick, and judge what the last connections changed.  A live sensor's
        clock goes on to its next check; a capture's stops at its last
        packet, so the statistics are checked once more at that time (no
        notice is raised twice)."""
        self.pipeline.finish(ts)
        if ts is not None:
            self.tick(ts)
        if self.actor is not None:
            self.actor.finish()
        if self.engine is not None:
            self.engine.close()

    def shutdown(self, now: float, give_up=None) -> None:
        """The live sensor stops at ``now``: end every flow (the most important
        first while ``give_up()`` says there is time: ``Pipeline.finish``),
        tick once more.  Its statistics go on after a restart (the snapshot):
        no last check."""
        self.pipeline.finish(give_up=give_up)
        self.tick(now)
        if self.cluster is not None:
            self.cluster.close()
        if self.engine is not None:
            self.engine.close()

    def start_cluster(self) -> None:
        """Start sharing (the threads of ``sensor.cluster``); ``shutdown`` or ``close_cluster`` ends it."""
        if self.cluster is not None:
            self.cluster.start()

    def close_cluster(self) -> None:
        if self.cluster is not None:
            self.cluster.close()

    # ------------------------------------------------------------ snapshots
    def restore(self, path):
        """Read the statistics snapshot at ``path``; a ``Restored``, or None without statistics."""
        return self.actor.restore(path) if self.actor is not None else None

    def snapshot(self, path) -> None:
        if self.actor is not None:
            self.actor.snapshot(path)

    # ------------------------------------------------------------ counters
    def counter_groups(self):
        yield Group(("pipeline",), self.pipeline.counters)
        yield Group(("reassembly",), self.pipeline.reassembler.counters)
        yield Group(("defrag",), self.pipeline.defragmenter.counters)
        if self.pipeline.content_reassembler is not None:
            yield Group(("reassembly_by_content",), self.pipeline.content_reassembler.counters)
        if self.engine is not None:
            yield Group(("rule_engine",), self.engine.counters)
            yield Group(("rule_engine",), self.engine.ruleset.counters)
            for r in list(self.engine.ruleset.rules):
                yield Group(None, r.counters, (("rule", r.id),))
        if self.actor is not None:
            yield Group(("spam_stats",), self.reject_stats.counters)
            yield Group(("spam_stats",), self.actor.counters)
        if self.cluster is not None:
            yield from self.cluster.counter_groups()

    def verdict_counts(self) -> dict:
        """The counts the summary line gives (plain numbers: a sharded
        replay's workers' are added up, ``sensor.counters.add_counts``)."""
        counts = {}
        if self.engine is not None:
            c = self.engine.counters
            counts["rules"] = {k: getattr(c, k) for k in ("alerts", "drops", "bans", "errors", "slow_calls",
                                                         "memory_stops", "disabled")}
        if self.actor is not None:
            counts["spam_stats"] = {"notices": self.reject_stats.counters.notices,
                                    "bans": self.actor.counters.bans}
        return counts

    def summary(self) -> str:
        """The verdicts, for the end of a replay's summary line ("" without any)."""
        return verdict_summary(self.verdict_counts())


def verdict_summary(counts: dict) -> str:
    """``Userland.summary()`` of ``Userland.verdict_counts()`` (or their sum)."""
    text = ""
    c = counts.get("rules")
    if c is not None:
        text += (f"; rules: {c['alerts']} alerts, {c['drops']} flows dropped, {c['bans']} bans, "
                 f"{c['errors']} rule errors")
        over = c["slow_calls"] + c["memory_stops"]
        if over:
            text += f", {over} calls over budget, {c['disabled']} rules disabled"
    c = counts.get("spam_stats")
    if c is not None and (c["notices"] or c["bans"]):
        text += f"; spam stats: {c['notices']} notices, {c['bans']} bans"
    return text


def _rule_engine(directory, sink, enforcer, limits):
    import structlog

    from sensor.rules.engine import RuleEngine
    from sensor.rules.loader import RuleSet

    logger = structlog.get_logger("rules")
    ruleset = RuleSet(directory, logger, limits)
    if ruleset.errors:
        raise SensorError(f"rules not loaded: {next(iter(ruleset.errors.values()))}")
    return RuleEngine(ruleset, sink, enforcer, logger, limits=limits)
