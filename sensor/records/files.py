"""The ``files`` record (``schemas/files.json``): one per MIME entity with a
body, linked to its ``smtp`` record by ``fuid`` (the record's ``fuids``).

Zeek's files.log field names and meanings where it has them (``fuid``,
``source``, ``depth``, ``is_orig``, ``mime_type``, ``filename``,
``total_bytes``, ``seen_bytes``, ``md5``, ``sha1``, ``sha256``), with the
connection fields of the other flow records instead of Zeek's ``tx_hosts`` /
``rx_hosts`` / ``conn_uids`` (one connection carries one file here).  Zeek
fills ``mime_type`` from its file signatures, not from the Content-Type the
sender declared; so do we (``sensor.mime.sniff``: a table of magic numbers,
not libmagic), and the declared type is ``content_type``.  Zeek leaves
``total_bytes`` unset for SMTP (the size is not announced); ours is the
decoded size once the entity ended, equal to ``seen_bytes``.  Zeek hashes
files only with its hash policy loaded; ours are hashed with the hashes of
``[mime] hashes`` (all three by default).
"""

from __future__ import annotations

from sensor.records.common import conn_fields

__all__ = ["files_record"]


def files_record(flow, att) -> dict:
    """The ``files`` record of one ``sensor.mime.Attachment`` of ``flow``."""
    rec = {"ts": att.ts, "event_type": "files"}
    rec.update(conn_fields(flow))
    rec["fuid"] = att.fuid
    rec["source"] = "SMTP"
    rec["trans_depth"] = att.trans_depth
    rec["depth"] = att.depth
    rec["is_orig"] = True
    if att.mime_type is not None:
        rec["mime_type"] = att.mime_type
    rec["content_type"] = att.content_type
    if att.filename is not None:
        rec["filename"] = att.filename
    if att.disposition is not None:
        rec["disposition"] = att.disposition
    rec["transfer_encoding"] = att.transfer_encoding
    rec["total_bytes"] = att.size
    rec["seen_bytes"] = att.size
    for name in ("md5", "sha1", "sha256"):
        digest = getattr(att, name)
        if digest is not None:
            rec[name] = digest
    if att.members is not None:
        rec["archive_members"] = list(att.members)
    rec["complete"] = att.complete
    return rec
