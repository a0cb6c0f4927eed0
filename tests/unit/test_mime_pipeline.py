"""MIME in the sensor: the files records and the smtp record's MIME fields
(with their schemas), the [mime] switch, the rule hooks attachment and url,
and the shipped attachments rule."""

from __future__ import annotations

import hashlib
import io
import shutil
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest
from support.record_schemas import check
from support.rules_helpers import (
    StaticRules,
    message_dialogue,
    run,
    session_segments,
    write,
)

from sensor.assembly import Userland
from sensor.config import Config, MimeConfig, SensorConfig, SpamStatsConfig
from sensor.records.sinks import ListSink
from sensor.rules import alert, hooks, rule

REPO = Path(__file__).resolve().parents[2]
EXE = b"MZ\x90\x00" + bytes(range(256)) * 16


def crlf(msg: EmailMessage) -> bytes:
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def message(*attachments, text="Read http://phish.example/login now\n", subject="Invoice") -> bytes:
    """A dot-stuffed message with a text part and ``attachments`` ((name, data, type) each)."""
    m = EmailMessage()
    m["From"] = "alice@example.org"
    m["To"] = "bob@example.net"
    m["Subject"] = subject
    m.set_content(text)
    for name, data, ctype in attachments:
        maintype, subtype = ctype.split("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    raw = crlf(m)
    return raw.replace(b"\r\n.", b"\r\n..")


def replay(content: bytes, config: Config | None = None, messages: int = 1) -> list[dict]:
    sink = ListSink()
    userland = Userland(config or Config(spam_stats=SpamStatsConfig(enabled=False)), sink)
    for seg in session_segments(message_dialogue(content, messages=messages), cut=700):
        userland.pipeline.feed_segment(seg, 100.0)
    userland.finish(101.0)
    return list(sink)


def zipped(*names) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            zf.writestr(name, b"x")
    return buf.getvalue()


# ---------------------------------------------------------------- records

def test_files_records_are_linked_to_the_smtp_record_and_match_their_schema():
    recs = replay(message(("tool.exe", EXE, "application/octet-stream")), messages=2)
    for r in recs:
        check(r)
    smtp = [r for r in recs if r["event_type"] == "smtp"]
    files = [r for r in recs if r["event_type"] == "files"]
    assert len(smtp) == 2 and len(files) == 4
    for s in smtp:
        mine = [f for f in files if f["trans_depth"] == s["trans_depth"]]
        assert s["fuids"] == [f["fuid"] for f in mine]
        assert s["attachments"] == ["tool.exe"]
        assert s["urls"] == ["phish.example/login"]
        assert "body_md5" not in s            # [mime] body_md5 is off by default, as in Suricata
        assert s["subject_md5"] == hashlib.md5(b"Invoice").hexdigest()
    exe = files[1]
    assert (exe["filename"], exe["mime_type"], exe["content_type"], exe["total_bytes"]) == \
        ("tool.exe", "application/x-dosexec", "application/octet-stream", len(EXE))
    assert exe["sha256"] == hashlib.sha256(EXE).hexdigest() and exe["uid"] == smtp[0]["uid"]
    # the second message's entities are other files
    assert len({f["fuid"] for f in files}) == 4
    # a files record comes before the smtp record of its transaction
    kinds = [r["event_type"] for r in recs if r["event_type"] in ("smtp", "files")]
    assert kinds == ["files", "files", "smtp", "files", "files", "smtp"]


def test_the_body_md5_is_of_the_delivered_content_after_its_headers():
    content = message()
    recs = replay(content, Config(spam_stats=SpamStatsConfig(enabled=False), mime=MimeConfig(body_md5=True)))
    (smtp,) = [r for r in recs if r["event_type"] == "smtp"]
    unstuffed = content.replace(b"\r\n..", b"\r\n.")
    assert smtp["body_md5"] == hashlib.md5(unstuffed.split(b"\r\n\r\n", 1)[1]).hexdigest()


def test_mime_off_gives_none_of_it():
    config = Config(spam_stats=SpamStatsConfig(enabled=False), mime=MimeConfig(enabled=False))
    recs = replay(message(("tool.exe", EXE, "application/octet-stream")), config)
    assert not [r for r in recs if r["event_type"] == "files"]
    (smtp,) = [r for r in recs if r["event_type"] == "smtp"]
    assert not {"fuids", "attachments", "urls", "body_md5", "subject_md5"} & set(smtp)
    assert smtp["msg_size"] > len(EXE)


def test_mime_anomalies_are_smtp_anomaly_records():
    bad = b"Subject: x\r\nContent-Transfer-Encoding: base64\r\n\r\nQU!JD\r\n"
    recs = replay(bad)
    names = [(r["layer"], r["name"]) for r in recs if r["event_type"] == "anomaly"]
    assert names == [("smtp", "MIME_INVALID_BASE64")]
    for r in recs:
        check(r)


def test_the_url_schemes_come_from_the_config():
    config = Config(spam_stats=SpamStatsConfig(enabled=False),
                    mime=MimeConfig(extract_urls_schemes=["https://", "HTTP"], log_url_scheme=True))
    assert config.mime.extract_urls_schemes == ("https", "http")
    recs = replay(message(text="a https://s.example/ b http://p.example/\n"), config)
    (smtp,) = [r for r in recs if r["event_type"] == "smtp"]
    assert smtp["urls"] == ["http://p.example/", "https://s.example/"]


# ---------------------------------------------------------------- hooks

def test_attachment_and_url_hooks_see_every_entity_and_url():
    seen = []

    @rule(hooks.attachment, id="t.att")
    def on_att(flow, att):
        seen.append(("att", att.filename, att.mime_type, att.size, flow.transaction.depth))

    @rule(hooks.url, id="t.url")
    def on_url(flow, url):
        seen.append(("url", url.url))

    run(StaticRules(on_att, on_url), message_dialogue(message(("a.exe", EXE, "application/x-foo"))), mime=True)
    assert seen == [("url", "http://phish.example/login"),
                    ("att", None, "text/plain", 37, 1),
                    ("att", "a.exe", "application/x-dosexec", len(EXE), 1)]


def test_a_streamed_attachment_rule_reads_the_decoded_content_then_the_hashes():
    got = {}

    @rule(hooks.attachment, id="t.stream", streamed=True)
    async def scan(flow, content):
        data = b""
        async for chunk in content:
            data += chunk
        got[content.entity.filename] = (data, content.attachment.sha256)
        if content.entity.filename == "a.exe" and data.startswith(b"MZ"):
            alert(description="PE seen while streaming")

    r = run(StaticRules(scan), message_dialogue(message(("a.exe", EXE, "application/x-foo"))), cut=300, mime=True)
    assert got["a.exe"] == (EXE, hashlib.sha256(EXE).hexdigest())
    assert got[None][0] == b"Read http://phish.example/login now\r\n"
    assert [a["signature"] for a in r.alerts()] == ["PE seen while streaming"]


def test_a_drop_on_an_attachment_stops_the_later_hooks():
    calls = []

    @rule(hooks.attachment, id="t.drop")
    def drop(flow, att):
        calls.append(att.filename)
        if att.filename == "a.exe":
            flow.drop()

    run(StaticRules(drop), message_dialogue(message(("a.exe", EXE, "application/x-foo"),
                                                    ("b.exe", EXE, "application/x-foo"))), mime=True)
    assert calls == [None, "a.exe"]


# ---------------------------------------------------------------- the shipped rule

@pytest.fixture
def shipped(tmp_path):
    folder = tmp_path / "rules"
    folder.mkdir()
    shutil.copy(REPO / "rules" / "attachments.py", folder)
    return folder


def alerts_for(folder, content) -> list[dict]:
    config = Config(sensor=SensorConfig(rules=folder), spam_stats=SpamStatsConfig(enabled=False))
    return [r for r in replay(content, config) if r["event_type"] in ("alert", "drop")]


@pytest.mark.parametrize("attachment, why", [
    (("setup.exe", b"plain text, named as a program", "application/octet-stream"), "name .exe"),
    (("invoice.pdf.js", b"var x = 1;", "application/javascript"), "name .js"),
    (("notes.scr", b"...", "application/octet-stream"), "name .scr"),
    (("invoice.pdf", EXE, "application/pdf"), "content application/x-dosexec"),
    (("budget.xlsm", zipped("xl/workbook.xml", "xl/vbaProject.bin"), "application/vnd.ms-excel"),
     "macro-enabled Office .xlsm"),
    (("report.docx", zipped("word/document.xml", "word/vbaProject.bin"), "application/octet-stream"),
     "macro project word/vbaProject.bin"),
    (("photos.zip", zipped("a.jpg", "b.JS"), "application/zip"), "archive member b.JS"),
])
def test_the_shipped_rule_alerts_on_executable_attachments(shipped, attachment, why):
    (rec,) = alerts_for(shipped, message(attachment))
    assert rec["alert"]["signature_id"] == "attachments.executable"
    assert why in rec["alert"]["signature"]
    assert rec["alert"]["metadata"]["filename"] == attachment[0]
    check(rec)


@pytest.mark.parametrize("attachment", [
    ("report.pdf", b"%PDF-1.7 ...", "application/pdf"),
    ("photos.zip", zipped("a.jpg", "b.png"), "application/zip"),
    ("exe.txt", b"the word exe", "text/plain"),
])
def test_the_shipped_rule_leaves_other_attachments_alone(shipped, attachment):
    assert alerts_for(shipped, message(attachment)) == []


def test_the_shipped_rule_drops_when_configured(shipped):
    write(shipped / "rules.toml", """
    [attachments]
    drop = true
    extra_extensions = ["one"]
    """)
    recs = alerts_for(shipped, message(("notes.one", b"x", "application/octet-stream")))
    assert [r["event_type"] for r in recs] == ["alert", "drop"]


@pytest.mark.parametrize("hashes", [[], ["sha256"], ["md5", "sha1"]])
def test_the_hashes_are_those_configured(hashes):
    config = Config(spam_stats=SpamStatsConfig(enabled=False), mime=MimeConfig(hashes=hashes))
    recs = replay(message(("tool.exe", EXE, "application/octet-stream")), config)
    files = [r for r in recs if r["event_type"] == "files"]
    assert len(files) == 2
    for f in files:
        check(f)
        assert {"md5", "sha1", "sha256"} & set(f) == set(hashes)
    if "sha256" in hashes:
        assert files[1]["sha256"] == hashlib.sha256(EXE).hexdigest()


def test_an_unknown_hash_is_a_config_error():
    from sensor.config import ConfigError, loads
    with pytest.raises(ConfigError, match=r"\[mime\] hashes: must list hash names among md5, sha1, sha256"):
        loads('[mime]\nhashes = ["crc32"]\n')


def test_a_message_sent_with_bdat_in_chunks_gives_the_same_entities():
    content = message(("tool.exe", EXE, "application/octet-stream")).replace(b"\r\n..", b"\r\n.")
    cut = [content[i:i + 1000] for i in range(0, len(content), 1000)]
    d = [(False, b"220 mx\r\n"), (True, b"EHLO c.example\r\n"), (False, b"250-mx\r\n250 CHUNKING\r\n"),
         (True, b"MAIL FROM:<alice@example.org>\r\n"), (False, b"250 ok\r\n"),
         (True, b"RCPT TO:<bob@example.net>\r\n"), (False, b"250 ok\r\n")]
    for i, piece in enumerate(cut):
        last = b" LAST" if i == len(cut) - 1 else b""
        d += [(True, b"BDAT %d%s\r\n" % (len(piece), last) + piece), (False, b"250 ok\r\n")]
    d += [(True, b"QUIT\r\n"), (False, b"221 bye\r\n")]
    sink = ListSink()
    userland = Userland(Config(spam_stats=SpamStatsConfig(enabled=False)), sink)
    for seg in session_segments(d, cut=333):
        userland.pipeline.feed_segment(seg, 100.0)
    userland.finish(101.0)
    bdat = [r for r in sink if r["event_type"] == "files"]
    data = [r for r in replay(message(("tool.exe", EXE, "application/octet-stream"))) if r["event_type"] == "files"]
    assert [(f["filename"] if "filename" in f else None, f["sha256"]) for f in bdat] == \
        [(f.get("filename"), f["sha256"]) for f in data]
    assert len(bdat) == 2
