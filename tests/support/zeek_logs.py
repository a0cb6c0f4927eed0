"""Zeek logs in the tests: hand-made records of each type (valid against
their JSON Schema), a clock the test moves, and the reading back of a log
with a Zeek-log parser from PyPI (parsezeeklogs: Zeek's TSV header, unset
and empty markers, escapes and types; JSON logs as they are)."""

from __future__ import annotations

import time

from parsezeeklogs import ZeekLog

from support.record_schemas import check

CONN = {"uid": "CpmLWd2zAaQhKZyh5b", "id.orig_h": "192.0.2.10", "id.orig_p": 49152,
        "id.resp_h": "198.51.100.25", "id.resp_p": 25, "community_id": "1:" + "A" * 27 + "="}


def local(y, mo, d, h=0, mi=0, s=0, frac=0.0) -> float:
    """Epoch seconds of a local time (rotation names and boundaries are local, as Zeek's)."""
    return time.mktime((y, mo, d, h, mi, s, 0, 0, -1)) + frac


class Clock:
    """``clock()`` gives ``now``; the test sets it."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def smtp_record(**fields) -> dict:
    rec = {"ts": 1733385184.610901, "event_type": "smtp", **CONN, "trans_depth": 1,
           "helo": "client.example", "mailfrom": "alice@example.com",
           "rcptto": ["bob@example.net", "carol@example.net"], "subject": "hello",
           "last_reply": "250 2.0.0 Ok: queued", "path": ["198.51.100.25", "192.0.2.10"],
           "tls": False, "steps": [], "delivered": True}
    rec.update(fields)
    check(rec)
    return rec


def files_record(**fields) -> dict:
    rec = {"ts": 1733385185.25, "event_type": "files", **CONN, "fuid": "F" + "b" * 17,
           "source": "SMTP", "trans_depth": 1, "depth": 1, "is_orig": True, "mime_type": "application/zip",
           "content_type": "application/zip", "filename": "photos.zip", "transfer_encoding": "base64",
           "total_bytes": 1234, "seen_bytes": 1234, "md5": "0" * 32, "sha256": "1" * 64, "complete": True}
    rec.update(fields)
    check(rec)
    return rec


def notice_record(**fields) -> dict:
    rec = {"ts": 1733390000.0, "event_type": "notice", "note": "SMTP_PossibleSpam",
           "msg": "203.0.113.7 - sent: 300 rejected: 40 percent", "sub": "550 5.7.1 no",
           "src": "203.0.113.7", "n": 120, "total": 300, "rejects": 120, "percent": 40,
           "window": "fixed", "window_start": 1733386400.0, "window_end": 1733390000.0,
           "suppress_for": 3600.0, "actions": ["ban"], "ban_ttl": 86400.0}
    rec.update(fields)
    check(rec)
    return rec


def alert_record(**fields) -> dict:
    rec = {"ts": 1733385186.5, "event_type": "alert", "uid": CONN["uid"], "src_ip": "192.0.2.10",
           "src_port": 49152, "dest_ip": "198.51.100.25", "dest_port": 25, "proto": "TCP",
           "community_id": CONN["community_id"],
           "alert": {"signature_id": "smuggling.terminator", "rev": 2,
                     "signature": "SMTP smuggling attempt", "severity": "high", "confidence": "high",
                     "sources": ["192.0.2.10"], "targets": ["198.51.100.25"],
                     "ref": ["CVE-2023-51764"]},
           "smtp": {"helo": "client.example"}}
    rec.update(fields)
    check(rec)
    return rec


def anomaly_record(name: str, layer: str = "smtp", detail: str = "", conn: bool = True, **fields) -> dict:
    rec = {"ts": 1733385187.0, "event_type": "anomaly", **(CONN if conn else {}), "layer": layer,
           "name": name, **fields}
    if detail:
        rec["detail"] = detail
    check(rec)
    return rec


def drop_record() -> dict:
    rec = {"ts": 1733385188.0, "event_type": "drop", "action": "ban_source", "target": "203.0.113.7/32",
           "reason": "manual", "enforced_by": "replay"}
    check(rec)
    return rec


def read_log(path) -> list[dict]:
    """The records of a Zeek log, typed by its #types (TSV) or as written (JSON)."""
    with ZeekLog(path) as log:
        return list(log)


def header(path) -> dict[str, str]:
    """The ``#`` directives of a TSV log, raw (``#separator`` as written)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                continue
            key, _, value = line[1:].rstrip("\n").partition(" " if line.startswith("#separator ") else "\t")
            out[key] = value
    return out
