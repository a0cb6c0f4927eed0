"""The streaming MIME parser (sensor.mime.parser): entities, decoding, hashes,
names, URLs, Suricata's body/subject md5 and MIME anomalies, on synthetic
messages built with the standard library's email package."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import random
import zipfile
from email.message import EmailMessage

import pytest

from sensor.mime import Attachment, EntityData, EntityStart, MimeParser, Url
from sensor.mime.stage import fuid
from sensor.mime.urls import UrlFinder
from sensor.smtp import anomalies as A
from sensor.smtp.events import SmtpAnomaly
from sensor.smtp.limits import MimeLimits

HTTP = UrlFinder.compile(["http"])
EXE = b"MZ\x90\x00\x03\x00\x00\x00" + bytes(range(256)) * 40


def crlf(msg: EmailMessage) -> bytes:
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def parse(raw: bytes, cuts=None, *, limits=None, url_rx=HTTP, log_url_scheme=False, complete=True):
    """Feed ``raw`` in pieces (``cuts``: a size, or None for one piece); the events and the parser."""
    p = MimeParser(limits, trans_depth=1, url_rx=url_rx, log_url_scheme=log_url_scheme)
    out = []
    step = cuts or len(raw) or 1
    if isinstance(step, random.Random):
        i = 0
        while i < len(raw):
            n = step.randint(1, 300)
            out += p.feed(raw[i:i + n], 1.0)
            i += n
    else:
        for i in range(0, len(raw), step):
            out += p.feed(raw[i:i + step], 1.0)
    out += p.finish(2.0, complete)
    return out, p


def of(events, cls):
    return [e for e in events if type(e) is cls]


def anomalies(events):
    return [e.name for e in events if type(e) is SmtpAnomaly]


def comparable(events):
    """Events without their timestamps, EntityData pieces joined per entity
    (their sizes follow the input's cut, by design)."""
    out, data = [], {}
    for e in events:
        if type(e) is EntityData:
            data[e.fuid] = data.get(e.fuid, b"") + e.data
            continue
        out.append(dataclasses.replace(e, ts=0.0))
    return out, data


def mail_with_attachment(payload=EXE, filename="report.exe", text="See http://example.com/a\n"):
    m = EmailMessage()
    m["From"] = "alice@example.org"
    m["To"] = "bob@example.net"
    m["Subject"] = "Quarterly report"
    m.set_content(text)
    m.add_attachment(payload, maintype="application", subtype="octet-stream", filename=filename)
    return crlf(m)


# ---------------------------------------------------------------- entities and hashes

def test_a_base64_attachment_is_decoded_and_hashed_as_its_octets():
    events, p = parse(mail_with_attachment())
    text, exe = of(events, Attachment)
    assert (exe.filename, exe.content_type, exe.transfer_encoding, exe.disposition) == \
        ("report.exe", "application/octet-stream", "base64", "attachment")
    assert exe.size == len(EXE)
    assert exe.md5 == hashlib.md5(EXE).hexdigest()
    assert exe.sha1 == hashlib.sha1(EXE).hexdigest()
    assert exe.sha256 == hashlib.sha256(EXE).hexdigest()
    assert exe.mime_type == "application/x-dosexec"      # from the magic, not the declared type
    assert exe.head == EXE[:4096] and exe.complete
    # the text part ends before the CRLF that belongs to the boundary
    assert text.filename is None and text.content_type == "text/plain"
    assert text.md5 == hashlib.md5(b"See http://example.com/a\r\n").hexdigest()
    assert p.summary.attachments == ("report.exe",)
    assert p.summary.fuids == (text.fuid, exe.fuid)
    assert [e.fuid for e in of(events, EntityStart)] == [text.fuid, exe.fuid]
    assert anomalies(events) == []


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 76, 77, 78, 1000, random.Random(5), random.Random(9)],
                         ids=lambda c: f"cut{c}" if isinstance(c, int) else "random")
def test_the_events_are_the_same_however_the_content_is_cut(cut):
    raw = mail_with_attachment()
    whole = comparable(parse(raw)[0])
    assert comparable(parse(raw, cut)[0]) == whole


def test_decoded_data_events_carry_the_whole_entity_in_order():
    events, _ = parse(mail_with_attachment(), 100)
    exe = of(events, Attachment)[1]
    pieces = [e for e in events if type(e) is EntityData and e.fuid == exe.fuid]
    assert b"".join(e.data for e in pieces) == EXE
    assert [e.offset for e in pieces] == [sum(len(x.data) for x in pieces[:i]) for i in range(len(pieces))]


def test_nested_multiparts_and_a_forwarded_message_are_all_walked():
    inner = EmailMessage()
    inner["Subject"] = "forwarded"
    inner.set_content("inner text\n")
    inner.add_attachment(b"%PDF-1.4 inner", maintype="application", subtype="pdf", filename="inner.pdf")
    m = EmailMessage()
    m["Subject"] = "outer"
    m.set_content("plain body\n")
    m.add_alternative("<html><body>html body</body></html>\n", subtype="html")
    m.add_attachment(inner)                                 # message/rfc822
    m.add_attachment(b"GIF89a....", maintype="image", subtype="gif", filename="a.gif")
    events, p = parse(crlf(m))
    got = [(a.content_type, a.filename, a.depth, a.mime_type) for a in of(events, Attachment)]
    assert got == [
        ("text/plain", None, 2, "text/plain"),             # mixed > alternative > plain
        ("text/html", None, 2, "text/html"),
        ("text/plain", None, 3, "text/plain"),              # mixed > rfc822 > mixed > plain
        ("application/pdf", "inner.pdf", 3, "application/pdf"),
        ("image/gif", "a.gif", 1, "image/gif"),
    ]
    assert p.summary.attachments == ("inner.pdf", "a.gif")
    assert len(set(p.summary.fuids)) == 5
    assert anomalies(events) == []


def test_preamble_and_epilogue_are_not_entities_and_a_missing_close_is_incomplete():
    raw = (b"Content-Type: multipart/mixed; boundary=XX\r\n\r\npreamble\r\n--XX\r\n"
           b"Content-Type: text/plain\r\n\r\none\r\n--XX\r\n\r\ntwo\r\n")
    events, _ = parse(raw)
    one, two = of(events, Attachment)
    assert one.md5 == hashlib.md5(b"one").hexdigest() and one.complete
    assert two.md5 == hashlib.md5(b"two\r\n").hexdigest() and not two.complete
    events, _ = parse(raw + b"--XX--\r\nepilogue\r\n")
    assert [a.complete for a in of(events, Attachment)] == [True, True]
    assert [a.size for a in of(events, Attachment)] == [3, 3]


def test_a_message_that_is_not_multipart_is_one_entity_at_depth_0():
    events, p = parse(b"Subject: hi\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                      + base64.encodebytes(b"hello world").replace(b"\n", b"\r\n"))
    (body,) = of(events, Attachment)
    assert (body.depth, body.size, body.md5) == (0, 11, hashlib.md5(b"hello world").hexdigest())
    assert p.summary.fuids == (body.fuid,)


def test_headers_only_or_cut_before_the_body_gives_no_entity():
    events, p = parse(b"Subject: only headers\r\n")
    assert of(events, Attachment) == [] and p.summary.body_md5 is None
    assert p.summary.subject_md5 == hashlib.md5(b"only headers").hexdigest()


# ---------------------------------------------------------------- decoding

def test_quoted_printable_soft_breaks_and_escapes_are_decoded():
    raw = (b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"caf=C3=A9 and a long li=\r\nne=3D\r\nend\r\n")
    events, _ = parse(raw, 3)
    (body,) = of(events, Attachment)
    assert body.md5 == hashlib.md5("café and a long line=\r\nend\r\n".encode()).hexdigest()
    assert anomalies(events) == []


@pytest.mark.parametrize("text", [b"bad =ZZ escape\r\n", b"lower =3d hex\r\n", b"cut =4\r\n"])
def test_invalid_quoted_printable_is_MIME_INVALID_QP(text):
    events, _ = parse(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + text)
    assert anomalies(events) == [A.MIME_INVALID_QP]
    assert len(of(events, Attachment)) == 1          # still decoded and hashed


def test_invalid_base64_is_MIME_INVALID_BASE64_and_the_rest_still_decodes():
    events, _ = parse(b"Content-Transfer-Encoding: base64\r\n\r\nQUJD\r\nR!EVG\r\n")
    assert anomalies(events) == [A.MIME_INVALID_BASE64]
    assert of(events, Attachment)[0].md5 == hashlib.md5(b"ABCDEF").hexdigest()


def test_base64_texts_joined_end_to_end_decode_whole():
    events, _ = parse(b"Content-Transfer-Encoding: base64\r\n\r\nQQ==QUJD\r\n", 1)
    assert of(events, Attachment)[0].md5 == hashlib.md5(b"AABC").hexdigest()
    assert anomalies(events) == []


def test_a_base64_body_cut_short_of_a_quad_is_invalid():
    events, _ = parse(b"Content-Transfer-Encoding: base64\r\n\r\nQUJDRA\r\n")
    assert anomalies(events) == [A.MIME_INVALID_BASE64]


# ---------------------------------------------------------------- names

def test_rfc2231_continuations_with_a_charset_give_the_file_name():
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: application/pdf\r\n"
           b"Content-Disposition: attachment;\r\n filename*0*=utf-8''%E2%82%AC;\r\n filename*1*=uro%20rate.pdf\r\n"
           b"\r\n%PDF-1.7\r\n--b--\r\n")
    events, p = parse(raw)
    assert of(events, Attachment)[0].filename == "\u20acuro rate.pdf"
    assert p.summary.attachments == ("\u20acuro rate.pdf",)


def test_an_rfc2047_name_in_content_type_is_decoded():
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: application/octet-stream; name=\"=?utf-8?B?w6l0w6kuZXhl?=\"\r\n"
           b"\r\nx\r\n--b--\r\n")
    events, _ = parse(raw)
    assert of(events, Attachment)[0].filename == "\u00e9t\u00e9.exe"


def test_a_file_name_longer_than_the_limit_is_cut_and_MIME_LONG_FILENAME():
    raw = mail_with_attachment(filename="A" * 300 + ".exe")
    events, _ = parse(raw)
    assert of(events, Attachment)[1].filename == "A" * 255
    assert A.MIME_LONG_FILENAME in anomalies(events)


# ---------------------------------------------------------------- Suricata's md5s

def test_body_md5_is_every_octet_after_the_header_section_as_sent():
    raw = mail_with_attachment()
    _, p = parse(raw, 33)
    assert p.summary.body_md5 == hashlib.md5(raw.split(b"\r\n\r\n", 1)[1]).hexdigest()


def test_an_empty_body_has_no_body_md5():
    _, p = parse(b"Subject: x\r\n\r\n")
    assert p.summary.body_md5 is None


def test_subject_md5_is_of_the_raw_value_unfolded_as_suricata_does():
    raw = b"Subject:   =?utf-8?q?caf=C3=A9?=\r\n  and more \r\nFrom: a@b\r\nSubject: second\r\n\r\nbody\r\n"
    _, p = parse(raw)
    # leading spaces dropped; a continuation adds its line without its first character
    assert p.summary.subject_md5 == hashlib.md5(b"=?utf-8?q?caf=C3=A9?= and more ").hexdigest()


# ---------------------------------------------------------------- URLs

def test_urls_default_to_http_only_without_the_scheme_last_found_first():
    text = "one http://a.example/x?y=1 two HTTPS://b.example/ three <http://c.example/z>\n"
    events, p = parse(mail_with_attachment(text=text))
    assert [u.url for u in of(events, Url)] == ["http://a.example/x?y=1", "http://c.example/z"]
    assert p.summary.urls == ("c.example/z", "a.example/x?y=1")


def test_the_schemes_and_the_scheme_in_the_record_follow_the_options():
    text = "http://a.example/ https://b.example/ ftp://c.example/\n"
    _, p = parse(mail_with_attachment(text=text), url_rx=UrlFinder.compile(["http", "https"]),
                 log_url_scheme=True)
    assert p.summary.urls == ("https://b.example/", "http://a.example/")
    _, p = parse(mail_with_attachment(text=text), url_rx=None)
    assert p.summary.urls == ()


def test_a_url_in_a_base64_text_part_cut_anywhere_is_found_whole():
    url = b"http://evil.example/" + b"p" * 200
    body = base64.encodebytes(b"click " + url + b" now\n").replace(b"\n", b"\r\n")
    raw = (b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n" + body)
    for cut in (1, 5, 64):
        events, _ = parse(raw, cut)
        assert [u.url.encode() for u in of(events, Url)] == [url]


def test_urls_are_not_searched_in_binary_entities():
    events, _ = parse(mail_with_attachment(payload=b"http://hidden.example/ in a binary"))
    assert [u.url for u in of(events, Url)] == ["http://example.com/a"]


def test_urls_per_message_are_bounded():
    text = "".join(f"http://h{i}.example/\n" for i in range(10))
    events, p = parse(mail_with_attachment(text=text), limits=MimeLimits(urls=3))
    assert len(of(events, Url)) == 3 and len(p.summary.urls) == 3


# ---------------------------------------------------------------- archives

def zipped(*names) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            zf.writestr(name, b"data of " + name.encode())
    return buf.getvalue()


def test_a_zip_attachment_lists_its_members():
    data = zipped("readme.txt", "setup.exe")
    events, _ = parse(mail_with_attachment(payload=data, filename="a.zip"))
    att = of(events, Attachment)[1]
    assert att.mime_type == "application/zip" and att.members == ("readme.txt", "setup.exe")


def test_an_archive_over_the_limit_is_hashed_but_not_listed():
    data = zipped("x.exe")
    events, _ = parse(mail_with_attachment(payload=data, filename="a.zip"),
                      limits=MimeLimits(archive=len(data) - 1))
    att = of(events, Attachment)[1]
    assert att.members is None and att.md5 == hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------- limits and anomalies

def test_a_line_over_998_octets_is_MIME_LONG_LINE_once():
    raw = b"Subject: x\r\n\r\n" + b"a" * 998 + b"\r\n" + b"b" * 999 + b"\r\n" + b"c" * 5000 + b"\r\n"
    events, _ = parse(raw, 100)
    assert anomalies(events) == [A.MIME_LONG_LINE]
    assert of(events, Attachment)[0].size == 998 + 999 + 5000 + 6


def test_an_encoded_line_over_76_octets_is_MIME_LONG_ENC_LINE():
    ok = base64.b64encode(b"x" * 57)                     # 76 characters
    long = base64.b64encode(b"x" * 60)                   # 80 characters
    head = b"Content-Transfer-Encoding: base64\r\n\r\n"
    assert anomalies(parse(head + ok + b"\r\n" + ok + b"\r\n")[0]) == []
    assert anomalies(parse(head + ok + b"\r\n" + long + b"\r\n")[0]) == [A.MIME_LONG_ENC_LINE]
    # a plain (not encoded) body may have long lines up to 998
    assert anomalies(parse(b"Subject: x\r\n\r\n" + b"y" * 500 + b"\r\n")[0]) == []


@pytest.mark.parametrize("cut", [None, 1, 9])
def test_long_header_names_and_values_are_flagged_and_values_kept_bounded(cut):
    # whole (the section read at once) or cut (line by line): the same
    raw = (b"X-" + b"n" * 80 + b": v\r\nContent-Type: text/plain; x=\"" + b"v" * 1500 + b"\"\r\n"
           b" ; y=\"" + b"w" * 1500 + b"\"\r\nSubject: a\r\n  b\r\n\r\nbody\r\n")
    events, p = parse(raw, cut)
    assert sorted(anomalies(events)) == [A.MIME_LONG_HEADER_NAME, A.MIME_LONG_HEADER_VALUE, A.MIME_LONG_LINE]
    assert of(events, Attachment)[0].content_type == "text/plain"
    assert p.summary.subject_md5 == hashlib.md5(b"a b").hexdigest()


@pytest.mark.parametrize("cut", [1, 3, 40])
def test_a_header_section_read_at_once_or_line_by_line_gives_the_same(cut):
    raw = (b"Subject: =?utf-8?q?x?=\r\n\tfolded\r\nContent-Type: multipart/mixed;\r\n boundary=\"b b\"\r\n"
           b"content-type: text/html\r\nNo colon here\r\n continued\r\nX:" + b"y" * 990 + b"\r\n " + b"z" * 990 + b"\r\n " + b"z" * 30 + b"\r\n"
           b"\r\n--b b\r\nContent-Disposition: attachment;\r\n\tfilename=\"a\r\n b.txt\"\r\n\r\nhi\r\n--b b--\r\n")
    whole_events, whole = parse(raw)
    cut_events, cut_p = parse(raw, cut)
    assert comparable(cut_events) == comparable(whole_events)
    assert cut_p.summary == dataclasses.replace(whole.summary)
    assert of(whole_events, Attachment)[0].filename == "a b.txt"
    assert anomalies(whole_events) == [A.MIME_LONG_HEADER_VALUE]      # 990 + 991 + 31 octets, no line over 998


def test_a_boundary_over_254_octets_is_MIME_LONG_BOUNDARY_and_still_used():
    b = b"B" * 260
    raw = (b"Content-Type: multipart/mixed; boundary=\"" + b + b"\"\r\n\r\n--" + b
           + b"\r\n\r\none\r\n--" + b + b"--\r\n")
    events, _ = parse(raw)
    assert A.MIME_LONG_BOUNDARY in anomalies(events)
    assert [a.size for a in of(events, Attachment)] == [3]


def nested(levels: int) -> bytes:
    raw = b""
    for i in range(levels):
        raw += b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
    raw += b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    for i in reversed(range(levels)):
        raw += b"--b%d--\r\n" % i
    return raw


def test_nesting_past_the_depth_limit_is_MIME_PARSE_FAILED_and_read_as_one_entity():
    events, _ = parse(nested(4), limits=MimeLimits(depth=4))
    assert anomalies(events) == [] and of(events, Attachment)[0].depth == 4
    events, _ = parse(nested(5), limits=MimeLimits(depth=4))
    assert anomalies(events) == [A.MIME_PARSE_FAILED]
    (leaf,) = of(events, Attachment)
    assert leaf.depth == 4 and leaf.content_type == "multipart/mixed"


def test_entities_past_the_limit_are_MIME_PARSE_FAILED_and_the_rest_not_split():
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\npart\r\n" * 20 + b"--b--\r\n"
    events, p = parse(raw, limits=MimeLimits(entities=6))
    assert anomalies(events) == [A.MIME_PARSE_FAILED]
    assert len(of(events, Attachment)) == 5          # the message and five parts make six
    assert p.summary.body_md5 == hashlib.md5(raw.split(b"\r\n\r\n", 1)[1]).hexdigest()


def test_held_input_stays_bounded_whatever_the_message_size():
    big = random.Random(1).randbytes(3 << 20)
    raw = mail_with_attachment(payload=big, filename="big.bin")
    p = MimeParser(trans_depth=1, url_rx=HTTP)
    held, events = 0, []
    for i in range(0, len(raw), 65536):
        events += p.feed(raw[i:i + 65536], 1.0)
        held = max(held, len(p._buf))
    events += p.finish(2.0)
    assert held < 100                                    # a partial line, never a chunk
    assert of(events, Attachment)[-1].sha256 == hashlib.sha256(big).hexdigest()
    # a line with no end at all is read in pieces of line_buffer
    p = MimeParser(trans_depth=1)
    p.feed(b"Subject: x\r\n\r\n", 1.0)
    for _ in range(40):
        p.feed(b"z" * 65536, 1.0)
        assert len(p._buf) <= MimeLimits().line_buffer + 65536


# ---------------------------------------------------------------- fuids

def test_fuids_have_zeeks_shape_and_are_reproducible():
    f = fuid("CabcdEFGH123", 2, 3)
    assert f == fuid("CabcdEFGH123", 2, 3) and f.startswith("F") and len(f) == 18 and f.isalnum()
    assert len({fuid("Cx", d, i) for d in range(1, 5) for i in range(1, 50)}) == 4 * 49
