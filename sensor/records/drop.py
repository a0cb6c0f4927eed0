"""The ``drop`` record (``schemas/drop.json``): a verdict put in force or lifted.

One shape for every producer, in this order: ``ts``, ``event_type``; the
connection fields (``uid`` ... ``community_id``) when a flow led to the
verdict; ``action``, ``target``, ``reason``, ``enforced_by``; then, when they
have a value, ``reset``, ``rule_id``, ``ttl`` and ``note``.  The producers:

* a rule (``flow.drop()``, ``flow.reset()``, ``flow.ban_source()``): reason
  ``rule``, the flow and ``rule_id``, ``ttl`` when the rule gave one; a flow
  drop says with ``reset`` whether the connection is torn down (true: the
  kernel makes its next packets into RSTs) or only silenced (false);
* the reject statistics (a notice type with a ban TTL): reason
  ``spam_stats``, ``ttl``;
* the operator through the control socket (``ban add``, ``ban del``): reason
  ``manual``, ``ttl`` when given, ``note`` (``--reason``).
"""

from __future__ import annotations

from sensor.records.common import conn_fields

__all__ = ["drop_record", "flow_target", "DROP_FLOW", "BAN_SOURCE", "UNBAN_SOURCE",
           "RULE", "SPAM_STATS", "MANUAL"]

#: actions: the rest of a flow dropped, a prefix banned, a ban lifted
DROP_FLOW, BAN_SOURCE, UNBAN_SOURCE = "drop_flow", "ban_source", "unban_source"
#: reasons: who decided
RULE, SPAM_STATS, MANUAL = "rule", "spam_stats", "manual"


def drop_record(ts: float, action: str, target: str, reason: str, enforced_by: str, *,
                flow=None, rule_id: str | None = None, ttl: float | None = None,
                note: str | None = None, reset: bool | None = None) -> dict:
    """A ``drop`` record.  ``enforced_by``: the enforcer's ``mode`` (kernel,
    replay, monitor); ``ttl`` None or 0: no expiry (left out); ``reset``
    (flow drops): the connection torn down, not only silenced."""
    rec = {"ts": ts, "event_type": "drop"}
    if flow is not None:
        rec.update(conn_fields(flow))
    rec["action"] = action
    rec["target"] = target
    rec["reason"] = reason
    rec["enforced_by"] = enforced_by
    if reset is not None:
        rec["reset"] = reset
    if rule_id is not None:
        rec["rule_id"] = rule_id
    if ttl:
        rec["ttl"] = ttl
    if note:
        rec["note"] = note
    return rec


def flow_target(flow) -> str:
    """The ``target`` of a flow drop: ``client:port <> server:port``."""
    return f"{flow.orig_h}:{flow.orig_p} <> {flow.resp_h}:{flow.resp_p}"
