"""SMTP dissector: gaps (bytes lost in a direction) and one-sided captures."""

from __future__ import annotations

from sensor.smtp import CLIENT, SERVER, Command, MessageEnd, SMTPConnection, SmtpLimits
from sensor.smtp import anomalies as A
from support.smtp_helpers import GREETING, content, names, of, replies, transactions

ENVELOPE = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n"
OKS = GREETING + b"250 hi\r\n250 ok\r\n250 ok\r\n"


def test_client_gap_in_command_mode_resyncs_at_next_line():
    conn = SMTPConnection()
    ev = conn.receive_server(GREETING, 0)
    ev += conn.receive_client(b"NOOP\r\nMAIL FR", 1)
    ev += conn.gap(CLIENT, 100, 2)
    ev += conn.receive_client(b"rest of lost line\r\nQUIT\r\n", 3)
    assert [c.verb for c in of(ev, Command)] == ["NOOP", "QUIT"]
    assert A.CONTENT_GAP in names(ev) and A.INCOMPLETE_LINE in names(ev)


def test_client_gap_inside_data_keeps_looking_for_the_end_marker():
    conn = SMTPConnection()
    ev = conn.receive_server(OKS + b"354 go\r\n", 0)
    ev += conn.receive_client(ENVELOPE + b"DATA\r\nSubject: g\r\n\r\nbefore\r\n", 1)
    ev += conn.gap(CLIENT, 5000, 2)
    ev += conn.receive_client(b"after\r\n.\r\nQUIT\r\n", 3)
    ev += conn.receive_server(b"250 queued\r\n221 bye\r\n", 4)
    (end,) = of(ev, MessageEnd)
    assert end.gap and end.complete
    assert b"before" in content(ev) and b"after" in content(ev)
    assert replies(ev)[-2:] == [(".", 250), ("QUIT", 221)]
    assert transactions(ev)[0].delivered


def test_client_gap_past_a_bdat_chunk_resyncs_commands():
    conn = SMTPConnection()
    ev = conn.receive_client(ENVELOPE + b"BDAT 10 LAST\r\nabc", 1)
    ev += conn.gap(CLIENT, 20, 2)           # 7 octets of chunk + 13 of the next line
    ev += conn.receive_client(b"tail\r\nNOOP\r\n", 3)
    (end,) = of(ev, MessageEnd)
    assert end.gap and end.size == 3
    assert [c.verb for c in of(ev, Command)][-1] == "NOOP"


def test_server_gap_skips_lost_replies_by_plausibility():
    conn = SMTPConnection()
    ev = conn.receive_server(GREETING, 0)
    ev += conn.receive_client(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n", 1)
    ev += conn.receive_server(b"250 hi\r\n", 2)
    ev += conn.gap(SERVER, 30, 3)               # the MAIL and RCPT replies are lost
    ev += conn.receive_server(b"354 go\r\n", 4)
    ev += conn.receive_client(b"x\r\n.\r\n", 5)
    assert A.REPLY_NOT_SEEN in names(ev)
    assert replies(ev)[-1] == ("DATA", 354)
    assert content(ev) == b"x\r\n"


def test_server_gap_that_ate_the_354_assumes_the_message_was_sent():
    conn = SMTPConnection()
    ev = conn.receive_server(OKS, 0)
    ev += conn.receive_client(ENVELOPE + b"DATA\r\nSubject: z\r\n\r\nx\r\n.\r\nQUIT\r\n", 1)
    ev += conn.gap(SERVER, 10, 2)
    ev += conn.receive_server(b"250 queued\r\n221 bye\r\n", 3)
    assert A.REPLY_ASSUMED in names(ev)
    assert content(ev) == b"Subject: z\r\n\r\nx\r\n"
    assert replies(ev)[-2:] == [(".", 250), ("QUIT", 221)]


def test_client_only_capture_is_dissected_past_the_hold_limit():
    conn = SMTPConnection(SmtpLimits(unreplied_client_bytes=64))
    ev = conn.receive_client(ENVELOPE + b"DATA\r\n" + b"line\r\n" * 30 + b".\r\nQUIT\r\n", 1)
    ev += conn.close(2)
    assert A.REPLY_ASSUMED in names(ev)
    assert content(ev) == b"line\r\n" * 30
    assert [c.verb for c in of(ev, Command)][-1] == "QUIT"
    (t,) = transactions(ev)
    assert t.message_size == 180 and t.steps[-1].code is None
    assert A.REPLY_NOT_SEEN in names(ev)


def test_client_only_short_capture_is_read_at_close():
    conn = SMTPConnection()
    ev = conn.receive_client(ENVELOPE + b"DATA\r\nshort\r\n.\r\n", 1)
    assert content(ev) == b""
    ev += conn.close(2)
    assert content(ev) == b"short\r\n"


def test_gap_while_waiting_for_the_data_reply_is_applied_in_order():
    conn = SMTPConnection()
    ev = conn.receive_client(ENVELOPE + b"DATA\r\nab", 1)
    ev += conn.gap(CLIENT, 10, 2)
    ev += conn.receive_client(b"cd\r\n.\r\n", 3)
    ev += conn.receive_server(OKS + b"354 go\r\n250 ok\r\n", 4)
    (end,) = of(ev, MessageEnd)
    assert end.gap and content(ev) == b"abcd\r\n"


def test_client_gap_lines_without_a_verb_are_skipped_not_shown():
    # the gap took "DATA" (or an AUTH): what follows is not read as commands
    conn = SMTPConnection()
    ev = conn.receive_server(GREETING + b"250 ok\r\n", 0)
    ev += conn.receive_client(b"NOOP\r\n", 1)
    ev += conn.gap(CLIENT, 6, 2)
    ev += conn.receive_client(b"Subject: salary review\r\n\r\nconfidential\r\n.\r\nQUIT\r\n", 3)
    ev += conn.close(4)
    assert [c.verb for c in of(ev, Command)] == ["NOOP", "QUIT"]
    skipped = [e.detail for e in ev if getattr(e, "name", "") == A.CLIENT_LINES_SKIPPED]
    assert skipped and skipped[0].startswith("3 client line(s) after a loss")   # and the one cut
    assert A.UNKNOWN_COMMAND not in names(ev)
    assert "salary" not in repr(ev) and "confidential" not in repr(ev)


def test_the_first_reply_after_a_server_gap_is_known_by_its_place_not_by_when_it_is_matched():
    # the server fed first: the replies before the gap wait for their commands
    conn = SMTPConnection()
    ev = conn.receive_server(GREETING + b"250 hi\r\n250 ok\r\n", 0)
    ev += conn.gap(SERVER, 8, 1)                 # the RCPT's 250
    ev += conn.receive_server(b"354 go\r\n250 queued\r\n", 2)
    ev += conn.receive_client(ENVELOPE + b"DATA\r\nx\r\n.\r\n", 3)
    assert replies(ev) == [(">", 220), ("EHLO", 250), ("MAIL", 250), ("DATA", 354), (".", 250)]
    assert A.REPLY_NOT_SEEN in names(ev) and content(ev) == b"x\r\n"
