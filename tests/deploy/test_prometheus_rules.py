"""deploy/prometheus-alerts.yml and deploy/grafana-dashboard.json: Prometheus
accepts the rules (promtool, Debian's prometheus package), and every metric
they name is one the sensor exports: the names are derived from the counters
the code declares (``sensor.counters`` fields of every component, the
kernel's), not from a list kept here."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import sensor
from sensor.counters import Counters
from sensor.service.metrics import PREFIX

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus-alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana-dashboard.json"
NAMED = re.compile(r"\b(" + PREFIX + r"[a-z0-9_]+)")


def exported_names() -> set[str]:
    """The sample names of every declared counter, gauge and histogram, as
    prometheus_client writes them (``_total``; ``_bucket``, ``_sum``, ``_count``)."""
    for info in pkgutil.walk_packages(sensor.__path__, "sensor."):
        importlib.import_module(info.name)
    names: set[str] = set()
    todo = [Counters]
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        for field in cls.FIELDS.values():
            name = PREFIX + cls.metric_name(field)
            if field.kind == "counter":
                names.add(name + "_total")
            elif field.kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
            else:
                names.add(name)
    return names


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_promtool_accepts_the_alerting_rules():
    if not shutil.which("promtool"):
        from support.prereqs import missing
        missing("promtool (apt install prometheus; ./run setup installs it)")
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_alert_on_ring_loss_hold_timeouts_rule_errors_and_a_sensor_down():
    text = RULES.read_text()
    for alert in ("SmtpSensorDown", "SmtpSensorRingLoss", "SmtpSensorHoldTimeouts", "SmtpSensorRuleErrors"):
        assert f"alert: {alert}\n" in text
    assert 'up{job="smtp-sensor"} == 0' in text


def test_every_metric_the_rules_and_the_dashboard_name_is_exported():
    exported = exported_names()
    named = set(NAMED.findall(RULES.read_text()))
    for expr in dashboard_expressions():
        named |= set(NAMED.findall(expr))
    assert len(named) >= 10
    assert named - exported == set()


def test_the_dashboard_shows_what_the_issue_asks_for():
    exprs = " ".join(dashboard_expressions())
    for name in ("events_total", "kernel_packets_total", "lost_samples_total", "ring_fill_ratio",
                 "notices_total", "bans_total", "rule_exceptions_total", "verdict_to_kernel_seconds_bucket"):
        assert PREFIX + name in exprs
