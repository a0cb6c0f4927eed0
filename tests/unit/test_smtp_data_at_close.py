"""A connection that ends inside DATA: the last octets are decoded like the rest.

Found by the golden tests of the public captures: arkime__smtp-subject-windows
ends its message with ``<CR><LF>.<LF><LF>`` (Sendmail accepted it) and
arkime__smtp-nospaces ends with a stuffed ``..<CR><LF>`` line, both right
before the end of the capture.  The DATA decoder holds its last four octets
back as lookahead; at close they used to be returned raw: the smuggled
terminator went unreported and the stuffing dot was counted as content.
"""

from __future__ import annotations

import pytest

from sensor.smtp import MessageEnd
from sensor.smtp import anomalies as A
from sensor.smtp.dotdata import DotDecoder
from support.smtp_helpers import GREETING, content, feed, names, of

ENVELOPE = b"HELO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"
SERVER = GREETING + b"250 hi\r\n250 ok\r\n250 ok\r\n354 go\r\n"


def test_smuggled_terminator_in_the_last_octets_before_close_is_reported():
    ev = feed(ENVELOPE + b"Subject: w\r\n\r\nhate\r\n.\n\n", SERVER)
    (end,) = of(ev, MessageEnd)
    assert not end.complete
    assert end.smuggled_terminators == ("<CR><LF>.<LF>",)
    assert end.bare_lf == 2
    assert A.SMUGGLED_DATA_TERMINATOR in names(ev)
    assert A.BARE_LF_IN_DATA in names(ev)
    # strict reading: the dot opens a line that goes on, so it is unstuffed
    assert content(ev) == b"Subject: w\r\n\r\nhate\r\n\n\n"


def test_stuffed_dot_line_in_the_last_octets_before_close_is_unstuffed():
    ev = feed(ENVELOPE + b"test\r\n..\r\n", SERVER)
    (end,) = of(ev, MessageEnd)
    assert content(ev) == b"test\r\n.\r\n"
    assert end.size == 9 and not end.complete
    assert end.smuggled_terminators == ()
    assert A.SMUGGLED_DATA_TERMINATOR not in names(ev)


@pytest.mark.parametrize("tail, decoded, terminators, bare_lf, bare_cr", [
    (b"..\r\n", b".\r\n", [], 0, 0),
    (b"\r\n.\n", b"\r\n\n", ["<CR><LF>.<LF>"], 1, 0),
    (b"x\r\n.\r", b"x\r\n\r", ["<CR><LF>.<CR>"], 0, 1),
    (b"ab", b"ab", [], 0, 0),
    (b".", b".", [], 0, 0),     # cut right after a line's first dot: undecidable, kept
    (b".x", b"x", [], 0, 0),
])
def test_flush_decodes_held_octets_whatever_the_segmentation(tail, decoded, terminators,
                                                            bare_lf, bare_cr):
    body = b"line\r\n" + tail
    for cut in range(len(body) + 1):
        dec = DotDecoder(1002)
        got = dec.feed(body[:cut])[0] + dec.feed(body[cut:])[0] + dec.flush()
        assert got == b"line\r\n" + decoded, cut
        assert (dec.terminators, dec.bare_lf, dec.bare_cr) == (terminators, bare_lf, bare_cr), cut
        assert dec.flush() == b""   # nothing is given twice
