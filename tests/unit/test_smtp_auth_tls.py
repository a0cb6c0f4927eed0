"""SMTP dissector: AUTH exchanges (credentials never in events) and STARTTLS."""

from __future__ import annotations

import base64

from sensor.smtp import (
    CLIENT,
    SERVER,
    AuthEvent,
    Command,
    SMTPConnection,
    SmtpLimits,
    StartTLS,
    Transaction,
)
from sensor.smtp import anomalies as A
from support.smtp_helpers import (
    EHLO_REPLY,
    GREETING,
    commands,
    dialogue,
    feed,
    names,
    of,
    replies,
    transactions,
)

SECRET = b"s3cr3t-Pa55"
PLAIN = base64.b64encode(b"\0alice\0" + SECRET)
USER = base64.b64encode(b"alice")
PASS = base64.b64encode(SECRET)


def leaks(events) -> bool:
    text = repr(events)
    return any(s.decode() in text for s in (SECRET, PLAIN, USER, PASS))


def test_auth_plain_with_initial_response_hides_it():
    ev = dialogue(("S", GREETING), ("C", b"EHLO c\r\n"), ("S", EHLO_REPLY),
                  ("C", b"AUTH PLAIN " + PLAIN + b"\r\n"), ("S", b"235 2.7.0 ok\r\n"),
                  ("C", b"QUIT\r\n"), ("S", b"221 bye\r\n"))
    assert ("AUTH", "PLAIN") in commands(ev)
    (a,) = of(ev, AuthEvent)
    assert (a.mechanism, a.success, a.code, a.rounds) == ("PLAIN", True, 235, 0)
    assert not leaks(ev)


def test_auth_login_follows_334_challenges_and_never_logs_answers():
    ev = dialogue(("S", GREETING), ("C", b"EHLO c\r\n"), ("S", EHLO_REPLY),
                  ("C", b"auth login\r\n"), ("S", b"334 VXNlcm5hbWU6\r\n"),
                  ("C", USER + b"\r\n"), ("S", b"334 UGFzc3dvcmQ6\r\n"),
                  ("C", PASS + b"\r\n"), ("S", b"535 5.7.8 authentication failed\r\n"),
                  ("C", b"QUIT\r\n"), ("S", b"221 bye\r\n"))
    (a,) = of(ev, AuthEvent)
    assert (a.mechanism, a.success, a.code, a.rounds) == ("LOGIN", False, 535, 2)
    assert replies(ev)[2:] == [("AUTH", 334), ("AUTH_ANSWER", 334), ("AUTH_ANSWER", 535),
                               ("QUIT", 221)]
    assert [c.verb for c in of(ev, Command)] == ["EHLO", "AUTH", "QUIT"]
    assert names(ev) == [A.INVALID_REPLY] and not leaks(ev)      # 535: not in Suricata's reply table


def test_auth_pipelined_answers_wait_for_the_challenge_when_fed_client_first():
    ev = feed(b"EHLO c\r\nAUTH LOGIN\r\n" + USER + b"\r\n" + PASS + b"\r\nQUIT\r\n",
              GREETING + EHLO_REPLY + b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n"
              b"235 2.7.0 ok\r\n221 bye\r\n")
    assert of(ev, AuthEvent)[0].success is True
    assert [c.verb for c in of(ev, Command)] == ["EHLO", "AUTH", "QUIT"]
    assert not leaks(ev) and A.UNKNOWN_COMMAND not in names(ev)


def test_auth_cancelled_with_star():
    ev = dialogue(("S", GREETING), ("C", b"AUTH LOGIN\r\n"), ("S", b"334 VXNlcm5hbWU6\r\n"),
                  ("C", b"*\r\n"), ("S", b"501 5.7.0 cancelled\r\n"),
                  ("C", b"NOOP\r\n"), ("S", b"250 ok\r\n"))
    assert of(ev, AuthEvent)[0].success is False
    assert replies(ev)[-1] == ("NOOP", 250)


def test_auth_answers_are_not_read_as_commands_at_close_without_server():
    ev = feed(b"AUTH LOGIN\r\n" + USER + b"\r\n" + PASS + b"\r\n", b"")
    assert [c.verb for c in of(ev, Command)] == ["AUTH"]
    assert not leaks(ev)


def test_auth_answers_one_sided_capture_past_the_hold_limit():
    ev = feed(b"AUTH LOGIN\r\n" + USER + b"\r\n" + PASS + b"\r\nNOOP\r\n" + b"NOOP\r\n" * 20,
              b"", limits=SmtpLimits(unreplied_client_bytes=16))
    assert A.REPLY_ASSUMED in names(ev)
    assert not leaks(ev)


def test_starttls_accepted_asks_for_bypass_and_ignores_the_rest():
    conn = SMTPConnection()
    ev = conn.receive_server(GREETING, 0)
    ev += conn.receive_client(b"EHLO c\r\n", 1)
    ev += conn.receive_server(EHLO_REPLY, 2)
    ev += conn.receive_client(b"STARTTLS\r\n", 3)
    ev += conn.receive_server(b"220 2.0.0 ready\r\n\x16\x03\x03\x00\x10junk", 4)
    ev += conn.receive_client(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 5)
    assert of(ev, StartTLS) and conn.tls and conn.finished and conn.state == "TLS"
    (t,) = of(ev, Transaction)
    assert t.tls and t.helo == "c"
    assert names(ev) == []
    assert conn.receive_client(b"MAIL FROM:<a@b.c>\r\n", 6) == []
    assert conn.receive_server(b"250 ok\r\n", 7) == []
    assert conn.close(8) == []


def test_starttls_client_first_capture_keeps_the_client_hello_out():
    ev = feed(b"EHLO c\r\nSTARTTLS\r\n\x16\x03\x01\x00\x05hello",
              GREETING + EHLO_REPLY + b"220 go\r\n\x16\x03\x03binary\n")
    assert of(ev, StartTLS) and names(ev) == []
    assert [c.verb for c in of(ev, Command)] == ["EHLO", "STARTTLS"]


def test_plaintext_injected_after_starttls_is_reported():
    ev = feed(b"EHLO c\r\nSTARTTLS\r\nRSET\r\n", GREETING + EHLO_REPLY + b"220 go\r\n")
    assert A.STARTTLS_PLAINTEXT_INJECTION in names(ev)
    assert [c.verb for c in of(ev, Command)] == ["EHLO", "STARTTLS"]


def test_starttls_rejected_continues_in_plaintext():
    ev = feed(b"STARTTLS\r\nMAIL FROM:<a@b.c>\r\n",
              GREETING + b"454 4.7.0 TLS not available\r\n250 ok\r\n")
    assert A.TLS_REJECTED in names(ev)
    assert not of(ev, StartTLS)
    assert replies(ev)[-1] == ("MAIL", 250)


XOAUTH2 = base64.b64encode(b"user=alice@example.org\x01auth=Bearer ya29." + SECRET * 60 + b"\x01\x01")


def test_an_auth_line_over_the_command_limit_says_its_mechanism_and_length_only():
    line = b"AUTH XOAUTH2 " + XOAUTH2 + b"\r\n"
    assert len(line) > 512
    ev = dialogue(("S", GREETING), ("C", b"EHLO c\r\n"), ("S", EHLO_REPLY),
                  ("C", line[:300]), ("C", line[300:]), ("S", b"235 2.7.0 ok\r\n"),
                  ("C", b"QUIT\r\n"), ("S", b"221 bye\r\n"))
    (a,) = [e for e in ev if getattr(e, "name", "") == A.MAX_COMMAND_LINE_LEN_EXCEEDED]
    assert a.detail == (f"AUTH XOAUTH2 line of {len(line)} octets, longer than 512; "
                        "its initial response not shown")
    assert ("AUTH", "XOAUTH2") in commands(ev)
    assert XOAUTH2[:8].decode() not in repr(ev)


def test_other_command_lines_over_the_limit_keep_their_excerpt():
    ev = feed(b"MAIL FROM:<" + b"a" * 600 + b"@b.c>\r\n", GREETING)
    (a,) = [e for e in ev if getattr(e, "name", "") == A.MAX_COMMAND_LINE_LEN_EXCEEDED]
    assert "'MAIL FROM:<aaaa" in a.detail


def test_a_credential_sent_in_place_of_a_mechanism_is_not_shown():
    ev = dialogue(("S", GREETING), ("C", b"AUTH " + PLAIN + b"\r\n"), ("S", b"504 5.5.4 no\r\n"),
                  ("C", b"auth login\r\n"), ("S", b"504 5.5.4 no\r\n"),
                  ("C", b"AUTH Cram-Md5\r\n"), ("S", b"504 5.5.4 no\r\n"))
    assert [p for v, p in commands(ev)] == ["(not a mechanism name)", "LOGIN", "CRAM-MD5"]
    assert [a.mechanism for a in of(ev, AuthEvent)] == ["(not a mechanism name)", "LOGIN", "CRAM-MD5"]
    assert not leaks(ev)


def test_plaintext_injected_after_starttls_is_named_by_its_verb_only():
    ev = feed(b"EHLO c\r\nSTARTTLS\r\nAUTH PLAIN " + PLAIN + b"\r\n",
              GREETING + EHLO_REPLY + b"220 go\r\n")
    (a,) = [e for e in ev if getattr(e, "name", "") == A.STARTTLS_PLAINTEXT_INJECTION]
    assert "'AUTH'" in a.detail and not leaks(ev)
    ev = feed(b"EHLO c\r\nSTARTTLS\r\n" + PASS + b"\r\n", GREETING + EHLO_REPLY + b"220 go\r\n")
    (a,) = [e for e in ev if getattr(e, "name", "") == A.STARTTLS_PLAINTEXT_INJECTION]
    assert "not a command" in a.detail and not leaks(ev)


def test_an_internal_error_names_the_exception_and_where_not_its_message(monkeypatch):
    def boom(self, line, ts, out):
        raise ValueError(f"cannot read {line!r}")
    monkeypatch.setattr(SMTPConnection, "_auth_answer", boom)
    ev = dialogue(("S", GREETING), ("C", b"AUTH LOGIN\r\n"), ("S", b"334 VXNlcm5hbWU6\r\n"),
                  ("C", USER + b"\r\n"))
    (a,) = [e for e in ev if getattr(e, "name", "") == A.INTERNAL_ERROR]
    assert a.detail == "ValueError in boom line " + a.detail.rsplit(" ", 1)[1]
    assert not leaks(ev)


# --- an exchange that loses its step: nothing the client sent becomes a command


def skipped(ev) -> list[str]:
    return [e.detail for e in ev if getattr(e, "name", "") == A.CLIENT_LINES_SKIPPED]


def test_a_334_lost_in_a_server_gap_never_makes_the_password_a_command():
    # the case: the first 334 lost, the username read as the answer to
    # the second, the password would have been the next "command"
    conn = SMTPConnection()
    ev = dialogue(("S", GREETING), ("C", b"EHLO c\r\n"), ("S", EHLO_REPLY),
                  ("C", b"AUTH LOGIN\r\n"), close=False, conn=conn)
    ev += conn.gap(SERVER, 18, 10)
    ev += conn.receive_client(USER + b"\r\n", 11)
    ev += conn.receive_server(b"334 UGFzc3dvcmQ6\r\n", 12)
    ev += conn.receive_client(PASS + b"\r\n", 13)
    ev += conn.receive_server(b"235 2.7.0 ok\r\n", 14)
    ev += conn.receive_client(b"MAIL FROM:<a@b.c>\r\n", 15)
    ev += conn.receive_server(b"250 ok\r\n", 16)
    ev += conn.close(17)
    assert [c.verb for c in of(ev, Command)] == ["EHLO", "AUTH", "MAIL"]
    assert replies(ev)[-3:] == [("AUTH", 334), ("AUTH_ANSWER", 235), ("MAIL", 250)]
    (a,) = of(ev, AuthEvent)
    assert (a.mechanism, a.success, a.code) == ("LOGIN", True, 235)
    assert skipped(ev) and skipped(ev)[0].startswith("2 client line(s) after a loss")
    assert A.UNKNOWN_COMMAND not in names(ev) and not leaks(ev)


def test_every_reply_of_the_exchange_lost_the_answers_are_still_skipped():
    conn = SMTPConnection()
    ev = conn.receive_server(GREETING + EHLO_REPLY, 0)
    ev += conn.gap(SERVER, 50, 1)
    ev += conn.receive_server(b"235 2.7.0 ok\r\n221 bye\r\n", 2)
    ev += conn.receive_client(b"EHLO c\r\nAUTH LOGIN\r\n" + USER + b"\r\n" + PASS + b"\r\nQUIT\r\n", 3)
    ev += conn.close(4)
    assert [c.verb for c in of(ev, Command)] == ["EHLO", "AUTH", "QUIT"]
    assert replies(ev)[-2:] == [("AUTH", 235), ("QUIT", 221)]
    assert skipped(ev) and not leaks(ev)


def test_the_final_reply_lost_the_pipelined_command_gets_its_own_reply():
    conn = SMTPConnection()
    ev = dialogue(("S", GREETING), ("C", b"EHLO c\r\n"), ("S", EHLO_REPLY),
                  ("C", b"AUTH PLAIN " + PLAIN + b"\r\nMAIL FROM:<a@b.c>\r\n"), close=False, conn=conn)
    ev += conn.gap(SERVER, 20, 10)                 # the 235
    ev += conn.receive_server(b"250 2.1.0 ok\r\n", 11)
    ev += conn.close(12)
    assert replies(ev)[-1] == ("MAIL", 250)
    assert A.REPLY_NOT_SEEN in names(ev)
    assert [(a.success, a.code) for a in of(ev, AuthEvent)] == [(None, None)]
    assert transactions(ev)[0].mailfrom == "a@b.c" and not leaks(ev)


def test_an_answer_lost_in_a_client_gap_the_next_ones_are_skipped_and_replies_absorbed():
    conn = SMTPConnection()
    ev = dialogue(("S", GREETING), ("C", b"EHLO c\r\n"), ("S", EHLO_REPLY), ("C", b"AUTH LOGIN\r\n"),
                  ("S", b"334 VXNlcm5hbWU6\r\n"), close=False, conn=conn)
    ev += conn.gap(CLIENT, len(USER) + 2, 10)
    ev += conn.receive_server(b"334 UGFzc3dvcmQ6\r\n", 11)
    ev += conn.receive_client(PASS + b"\r\n", 12)
    ev += conn.receive_server(b"535 5.7.8 no\r\n", 13)
    ev += conn.receive_client(b"QUIT\r\n", 14)
    ev += conn.receive_server(b"221 bye\r\n", 15)
    ev += conn.close(16)
    assert [c.verb for c in of(ev, Command)] == ["EHLO", "AUTH", "QUIT"]
    assert replies(ev)[-4:] == [("AUTH", 334), ("AUTH_ANSWER", 334), ("AUTH_ANSWER", 535), ("QUIT", 221)]
    assert [(a.success, a.code) for a in of(ev, AuthEvent)] == [(False, 535)]
    assert not leaks(ev)


def test_an_auth_command_lost_in_a_client_gap_its_answers_and_replies_are_taken_aside():
    conn = SMTPConnection()
    ev = dialogue(("S", GREETING), ("C", b"EHLO c\r\n"), ("S", EHLO_REPLY), close=False, conn=conn)
    ev += conn.gap(CLIENT, len(b"AUTH LOGIN\r\n"), 10)
    for i, (who, data) in enumerate([("S", b"334 VXNlcm5hbWU6\r\n"), ("C", USER + b"\r\n"),
                                     ("S", b"334 UGFzc3dvcmQ6\r\n"), ("C", PASS + b"\r\n"),
                                     ("S", b"235 2.7.0 ok\r\n"), ("C", b"MAIL FROM:<a@b.c>\r\n"),
                                     ("S", b"250 ok\r\n")]):
        ev += (conn.receive_server if who == "S" else conn.receive_client)(data, 11 + i)
    ev += conn.close(20)
    assert [c.verb for c in of(ev, Command)] == ["EHLO", "MAIL"]
    assert replies(ev)[-1] == ("MAIL", 250)
    assert A.UNABLE_TO_MATCH_REPLY_WITH_REQUEST in names(ev) and not leaks(ev)


def test_answers_pipelined_after_a_refused_auth_are_commands_never_shown():
    ev = feed(b"EHLO c\r\nAUTH LOGIN\r\n" + USER + b"\r\n" + PASS + b"\r\nMAIL FROM:<a@b.c>\r\n",
              GREETING + EHLO_REPLY + b"530 5.7.0 Must issue a STARTTLS command first\r\n"
              b"502 5.5.2 Error: command not recognized\r\n"
              b"502 5.5.2 Error: command not recognized\r\n250 2.1.0 Ok\r\n")
    assert [c.verb for c in of(ev, Command)] == ["EHLO", "AUTH", "MAIL"]
    assert replies(ev)[2:] == [("AUTH", 530), ("(hidden)", 502), ("(hidden)", 502), ("MAIL", 250)]
    assert skipped(ev) == [("2 client line(s) after an AUTH exchange skipped until one looked like "
                            "a command; not shown (SASL answers or message content may be among them)")]
    assert A.UNKNOWN_COMMAND not in names(ev) and not leaks(ev)


def test_a_clean_exchange_skips_nothing():
    ev = feed(b"EHLO c\r\nAUTH PLAIN " + PLAIN + b"\r\nMAIL FROM:<a@b.c>\r\nQUIT\r\n",
              GREETING + EHLO_REPLY + b"235 ok\r\n250 ok\r\n221 bye\r\n")
    assert skipped(ev) == [] and names(ev) == []
    assert replies(ev)[-3:] == [("AUTH", 235), ("MAIL", 250), ("QUIT", 221)]


def test_a_one_sided_capture_reads_again_from_the_first_command():
    ev = feed(b"AUTH LOGIN\r\n" + USER + b"\r\n" + PASS + b"\r\nMAIL FROM:<a@b.c>\r\n" + b"NOOP\r\n" * 20,
              b"", limits=SmtpLimits(unreplied_client_bytes=16))
    assert [c.verb for c in of(ev, Command)][:2] == ["AUTH", "MAIL"]
    assert skipped(ev) and not leaks(ev)
