"""The ``notice`` record (``schemas/notice.json``): a host found by the reject
statistics, with Zeek's notice.log fields (``note``, ``msg``, ``sub``,
``src``, ``n``) plus the counts, the window and what was done."""

from __future__ import annotations

__all__ = ["notice_record"]


def notice_record(notice, *, actions=(), ban_ttl: float | None = None) -> dict:
    """The record of a ``sensor.spamstats.Notice``; ``actions``: ``["ban"]``
    when the host was banned, for ``ban_ttl`` seconds."""
    rec = {"ts": notice.ts, "event_type": "notice", "note": notice.note, "msg": notice.msg}
    if notice.sub:
        rec["sub"] = notice.sub
    rec.update({
        "src": notice.src, "n": notice.rejects, "total": notice.total, "rejects": notice.rejects,
        "percent": notice.percent, "window": notice.window, "window_start": notice.window_start,
        "window_end": notice.window_end, "suppress_for": notice.suppress_for,
    })
    if notice.recipients:
        rec["recipients"] = list(notice.recipients)
    if notice.recipients_dropped:
        rec["recipients_dropped"] = notice.recipients_dropped
    if notice.samples:
        samples = []
        for s in notice.samples:
            d = {"code": s.code}
            if s.enhanced:
                d["enhanced"] = s.enhanced
            d["text"] = s.text
            d["count"] = s.count
            if s.uid:
                d["uid"] = s.uid
            samples.append(d)
        rec["samples"] = samples
    rec["actions"] = list(actions)
    if ban_ttl:
        rec["ban_ttl"] = ban_ttl
    return rec
