"""The output records: one builder per record type, each beside its JSON Schema.

Every record is a plain dict, JSON-ready, whose first keys are ``ts`` (epoch
seconds, float) and ``event_type``; its shape is pinned by the JSON Schema of
the same name in ``sensor/records/schemas/`` (checked by the tests).

* ``smtp`` (``smtp.py``): one per mail transaction; written by the pipeline.
* ``files`` (``files.py``): one per MIME entity with a body, linked by fuid; the pipeline.
* ``anomaly`` (``anomaly.py``): something odd at the TCP or SMTP level; the pipeline.
* ``alert`` (``alert.py``): a rule's ``alert()``; the rule engine.
* ``drop`` (``drop.py``): a verdict put in force or lifted; the rule engine,
  the reject statistics and the control socket, in one shape.
* ``notice`` (``notice.py``): a host found by the reject statistics.

``common.conn_fields``: the connection fields the flow records share.  Where
records go: ``sensor.records.sinks``.
"""

from __future__ import annotations

from sensor.records.alert import alert_record
from sensor.records.anomaly import anomaly_record
from sensor.records.common import conn_fields
from sensor.records.drop import drop_record, flow_target
from sensor.records.files import files_record
from sensor.records.notice import notice_record
from sensor.records.smtp import extract_ips, received_path, smtp_record, split_addresses

__all__ = ["conn_fields", "smtp_record", "files_record", "anomaly_record", "alert_record", "drop_record",
           "flow_target", "notice_record", "received_path", "split_addresses", "extract_ips"]
