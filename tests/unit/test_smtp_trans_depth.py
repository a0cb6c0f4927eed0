"""SMTP dissector: trans_depth on commands, replies, addresses and message
events numbers the transaction they belong to, as its Transaction event does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from support.smtp_helpers import EHLO_REPLY, GREETING, dialogue, feed, of, transactions

from sensor.smtp import (
    Command,
    MailContent,
    MailFrom,
    MessageEnd,
    MessageHeaders,
    RcptTo,
    Reply,
)

MESSAGE = b"Subject: s\r\n\r\nhi\r\n.\r\n"


def depths(events, cls) -> list[tuple]:
    """(what, trans_depth) of each event of ``cls``."""
    if cls is Command:
        return [(e.verb, e.trans_depth) for e in events if isinstance(e, Command)]
    if cls is Reply:
        return [(e.command, e.trans_depth) for e in events if isinstance(e, Reply)]
    return [(getattr(e, "address", None), e.trans_depth) for e in of(events, cls)]


def test_two_transactions_lock_step_every_event_carries_its_transaction():
    turns = [("S", GREETING), ("C", b"EHLO c.example\r\n"), ("S", EHLO_REPLY)]
    for sender in (b"a@x.example", b"b@x.example"):
        turns += [("C", b"MAIL FROM:<" + sender + b">\r\n"), ("S", b"250 ok\r\n"),
                  ("C", b"RCPT TO:<r@y.example>\r\n"), ("S", b"250 ok\r\n"),
                  ("C", b"DATA\r\n"), ("S", b"354 go\r\n"), ("C", MESSAGE), ("S", b"250 queued\r\n")]
    turns += [("C", b"QUIT\r\n"), ("S", b"221 bye\r\n")]
    ev = dialogue(*turns)
    assert [(t.trans_depth, t.mailfrom) for t in transactions(ev)] == [(1, "a@x.example"),
                                                                       (2, "b@x.example")]
    assert depths(ev, Command) == [("EHLO", 1), ("MAIL", 1), ("RCPT", 1), ("DATA", 1),
                                   ("MAIL", 2), ("RCPT", 2), ("DATA", 2), ("QUIT", 3)]
    # the reply to the end of a message belongs to the message's transaction
    assert depths(ev, Reply) == [(">", 1), ("EHLO", 1), ("MAIL", 1), ("RCPT", 1), ("DATA", 1),
                                 (".", 1), ("MAIL", 2), ("RCPT", 2), ("DATA", 2), (".", 2),
                                 ("QUIT", 3)]
    assert depths(ev, MailFrom) == [("a@x.example", 1), ("b@x.example", 2)]
    assert depths(ev, RcptTo) == [("r@y.example", 1), ("r@y.example", 2)]
    for cls in (MessageHeaders, MailContent, MessageEnd):
        assert [d for _, d in depths(ev, cls)] == [1, 2], cls


def test_rset_and_quit_carry_the_transaction_they_end_and_their_replies_the_next():
    """An accepted EHLO ends the transaction when its reply comes: the EHLO's
    reply still carries the transaction it ends."""
    ev = dialogue(("S", GREETING), ("C", b"EHLO c\r\n"), ("S", EHLO_REPLY),
                  ("C", b"MAIL FROM:<a@x>\r\n"), ("S", b"250 ok\r\n"), ("C", b"RSET\r\n"), ("S", b"250 ok\r\n"),
                  ("C", b"NOOP\r\n"), ("S", b"250 ok\r\n"), ("C", b"RCPT TO:<b@y>\r\n"), ("S", b"250 ok\r\n"),
                  ("C", b"EHLO again\r\n"), ("S", b"250 ok\r\n"), ("C", b"MAIL FROM:<c@x>\r\n"),
                  ("S", b"250 ok\r\n"), ("C", b"QUIT\r\n"), ("S", b"221 bye\r\n"))
    assert [(t.trans_depth, t.mailfrom, t.rcptto) for t in transactions(ev)] == [
        (1, "a@x", ()), (2, None, ("b@y",)), (3, "c@x", ())]
    assert depths(ev, Command) == [("EHLO", 1), ("MAIL", 1), ("RSET", 1), ("NOOP", 2),
                                   ("RCPT", 2), ("EHLO", 2), ("MAIL", 3), ("QUIT", 3)]
    assert depths(ev, Reply) == [(">", 1), ("EHLO", 1), ("MAIL", 1), ("RSET", 2), ("NOOP", 2),
                                 ("RCPT", 2), ("EHLO", 2), ("MAIL", 3), ("QUIT", 4)]


def test_a_second_mail_is_a_step_of_the_transaction_and_its_sender_the_first_mails():
    """Suricata's reading (most servers refuse it: 503): the second MAIL
    changes nothing but the steps; rules still judge its address."""
    ev = dialogue(("S", GREETING), ("C", b"MAIL FROM:<a@x>\r\n"), ("S", b"250 ok\r\n"),
                  ("C", b"MAIL FROM:<b@x>\r\n"), ("S", b"250 ok\r\n"), ("C", b"RCPT TO:<c@y>\r\n"),
                  ("S", b"250 ok\r\n"))
    [t] = transactions(ev)
    assert (t.trans_depth, t.mailfrom, t.rcptto) == (1, "a@x", ("c@y",))
    assert depths(ev, Command) == [("MAIL", 1), ("MAIL", 1), ("RCPT", 1)]
    assert depths(ev, MailFrom) == [("a@x", 1), ("b@x", 1)]


def test_a_second_mail_the_server_refuses_leaves_the_sender_of_the_transaction():
    ev = feed(b"MAIL FROM:<a@x>\r\nRCPT TO:<c@y>\r\nMAIL FROM:<b@x>\r\nDATA\r\n" + MESSAGE,
              GREETING + b"250 ok\r\n250 ok\r\n503 5.5.1 nested MAIL command\r\n354 go\r\n250 queued\r\n")
    [t] = transactions(ev)
    assert (t.mailfrom, t.rcptto, t.delivered) == ("a@x", ("c@y",), True)
    assert [(s.verb, s.code) for s in t.steps] == [("MAIL", 250), ("RCPT", 250), ("MAIL", 503),
                                                   ("DATA", 354), (".", 250)]


def test_a_bdat_message_carries_its_transaction():
    client = b"EHLO c\r\nRSET\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 3\r\nabcBDAT 2 LAST\r\nde"
    ev = feed(client, GREETING + EHLO_REPLY + b"250 ok\r\n" * 5)
    assert [t.trans_depth for t in transactions(ev)] == [1]
    for cls in (MessageHeaders, MailContent, MessageEnd):
        assert [d for _, d in depths(ev, cls)] == [1], cls


_COMMANDS = [b"MAIL FROM:<a@x.example>", b"MAIL FROM:<b@x.example>", b"MAIL FROM:garbage",
             b"RCPT TO:<c@y.example>", b"RCPT TO:<d@y.example>", b"RSET", b"EHLO again.example",
             b"NOOP", b"DATA", b"BDAT 2 LAST"]


@settings(max_examples=150, deadline=None)
@given(commands=st.lists(st.sampled_from(_COMMANDS), min_size=1, max_size=14),
       rejects=st.lists(st.booleans(), min_size=14, max_size=14),
       server_first=st.booleans())
def test_addresses_and_messages_carry_the_depth_of_the_transaction_that_reports_them(
        commands, rejects, server_first):
    client, server = [b"EHLO c.example\r\n"], [GREETING, EHLO_REPLY]
    for command, rejected in zip(commands, rejects):
        client.append(command + b"\r\n")
        if command == b"DATA":
            server.append(b"554 no\r\n" if rejected else b"354 go\r\n")
            if not rejected:
                client.append(MESSAGE)
                server.append(b"250 queued\r\n")
        elif command.startswith(b"BDAT"):
            client.append(b"xy")
            server.append(b"250 ok\r\n")
        else:
            server.append(b"550 no\r\n" if rejected else b"250 ok\r\n")
    client.append(b"QUIT\r\n")
    server.append(b"221 bye\r\n")
    ev = feed(b"".join(client), b"".join(server), order="server" if server_first else "client")
    reported = {t.trans_depth: t for t in transactions(ev)}
    assert sorted(reported) == list(range(1, len(reported) + 1))
    # a transaction's sender is its first MAIL's (a second MAIL is a step of
    # it, whose sender counts only once the server accepted it: it then
    # begins the next transaction)
    first_mail: dict = {}
    for e in of(ev, MailFrom):
        first_mail.setdefault(e.trans_depth, e.address)
    for depth, address in first_mail.items():
        assert reported[depth].mailfrom == address
    for e in of(ev, RcptTo):
        if e.address is not None:
            assert e.address in reported[e.trans_depth].rcptto
    for e in of(ev, MessageEnd):
        assert reported[e.trans_depth].message_size == e.size
    # no event belongs to a transaction already reported, but the reply to a
    # command sent inside the last one that is not one of its steps (NOOP)
    last = 0
    for e in ev:
        if type(e).__name__ == "Transaction":
            last = e.trans_depth
        elif isinstance(e, (Command, MailFrom, RcptTo, MailContent, MessageHeaders, MessageEnd)):
            assert e.trans_depth > last, (e, last)
        elif isinstance(e, Reply) and e.command is not None:
            assert e.trans_depth > last or e.trans_depth == last and e.command not in (
                "MAIL", "RCPT", "DATA", "BDAT", "."), (e, last)


def test_zeeks_count_numbers_each_record_by_the_messages_answered_before_it():
    """Zeek's smtp.log trans_depth (messages_before + 1): a message counts once
    its end had a reply; a capture of the client alone numbers every record 1;
    how the directions interleave does not matter."""
    two = (b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n" + MESSAGE
           + b"MAIL FROM:<c@x>\r\nRCPT TO:<d@y>\r\nRSET\r\nMAIL FROM:<e@x>\r\nRCPT TO:<f@y>\r\nDATA\r\n" + MESSAGE)
    replies = (GREETING + EHLO_REPLY + b"250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n"
               b"250 ok\r\n550 no\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n")
    for order in ("client", "server"):
        assert [t.messages_before + 1 for t in transactions(feed(two, replies, order=order))] == [1, 2, 2], order
    assert [t.messages_before + 1 for t in transactions(feed(two, b""))] == [1, 1, 1]
