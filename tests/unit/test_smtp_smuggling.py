"""SMTP smuggling: only CRLF.CRLF ends DATA (strict reading), the rest is reported.

In the spirit of aiosmtpd's tests/test_smtpsmuggling.py: a message carrying a
non-CRLF end marker followed by a second, smuggled SMTP transaction must stay
one message, and the dissector must say what it saw and which reading it followed.
"""

from __future__ import annotations

import pytest

from sensor.smtp import Command, MailFrom, MessageEnd
from sensor.smtp import anomalies as A
from support.smtp_helpers import GREETING, content, feed, names, of, transactions

ENVELOPE = b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"
SERVER = GREETING + b"250 hi\r\n250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n221 bye\r\n"
SMUGGLED = (b"MAIL FROM:<admin@y.example>\r\nRCPT TO:<victim@y.example>\r\nDATA\r\n"
            b"From: admin@y.example\r\n\r\nsmuggled\r\n")


@pytest.mark.parametrize("marker, label", [
    (b"\n.\n", "<LF>.<LF>"),
    (b"\n.\r\n", "<LF>.<CR><LF>"),
    (b"\r.\r", "<CR>.<CR>"),
    (b"\r\n.\n", "<CR><LF>.<LF>"),
    (b"\r\n.\r", "<CR><LF>.<CR>"),
    (b"\r.\r\n", "<CR>.<CR><LF>"),
    (b"\n.\r", "<LF>.<CR>"),
])
def test_non_crlf_end_marker_is_content_and_reported(marker, label):
    body = b"Subject: hi\r\n\r\nlegit" + marker + SMUGGLED
    ev = feed(ENVELOPE + body + b".\r\nQUIT\r\n", SERVER)
    # strict reading: one message, the smuggled transaction is content
    assert content(ev) == body.replace(b"\r\n.", b"\r\n")
    assert b"smuggled" in content(ev)
    assert [m.address for m in of(ev, MailFrom)] == ["a@x.example"]
    assert [c.verb for c in of(ev, Command)] == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    (end,) = of(ev, MessageEnd)
    assert end.smuggled_terminators == (label,)
    smug = [a for a in ev if getattr(a, "name", None) == A.SMUGGLED_DATA_TERMINATOR]
    assert len(smug) == 1 and label in smug[0].detail and "strict" in smug[0].detail
    assert len(transactions(ev)) == 1


def test_bare_lf_and_bare_cr_inside_data_are_counted_and_reported():
    body = b"a\nb\rc\r\nd\n\ne\r\n"
    ev = feed(ENVELOPE + body + b".\r\n", SERVER)
    (end,) = of(ev, MessageEnd)
    assert (end.bare_lf, end.bare_cr) == (3, 1)
    got = names(ev)
    assert A.BARE_LF_IN_DATA in got and A.BARE_CR_IN_DATA in got
    assert A.SMUGGLED_DATA_TERMINATOR not in got
    detail = [a.detail for a in ev if getattr(a, "name", None) == A.BARE_LF_IN_DATA][0]
    assert "strict" in detail
    assert content(ev) == body


def test_clean_crlf_message_raises_no_smuggling_anomaly():
    ev = feed(ENVELOPE + b"a\r\n.b\r\n\r\n.\r\nQUIT\r\n", SERVER)
    assert names(ev) == []
    assert of(ev, MessageEnd)[0].smuggled_terminators == ()


def test_dot_line_at_the_very_start_of_data_with_bare_lf():
    ev = feed(ENVELOPE + b".\nMAIL FROM:<x@y.z>\r\n.\r\n", SERVER)
    assert of(ev, MessageEnd)[0].smuggled_terminators == ("<CR><LF>.<LF>",)
    assert content(ev) == b"\nMAIL FROM:<x@y.z>\r\n"


def test_smuggling_detected_whatever_the_segmentation():
    body = b"x\n.\nMAIL FROM:<e@v.il>\r\n"
    whole = feed(ENVELOPE + body + b".\r\n", SERVER)
    stream = ENVELOPE + body + b".\r\n"
    for cut in range(len(ENVELOPE), len(stream)):
        ev = feed([stream[:cut], stream[cut:]], SERVER)
        assert of(ev, MessageEnd)[0].smuggled_terminators == ("<LF>.<LF>",), cut
        assert content(ev) == content(whole)
