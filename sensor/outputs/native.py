"""The ``native`` output: the records as they are, one JSON line each (what
``sensor.records.sinks.JsonLinesSink`` writes: the record's keys in its
order, nothing added), to any destination."""

from __future__ import annotations

from sensor.records.sinks import dumps

__all__ = ["NativeOutput"]


class NativeOutput:
    def __init__(self, destination):
        self.destination = destination
        self.written = 0

    @property
    def name(self) -> str:
        return self.destination.name

    def write(self, record: dict) -> None:
        self.destination.write_line(dumps(record))
        self.written += 1

    __call__ = write

    def reopen(self) -> None:
        self.destination.reopen()

    def flush(self) -> None:
        self.destination.flush()

    def close(self) -> None:
        self.destination.close()
