"""The one assembly of the userland (sensor.assembly.Userland): what a config
builds, the gate only when enforcing, monitor mode, rules that do not load,
and the counter groups every view reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from sensor.assembly import Userland
from sensor.config import Config, SensorConfig, SpamStatsConfig
from sensor.counters import as_tree
from sensor.errors import SensorError
from sensor.records.sinks import ListSink
from sensor.rules.engine import RuleEngine
from sensor.spamstats import RejectStatsListener

RULES = Path(__file__).resolve().parents[2] / "rules"


def build(**sensor) -> Userland:
    return Userland(Config(sensor=SensorConfig(**sensor)), ListSink())


def test_a_config_builds_the_pipeline_with_rules_then_statistics():
    u = build(rules=RULES, ports=(25, 2525))
    assert u.pipeline.ports == {25, 2525}
    assert [type(x) for x in u.pipeline.listeners] == [RuleEngine, RejectStatsListener]
    assert u.engine.enforcer is u.enforcer and u.actor.enforcer is u.enforcer
    assert u.enforcer.verdicts.ports == {25, 2525}       # bans on the SMTP ports only, as the kernel
    assert u.tickers == (u.tick,)


def test_no_rules_folder_no_engine_and_statistics_can_be_off():
    u = Userland(Config(spam_stats=SpamStatsConfig(enabled=False)), ListSink())
    assert u.engine is None and u.actor is None and u.pipeline.listeners == []
    assert u.tickers == ()


def test_enforcing_gates_the_pipeline_with_the_verdicts():
    u = build()
    assert u.pipeline.gate == u.enforcer.passes and u.enforcer.mode == "replay"


def test_monitor_only_has_no_gate_and_says_monitor():
    u = build(enforce=False)
    assert u.pipeline.gate is None and u.enforcer.mode == "monitor"


def test_rules_that_do_not_load_are_one_line(tmp_path):
    (tmp_path / "broken.py").write_text("def oops(:\n")
    with pytest.raises(SensorError, match=r"^rules not loaded: .*broken\.py") as info:
        build(rules=tmp_path)
    assert "\n" not in str(info.value)


def test_counter_groups_hold_every_component():
    u = build(rules=RULES)
    tree = as_tree(u.counter_groups())
    assert set(tree) == {"pipeline", "reassembly", "defrag", "rule_engine", "spam_stats"}
    assert {"fragments", "reassembled", "discarded", "anomalies"} <= set(tree["defrag"])
    assert {"alerts", "drops", "reload_errors", "rules_loaded"} <= set(tree["rule_engine"])
    assert {"hosts", "notices", "bans"} <= set(tree["spam_stats"])
    per_rule = [g for g in u.counter_groups() if g.path is None]
    assert [dict(g.labels)["rule"] for g in per_rule] == [r.id for r in u.engine.ruleset.rules]


def test_the_summary_names_the_verdicts():
    assert build().summary() == ""
    assert build(rules=RULES).summary() == "; rules: 0 alerts, 0 flows dropped, 0 bans, 0 rule errors"
