"""SMTP dissector: commands, replies, matching, transactions (sensor.smtp)."""

from __future__ import annotations

from sensor.smtp import (
    Command,
    Greeting,
    MailFrom,
    RcptTo,
    Reply,
    ServerCapabilities,
    SmtpAnomaly,
    SMTPConnection,
    SmtpLimits,
)
from sensor.smtp import anomalies as A
from support.smtp_helpers import (
    EHLO_REPLY,
    GREETING,
    commands,
    content,
    dialogue,
    feed,
    names,
    of,
    replies,
    transactions,
)

# The Haka sample capture (haka__smtp.pcap), written out as literal bytes:
# client commands end in a bare LF, the message lines in CRLF.
HAKA_TURNS = [
    ("S", b"220 metasploitable.localdomain ESMTP Postfix (Ubuntu)\r\n"),
    ("C", b"HELO some_domain\n"),
    ("S", b"250 metasploitable.localdomain\r\n"),
    ("C", b"MAIL FROM: hacker@suspicious.org\n"),
    ("S", b"250 2.1.0 Ok\r\n"),
    ("C", b"RCPT TO: backup\n"),
    ("S", b"250 2.1.5 Ok\r\n"),
    ("C", b"DATA\n"),
    ("S", b"354 End data with <CR><LF>.<CR><LF>\r\n"),
    ("C", b"BLA BLA BLA ...\r\n"),
    ("C", b"MORE BLA BLA BLA ...\r\n"),
    ("C", b".\r\n"),
    ("S", b"250 2.0.0 Ok: queued as 2E1B4C934\r\n"),
    ("C", b"QUIT\n"),
    ("S", b"221 2.0.0 Bye\r\n"),
]


def test_haka_capture_dialogue_matches_reference_commands_replies_and_content():
    ev = dialogue(*HAKA_TURNS)
    # expected/haka/smtp_command_response-ref.txt, in order
    seq = [(type(e).__name__, e.verb if isinstance(e, Command) else e.code, 
            e.parameter if isinstance(e, Command) else e.text)
           for e in ev if isinstance(e, (Command, Reply))]
    assert seq == [
        ("Reply", 220, "metasploitable.localdomain ESMTP Postfix (Ubuntu)"),
        ("Command", "HELO", "some_domain"),
        ("Reply", 250, "metasploitable.localdomain"),
        ("Command", "MAIL", "FROM: hacker@suspicious.org"),
        ("Reply", 250, "2.1.0 Ok"),
        ("Command", "RCPT", "TO: backup"),
        ("Reply", 250, "2.1.5 Ok"),
        ("Command", "DATA", ""),
        ("Reply", 354, "End data with <CR><LF>.<CR><LF>"),
        ("Reply", 250, "2.0.0 Ok: queued as 2E1B4C934"),
        ("Command", "QUIT", ""),
        ("Reply", 221, "2.0.0 Bye"),
    ]
    # expected/haka/smtp_mail_content-ref.txt
    assert content(ev) == b"BLA BLA BLA ...\r\nMORE BLA BLA BLA ...\r\n"
    assert of(ev, MailFrom)[0].address == "hacker@suspicious.org"
    assert of(ev, RcptTo)[0].address == "backup"
    got = names(ev)
    assert A.BARE_LF_COMMAND_LINE in got
    assert got.count(A.MISSING_ANGLE_BRACKETS) == 2
    assert A.ADDRESS_WITHOUT_DOMAIN in got
    assert A.INVALID_PIPELINED_SEQUENCE not in got and A.PIPELINING_NOT_OFFERED not in got
    assert A.NO_SERVER_WELCOME_MESSAGE not in got
    (txn,) = transactions(ev)
    assert (txn.helo, txn.mailfrom, txn.rcptto, txn.message_size, txn.delivered) == (
        "some_domain", "hacker@suspicious.org", ("backup",), 39, True)
    assert txn.last_reply == "250 2.0.0 Ok: queued as 2E1B4C934"
    assert [(s.verb, s.code, s.enhanced) for s in txn.steps] == [
        ("MAIL", 250, "2.1.0"), ("RCPT", 250, "2.1.5"), ("DATA", 354, None),
        (".", 250, "2.0.0")]


def test_haka_dialogue_whole_client_stream_first_gives_same_commands_and_replies():
    client = b"".join(d for w, d in HAKA_TURNS if w == "C")
    server = b"".join(d for w, d in HAKA_TURNS if w == "S")
    live = dialogue(*HAKA_TURNS)
    for order in ("client", "server"):
        ev = feed(client, server, order=order)
        assert commands(ev) == commands(live)
        assert replies(ev) == replies(live)
        assert content(ev) == content(live)
        assert [t.steps for t in transactions(ev)] == [t.steps for t in transactions(live)]


def test_greeting_220_is_available_and_421_554_are_not_and_are_invalid_replies_as_for_suricata():
    for code, available in ((220, True), (421, False), (554, False)):
        ev = feed(b"", b"%d mx.example.org hello\r\n" % code)
        (g,) = of(ev, Greeting)
        assert (g.code, g.available, g.domain) == (code, available, "mx.example.org")
        assert (A.INVALID_REPLY in names(ev)) == (code != 220)
        assert A.NO_SERVER_WELCOME_MESSAGE not in names(ev)


def test_a_first_reply_that_is_not_220_is_an_invalid_reply():
    ev = feed(b"", b"250 ok\r\n")
    assert names(ev) == [A.INVALID_REPLY]
    assert of(ev, Greeting)[0].available is False


def test_client_talking_before_greeting_is_parsed_and_is_no_server_welcome_message():
    """Suricata's NO_SERVER_WELCOME_MESSAGE: a command before the server's
    first reply (here by the timestamps passed in)."""
    ev = dialogue(("C", b"EHLO early.example\r\n"), ("S", GREETING), ("S", EHLO_REPLY))
    assert commands(ev) == [("EHLO", "early.example")]
    assert replies(ev) == [(">", 220), ("EHLO", 250)]
    assert names(ev) == [A.NO_SERVER_WELCOME_MESSAGE]


def test_ehlo_capabilities_are_parsed():
    ev = dialogue(("S", GREETING), ("C", b"EHLO c.example\r\n"), ("S", EHLO_REPLY))
    (caps,) = of(ev, ServerCapabilities)
    assert caps.pipelining and caps.chunking and caps.starttls
    assert caps.eightbitmime and caps.smtputf8
    assert caps.size == 10240000
    assert caps.auth_mechanisms == ("PLAIN", "LOGIN", "CRAM-MD5")
    assert "ENHANCEDSTATUSCODES" in caps.keywords
    (r,) = [r for r in of(ev, Reply) if r.command == "EHLO"]
    assert r.multiline and len(r.lines) == 9 and r.lines[0] == "mx.example.org Hello"


def test_obsolete_auth_equals_form_is_understood():
    ev = dialogue(("S", GREETING), ("C", b"EHLO c\r\n"),
                  ("S", b"250-mx\r\n250-AUTH=LOGIN PLAIN\r\n250 AUTH LOGIN XOAUTH2\r\n"))
    assert of(ev, ServerCapabilities)[0].auth_mechanisms == ("LOGIN", "PLAIN", "XOAUTH2")


def test_pipelined_commands_are_matched_in_order_with_their_replies():
    client = (b"EHLO c.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n"
              b"RCPT TO:<nobody@y.example>\r\nRCPT TO:<c@y.example>\r\nDATA\r\n")
    server = (GREETING + EHLO_REPLY + b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n"
              b"550 5.1.1 <nobody@y.example>: user unknown\r\n250 2.1.5 ok\r\n"
              b"354 go ahead\r\n")
    ev = dialogue(("S", GREETING), ("C", client), ("S", server[len(GREETING):]),
                  ("C", b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n"),
                  ("S", b"250 2.0.0 queued\r\n221 bye\r\n"))
    assert replies(ev) == [(">", 220), ("EHLO", 250), ("MAIL", 250), ("RCPT", 250),
                           ("RCPT", 550), ("RCPT", 250), ("DATA", 354), (".", 250),
                           ("QUIT", 221)]
    rej = [r for r in of(ev, Reply) if r.code == 550][0]
    assert rej.request.parameter == "TO:<nobody@y.example>"
    assert rej.enhanced == "5.1.1"
    (txn,) = transactions(ev)
    assert txn.rcptto == ("b@y.example", "nobody@y.example", "c@y.example")
    assert [s.code for s in txn.steps] == [250, 250, 550, 250, 354, 250]
    assert txn.delivered and txn.headers.subject == "hi"
    assert not [n for n in names(ev) if n != A.PIPELINING_NOT_OFFERED]


def test_server_stream_fed_before_client_stream_is_matched():
    ev = feed(b"HELO a\r\nNOOP\r\nQUIT\r\n", GREETING + b"250 hi\r\n250 ok\r\n221 bye\r\n",
              order="server")
    assert replies(ev) == [(">", 220), ("HELO", 250), ("NOOP", 250), ("QUIT", 221)]
    assert names(ev) == []


def test_multiline_reply_keeps_every_line_and_enhanced_code():
    ev = dialogue(("S", GREETING), ("C", b"RCPT TO:<x@y.z>\r\n"),
                  ("S", b"550-5.7.1 Service unavailable; client blocked\r\n"
                        b"550-5.7.1 see https://example.org/why\r\n550 5.7.1 bye\r\n"))
    (r,) = [r for r in of(ev, Reply) if r.command == "RCPT"]
    assert r.code == 550 and r.enhanced == "5.7.1" and r.multiline
    assert r.lines == ("5.7.1 Service unavailable; client blocked",
                       "5.7.1 see https://example.org/why", "5.7.1 bye")


def test_enhanced_code_must_match_reply_class():
    ev = feed(b"NOOP\r\n", GREETING + b"250 5.0.0 odd\r\n")
    assert [r.enhanced for r in of(ev, Reply)] == [None, None]


def test_any_reply_code_200_to_599_and_bare_code_line_and_codes_outside_suricatas_table_are_invalid():
    ev = feed(b"NOOP\r\nNOOP\r\nNOOP\r\n", GREETING + b"299 x\r\n599\r\n450 4.2.0 later\r\n")
    assert [(r.code, r.lines) for r in of(ev, Reply)][1:] == [
        (299, ("x",)), (599, ("",)), (450, ("4.2.0 later",))]
    assert names(ev) == [A.INVALID_REPLY, A.INVALID_REPLY]      # 299, 599


def test_invalid_reply_lines_are_reported_and_skipped():
    ev = feed(b"NOOP\r\n", GREETING + b"hello there\r\n150 no\r\n25\r\n250 ok\r\n")
    assert names(ev).count(A.INVALID_REPLY) == 3
    assert replies(ev) == [(">", 220), ("NOOP", 250)]


def test_multiline_reply_with_changing_code_is_a_reply_code_mismatch():
    ev = feed(b"NOOP\r\n", GREETING + b"250-a\r\n251 b\r\n")
    assert names(ev) == [A.REPLY_CODE_MISMATCH]
    assert of(ev, Reply)[1].lines == ("a", "b")


def test_verbs_in_any_case_are_recognised():
    ev = feed(b"ehlo x\r\nMaIl FrOm:<a@b.c>\r\nrcpt to:<d@e.f>\r\nQuit\r\n",
              GREETING + b"250 x\r\n250 ok\r\n250 ok\r\n221 bye\r\n")
    assert [(c.verb, c.raw_verb) for c in of(ev, Command)] == [
        ("EHLO", "ehlo"), ("MAIL", "MaIl"), ("RCPT", "rcpt"), ("QUIT", "Quit")]
    assert of(ev, MailFrom)[0].address == "a@b.c"
    assert of(ev, RcptTo)[0].address == "d@e.f"
    assert transactions(ev)[0].rcptto == ("d@e.f",)


def test_noop_vrfy_expn_help_are_commands_with_replies():
    ev = feed(b"NOOP\r\nVRFY root\r\nEXPN staff\r\nHELP MAIL\r\n",
              GREETING + b"250 ok\r\n252 2.0.0 root\r\n502 5.5.1 no\r\n214 see rfc\r\n")
    assert replies(ev)[1:] == [("NOOP", 250), ("VRFY", 252), ("EXPN", 502), ("HELP", 214)]
    assert commands(ev)[1:3] == [("VRFY", "root"), ("EXPN", "staff")]
    assert names(ev) == []
    assert len(transactions(ev)) == 1   # activity without MAIL: one helo-only record (Zeek)


def test_mail_parameters_and_null_sender():
    ev = feed(b"MAIL FROM:<> SIZE=1000 BODY=8BITMIME SMTPUTF8\r\n"
              b"RCPT TO:<@relay.example:u@d.example> NOTIFY=SUCCESS,FAILURE\r\n"
              b"RCPT TO:<Postmaster>\r\n", b"")
    mf = of(ev, MailFrom)[0]
    assert mf.address == "" and mf.params == (("SIZE", "1000"), ("BODY", "8BITMIME"),
                                              ("SMTPUTF8", None))
    assert mf.raw == "FROM:<> SIZE=1000 BODY=8BITMIME SMTPUTF8"
    rt = of(ev, RcptTo)
    assert rt[0].address == "u@d.example" and rt[0].params == (("NOTIFY", "SUCCESS,FAILURE"),)
    assert rt[1].address == "Postmaster"
    assert A.ADDRESS_WITHOUT_DOMAIN not in names(ev)
    assert A.MISSING_ANGLE_BRACKETS not in names(ev)


def test_malformed_mail_and_rcpt_are_reported_never_crash():
    ev = feed(b"MAIL FROM:addr\r\nRCPT TO\r\nRCPT TO:<unclosed@x.y\r\nMAIL\r\n"
              b"RCPT TO:<>\r\nMAIL FROM <a@b.c>\r\nRCPT TO:<a@b.c> =bad\r\n", b"")
    got = names(ev)
    assert of(ev, MailFrom)[0].address == "addr"
    assert {A.MISSING_ANGLE_BRACKETS, A.ADDRESS_WITHOUT_DOMAIN, A.INVALID_MAIL_SYNTAX,
            A.INVALID_ESMTP_PARAMETER} <= set(got)
    assert of(ev, RcptTo)[1].address == "unclosed@x.y"
    assert of(ev, MailFrom)[2].address == "a@b.c"


def test_rcpt_before_mail_and_data_before_rcpt_are_reported():
    ev = feed(b"RCPT TO:<a@b.c>\r\nRSET\r\nMAIL FROM:<a@b.c>\r\nDATA\r\n",
              GREETING + b"503 need MAIL\r\n250 ok\r\n250 ok\r\n503 5.5.1 need RCPT\r\n")
    got = names(ev)
    assert A.RCPT_BEFORE_MAIL in got and A.DATA_BEFORE_RCPT in got
    assert A.DATA_COMMAND_REJECTED in got


def test_rejected_data_leaves_the_client_in_command_mode():
    ev = dialogue(("S", GREETING), ("C", b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n"),
                  ("C", b"RSET\r\nQUIT\r\n"),
                  ("S", b"250 ok\r\n250 ok\r\n554 5.5.1 no valid recipients\r\n250 ok\r\n221 bye\r\n"))
    assert commands(ev)[-2:] == [("RSET", ""), ("QUIT", "")]
    assert content(ev) == b""
    assert A.DATA_COMMAND_REJECTED in names(ev)
    (txn,) = transactions(ev)
    assert txn.steps[-1].verb == "DATA" and txn.steps[-1].code == 554
    assert txn.message_size is None and not txn.delivered


def test_lines_sent_before_a_rejected_data_reply_are_commands():
    # The client does not wait for the DATA reply; the server says 503; what
    # followed is read as commands because the dissector waited for the reply.
    ev = feed(b"MAIL FROM:<a@b.c>\r\nDATA\r\nNOOP\r\nQUIT\r\n",
              GREETING + b"250 ok\r\n503 5.5.1 no RCPT\r\n250 ok\r\n221 bye\r\n")
    assert commands(ev) == [("MAIL", "FROM:<a@b.c>"), ("DATA", ""), ("NOOP", ""), ("QUIT", "")]
    assert replies(ev)[-2:] == [("NOOP", 250), ("QUIT", 221)]


def test_rset_and_an_accepted_mid_session_ehlo_end_a_transaction():
    turns = [("S", GREETING)]
    for line in (b"EHLO one", b"MAIL FROM:<a@b.c>", b"RCPT TO:<d@e.f>", b"RSET", b"MAIL FROM:<g@h.i>",
                 b"EHLO two", b"MAIL FROM:<j@k.l>"):
        turns += [("C", line + b"\r\n"), ("S", b"250 x\r\n")]
    ev = dialogue(*turns, ("C", b"QUIT\r\n"), ("S", b"221 bye\r\n"))
    t = transactions(ev)
    assert [(x.trans_depth, x.helo, x.mailfrom) for x in t] == [
        (1, "one", "a@b.c"), (2, "one", "g@h.i"), (3, "two", "j@k.l")]
    assert t[0].rcptto == ("d@e.f",)


def test_steps_pipelined_behind_an_accepted_ehlo_stay_in_its_transaction():
    """RFC 2920: HELO/EHLO ends a pipelined group; a client that goes on
    without its reply keeps its steps in the transaction under way (the
    accepted EHLO does not reset it), so the split does not depend on when
    the reply arrived."""
    ev = feed(b"EHLO one\r\nMAIL FROM:<g@h.i>\r\nEHLO two\r\nMAIL FROM:<j@k.l>\r\nRCPT TO:<m@n.o>\r\n",
              GREETING + b"250 x\r\n" * 5)
    [t] = transactions(ev)
    assert (t.helo, t.mailfrom, t.rcptto) == ("one", "g@h.i", ("m@n.o",))
    assert [s.verb for s in t.steps] == ["MAIL", "MAIL", "RCPT"]


def test_a_second_mail_in_an_open_transaction_is_a_duplicate_field():
    """Suricata's DUPLICATE_FIELDS: a second MAIL in a transaction; refused, it
    leaves the transaction's sender as it was."""
    ev = feed(b"MAIL FROM:<a@b.c>\r\nMAIL FROM:<d@e.f>\r\n", GREETING + b"250 ok\r\n503 nested\r\n")
    assert names(ev).count(A.DUPLICATE_FIELDS) == 1
    assert [t.mailfrom for t in transactions(ev)] == ["a@b.c"]


def test_a_second_helo_in_the_session_is_a_duplicate_field():
    ev = feed(b"EHLO one\r\nHELO two\r\nQUIT\r\n", GREETING + b"502 no\r\n250 x\r\n221 bye\r\n")
    assert names(ev).count(A.DUPLICATE_FIELDS) == 1


def test_transaction_waits_for_the_replies_of_its_pipelined_steps_and_of_the_rset_that_ended_it():
    conn = SMTPConnection()
    ev = conn.receive_server(GREETING, 0)
    ev += conn.receive_client(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nRSET\r\n", 1)
    assert transactions(ev) == []
    ev += conn.receive_server(b"250 ok\r\n250 ok\r\n", 2)
    assert transactions(ev) == []
    ev += conn.receive_server(b"250 2.0.0 reset\r\n", 3)
    (t,) = transactions(ev)
    assert [s.code for s in t.steps] == [250, 250] and t.last_reply == "250 2.0.0 reset"


def test_a_refused_ehlo_neither_resets_the_transaction_nor_names_the_client():
    """RFC 5321 4.1.4: only an accepted HELO/EHLO resets; MAIL alice, EHLO
    refused, RCPT bob, DATA: one delivered message from alice."""
    ev = dialogue(("S", GREETING), ("C", b"EHLO first.example\r\n"), ("S", b"250 hi\r\n"),
                  ("C", b"MAIL FROM:<alice@a.example>\r\n"), ("S", b"250 ok\r\n"),
                  ("C", b"EHLO second.example\r\n"), ("S", b"501 5.5.4 no\r\n"),
                  ("C", b"RCPT TO:<bob@b.example>\r\n"), ("S", b"250 ok\r\n"), ("C", b"DATA\r\n"),
                  ("S", b"354 go\r\n"), ("C", b"Subject: s\r\n\r\nhi\r\n.\r\n"), ("S", b"250 queued\r\n"))
    [t] = transactions(ev)
    assert (t.helo, t.mailfrom, t.rcptto, t.delivered) == ("first.example", "alice@a.example",
                                                           ("bob@b.example",), True)


def test_a_helo_without_a_name_does_not_name_the_client():
    ev = dialogue(("S", GREETING), ("C", b"HELO one.example\r\n"), ("S", b"250 hi\r\n"), ("C", b"HELO\r\n"),
                  ("S", b"501 Syntax: HELO hostname\r\n"), ("C", b"MAIL FROM:<a@b.c>\r\n"), ("S", b"250 ok\r\n"))
    assert [t.helo for t in transactions(ev)] == ["one.example"]


def test_the_last_reply_is_the_one_to_the_command_that_ended_the_transaction():
    ev = dialogue(("S", GREETING), ("C", b"MAIL FROM:<a@b.c>\r\n"), ("S", b"250 ok\r\n"),
                  ("C", b"RCPT TO:<d@e.f>\r\n"), ("S", b"550 5.1.1 unknown\r\n"), ("C", b"QUIT\r\n"),
                  ("S", b"221 2.0.0 Bye\r\n"))
    assert [t.last_reply for t in transactions(ev)] == ["221 2.0.0 Bye"]


def test_the_220_to_starttls_is_the_last_reply_of_the_transaction_it_ends():
    ev = dialogue(("S", GREETING), ("C", b"EHLO c\r\n"), ("S", b"250-x\r\n250 STARTTLS\r\n"),
                  ("C", b"STARTTLS\r\n"), ("S", b"220 2.0.0 Ready to start TLS\r\n"))
    [t] = transactions(ev)
    assert (t.tls, t.last_reply) == (True, "220 2.0.0 Ready to start TLS")


def test_an_invalid_bdat_is_a_step_whose_reply_is_the_transactions_last():
    ev = dialogue(("S", GREETING), ("C", b"MAIL FROM:<a@b.c>\r\n"), ("S", b"250 ok\r\n"),
                  ("C", b"RCPT TO:<d@e.f>\r\n"), ("S", b"250 ok\r\n"), ("C", b"BDAT x\r\n"),
                  ("S", b"521 5.5.4 invalid BDAT\r\n"))
    [t] = transactions(ev)
    assert t.steps[-1].verb == "BDAT" and t.steps[-1].code == 521
    assert t.last_reply == "521 5.5.4 invalid BDAT"


def test_unknown_verbs_are_counted_and_past_the_budget_parsing_stops():
    lim = SmtpLimits(unknown_commands=3)
    ev = feed(b"FOO\r\nBAR x\r\n\r\nBAZ\r\nNOOP\r\n", b"", limits=lim)
    got = names(ev)
    assert got.count(A.UNKNOWN_COMMAND) == 4
    assert A.TOO_MANY_UNKNOWN_COMMANDS in got
    assert "NOOP" not in [c.verb for c in of(ev, Command)]
    assert of(ev, Command)[0].known is False


def test_command_line_too_long_is_reported_and_prefix_parsed():
    ev = feed(b"MAIL FROM:<" + b"a" * 600 + b"@b.c>\r\nNOOP\r\n", b"")
    assert A.MAX_COMMAND_LINE_LEN_EXCEEDED in names(ev)
    cmds = of(ev, Command)
    assert cmds[0].truncated and cmds[0].verb == "MAIL" and len(cmds[0].parameter) == 507
    assert cmds[1].verb == "NOOP"


def test_reply_line_too_long_is_reported():
    ev = feed(b"NOOP\r\n", GREETING + b"250 " + b"x" * 3000 + b"\r\n")
    assert A.MAX_REPLY_LINE_LEN_EXCEEDED in names(ev)
    assert of(ev, Reply)[1].code == 250


def test_reply_with_too_many_lines_is_capped():
    ev = feed(b"EHLO x\r\n", GREETING + b"250-x\r\n" * 10 + b"250 x\r\n",
              limits=SmtpLimits(reply_lines=4))
    assert A.REPLY_TOO_MANY_LINES in names(ev)
    assert len(of(ev, Reply)[1].lines) == 4


def test_unmatched_reply_is_reported_at_close_except_unsolicited_421():
    ev = feed(b"", GREETING + b"250 what\r\n421 4.4.2 timeout\r\n")
    assert replies(ev) == [(">", 220), (None, 250), (None, 421)]
    assert names(ev) == [A.UNABLE_TO_MATCH_REPLY_WITH_REQUEST]


def test_unanswered_commands_and_cut_lines_are_reported_at_close():
    ev = feed(b"NOOP\r\nNOO", GREETING + b"250-par")
    got = names(ev)
    assert A.REPLY_NOT_SEEN in got
    assert got.count(A.INCOMPLETE_LINE) == 2


def test_too_many_recipients_is_reported_once():
    rcpts = b"".join(b"RCPT TO:<u%d@x.y>\r\n" % i for i in range(5))
    ev = feed(b"MAIL FROM:<a@b.c>\r\n" + rcpts, b"", limits=SmtpLimits(recipients=3))
    assert names(ev).count(A.TOO_MANY_RECIPIENTS) == 1
    assert len(transactions(ev)[0].rcptto) == 5


def test_past_the_invalid_transaction_limit_the_connection_is_no_longer_parsed():
    turns = [("S", GREETING)]
    for _ in range(5):
        turns += [("C", b"RCPT TO:<a@b.c>\r\n"), ("S", b"503 5.5.1 need MAIL\r\n"),
                  ("C", b"RSET\r\n"), ("S", b"250 ok\r\n")]
    ev = dialogue(*turns, ("C", b"MAIL FROM:<z@z.z>\r\n"), limits=SmtpLimits(invalid_transactions=2))
    got = names(ev)
    assert got.count(A.TOO_MANY_INVALID_TRANSACTIONS) == 1
    assert "z@z.z" not in [m.address for m in of(ev, MailFrom)]


def test_pending_command_fifo_is_bounded():
    ev = feed(b"NOOP\r\n" * 20, b"", limits=SmtpLimits(pending_commands=5))
    assert names(ev).count(A.TOO_MANY_PENDING_COMMANDS) == 1


def test_events_after_close_are_ignored_and_close_is_idempotent():
    conn = SMTPConnection()
    conn.close(0)
    assert conn.receive_client(b"NOOP\r\n", 1) == [] and conn.close(2) == []
    assert conn.state == "CLOSED"


def test_pipelining_without_the_extension_is_reported_once():
    turns = [("S", GREETING), ("C", b"HELO c\r\n"), ("S", b"250 hi\r\n"),
             ("C", b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n"),
             ("S", b"250 ok\r\n"), ("S", b"250 ok\r\n")]
    assert names(dialogue(*turns)) == [A.PIPELINING_NOT_OFFERED]
    offered = [("S", GREETING), ("C", b"EHLO c\r\n"), ("S", EHLO_REPLY)] + turns[3:]
    assert names(dialogue(*offered)) == []


def test_octets_behind_a_data_before_its_reply_are_an_invalid_pipelined_sequence_without_pipelining():
    """Suricata's INVALID_PIPELINED_SEQUENCE: what follows DATA waits for its
    reply, unless the server offered PIPELINING (then Suricata reads content
    at once, and so do we, after the 354)."""
    message = b"Subject: s\r\n\r\nhi\r\n.\r\n"
    for hello, reply, expected in ((b"HELO c\r\n", b"250 hi\r\n", True), (b"EHLO c\r\n", EHLO_REPLY, False)):
        ev = dialogue(("S", GREETING), ("C", hello), ("S", reply), ("C", b"MAIL FROM:<a@b.c>\r\n"),
                      ("S", b"250 ok\r\n"), ("C", b"RCPT TO:<d@e.f>\r\n"), ("S", b"250 ok\r\n"),
                      ("C", b"DATA\r\n" + message), ("S", b"354 go\r\n250 queued\r\n"))
        assert (A.INVALID_PIPELINED_SEQUENCE in names(ev)) is expected
        assert [t.delivered for t in transactions(ev)] == [True]


def test_commands_behind_a_starttls_before_its_reply_are_an_invalid_pipelined_sequence():
    ev = dialogue(("S", GREETING), ("C", b"EHLO c\r\n"), ("S", EHLO_REPLY), ("C", b"STARTTLS\r\nNOOP\r\n"),
                  ("S", b"502 5.5.1 not implemented\r\n250 ok\r\n"))
    assert names(ev) == [A.INVALID_PIPELINED_SEQUENCE, A.TLS_REJECTED]


def test_a_line_longer_than_suricatas_line_buffer_is_a_truncated_line():
    ev = feed(b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n", GREETING + b"250 ok\r\n" * 2)
    assert names(ev) == [A.MAX_COMMAND_LINE_LEN_EXCEEDED, A.TRUNCATED_LINE]
    ev = feed(b"NOOP " + b"x" * 1000 + b"\r\n", GREETING + b"250 ok\r\n")
    assert names(ev) == [A.MAX_COMMAND_LINE_LEN_EXCEEDED]
    ev = feed(b"NOOP\r\n", GREETING + b"250 " + b"y" * 5000 + b"\r\n")
    assert names(ev) == [A.MAX_REPLY_LINE_LEN_EXCEEDED, A.TRUNCATED_LINE]


def test_an_ehlo_reply_whose_first_line_is_pipelining_offers_it():
    ev = dialogue(("S", GREETING), ("C", b"EHLO c\r\n"), ("S", b"250-PIPELINING\r\n250 SIZE 1000\r\n"))
    (caps,) = of(ev, ServerCapabilities)
    assert caps.pipelining and caps.size == 1000


def test_details_show_control_octets_escaped_once_and_never_the_greeting_pseudo_command():
    ev = feed(b"FO\x01O \\x\r\n", b"")
    [unknown] = [a for a in of(ev, SmtpAnomaly) if a.name == A.UNKNOWN_COMMAND]
    assert unknown.detail == "'FO\\x01O'"
    [lost] = [a for a in of(ev, SmtpAnomaly) if a.name == A.REPLY_NOT_SEEN]
    assert ">" not in lost.detail and "the greeting" in lost.detail


def test_an_accepted_helo_without_a_name_is_logged_empty_as_zeek_does():
    ev = dialogue(("S", GREETING), ("C", b"HELO\r\n"), ("S", b"250 hi\r\n"), ("C", b"MAIL FROM:<a@b.c>\r\n"),
                  ("S", b"250 ok\r\n"))
    assert [t.helo for t in transactions(ev)] == [""]


def test_a_multi_line_reply_that_never_ends_does_not_turn_the_message_into_commands():
    """The EHLO reply has no last line: the MAIL's reply joins it, the replies
    fall one behind, and the 354 comes while RCPT waits. Only DATA gets a
    354: the replies are re-aligned there and the message is a message."""
    body = b"Subject: s\r\n\r\nRCPT TO:<not@a.command>\r\nhi\r\n"
    ev = dialogue(("S", GREETING), ("C", b"EHLO c\r\n"), ("S", b"250-mx\r\n250-PIPELINING\r\n"),
                  ("C", b"MAIL FROM:<a@b.c>\r\n"), ("S", b"250 ok\r\n"), ("C", b"RCPT TO:<d@e.f>\r\n"),
                  ("S", b"250 ok\r\n"), ("C", b"DATA\r\n"), ("S", b"354 go\r\n"), ("C", body + b".\r\n"),
                  ("S", b"250 queued\r\n"), ("C", b"QUIT\r\n"), ("S", b"221 bye\r\n"))
    assert A.REPLY_REALIGNED in names(ev)
    assert content(ev) == body
    assert [c.verb for c in of(ev, Command)] == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    [t] = transactions(ev)
    assert (t.mailfrom, t.rcptto, t.delivered) == ("a@b.c", ("d@e.f",), True)


def test_sessions_without_a_transaction_leave_a_record_only_if_the_client_said_something():
    def records(client, server):
        return [(t.helo, t.mailfrom) for t in transactions(feed(client, GREETING + server))]
    assert records(b"QUIT\r\n", b"221 bye\r\n") == []
    assert records(b"RSET\r\nNOOP\r\nQUIT\r\n", b"250 ok\r\n250 ok\r\n221 bye\r\n") == []
    assert records(b"EHLO scanner.example\r\nQUIT\r\n", b"250 hi\r\n221 bye\r\n") == [("scanner.example", None)]
    assert records(b"RSET\r\nHELO c.example\r\nMAIL FROM:<a@b.c>\r\nQUIT\r\n",
                   b"250 ok\r\n250 hi\r\n250 ok\r\n221 bye\r\n") == [("c.example", "a@b.c")]
