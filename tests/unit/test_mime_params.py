"""sensor.mime.params: the short path for plain parameter values gives what
the standard library's email package gives (the path taken otherwise)."""

from __future__ import annotations

import pytest

from sensor.mime.params import _parse_email, _parse_simple, parse_entity_headers

CASES = [
    {"content-type": b"text/plain"},
    {"content-type": b"TEXT/HTML; charset=\"ISO-8859-1\""},
    {"content-type": b"multipart/mixed; boundary=\"----=_Part_1_2.3\"; charset=utf-8"},
    {"content-type": b"multipart/alternative;\r\n\tboundary=abc"},
    {"content-type": b"application/octet-stream; name=\"a b.exe\""},
    {"content-type": b"application/pdf; name=x.pdf", "content-disposition": b"attachment; filename=\"y.pdf\""},
    {"content-disposition": b"inline"},
    {"content-disposition": b"ATTACHMENT; filename=report.zip; size=12"},
    {"content-type": b"bogus"},
    {"content-type": b"image/png; name=\"\""},
    {"content-type": b"text/plain; charset=us-ascii", "content-transfer-encoding": b" Base64 "},
    {"content-type": b"application/zip; name=\"caf\xc3\xa9.zip\""},
]


@pytest.mark.parametrize("fields", CASES)
def test_the_short_path_agrees_with_the_email_package(fields):
    fast = _parse_simple(fields, fields.get("content-type"), fields.get("content-disposition"), "text/plain")
    assert fast == _parse_email(fields, "text/plain")


def test_values_the_short_path_cannot_read_go_to_the_email_package():
    got = parse_entity_headers({"content-disposition": b"attachment; filename*=utf-8''%C3%A9t%C3%A9.txt"})
    assert got.filename == "\u00e9t\u00e9.txt"
    got = parse_entity_headers({"content-type": b"message/rfc822"}, "message/rfc822")
    assert got.content_type == "message/rfc822"
