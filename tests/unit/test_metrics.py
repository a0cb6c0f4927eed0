"""The Prometheus endpoint without BPF: the address syntax, the one-line
errors (extra missing, address in use), and what a scrape of a fake sensor
holds (per-rule labels, no addresses anywhere)."""

from __future__ import annotations

import socket
import sys
import urllib.request
from types import SimpleNamespace

import pytest

from sensor.errors import SensorError
from sensor.service import metrics
from sensor.service.metrics import MetricsServer, parse_address
from support.prereqs import require_module


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:9325", ("127.0.0.1", 9325)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[::1]:9325", ("::1", 9325)),
    ("localhost:80", ("localhost", 80)),
])
def test_addresses(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text,problem", [
    ("9325", "not ADDR:PORT"),
    (":9325", "no address"),
    ("127.0.0.1:", "not a port"),
    ("127.0.0.1:70000", "not a port"),
    ("127.0.0.1:http", "not a port"),
    ("::1:9325", "in brackets"),
    ("[::1]9325", "not ADDR:PORT"),
    ("[nope]:9325", "not an IPv6 address"),
])
def test_address_mistakes(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_address(text)


def fake_sensor():
    """What the collector reads of a Sensor without BPF: the real components'
    counter objects, their values set here."""
    from sensor.counters import Group
    from sensor.inputs.live import FeedCounters
    from sensor.pipeline import PipelineCounters
    from sensor.rules.counters import RuleCounters, RuleEngineCounters, RuleSetCounters
    from sensor.service.control import ControlCounters
    from sensor.service.loop import SensorCounters
    from sensor.spamstats import ActorCounters, RejectStatsCounters

    rule = RuleCounters().update(dict(alerts=3, calls=10, errors=1, over_budget=0, seconds=0.25))
    ruleset = SimpleNamespace(rules=[SimpleNamespace(disabled=None)], errors={})
    flows = [SimpleNamespace(ctx=object())]
    reader = SimpleNamespace(lost=0, bad_records=0, callback_errors=0, fill=0.25)
    from sensor.rules.enforce import EnforcerCounters
    verdicts = EnforcerCounters()
    for seconds in (0.0002, 0.003, 2.0):
        verdicts.since_event.observe(seconds)
    verdicts.since_decision.observe(0.00002)
    groups = [
        Group((), SensorCounters(SimpleNamespace(started=None, pipeline=SimpleNamespace(sessions=flows)))),
        Group((), FeedCounters(SimpleNamespace(reader=reader)).update(dict(events=20))),
        Group(("pipeline",), PipelineCounters().update(dict(frames=11, segments=10, flows=2, transactions=1,
                                                            payload_bytes=99, not_segments={"not_tcp": 3}))),
        Group(("rule_engine",), RuleEngineCounters().update(dict(alerts=3, errors=1, drops=2, late_events=5,
                                                                 bans=1))),
        Group(("rule_engine",), RuleSetCounters(ruleset).update(dict(reload_errors=2))),
        Group(None, rule, (("rule", "spam_filter.mail_from"),)),
        Group(("spam_stats",), RejectStatsCounters().update(dict(notices=4, replies=9))),
        Group(("spam_stats",), ActorCounters(SimpleNamespace(stats=[object()])).update(dict(bans=1))),
        Group(("control",), ControlCounters().update(dict(requests=5, refused=1, bans_added=2))),
        Group(("verdicts",), verdicts),
    ]
    return SimpleNamespace(counter_groups=lambda: iter(groups))


def samples(sensor) -> dict:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics.SensorCollector(sensor))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}, text


def test_a_scrape_of_a_fake_sensor():
    require_module("prometheus_client")
    got, text = samples(fake_sensor())
    assert got[("smtp_sensor_events_total", ())] == 20
    assert got[("smtp_sensor_active_flows", ())] == 1
    assert got[("smtp_sensor_not_segments_total", (("reason", "not_tcp"),))] == 3
    assert got[("smtp_sensor_rule_alerts_total", (("rule", "spam_filter.mail_from"),))] == 3
    assert got[("smtp_sensor_rule_seconds_total", (("rule", "spam_filter.mail_from"),))] == 0.25
    assert got[("smtp_sensor_rule_reload_errors_total", ())] == 2
    assert got[("smtp_sensor_notices_total", ())] == 4
    assert got[("smtp_sensor_bans_total", (("by", "manual"),))] == 2
    assert got[("smtp_sensor_bans_total", (("by", "rules"),))] == 1
    assert got[("smtp_sensor_bans_total", (("by", "spam_stats"),))] == 1
    assert got[("smtp_sensor_spam_stats_hosts", ())] == 1
    assert got[("smtp_sensor_rules_loaded", ())] == 1
    assert got[("smtp_sensor_control_requests_total", ())] == 5
    assert not any(name.startswith("smtp_sensor_kernel") for name, _ in got)   # no datapath loaded


def test_the_ring_fill_is_a_gauge_and_the_verdict_latency_a_histogram():
    require_module("prometheus_client")
    got, text = samples(fake_sensor())
    assert "# TYPE smtp_sensor_ring_fill_ratio gauge" in text
    assert got[("smtp_sensor_ring_fill_ratio", ())] == 0.25
    assert "# TYPE smtp_sensor_verdict_to_kernel_seconds histogram" in text
    event = (("since", "event"),)
    assert got[("smtp_sensor_verdict_to_kernel_seconds_count", event)] == 3
    assert got[("smtp_sensor_verdict_to_kernel_seconds_sum", event)] == pytest.approx(2.0032)
    assert got[("smtp_sensor_verdict_to_kernel_seconds_bucket", (("le", "0.00025"), ("since", "event")))] == 1
    assert got[("smtp_sensor_verdict_to_kernel_seconds_bucket", (("le", "0.005"), ("since", "event")))] == 2
    assert got[("smtp_sensor_verdict_to_kernel_seconds_bucket", (("le", "1.0"), ("since", "event")))] == 2
    assert got[("smtp_sensor_verdict_to_kernel_seconds_bucket", (("le", "+Inf"), ("since", "event")))] == 3
    assert got[("smtp_sensor_verdict_to_kernel_seconds_count", (("since", "decision"),))] == 1


def test_the_extra_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(SensorError, match=r"^--metrics needs the 'metrics' extra: pip install 'smtp-sensor\[metrics\]'"):
        MetricsServer("127.0.0.1:0", fake_sensor())


def test_an_address_in_use_is_one_line():
    require_module("prometheus_client")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SensorError, match=rf"^cannot serve metrics on 127.0.0.1:{port}: Address already in use$"):
            MetricsServer(f"127.0.0.1:{port}", fake_sensor())


def test_served_over_http_on_the_address_asked():
    require_module("prometheus_client")
    server = MetricsServer("127.0.0.1:0", fake_sensor())
    try:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics" and server.port > 0
        text = urllib.request.urlopen(server.url, timeout=10).read().decode()
        assert "smtp_sensor_events_total 20.0" in text
        assert "process_resident_memory_bytes" in text
    finally:
        server.close()
