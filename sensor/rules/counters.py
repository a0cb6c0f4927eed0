"""What the rules did: the engine's totals, the rule set's loads, each rule's own."""

from __future__ import annotations

from sensor.counters import Counters, counter, gauge

__all__ = ["RuleEngineCounters", "RuleSetCounters", "RuleCounters"]


class RuleEngineCounters(Counters):
    METRIC_PREFIX = "rule_"
    alerts = counter("alerts raised by rules", metric="alerts")
    errors = counter("exceptions raised by rules")
    slow_calls = counter("rule calls over their time budget (interrupted, or returned late)")
    memory_stops = counter("rule calls stopped over their memory budget (or by a MemoryError)")
    disabled = counter("rules disabled for repeated calls over budget (until their file changes)")
    drops = counter("flows dropped by rules", metric="rule_flow_drops")
    bans = counter("source bans asked for, by who asked", metric="bans", labels={"by": "rules"})
    late_events = counter("events of flows already dropped")


class RuleSetCounters(Counters):
    """``owner``: the RuleSet."""

    METRIC_PREFIX = "rule_"
    reload_errors = counter("rule files or settings that failed to load")
    rules_loaded = gauge("rules loaded", metric="rules_loaded", read=lambda rs: len(rs.rules), combine="max")
    files_in_error = gauge("rule files (or rules.toml) whose last change did not load",
                           read=lambda rs: len(rs.errors), combine="max")
    rules_disabled = gauge("rules loaded but disabled for calls over budget", metric="rules_disabled",
                           read=lambda rs: sum(1 for r in rs.rules if r.disabled is not None), combine="max")


class RuleCounters(Counters):
    """One rule's, since its file was loaded."""

    METRIC_PREFIX = "rule_"
    calls = counter("calls per rule")
    errors = counter("exceptions per rule", metric="rule_exceptions")
    alerts = counter("alerts per rule (since its file was loaded)")
    over_budget = counter("calls over their time budget per rule")
    over_memory = counter("calls over their memory budget per rule")
    seconds = counter("time spent in each rule")
