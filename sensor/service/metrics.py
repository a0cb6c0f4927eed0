"""A Prometheus endpoint for the running sensor (``run --metrics ADDR:PORT``).

Optional: it needs the ``metrics`` extra (``pip install 'smtp-sensor[metrics]'``,
i.e. prometheus_client).  The HTTP server runs in a thread of its own; every
scrape calls :class:`SensorCollector`, which reads ``Sensor.counter_groups()``:
every component's counters (``sensor.counters``, each declared once with its
help text and metric name) and the kernel's, read from the BPF map at that
moment (``KernelMaps.counters()``: per direction, per verdict).  Nothing here
names a counter.

Labels are directions, verdicts, rule ids, decode reasons and ban sources:
never an address (a per-IP label would grow without bound).

    smtp_sensor_kernel_packets_total{direction="ingress",verdict="pushed"} 42
    smtp_sensor_rule_alerts_total{rule="spam_filter.mail_from"} 3
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from sensor.counters import Counters, counter
from sensor.errors import SensorError

__all__ = ["parse_address", "MetricsServer", "SensorCollector", "Sample", "samples", "families", "families_of", "PREFIX"]

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


class ScrapeCounters(Counters):
    METRIC_PREFIX = "metrics_"
    scrapes = counter("scrapes of the metrics endpoint")
    scrape_errors = counter("scrapes answered empty (the values kept changing while read)")


class SensorCollector:
    """Yields the sensor's metrics at each scrape (a prometheus_client collector)."""

    def __init__(self, sensor):
        self.sensor = sensor
        self.counters = ScrapeCounters()

    def read(self) -> list:
        """The samples of one scrape (a supervisor's collector adds its workers')."""
        return samples(self.sensor.counter_groups())

    def describe(self):
        return []          # not known before the first collect; no checks at registration

    def collect(self):
        _, core = _import()
        self.counters.scrapes += 1
        for attempt in range(_RETRIES):
            try:
                found = families_of(self.read(), core)
                break
            except RuntimeError:
                # the loop changed a dict we were reading (a rule reload, a new
                # flow): read again; the values are a moment's, as always
                if attempt == _RETRIES - 1:
                    self.counters.scrape_errors += 1
                    found = []
        yield from found


_FAMILIES = {"counter": lambda core: core.CounterMetricFamily,
             "gauge": lambda core: core.GaugeMetricFamily,
             "histogram": lambda core: core.HistogramMetricFamily}


class Sample(NamedTuple):
    """One sample of a metric, in a form that crosses a control socket
    (msgpack: a list): a worker's reply to ``metrics``
    (sensor.service.workermetrics).  ``value``: a number, or for a histogram
    ``{"buckets": [[le, cumulative count], ...], "sum": s}``."""

    name: str                   #: the full metric name (``PREFIX`` + the field's)
    kind: str                   #: counter, gauge or histogram
    help: str
    label_names: tuple
    label_values: tuple
    value: object
    combine: str = "sum"        #: a gauge's, across workers (sensor.counters.COMBINE)


def samples(groups) -> list:
    """The ``Sample``s of ``groups`` (``sensor.counters.Group``s): counters of
    several groups with the same metric name (``bans{by=...}``, the kernel's
    per direction) are samples of one name."""
    out = []
    for group in groups:
        metric_name = type(group.counters).metric_name
        for field, value in group.counters.readings():
            name = PREFIX + metric_name(field)
            labels = dict(group.labels)
            labels.update(field.labels)
            names, values = tuple(labels), tuple(labels.values())
            if field.kind == "histogram":
                out.append(Sample(name, field.kind, field.help, names, values,
                                  {"buckets": value.cumulative(), "sum": value.sum}))
            elif field.by and not value:     # the family is there before its first label value
                out.append(Sample(name, field.kind, field.help, (*names, field.by), values, None))
            elif field.by:
                for key, count in sorted(value.items()):
                    out.append(Sample(name, field.kind, field.help, (*names, field.by), (*values, str(key)), count))
            else:
                out.append(Sample(name, field.kind, field.help, names, values, value, field.combine))
    return out


def families_of(found, core) -> list:
    """The Prometheus families of ``Sample``s, one per metric name (the first
    sample of a name gives its help and label names)."""
    out: dict = {}
    for sample in found:
        family = out.get(sample.name)
        if family is None:
            make = _FAMILIES[sample.kind](core)
            family = out[sample.name] = make(sample.name, sample.help, labels=list(sample.label_names))
        if sample.value is None:
            continue
        if sample.kind == "histogram":
            family.add_metric(list(sample.label_values), [tuple(b) for b in sample.value["buckets"]],
                              sample.value["sum"])
        else:
            family.add_metric(list(sample.label_values), sample.value)
    return list(out.values())


def families(groups, core) -> list:
    """The Prometheus families of ``groups``, one per metric name."""
    return families_of(samples(groups), core)


class MetricsServer:
    """The HTTP endpoint, in a daemon thread; ``close()`` stops it."""

    def __init__(self, address: str, sensor, collector: type = SensorCollector):
        prometheus_client, _ = _import()
        host, port = parse_address(address)
        self.registry = prometheus_client.CollectorRegistry(auto_describe=False)
        self.collector = collector(sensor)
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
