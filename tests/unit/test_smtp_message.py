"""SMTP dissector: DATA, BDAT, content streaming and message headers."""

from __future__ import annotations

from sensor.smtp import MailContent, MessageEnd, MessageHeaders, SMTPConnection, SmtpLimits
from sensor.smtp import anomalies as A
from support.smtp_helpers import EHLO_REPLY, GREETING, content, feed, names, of, replies, transactions

ENVELOPE = b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n"
OKS = GREETING + EHLO_REPLY + b"250 ok\r\n250 ok\r\n"


def send_data(body: bytes, limits: SmtpLimits | None = None, after: bytes = b"QUIT\r\n") -> list:
    return feed(ENVELOPE + b"DATA\r\n" + body + after,
                OKS + b"354 go\r\n250 2.0.0 queued\r\n221 bye\r\n", limits=limits)


HEADERS = (
    b"Received: from a.example (a.example [192.0.2.1])\r\n\tby mx.example; Mon, 1 Jan 2024 00:00:01 +0000\r\n"
    b"Received: from b.example by a.example; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: =?utf-8?q?J=C3=B6rg?= <jorg@x.example>\r\n"
    b"To: b@y.example, \"Doe, J\" <j@y.example>\r\n"
    b"Cc: c@y.example\r\n"
    b"Reply-To: r@x.example\r\n"
    b"Message-ID: <1@x.example>\r\n"
    b"In-Reply-To: <0@y.example>\r\n"
    b"Subject: =?UTF-8?B?w6l0w6kgZ3LDonRpcw==?= and\r\n =?ISO-8859-1?Q?caf=E9?=\r\n"
    b"X-Originating-IP: [198.51.100.7]\r\n"
    b"X-Mailer: Mutt 2.2\r\n"
    b"\r\n"
)


def test_dot_unstuffing_and_the_strict_end_marker():
    body = b"line one\r\n..leading dot\r\n...two dots\r\n.\r\n"
    ev = send_data(body)
    assert content(ev) == b"line one\r\n.leading dot\r\n..two dots\r\n"
    (end,) = of(ev, MessageEnd)
    assert end.size == len(content(ev)) and end.complete and end.method == "DATA"
    assert replies(ev)[-2:] == [(".", 250), ("QUIT", 221)]
    assert names(ev) == []


def test_empty_message_and_dot_stuffed_first_line():
    assert content(send_data(b".\r\n")) == b""
    assert content(send_data(b"..x\r\n.\r\n")) == b".x\r\n"


def test_end_marker_split_across_segments_is_found():
    conn = SMTPConnection()
    ev = conn.receive_server(OKS + b"354 go\r\n", 0)
    ev += conn.receive_client(ENVELOPE + b"DATA\r\n", 1)
    for piece in (b"abc\r", b"\n", b".", b"\r", b"\nNOOP\r\n"):
        ev += conn.receive_client(piece, 2)
    assert content(ev) == b"abc\r\n"
    assert [c.verb for c in ev if type(c).__name__ == "Command"][-1] == "NOOP"


def test_headers_are_extracted_with_the_email_package():
    ev = send_data(HEADERS + b"hello\r\n.\r\n")
    (h,) = of(ev, MessageHeaders)
    assert h.subject == "été grâtis and café"
    assert h.from_ == "=?utf-8?q?J=C3=B6rg?= <jorg@x.example>"
    assert h.to == ('b@y.example, "Doe, J" <j@y.example>',)
    assert h.cc == ("c@y.example",)
    assert (h.date, h.reply_to, h.message_id, h.in_reply_to) == (
        "Mon, 1 Jan 2024 00:00:00 +0000", "r@x.example", "<1@x.example>", "<0@y.example>")
    assert h.x_originating_ip == "[198.51.100.7]"
    assert h.received == (
        "from a.example (a.example [192.0.2.1])\tby mx.example; Mon, 1 Jan 2024 00:00:01 +0000",
        "from b.example by a.example; Mon, 1 Jan 2024 00:00:00 +0000")
    assert h.user_agent == "Mutt 2.2" and h.x_mailer == "Mutt 2.2"
    assert h.complete and not h.truncated
    (t,) = transactions(ev)
    assert t.headers == h and t.message_size == len(HEADERS) + 7


def test_user_agent_wins_over_x_mailer():
    ev = send_data(b"User-Agent: Thunderbird\r\nX-Mailer: other\r\n\r\nx\r\n.\r\n")
    assert of(ev, MessageHeaders)[0].user_agent == "Thunderbird"


def test_headers_come_before_content_and_content_is_chunked_exactly():
    body = HEADERS + b"".join(b"line %05d\r\n" % i for i in range(3000))
    ev = send_data(body + b".\r\n", limits=SmtpLimits(content_chunk=1000))
    kinds = [type(e).__name__ for e in ev if isinstance(e, (MailContent, MessageHeaders))]
    assert kinds[0] == "MessageHeaders" and set(kinds[1:]) == {"MailContent"}
    chunks = of(ev, MailContent)
    assert all(len(c.data) == 1000 for c in chunks[:-1])
    assert [c.offset for c in chunks] == [i * 1000 for i in range(len(chunks))]
    assert content(ev) == body


def test_header_section_is_capped():
    big = b"X-Junk: " + b"j" * 5000 + b"\r\nSubject: late\r\n\r\nbody\r\n"
    ev = send_data(big + b".\r\n", limits=SmtpLimits(header_section=1024))
    assert A.HEADER_SECTION_TOO_LONG in names(ev)
    h = of(ev, MessageHeaders)[0]
    assert h.truncated and h.subject is None
    assert content(ev) == big


def test_duplicate_single_headers_are_reported():
    ev = send_data(b"From: a@b.c\r\nFrom: d@e.f\r\nSubject: x\r\n\r\n.\r\n")
    assert A.DUPLICATE_HEADER in names(ev)
    assert of(ev, MessageHeaders)[0].from_ == "a@b.c"


def test_message_without_headers_still_gives_headers_event():
    ev = send_data(b"just text\r\n.\r\n")
    h = of(ev, MessageHeaders)[0]
    assert h.subject is None and not h.complete


def test_long_data_line_is_reported_once():
    ev = send_data(b"a" * 2000 + b"\r\nb\r\n" + b"c" * 1500 + b"\r\n.\r\n")
    assert names(ev).count(A.DATA_LINE_TOO_LONG) == 1
    assert not [n for n in names(send_data(b"a" * 1000 + b"\r\n.\r\n"))]


def test_message_larger_than_advertised_size_is_reported():
    ev = feed(ENVELOPE + b"DATA\r\n" + b"x" * 200 + b"\r\n.\r\n",
              GREETING + b"250-mx\r\n250 SIZE 100\r\n250 ok\r\n250 ok\r\n354 go\r\n552 too big\r\n")
    assert A.MESSAGE_SIZE_EXCEEDED in names(ev)
    assert not transactions(ev)[0].delivered


def test_unfinished_message_is_flushed_at_close():
    conn = SMTPConnection()
    ev = conn.receive_server(OKS + b"354 go\r\n", 0)
    ev += conn.receive_client(ENVELOPE + b"DATA\r\nSubject: s\r\n\r\npartial\r\n.", 1)
    ev += conn.close(2)
    (end,) = of(ev, MessageEnd)
    assert not end.complete
    assert content(ev) == b"Subject: s\r\n\r\npartial\r\n."
    (t,) = transactions(ev)
    assert t.headers.subject == "s" and not t.delivered and t.steps[-1].verb == "DATA"


def test_two_messages_in_one_connection_have_increasing_trans_depth():
    msg = b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nSubject: %d\r\n\r\nx\r\n.\r\n"
    ev = feed(b"EHLO c\r\n" + msg % 1 + msg % 2 + b"QUIT\r\n",
              GREETING + b"250 hi\r\n" + b"250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n" * 2
              + b"221 bye\r\n")
    t = transactions(ev)
    assert [(x.trans_depth, x.headers.subject, x.delivered) for x in t] == [
        (1, "1", True), (2, "2", True)]


# ---------------------------------------------------------------- BDAT

def test_bdat_chunks_and_last():
    client = (ENVELOPE + b"BDAT 11\r\nSubject: b\r" + b"BDAT 8 LAST\r\n\n\r\nhi.\r\n" + b"QUIT\r\n")
    ev = feed(client, OKS + b"250 2.0.0 10 octets\r\n250 2.0.0 queued\r\n221 bye\r\n")
    assert content(ev) == b"Subject: b\r\n\r\nhi.\r\n"
    (end,) = of(ev, MessageEnd)
    assert end.method == "BDAT" and end.size == 19
    assert replies(ev)[-3:] == [("BDAT", 250), ("BDAT", 250), ("QUIT", 221)]
    (t,) = transactions(ev)
    assert t.delivered and t.headers.subject == "b" and t.message_size == 19
    assert [(s.verb, s.parameter, s.code) for s in t.steps][2:] == [
        ("BDAT", "11", 250), ("BDAT", "8 LAST", 250)]
    assert names(ev) == []


def test_bdat_zero_last_ends_the_message():
    ev = feed(ENVELOPE + b"BDAT 3\r\nabcBDAT 0 LAST\r\nNOOP\r\n",
              OKS + b"250 ok\r\n250 queued\r\n250 ok\r\n")
    assert content(ev) == b"abc"
    assert of(ev, MessageEnd)[0].size == 3
    assert transactions(ev)[0].delivered
    assert replies(ev)[-1] == ("NOOP", 250)


def test_bdat_content_is_not_dot_unstuffed_nor_ended_by_a_dot():
    ev = feed(ENVELOPE + b"BDAT 12 LAST\r\n..x\r\n.\r\n\r\n", OKS + b"250 ok\r\n")
    assert content(ev) == b"..x\r\n.\r\n\r\n"
    assert names(ev) == []


def test_invalid_bdat_and_chunk_limit():
    ev = feed(ENVELOPE + b"BDAT ten\r\nBDAT 5 LAST\r\nhello", OKS + b"501 bad\r\n250 ok\r\n",
              limits=SmtpLimits(bdat_chunk=4))
    got = names(ev)
    assert A.INVALID_BDAT in got and A.BDAT_CHUNK_LEN_EXCEEDED in got
    assert content(ev) == b"hello"


def test_bdat_reply_is_not_needed_to_frame_the_chunk():
    ev = feed(ENVELOPE + b"BDAT 4\r\nRSETBDAT 2 LAST\r\nok", b"")
    assert content(ev) == b"RSETok"
    assert [c for c in ev if type(c).__name__ == "Command" and c.verb == "RSET"] == []


def test_rset_between_bdat_chunks_abandons_the_message():
    ev = feed(ENVELOPE + b"BDAT 3\r\nabcRSET\r\n", OKS + b"250 ok\r\n250 ok\r\n")
    (end,) = of(ev, MessageEnd)
    assert not end.complete and end.size == 3
    assert not transactions(ev)[0].delivered
