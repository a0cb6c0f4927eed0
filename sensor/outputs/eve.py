"""Suricata's EVE JSON of the records: what Suricata's own consumers
(Filebeat's and Elastic's Suricata integration, Splunk's, Vector, jq
recipes, suricatalog) read without glue.

Every EVE record validates against Suricata's JSON Schema (``etc/schema.json``,
the version in ``tests/data/suricata/``, whose README names its commit; the
tests check every record of every capture).  That schema allows no key of
its own at the top level (``additionalProperties: false``), nor in its
objects: what EVE has no place for is in the native output only.

Common fields, in Suricata's order: ``timestamp`` (local time with its
offset, microseconds: ``2026-12-02T05:00:00.123456+0000``), ``flow_id`` (an
integer, the same for every record of a flow: 48 bits of the BLAKE2b of its
uid, below 2**53 so that every JSON reader, JavaScript's too, holds it
exactly), ``in_iface`` (only when asked, ``[[output]] in_iface = true``: live,
with one interface; Suricata writes it, but its schema has no such key, so
such records do not validate), ``event_type``, ``src_ip`` ``src_port`` ``dest_ip`` ``dest_port`` (the
client is the source, as Suricata writes its smtp and email events),
``proto`` ``TCP``, ``tx_id`` (the transaction, from 0), ``app_proto``
``smtp`` and ``community_id``.

What each native record becomes (``event_type`` native -> EVE):

* ``smtp`` -> ``smtp``, with Suricata's ``smtp`` object (``helo``,
  ``mail_from`` and ``rcpt_to`` in angle brackets as on the wire) and its
  ``email`` object (``from``, ``to``, ``subject``, ``date``, ``x_mailer``,
  ``attachment``, ``url``, ``body_md5``, ``subject_md5``, ``status``:
  ``PARSE_DONE`` once the message was read whole).  The schema's ``email``
  has no ``cc``, ``message_id`` nor ``received``: left out.
* ``files`` -> ``fileinfo`` (Suricata's file event), ``fileinfo`` object:
  ``filename``, ``magic`` (our sniffed MIME type), hashes, ``size``,
  ``state`` ``CLOSED`` or ``TRUNCATED``, ``stored`` false, ``tx_id``.
* ``anomaly`` -> ``anomaly``: ``type`` ``applayer`` (layer smtp, with
  ``layer`` ``proto_parser`` and ``app_proto``), ``stream`` (tcp) or
  ``decode`` (ip); ``event`` the anomaly's name.  ``detail`` has no place.
* ``alert`` -> ``alert``: Suricata's alert object (``action``, ``gid`` 1,
  ``signature_id``, ``rev``, ``signature``, ``category``, ``severity``,
  ``source``/``target`` ``ip``) and the ``smtp`` object.  ``signature_id``:
  the rule's ``sid`` when it declares one (``@rule(..., sid=N)``), else
  ``signature_id(rule_id)``: 1000000 plus the FNV-1a hash of the rule id
  modulo 1000000, in the range 1000000..1999999 that Suricata's rule sets
  leave to local rules, the same on every sensor and every run (two ids can
  meet in one number: declare a ``sid`` then).  ``severity``: high 1, medium
  2, low 3 (Suricata's 1 is the most severe).  ``category``
  ``ALERT_CATEGORY``.  ``action``: ``blocked`` when the flow was already
  dropped (its drop record came first), else ``allowed``.
* ``drop`` -> ``drop``: Suricata's ``drop`` object with ``reason`` (rule,
  spam_stats, manual); for a rule's drop, the ``alert`` the rule raised on
  that flow just before, with ``action`` ``blocked`` (Suricata writes the
  alert of the rule that dropped a packet in its drop event).  The rest
  (``action``, ``target``, ``enforced_by``, ``rule_id``, ``note``; ``ttl``
  and ``reset``) goes in the schema's ``metadata``: ``flowvars`` (key/value
  strings) and ``flowints`` (numbers).
* ``notice`` -> ``notice`` (the reject statistics): ``src_ip`` the host, an
  ``alert`` object (``signature`` the notice's text, ``category`` its type,
  severity 2, ``action`` ``blocked`` when the host was banned, the
  ``signature_id`` of ``spam_stats.<type>``); the counts (``n``, ``total``,
  ``rejects``, ``percent``, ``window``, ``ban_ttl``) in ``metadata.flowints``,
  ``sub`` in ``flowvars``.  Recipients and samples: native only.
* any other type: its own ``event_type``, the common fields, its scalar
  fields in ``metadata.flowvars``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from datetime import datetime, timezone

from sensor.outputs.destinations import LineOutput
from sensor.records.sinks import dumps
from sensor.shard import fnv1a32

__all__ = ["EveOutput", "eve_record", "eve_timestamp", "flow_id", "signature_id", "EVE_TYPES",
           "ALERT_CATEGORY", "SEVERITY", "LOCAL_SID_BASE"]

#: Suricata's severities: 1 the most severe
SEVERITY = {"high": 1, "medium": 2, "low": 3}
#: the first sid of the range Suricata's rule sets leave to local rules (1000000..1999999)
LOCAL_SID_BASE = 1_000_000
ALERT_CATEGORY = "Potentially Bad Traffic"
NOTICE_SEVERITY = 2
#: the EVE event_type of each native one (others keep their own)
EVE_TYPES = {"smtp": "smtp", "files": "fileinfo", "anomaly": "anomaly", "alert": "alert", "drop": "drop",
             "notice": "notice"}
_FLOW_ID_MASK = (1 << 48) - 1
_ANOMALY_TYPES = {"smtp": "applayer", "tcp": "stream", "ip": "decode"}
_DIRECTIONS = {"client": "to_server", "server": "to_client"}


def eve_timestamp(ts: float) -> str:
    """Suricata's timestamp: local time, microseconds, the offset without a colon."""
    return datetime.fromtimestamp(ts, timezone.utc).astimezone().strftime("%Y-%m-%dT%H:%M:%S.%f%z")


def flow_id(uid: str) -> int:
    """The EVE ``flow_id`` of the flow whose uid is ``uid``: stable, 48 bits, never 0."""
    value = int.from_bytes(hashlib.blake2b(uid.encode(), digest_size=8).digest(), "big") & _FLOW_ID_MASK
    return value or 1


def signature_id(rule_id: str, sid: int | None = None) -> int:
    """A rule's EVE ``signature_id``: its declared ``sid``, else one in the local range from its id."""
    if sid is not None:
        return sid
    return LOCAL_SID_BASE + fnv1a32(rule_id.encode()) % LOCAL_SID_BASE


def _common(rec: dict, event_type: str, in_iface: str | None) -> dict:
    out = {"timestamp": eve_timestamp(rec["ts"])}
    uid = rec.get("uid")
    if uid is not None:
        out["flow_id"] = flow_id(uid)
    if in_iface is not None:
        out["in_iface"] = in_iface
    out["event_type"] = event_type
    src = rec.get("id.orig_h", rec.get("src_ip"))
    if src is not None and uid is not None:
        out["src_ip"] = src
        out["src_port"] = rec.get("id.orig_p", rec.get("src_port"))
        out["dest_ip"] = rec.get("id.resp_h", rec.get("dest_ip"))
        out["dest_port"] = rec.get("id.resp_p", rec.get("dest_port"))
        out["proto"] = "TCP"
    return out


def _app(out: dict, rec: dict) -> None:
    """``app_proto`` and ``community_id`` (after ``tx_id``, as Suricata orders them)."""
    if rec.get("uid") is not None:
        out["app_proto"] = "smtp"
    if rec.get("community_id"):
        out["community_id"] = rec["community_id"]


def _bracketed(address: str) -> str:
    return address if address.startswith("<") else f"<{address}>"


def _smtp_object(helo, mail_from, rcpt_to) -> dict:
    smtp = {}
    if helo is not None:
        smtp["helo"] = helo
    if mail_from is not None:
        smtp["mail_from"] = _bracketed(mail_from)
    if rcpt_to:
        smtp["rcpt_to"] = [_bracketed(r) for r in rcpt_to]
    return smtp


def _email_object(rec: dict) -> dict:
    email = {}
    if "msg_size" in rec:
        email["status"] = "PARSE_DONE"
    for src, dst in (("from", "from"), ("subject", "subject"), ("date", "date"), ("user_agent", "x_mailer")):
        if rec.get(src) is not None:
            email[dst] = rec[src]
    if rec.get("to"):
        email["to"] = list(rec["to"])
    if rec.get("attachments"):
        email["attachment"] = list(rec["attachments"])
    if rec.get("urls"):
        email["url"] = list(rec["urls"])
    for key in ("body_md5", "subject_md5"):
        if rec.get(key):
            email[key] = rec[key]
    return email


def _smtp(rec: dict, in_iface) -> dict:
    out = _common(rec, "smtp", in_iface)
    out["tx_id"] = rec["trans_depth"] - 1
    _app(out, rec)
    smtp = _smtp_object(rec.get("helo"), rec.get("mailfrom"), rec.get("rcptto"))
    if smtp:
        out["smtp"] = smtp
    email = _email_object(rec)
    if email:
        out["email"] = email
    return out


def _files(rec: dict, in_iface) -> dict:
    out = _common(rec, "fileinfo", in_iface)
    out["tx_id"] = rec["trans_depth"] - 1
    _app(out, rec)
    info = {}
    if rec.get("filename") is not None:
        info["filename"] = rec["filename"]
    if rec.get("mime_type") is not None:
        info["magic"] = rec["mime_type"]
    info["gaps"] = False
    for name in ("md5", "sha1", "sha256"):
        if rec.get(name):
            info[name] = rec[name]
    info["state"] = "CLOSED" if rec.get("complete", True) else "TRUNCATED"
    info["stored"] = False
    info["size"] = rec["seen_bytes"]
    info["tx_id"] = out["tx_id"]
    out["fileinfo"] = info
    return out


def _anomaly(rec: dict, in_iface) -> dict:
    out = _common(rec, "anomaly", in_iface)
    direction = _DIRECTIONS.get(rec.get("direction"))
    if direction is not None:
        out["direction"] = direction
    _app(out, rec)
    kind = _ANOMALY_TYPES.get(rec.get("layer"), rec.get("layer") or "applayer")
    anomaly = {"type": kind, "event": rec["name"]}
    if kind == "applayer":
        anomaly["app_proto"] = "smtp"
        anomaly["layer"] = "proto_parser"
    out["anomaly"] = anomaly
    return out


def _alert_object(alert: dict, action: str, src: str | None, dest: str | None) -> dict:
    obj = {"action": action, "gid": 1,
           "signature_id": signature_id(str(alert["signature_id"]), alert.get("sid")),
           "rev": alert["rev"], "signature": alert["signature"], "category": ALERT_CATEGORY,
           "severity": SEVERITY.get(alert["severity"], 2)}
    if src is not None:
        obj["source"] = {"ip": src}
    if dest is not None:
        obj["target"] = {"ip": dest}
    return obj


def _alert(rec: dict, in_iface, dropped: bool) -> dict:
    out = _common(rec, "alert", in_iface)
    _app(out, rec)
    out["alert"] = _alert_object(rec["alert"], "blocked" if dropped else "allowed",
                                 rec.get("src_ip"), rec.get("dest_ip"))
    smtp = rec.get("smtp") or {}
    smtp = _smtp_object(smtp.get("helo"), smtp.get("mail_from"), smtp.get("rcpt_to"))
    if smtp:
        out["smtp"] = smtp
    return out


def _metadata(strings: dict, numbers: dict | None = None) -> dict:
    meta = {}
    flowvars = [{"key": k, "value": str(v)} for k, v in strings.items() if v is not None]
    if flowvars:
        meta["flowvars"] = flowvars
    # whole numbers as integers (a TTL of 3600.0 is 3600), as Suricata's flowints are
    flowints = {k: int(v) if isinstance(v, float) and v.is_integer() else v
                for k, v in (numbers or {}).items() if v is not None}
    if flowints:
        meta["flowints"] = flowints
    return meta


def _drop(rec: dict, in_iface, alert: dict | None) -> dict:
    out = _common(rec, "drop", in_iface)
    _app(out, rec)
    if alert is not None:
        out["alert"] = _alert_object(alert["alert"], "blocked", alert.get("src_ip"), alert.get("dest_ip"))
    out["drop"] = {"reason": rec["reason"]}
    reset = rec.get("reset")
    meta = _metadata({"action": rec["action"], "target": rec["target"], "enforced_by": rec["enforced_by"],
                      "rule_id": rec.get("rule_id"), "note": rec.get("note")},
                     {"ttl": rec.get("ttl"), "reset": None if reset is None else int(reset)})
    out["metadata"] = meta
    return out


def _notice(rec: dict, in_iface) -> dict:
    out = _common(rec, "notice", in_iface)
    out["src_ip"] = rec["src"]
    banned = "ban" in rec.get("actions", ())
    out["alert"] = {"action": "blocked" if banned else "allowed", "gid": 1,
                    "signature_id": signature_id(f"spam_stats.{rec['note']}"), "rev": 1,
                    "signature": rec["msg"], "category": rec["note"], "severity": NOTICE_SEVERITY,
                    "source": {"ip": rec["src"]}}
    out["metadata"] = _metadata({"sub": rec.get("sub")},
                                {k: rec.get(k) for k in ("n", "total", "rejects", "percent", "window",
                                                         "ban_ttl")})
    return out


def _other(rec: dict, in_iface) -> dict:
    out = _common(rec, str(rec.get("event_type")), in_iface)
    _app(out, rec)
    skip = {"ts", "event_type", "uid", "community_id", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p"}
    meta = _metadata({k: v for k, v in rec.items()
                      if k not in skip and isinstance(v, (str, int, float, bool))})
    if meta:
        out["metadata"] = meta
    return out


def eve_record(rec: dict, in_iface: str | None = None, *, dropped: bool = False,
               rule_alert: dict | None = None) -> dict:
    """The EVE record of one native record.  ``dropped`` (alerts): its flow
    was dropped already; ``rule_alert`` (drops): the native alert the
    dropping rule raised on that flow."""
    kind = rec.get("event_type")
    if kind == "smtp":
        return _smtp(rec, in_iface)
    if kind == "files":
        return _files(rec, in_iface)
    if kind == "anomaly":
        return _anomaly(rec, in_iface)
    if kind == "alert":
        return _alert(rec, in_iface, dropped)
    if kind == "drop":
        return _drop(rec, in_iface, rule_alert)
    if kind == "notice":
        return _notice(rec, in_iface)
    return _other(rec, in_iface)


class EveOutput(LineOutput):
    """EVE JSON lines to a destination (``sensor.outputs.destinations``).

    It remembers the flows dropped and the last alert of each (flow, rule),
    for ``action`` (a bounded table: the oldest forgotten first)."""

    #: flows remembered for the alerts' action
    MAX_FLOWS = 10_000

    def __init__(self, destination, *, in_iface: str | None = None):
        super().__init__(destination)
        self.in_iface = in_iface
        self._dropped: OrderedDict = OrderedDict()
        self._alerts: OrderedDict = OrderedDict()

    def _remember(self, table: OrderedDict, key, value) -> None:
        table[key] = value
        table.move_to_end(key)
        if len(table) > self.MAX_FLOWS:
            table.popitem(last=False)

    def line(self, record: dict) -> str:
        kind, uid = record.get("event_type"), record.get("uid")
        rule_alert = None
        if kind == "alert" and uid is not None:
            self._remember(self._alerts, (uid, str(record["alert"]["signature_id"])), record)
        elif kind == "drop" and uid is not None:
            rule_alert = self._alerts.get((uid, record.get("rule_id")))
            self._remember(self._dropped, uid, True)
        return dumps(eve_record(record, self.in_iface, dropped=uid in self._dropped, rule_alert=rule_alert))
