"""Outputs: where the records go, in the formats other tools ingest as they are.

An output is an object with ``write(record)`` (one native record, a dict of
``sensor.records``), ``reopen()`` (SIGUSR1, after logrotate), ``flush()``
and ``close()``; it is called like a sink too.  The types (``[[output]]
type``, docs/config.md):

* ``native`` (``native.py``): the records as they are, JSON lines;
* ``eve`` (``eve.py``): Suricata's EVE JSON;
* ``zeek`` (``zeek.py``): Zeek's logs, one file per log in a directory.

``native`` and ``eve`` write lines to a destination (``destinations.py``): a
file (``path``), a file in a folder (``directory``: ``records.json``,
``eve.json``), standard output, syslog or a Unix socket.  ``zeek`` takes
``[spam_stats] local_networks`` as Zeek's ``Site::local_nets``.

``Outputs`` is the set the configuration asks for, itself a sink: each
record goes to every output whose ``event_types`` take it::

    outputs = Outputs.from_config(config, in_iface="eth1")
    pipeline = Pipeline(outputs, ...)     # or Userland(config, outputs)
    outputs.reopen()                      # SIGUSR1
    outputs.close()

Without ``[[output]]`` tables it is today's one native output to ``[sensor]
output`` (standard output by default); with them, those, plus a native one
to ``[sensor] output`` (or ``--output``) when that names a file.
``from_config`` builds the whole set again from a config; a reload gives it
to the set in use, ``outputs.take_over(Outputs.from_config(new_config))``,
which closes the old outputs (the sink object the pipeline holds stays).
"""

from __future__ import annotations

from sensor.counters import Counters, counter
from sensor.errors import SensorError
from sensor.outputs.destinations import (FileDestination, StreamDestination, SyslogDestination,
                                         UnixSocketDestination)
from sensor.outputs.eve import EVE_TYPES, EveOutput
from sensor.outputs.native import NativeOutput

__all__ = ["Outputs", "build_output", "NativeOutput", "EveOutput", "DIRECTORY_FILES"]

#: the file an output with a ``directory`` writes in it
DIRECTORY_FILES = {"native": "records.json", "eve": "eve.json"}


def _destination(spec, *, mode: str = "a", stdout=None):
    if spec.path is not None:
        return FileDestination(spec.path, mode=mode)
    if spec.directory is not None:
        return FileDestination(spec.directory / DIRECTORY_FILES[spec.type], mode=mode)
    if spec.stdout:
        return StreamDestination(stdout)
    if spec.syslog:
        return SyslogDestination(spec.facility)
    return UnixSocketDestination(spec.socket, spec.socket_type)


def build_output(spec, *, in_iface: str | None = None, stdout=None, mode: str = "a", local_networks=()):
    """The output of one ``[[output]]`` table (a ``sensor.config.OutputConfig``);
    ``local_networks``: Zeek's ``Site::local_nets`` (files.log ``local_orig``)."""
    if spec.type == "zeek":
        from sensor.outputs.zeek import ZeekLogs
        return ZeekLogs(spec.directory, format=spec.format, rotate_interval=spec.rotate_interval,
                        local_networks=local_networks)
    destination = _destination(spec, mode=mode, stdout=stdout)
    if spec.type == "eve":
        return EveOutput(destination, in_iface=in_iface if spec.in_iface else None)
    return NativeOutput(destination)


def _name(output) -> str:
    return getattr(output, "name", None) or str(getattr(output, "directory", output))


def _count(output, attribute: str) -> int | None:
    """An output's count: its own (Zeek's ``written``: lines per log, summed) or its destination's."""
    value = getattr(output, attribute, None)
    if value is None:
        value = getattr(getattr(output, "destination", None), attribute, None)
    if isinstance(value, dict):
        value = sum(value.values())
    return value if isinstance(value, int) else None


def _by_output(attribute: str):
    def read(outputs: "Outputs") -> dict:
        counts = {_name(o): _count(o, attribute) for o, _ in outputs.outputs}
        return {name: n for name, n in counts.items() if n is not None}
    return read


class OutputsCounters(Counters):
    """``owner``: the Outputs."""

    METRIC_PREFIX = "output_"
    written = counter("records given to each output (those it dropped included), by output", by="output",
                      read=_by_output("written"))
    dropped = counter("records an output could not deliver (a Unix socket nobody reads, a full buffer), "
                      "by output", by="output", read=_by_output("dropped"))


class Outputs:
    """Several outputs, each with the event types it takes (None: all)."""

    def __init__(self, outputs=()):
        #: [(output, frozenset of event types or None)]
        self.outputs = list(outputs)
        self.counters = OutputsCounters(self)

    @classmethod
    def from_config(cls, config, *, in_iface: str | None = None, stdout=None, mode: str = "a") -> "Outputs":
        """The outputs of ``config``; ``mode`` "w": the ``[sensor] output``
        file is truncated first (a replay's ``-o``), ``[[output]]`` files are
        always appended to.  An output that cannot be opened closes those
        opened before it and raises its one-line SensorError."""
        from sensor.config import OutputConfig

        specs = [(spec, "a") for spec in config.outputs]
        sensor = config.sensor
        if not specs or sensor.output != "-":
            default = (OutputConfig(stdout=True) if sensor.output_path is None
                       else OutputConfig(path=sensor.output_path))
            specs.insert(0, (default, mode))
        built = cls()
        try:
            for spec, spec_mode in specs:
                kinds = frozenset(spec.event_types) if spec.event_types else None
                output = build_output(spec, in_iface=in_iface, stdout=stdout, mode=spec_mode,
                                      local_networks=config.spam_stats.local_networks)
                built.outputs.append((output, kinds))
        except BaseException:
            built.close()
            raise
        return built

    @classmethod
    def for_live(cls, config) -> "Outputs":
        """The outputs of a live sensor: EVE's ``in_iface`` is its interface when it has one."""
        interfaces = config.sensor.interfaces
        return cls.from_config(config, in_iface=interfaces[0] if len(interfaces) == 1 else None)

    def take_over(self, other: "Outputs") -> None:
        """Write to ``other``'s outputs from now on and close the ones this had
        (a reload: the pipeline, the rules and the statistics keep this
        object as their sink, so nothing else needs telling)."""
        old, self.outputs, other.outputs = self.outputs, other.outputs, []
        Outputs(old).close()

    def write(self, record: dict) -> None:
        kind = record.get("event_type")
        for output, kinds in self.outputs:
            if kinds is None or kind in kinds or EVE_TYPES.get(kind) in kinds:
                output.write(record)

    __call__ = write

    def reopen(self) -> tuple[list[str], dict[str, str]]:
        """Reopen every output; (the names reopened, {name: why not} for the
        others, which keep writing where they did).  Standard output is not
        reopened and not named."""
        reopened, failed = [], {}
        for output, _ in self.outputs:
            if not getattr(getattr(output, "destination", None), "reopens", True):
                continue
            try:
                output.reopen()
            except (OSError, SensorError) as exc:
                failed[_name(output)] = getattr(exc, "strerror", None) or str(exc)
            else:
                reopened.append(_name(output))
        return reopened, failed

    def flush(self) -> None:
        for output, _ in self.outputs:
            output.flush()

    def close(self) -> None:
        """Close every output (each once, whatever the others raise)."""
        outputs, self.outputs = self.outputs, []
        error = None
        for output, _ in outputs:
            try:
                output.close()
            except Exception as exc:           # the others still closed
                error = error or exc
        if error is not None:
            raise error
