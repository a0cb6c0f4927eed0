"""The MIME samples of the lab capture ``tests/data/pcaps/lab__mime.pcap``
(made by tests/lab/test_lab_mime.py), rebuilt byte for byte from fixed seeds,
so offline tests can check the hashes the replay gives against the octets
that were sent."""

from __future__ import annotations

import hashlib
import io
import random
import zipfile
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

from sensor.assembly import Userland
from sensor.config import Config, SensorConfig, SpamStatsConfig
from sensor.inputs.replay import replay
from sensor.records.sinks import ListSink
from support.record_schemas import check

REPO = Path(__file__).resolve().parents[2]

#: a PE-looking program: "MZ", then 20 000 pseudo-random octets
EXE = b"MZ\x90\x00\x03\x00\x00\x00" + random.Random(14).randbytes(20_000)
PDF = b"%PDF-1.7\n" + random.Random(15).randbytes(3_000) + b"\n%%EOF\n"
TEXT = ("Hello,\n\nthe report is at http://lab.example/reports/q3?id=7 and the old one at\n"
        "https://lab.example/old (not extracted by default: http only).\n"
        "Caf\u00e9 cr\u00e8me = 3 \u20ac.\n")


def _zip(*members: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 2, 3, 4, 6))
            zf.writestr(info, data)
    return buf.getvalue()


#: a zip holding a script: the shipped rule's "archive member" case
ZIP = _zip(("readme.txt", b"see invoice\n"), ("invoice.js", b"WScript.Echo('x');\n"))
#: a macro-enabled Word document (an OOXML zip with a VBA project)
DOCM = _zip(("[Content_Types].xml", b"<Types/>"), ("word/document.xml", b"<w:document/>"),
            ("word/vbaProject.bin", random.Random(16).randbytes(500)))


def complex_message() -> bytes:
    """multipart/mixed: an alternative (quoted-printable text with URLs, HTML),
    a PDF whose name needs RFC 2231 (UTF-8), and a forwarded message/rfc822
    that carries the macro document; CRLF line ends, as sent."""
    inner = EmailMessage()
    inner["From"] = "carol@lab.example"
    inner["To"] = "alice@lab.example"
    inner["Subject"] = "the document"
    inner.set_content("Open the attached document and enable macros.\n")
    inner.add_attachment(DOCM, maintype="application", subtype="vnd.ms-word.document.macroEnabled.12",
                         filename="contract.docm")
    m = EmailMessage(policy=SMTP)
    m["From"] = "alice@lab.example"
    m["To"] = "user@lab.example"
    m["Subject"] = "Quarterly =?utf-8?q?r=C3=A9sum=C3=A9?="
    m["Message-ID"] = "<mime-sample-1@lab.example>"
    m["Date"] = "Fri, 02 Jan 2026 03:04:05 +0000"
    m.set_content(TEXT, cte="quoted-printable")
    m.add_alternative("<html><body><a href=\"http://lab.example/click\">click</a></body></html>\n",
                      subtype="html")
    m.add_attachment(PDF, maintype="application", subtype="pdf", filename="rapport-\u00e9t\u00e9.pdf")
    m.add_attachment(inner)
    for i, part in enumerate(m.walk()):          # fixed boundaries: the same octets every time
        if part.is_multipart():
            part.set_boundary(f"=-=boundary-{i}=-=")
    return m.as_bytes()


def records_of(capture: Path) -> list[dict]:
    sink = ListSink()
    config = Config(sensor=SensorConfig(rules=REPO / "rules"), spam_stats=SpamStatsConfig(enabled=False))
    replay(capture, Userland(config, sink, uid_seed=0))
    return list(sink)


def check_samples(records: list[dict]) -> None:
    """What the replay of the two sessions must give (also run offline on the
    committed capture by tests/offline/test_mime_capture.py)."""
    for rec in records:
        check(rec)
    files = [r for r in records if r["event_type"] == "files"]
    by_name = {f.get("filename"): f for f in files}
    for name, data, mime_type in (("tool.exe", EXE, "application/x-dosexec"),
                                  ("photos.zip", ZIP, "application/zip"),
                                  ("rapport-\u00e9t\u00e9.pdf", PDF, "application/pdf"),
                                  ("contract.docm", DOCM,
                                   "application/vnd.openxmlformats-officedocument.wordprocessingml.document")):
        f = by_name[name]
        assert (f["total_bytes"], f["md5"], f["sha1"], f["sha256"], f["mime_type"]) == \
            (len(data), hashlib.md5(data).hexdigest(), hashlib.sha1(data).hexdigest(),
             hashlib.sha256(data).hexdigest(), mime_type), name
    assert by_name["photos.zip"]["archive_members"] == ["readme.txt", "invoice.js"]
    smtp = [r for r in records if r["event_type"] == "smtp"]
    assert len(smtp) == 2 and all(s["delivered"] for s in smtp)
    first, second = smtp
    assert first["attachments"] == ["tool.exe", "photos.zip"]
    assert first["urls"] == ["lab.example/tools"]
    assert second["attachments"] == ["rapport-\u00e9t\u00e9.pdf", "contract.docm"]
    assert second["urls"] == ["lab.example/click", "lab.example/reports/q3?id=7"]
    assert second["subject_md5"] == hashlib.md5(b"Quarterly =?utf-8?q?r=C3=A9sum=C3=A9?=").hexdigest()
    assert {f["fuid"] for f in files} == {u for s in smtp for u in s["fuids"]}
    assert len(second["fuids"]) == 5                 # text, html, pdf, the forwarded text, the docm
    alerts = sorted((a["alert"]["metadata"]["filename"], a["alert"]["signature"])
                    for a in records if a["event_type"] == "alert")
    assert alerts == [
        ("contract.docm", "executable attachment contract.docm: macro-enabled Office .docm; "
                          "macro project word/vbaProject.bin"),
        ("photos.zip", "executable attachment photos.zip: archive member invoice.js"),
        ("tool.exe", "executable attachment tool.exe: name .exe; content application/x-dosexec"),
    ]
    assert not [r for r in records if r["event_type"] == "anomaly" and r["name"].startswith("MIME_")]
