"""``reload`` without BPF (sensor.service.reload): which keys change live and
which need a restart, and a plan applied to a sensor's userland: the flows
and the statistics are the same objects after it, judged by the new values."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from sensor.assembly import Userland
from sensor.config import Config, SensorConfig, SpamStatsConfig, load
from sensor.records.sinks import ListSink
from sensor.rules.budget import RuleLimits
from sensor.rules.enforce import KernelEnforcer
from sensor.service.loop import RunOptions, Sensor
from sensor.service.reload import changed_keys, plan_reload
from sensor.service.worker import worker_config, worker_config_loader
from sensor.spamstats.stats import ConnState

pytestmark = pytest.mark.unit

RULES = Path(__file__).resolve().parents[2] / "rules"


class FakeMaps:
    def __init__(self):
        self.ports = None

    def set_ports(self, ports):
        self.ports = tuple(ports)

    def bans(self):
        return []


def running_sensor(config: Config, load_config=None) -> Sensor:
    """A Sensor as start() leaves it, its datapath a stand-in holding the kernel's port set."""
    sensor = Sensor(config, RunOptions(load_config=load_config))
    maps = FakeMaps()
    sensor.datapath = SimpleNamespace(maps=maps, config=SimpleNamespace(ports=config.sensor.ports))
    sensor.userland = Userland(config, ListSink(), KernelEnforcer(maps))
    return sensor


def with_changes(config: Config, **tables) -> Config:
    return dataclasses.replace(config, **{name: dataclasses.replace(getattr(config, name), **values)
                                          for name, values in tables.items()})


def test_changed_keys_are_dotted_and_walk_the_nested_tables():
    old = Config()
    new = dataclasses.replace(old, limits=dataclasses.replace(old.limits, rules=RuleLimits(budget_ms=80)),
                              sensor=dataclasses.replace(old.sensor, ports=(25, 2525)))
    assert changed_keys(old, new) == ["sensor.ports", "limits.rules.budget_ms"]
    assert changed_keys(old, dataclasses.replace(old, source=Path("/etc/x.toml"))) == []


@pytest.mark.parametrize("table,values,key", [
    ("sensor", {"interfaces": ("eth9",)}, "[sensor] interfaces"),
    ("sensor", {"enforce": False}, "[sensor] enforce"),
    ("sensor", {"output": "/var/log/x.json"}, "[sensor] output"),
    ("spam_stats", {"window": "sliding"}, "[spam_stats] window"),
    ("spam_stats", {"period": 60.0}, "[spam_stats] period"),
    ("enforce", {"hold": "off"}, "[enforce] hold"),
    ("stream", {"overlap_policy": "bsd"}, "[stream] overlap_policy"),
])
def test_a_key_that_needs_a_restart_refuses_the_whole_reload_naming_it(table, values, key):
    tables = {"spam_stats": {"threshold": 5}}          # a live change beside it
    tables.setdefault(table, {}).update(values)
    plan = plan_reload(Config(), with_changes(Config(), **tables))
    assert plan.refusal == (f"configuration not reloaded: {key} needs a restart (systemctl restart smtp-sensor); "
                            "the running configuration stays")


def test_outputs_change_live_once_their_hook_can_reopen_them():
    new = with_changes(Config(), sensor={"output": "/var/log/x.json"})
    assert plan_reload(Config(), new).restart == ("sensor.output",)
    assert plan_reload(Config(), new, outputs_live=True).refusal is None


def test_ports_statistics_and_rule_budgets_change_live_and_nothing_is_rebuilt():
    config = Config(sensor=SensorConfig(rules=RULES, ports=(25,)))
    new = with_changes(config, sensor={"ports": (25, 2525)},
                       spam_stats={"threshold": 2, "percent": 0, "local_networks": ("192.0.2.0/24",),
                                   "reject_codes": frozenset({550, 554}), "allow": ("198.51.100.0/24",)},
                       limits={"rules": RuleLimits(budget_ms=80, strikes=5)})
    sensor = running_sensor(config, load_config=lambda: new)
    pipeline, stats, engine = sensor.pipeline, sensor.reject_stats, sensor.engine
    conn = ConnState()
    stats.observe_reply("192.0.2.66", 1.0, 250, conn)
    stats.observe_reply("192.0.2.66", 2.0, 250, ConnState())
    result = sensor.reload()
    assert result["config_error"] is None
    assert set(result["config_changed"]) == {"sensor.ports", "spam_stats.threshold", "spam_stats.percent",
                                             "spam_stats.local_networks", "spam_stats.reject_codes",
                                             "spam_stats.allow", "limits.rules.budget_ms", "limits.rules.strikes"}
    assert sensor.config is new
    # the same objects, with what they held
    assert sensor.pipeline is pipeline and sensor.reject_stats is stats and sensor.engine is engine
    assert stats.counts("192.0.2.66", 3.0) == (2, 0)
    # the kernel's ports and the userland's orientation
    assert sensor.datapath.maps.ports == (25, 2525)
    assert pipeline.ports == pipeline.reassembler.ports == sensor.enforcer.verdicts.ports == {25, 2525}
    # the statistics judge by the new thresholds and classify by the new lists
    assert stats.config.threshold == 2 and stats.classify("192.0.2.66") == "SMTP_PossibleInternalSpam"
    assert 554 in stats._reject_codes and 551 not in stats._reject_codes
    assert sensor.actor.config is new.spam_stats
    # the rules' next call gets the new budget
    assert engine.limits.budget_ms == 80 and engine._default_s == pytest.approx(0.08)
    assert engine.limits.strikes == 5


def test_a_refused_reload_keeps_the_running_configuration():
    config = Config(sensor=SensorConfig(ports=(25,)))
    new = with_changes(config, sensor={"ports": (25, 2525)}, spam_stats={"window": "sliding"})
    sensor = running_sensor(config, load_config=lambda: new)
    result = sensor.reload()
    assert "[spam_stats] window needs a restart" in result["config_error"]
    assert sensor.config is config and sensor.datapath.maps.ports is None
    assert sensor.pipeline.ports == {25}


def test_a_config_file_that_no_longer_loads_is_one_line_and_changes_nothing(tmp_path):
    path = tmp_path / "sensor.toml"
    path.write_text("[sensor]\nports = [25]\n")
    config = load(path)
    sensor = running_sensor(config)
    path.write_text("[sensor]\nports = [25, 70000]\n")
    result = sensor.reload()
    assert result["config_error"].startswith("configuration not reloaded: ")
    assert "70000" in result["config_error"] and "\n" not in result["config_error"]
    assert sensor.config is config
    path.write_text("[sensor]\nports = [25, 587]\n")
    assert sensor.reload()["config_changed"] == ["sensor.ports"]
    assert sensor.datapath.maps.ports == (25, 587)


def test_without_a_file_or_a_loader_a_reload_rereads_the_rules_only():
    sensor = running_sensor(Config(sensor=SensorConfig(rules=RULES)))
    result = sensor.reload()
    assert result == {"config_changed": [], "config_error": None, "rules_changed": result["rules_changed"]}
    assert SpamStatsConfig() == sensor.reject_stats.config


def test_hold_max_ms_is_live_and_written_to_the_kernel_and_the_hold():
    """A value of the kernel's config map: rewritten with the other settings
    kept, and the commit hold's view of it (late releases) follows."""
    from types import SimpleNamespace

    from sensor.service.reload import apply_reload, plan_reload

    old = Config()
    new = dataclasses.replace(old, enforce=dataclasses.replace(old.enforce, hold_max_ms=900))
    plan = plan_reload(old, new)
    assert plan.refusal is None and plan.changed == ("enforce.hold_max_ms",)
    written = []
    maps = SimpleNamespace(set_config=lambda **kw: written.append(kw))
    dp = SimpleNamespace(maps=maps, config=SimpleNamespace(push=True, enforce=True, snaplen=0, hold=True,
                                                           hold_max_ms=400))
    hold = SimpleNamespace(hold_max_ns=400_000_000)
    sensor = SimpleNamespace(datapath=dp, feed=SimpleNamespace(hold=hold), reject_stats=None, engine=None,
                             config=old)
    apply_reload(sensor, plan)
    assert written == [dict(push=True, enforce=True, snaplen=0, hold=True, hold_max_ms=900)]
    assert (dp.config.hold_max_ms, hold.hold_max_ns, sensor.config) == (900, 900_000_000, new)


def test_a_worker_applies_the_text_the_supervisor_planned_even_if_the_file_changed_since(tmp_path):
    path = tmp_path / "sensor.toml"
    path.write_text("[sensor]\nports = [25]\nstate_file = \"stats.json\"\n")
    config = worker_config(load(path), 1)                  # the worker runs its own view
    planned = "[sensor]\nports = [25, 2525]\nstate_file = \"stats.json\"\n"
    path.write_text(planned.replace("2525", "587"))         # edited again after the supervisor read it
    pending = [planned]
    sensor = running_sensor(config, load_config=worker_config_loader(
        None, path, 1, lambda: pending.pop() if pending else None))
    result = sensor.reload()
    assert result["config_changed"] == ["sensor.ports"] and sensor.config.sensor.ports == (25, 2525)
    assert sensor.config.sensor.state_file == tmp_path / "stats.json.worker1"    # the worker's own view
    # a reload without the supervisor's text reads the file
    assert sensor.reload()["config_changed"] == ["sensor.ports"] and sensor.config.sensor.ports == (25, 587)
