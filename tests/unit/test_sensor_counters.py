"""The live sensor's counters without BPF: status, the stats line and the
Prometheus families are one walk of the components' counters, and keep the
keys operators read."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from sensor.assembly import Userland
from sensor.config import Config, SensorConfig
from sensor.inputs.live import LiveFeed
from sensor.records.sinks import ListSink
from sensor.service.loop import Sensor
from sensor.service.metrics import PREFIX, families
from sensor.spamstats import RejectStatsCounters
from support.prereqs import require_module

RULES = Path(__file__).resolve().parents[2] / "rules"


def sensor_without_bpf() -> Sensor:
    """A Sensor whose userland is built, with a feed on a stand-in ring reader
    and no datapath (what start() would add: the kernel's counters)."""
    sensor = Sensor(Config(sensor=SensorConfig(rules=RULES)))
    sensor.userland = Userland(sensor.config, ListSink())
    reader = SimpleNamespace(lost=0, bad_records=0, callback_errors=0, fill=0.0)
    sensor.feed = LiveFeed(reader, sensor.pipeline, maps=None)
    return sensor


def test_the_counters_line_keeps_its_keys():
    counters = sensor_without_bpf().counters()
    assert {"events", "lost", "uptime", "active_flows", "pipeline", "reassembly", "rule_engine",
            "spam_stats"} <= set(counters)
    assert {"alerts", "errors", "slow_calls", "drops", "bans", "late_events", "reload_errors"} <= \
        set(counters["rule_engine"])
    assert {"hosts", "bans", *RejectStatsCounters.FIELDS} <= set(counters["spam_stats"])
    assert {"flows", "transactions", "not_segments", "listener_errors", "gated"} <= set(counters["pipeline"])


def test_status_is_the_counters_and_what_the_sensor_runs():
    sensor = sensor_without_bpf()
    status = sensor.status()
    assert {k: status[k] for k in sensor.counters()} == sensor.counters()
    rule = status["rules"][0]
    assert list(rule) == ["id", "rev", "hook", "file", "calls", "errors", "alerts", "over_budget", "over_memory",
                          "ms", "disabled"]
    assert rule["disabled"] is None
    assert status["rule_errors"] == {} and status["interfaces"] == []


def test_every_counter_of_the_walk_is_a_metric_family():
    require_module("prometheus_client")
    from prometheus_client import core

    sensor = sensor_without_bpf()
    names = {f.name for f in families(sensor.counter_groups(), core)}
    declared = {PREFIX + type(g.counters).metric_name(f)
                for g in sensor.counter_groups() for f in g.counters.FIELDS.values()}
    assert names == declared
    assert {PREFIX + "events", PREFIX + "rule_alerts", PREFIX + "notices", PREFIX + "bans",
            PREFIX + "uptime_seconds", PREFIX + "defrag_reassembled", PREFIX + "defrag_anomalies"} <= names
