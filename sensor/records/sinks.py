"""Where records go: JSON lines through structlog, or a list (tests, rules).

A sink is any callable taking one record (a dict from ``sensor.records``).
``JsonLinesSink`` renders each record as one JSON line with structlog's
``JSONRenderer`` on a ``WriteLogger``: the record's own keys, in its order,
nothing added (no log level, no second timestamp).
"""

from __future__ import annotations

import json
import sys

import structlog

__all__ = ["JsonLinesSink", "ListSink", "dumps"]


def dumps(obj, **kw) -> str:
    """JSON text of a record: non-ASCII kept, anything unknown as its str()."""
    return json.dumps(obj, ensure_ascii=False, default=str, separators=(",", ":"))


def _record_only(_logger, _method, event_dict):
    event_dict.pop("event", None)
    return event_dict["record"]


class JsonLinesSink:
    """Write each record as one JSON line to ``stream`` (default stdout)."""

    def __init__(self, stream=None):
        self.written = 0
        self.set_stream(stream or sys.stdout)

    def set_stream(self, stream) -> None:
        """Write the next records to ``stream`` (e.g. the output file opened
        again after logrotate renamed it; the caller closes the old one)."""
        self.stream = stream
        self._log = structlog.wrap_logger(
            structlog.WriteLogger(stream),
            processors=[_record_only, structlog.processors.JSONRenderer(serializer=dumps)],
            # records are data, not logs: never filtered by the log level
            wrapper_class=structlog.BoundLogger, cache_logger_on_first_use=True)

    def __call__(self, record: dict) -> None:
        self._log.msg("record", record=record)
        self.written += 1

    def flush(self) -> None:
        self.stream.flush()


class ListSink(list):
    """Keep records in memory; ``of(type)`` filters by ``event_type``."""

    def __call__(self, record: dict) -> None:
        self.append(record)

    def of(self, event_type: str) -> list[dict]:
        return [r for r in self if r["event_type"] == event_type]
