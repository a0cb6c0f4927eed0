"""The ``anomaly`` record (``schemas/anomaly.json``): something odd at the TCP
or SMTP level, with a stable ``name``."""

from __future__ import annotations

from sensor.records.common import conn_fields

__all__ = ["anomaly_record"]


def anomaly_record(flow, ts: float, layer: str, name: str, direction: str | None = None,
                   detail: str = "") -> dict:
    """An ``anomaly`` record.  ``layer`` is ``ip``, ``tcp`` or ``smtp``; ``flow`` may be None."""
    rec = {"ts": ts, "event_type": "anomaly"}
    if flow is not None:
        rec.update(conn_fields(flow))
    rec["layer"] = layer
    rec["name"] = name
    if direction is not None:
        rec["direction"] = direction
    if detail:
        rec["detail"] = detail
    return rec
