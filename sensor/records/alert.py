"""The ``alert`` record (``schemas/alert.json``): a rule's alert, in the shape
of Suricata's EVE alerts (``src_ip`` ... ``proto``), with Haka's fields
(description as ``signature``, severity, confidence, method, sources,
targets, ref) and the SMTP envelope so far."""

from __future__ import annotations

__all__ = ["alert_record"]


def alert_record(ts: float, flow, *, signature_id: str, rev: int, signature: str, severity: str,
                 sid: int | None = None,
                 confidence: str | None = None, method: str | None = None, sources=(), targets=(),
                 ref=(), metadata=None, helo: str | None = None, mail_from: str | None = None,
                 rcpt_to=()) -> dict:
    """An ``alert`` on ``flow`` (anything with ``uid``, ``orig_h`` ... ``community_id``).
    ``sources``/``targets`` default to the client and the server; ``metadata``:
    the rule's extra keyword arguments; ``sid``: the rule's declared integer
    signature id (only then in the record)."""
    rec = {"ts": ts, "event_type": "alert", "uid": flow.uid,
           "src_ip": flow.orig_h, "src_port": flow.orig_p,
           "dest_ip": flow.resp_h, "dest_port": flow.resp_p, "proto": "TCP",
           "community_id": flow.community_id}
    alert = {"signature_id": signature_id, "rev": rev}
    if sid is not None:
        alert["sid"] = sid
    alert["signature"] = signature
    alert["severity"] = severity
    if confidence is not None:
        alert["confidence"] = confidence
    if method is not None:
        alert["method"] = method
    alert["sources"] = list(sources) or [flow.orig_h]
    alert["targets"] = list(targets) or [flow.resp_h]
    if ref:
        alert["ref"] = list(ref)
    if metadata:
        alert["metadata"] = dict(metadata)
    rec["alert"] = alert
    smtp = {}
    if helo is not None:
        smtp["helo"] = helo
    if mail_from is not None:
        smtp["mail_from"] = mail_from
    if rcpt_to:
        smtp["rcpt_to"] = list(rcpt_to)
    rec["smtp"] = smtp
    return rec
