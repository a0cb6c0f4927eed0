"""A Prometheus endpoint for the running sensor (``run --metrics ADDR:PORT``).

Optional: it needs the ``metrics`` extra (``pip install 'smtp-sensor[metrics]'``,
i.e. prometheus_client).  The HTTP server runs in a thread of its own; every
scrape calls :class:`SensorCollector`, which reads

* the kernel's counters from the BPF map at that moment
  (``KernelMaps.counters()``: per direction, per verdict), and
* the userland counters of the sensor: events read from the event ring and lost, the
  pipeline (frames, flows, transactions, anomalies, ...), the rules (alerts,
  calls, errors, time and over-budget calls per rule id; reload errors), the
  reject statistics (notices, ...), bans (by who asked for them, and how many
  the kernel holds now), the control socket.

Labels are directions, verdicts, rule ids, decode reasons and ban sources:
never an address (a per-IP label would grow without bound).

    smtp_sensor_kernel_packets_total{direction="ingress",verdict="pushed"} 42
    smtp_sensor_rule_alerts_total{rule="spam_filter.mail_from"} 3
"""

from __future__ import annotations

import ipaddress
import time

from sensor.errors import SensorError
from sensor.kernel import abi

__all__ = ["parse_address", "MetricsServer", "SensorCollector", "PREFIX"]

PREFIX = "smtp_sensor_"
_RETRIES = 5


class MetricsError(SensorError):
    """The endpoint cannot start (extra missing, address in use): exit code 2,
    like a control socket another sensor answers on."""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` -> (host, port); ValueError with one
    line on a mistake.  The host is required: the endpoint binds only where
    asked (``0.0.0.0:9100`` is every IPv4 address, ``[::]:9100`` every one)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"not ADDR:PORT: {text!r} (IPv6: [2001:db8::1]:9100)")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address in {text!r}") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"not ADDR:PORT: {text!r} (e.g. 127.0.0.1:9100)")
        if ":" in host:
            raise ValueError(f"an IPv6 address goes in brackets: [{host}]:{port_text}")
    if not host:
        raise ValueError(f"no address in {text!r}: say where to listen, e.g. 127.0.0.1:9100 "
                         "(0.0.0.0:9100 for every IPv4 address)")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"not a port 0..65535 in {text!r}")
    return host, int(port_text)


def _import():
    try:
        import prometheus_client
        from prometheus_client import core
    except ImportError:
        raise MetricsError("--metrics needs the 'metrics' extra: pip install 'smtp-sensor[metrics]' "
                           "(prometheus_client)") from None
    return prometheus_client, core


class SensorCollector:
    """Yields the sensor's metrics at each scrape (a prometheus_client collector)."""

    def __init__(self, sensor):
        self.sensor = sensor
        self.scrapes = 0
        self.scrape_errors = 0

    def describe(self):
        return []          # not known before the first collect; no checks at registration

    def collect(self):
        _, core = _import()
        self.scrapes += 1
        for attempt in range(_RETRIES):
            try:
                families = list(self._families(core))
                break
            except RuntimeError:
                # the loop changed a dict we were reading (a rule reload, a new
                # flow): read again; the values are a moment's, as always
                if attempt == _RETRIES - 1:
                    self.scrape_errors += 1
                    families = []
        yield from families

    # ------------------------------------------------------------ the families
    def _families(self, core):
        C, G = core.CounterMetricFamily, core.GaugeMetricFamily
        s = self.sensor
        yield from self._kernel(core)

        g = G(PREFIX + "uptime_seconds", "seconds since the sensor started its loop")
        g.add_metric([], time.monotonic() - s.started if s.started else 0.0)
        yield g
        feed = s.feed
        c = C(PREFIX + "events", "events read from the kernel's event ring")
        c.add_metric([], feed.events if feed else 0)
        yield c
        c = C(PREFIX + "lost_samples", "events the kernel could not write into the event ring (ring full)")
        c.add_metric([], feed.reader.lost if feed else 0)
        yield c
        c = C(PREFIX + "starttls_bypassed_flows", "STARTTLS flows whose packets the kernel stopped pushing")
        c.add_metric([], feed.bypassed if feed else 0)
        yield c

        pipe = s.pipeline
        if pipe is not None:
            st = pipe.stats
            for name, doc in (("frames", "frames dissected"),
                              ("segments", "TCP segments of SMTP flows"),
                              ("flows", "SMTP flows seen"),
                              ("transactions", "SMTP transactions"),
                              ("anomalies", "protocol anomalies"),
                              ("payload_bytes", "TCP payload bytes of SMTP flows"),
                              ("gap_bytes", "bytes missing from SMTP flows (gaps)"),
                              ("starttls", "STARTTLS flows"),
                              ("listener_errors", "exceptions raised by listeners (rules, statistics)"),
                              ("gated", "segments of dropped flows kept from the dissector")):
                c = C(PREFIX + name, doc)
                c.add_metric([], getattr(st, name))
                yield c
            c = C(PREFIX + "not_segments", "frames not dissected, by reason", labels=["reason"])
            for reason, count in sorted(dict(st.not_segments).items()):
                c.add_metric([str(reason)], count)
            yield c
            g = G(PREFIX + "active_flows", "SMTP flows followed now")
            g.add_metric([], sum(1 for f in list(pipe.reassembler.flows) if f.ctx is not None))
            yield g

        yield from self._rules(core)
        yield from self._stats(core)

        control = getattr(s, "control", None)
        c = C(PREFIX + "control_requests", "control socket requests")
        c.add_metric([], control.requests if control else 0)
        yield c
        c = C(PREFIX + "control_refused", "control socket requests or connections refused")
        c.add_metric([], control.refused if control else 0)
        yield c
        c = C(PREFIX + "log_reopens", "log and record files reopened (SIGUSR1)")
        c.add_metric([], getattr(s, "reopens", 0))
        yield c

    def _kernel(self, core):
        dp = self.sensor.datapath
        if dp is None or dp.bpf is None or dp.maps is None:
            return
        counters = dp.maps.counters()
        packets = core.CounterMetricFamily(
            PREFIX + "kernel_packets", "packets by the kernel's verdict (exclusive), read from the map at scrape",
            labels=["direction", "verdict"])
        marks = core.CounterMetricFamily(
            PREFIX + "kernel_marked_packets", "packets also counted under a mark (cut, expired entry)",
            labels=["direction", "mark"])
        for direction, values in counters.items():
            for counter in abi.Counter:
                name = counter.name.lower()
                family = packets if counter < abi.VERDICT_COUNTERS else marks
                family.add_metric([direction, name], values[name])
        yield packets
        yield marks
        bans = core.GaugeMetricFamily(PREFIX + "bans_active", "source bans the kernel holds now")
        bans.add_metric([], len(dp.maps.bans()))
        yield bans

    def _rules(self, core):
        C, G = core.CounterMetricFamily, core.GaugeMetricFamily
        s = self.sensor
        engine = s.engine
        bans = C(PREFIX + "bans", "bans asked for, by who", labels=["by"])
        bans.add_metric(["rules"], engine.bans if engine else 0)
        bans.add_metric(["spam_stats"], s.actor.banned if s.actor is not None else 0)
        control = getattr(s, "control", None)
        bans.add_metric(["manual"], control.bans_added if control is not None else 0)
        yield bans
        if engine is None:
            return
        rs = engine.ruleset
        rules = list(rs.rules)
        g = G(PREFIX + "rules_loaded", "rules loaded")
        g.add_metric([], len(rules))
        yield g
        g = G(PREFIX + "rule_files_in_error", "rule files (or rules.toml) whose last change did not load")
        g.add_metric([], len(rs.errors))
        yield g
        c = C(PREFIX + "rule_reload_errors", "rule files or settings that failed to load")
        c.add_metric([], rs.reload_errors)
        yield c
        for name, doc, value in (("alerts", "alerts raised by rules", engine.alerts),
                                 ("rule_errors", "exceptions raised by rules", engine.errors),
                                 ("rule_slow_calls", "rule calls over their budget", engine.slow_calls),
                                 ("rule_flow_drops", "flows dropped by rules", engine.drops),
                                 ("rule_late_events", "events of flows already dropped", engine.late_events)):
            c = C(PREFIX + name, doc)
            c.add_metric([], value)
            yield c
        per_rule = {
            "alerts": C(PREFIX + "rule_alerts", "alerts per rule (since its file was loaded)", labels=["rule"]),
            "calls": C(PREFIX + "rule_calls", "calls per rule", labels=["rule"]),
            "errors": C(PREFIX + "rule_exceptions", "exceptions per rule", labels=["rule"]),
            "over_budget": C(PREFIX + "rule_over_budget", "calls over budget per rule", labels=["rule"]),
            "seconds": C(PREFIX + "rule_seconds", "time spent in each rule", labels=["rule"]),
        }
        for r in rules:
            for attr, family in per_rule.items():
                family.add_metric([r.id], getattr(r, attr))
        yield from per_rule.values()

    def _stats(self, core):
        stats = self.sensor.stats
        if stats is None:
            return
        counts = stats.counters.as_dict()
        c = core.CounterMetricFamily(PREFIX + "notices", "reject statistics notices raised")
        c.add_metric([], counts.pop("notices", 0))
        yield c
        for name, value in counts.items():
            c = core.CounterMetricFamily(PREFIX + "spam_stats_" + name, f"reject statistics: {name}")
            c.add_metric([], value)
            yield c
        g = core.GaugeMetricFamily(PREFIX + "spam_stats_hosts", "hosts the reject statistics track now")
        g.add_metric([], len(stats))
        yield g


class MetricsServer:
    """The HTTP endpoint, in a daemon thread; ``close()`` stops it."""

    def __init__(self, address: str, sensor):
        prometheus_client, _ = _import()
        host, port = parse_address(address)
        self.registry = prometheus_client.CollectorRegistry(auto_describe=False)
        self.collector = SensorCollector(sensor)
        self.registry.register(self.collector)
        prometheus_client.ProcessCollector(registry=self.registry)
        try:
            started = prometheus_client.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise MetricsError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from None
        self._server, self._thread = started if isinstance(started, tuple) else (None, None)
        self.host = host
        self.port = self._server.server_port if self._server is not None else port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
