"""The ``native`` output: the records as they are, one JSON line each (what
``sensor.records.sinks.JsonLinesSink`` writes: the record's keys in its
order, nothing added), to any destination."""

from __future__ import annotations

from sensor.outputs.destinations import LineOutput
from sensor.records.sinks import dumps

__all__ = ["NativeOutput"]


class NativeOutput(LineOutput):
    def line(self, record: dict) -> str:
        return dumps(record)
