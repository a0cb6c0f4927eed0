"""The dissector's events do not depend on how client and server octets
interleave in time (issue 12, section 3): generated dialogues, fed with the
server's octets at any point after the client octets they answer, or all of
them before the client's, give the same events.

What "the same" means is exactly what the dissector can promise
(sensor/smtp/connection.py, "Interleaving", with the cases it cannot):
each direction's events in the same order (the client's: commands,
addresses, content; the server's: replies with the command each answers),
the same transactions, and the same anomalies; the position of a reply's
event among the client's events is when the reply became known, which is
the interleaving itself.  The dialogues are ones a client and a server could
hold (a message only after an accepted DATA; the client waits for the
greeting and for the replies to DATA and AUTH): a message's lines sent as
commands make unmatched replies and the unknown-command budget, whose
outcome depends on the feeding by design.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.smtp import SMTPConnection
from sensor.smtp.events import (AuthEvent, Greeting, MessageHeaders, Reply, ServerCapabilities, SmtpAnomaly,
                                StartTLS, Transaction)
from support.smtp_helpers import strip_ts

SERVER_SIDE = (Reply, Greeting, ServerCapabilities, AuthEvent, StartTLS)

# (client octets, server octets answering them); pipelinable or not
STEPS = {
    "helo": (b"HELO c.example\r\n", b"250 mx\r\n"),
    "ehlo": (b"EHLO c.example\r\n", b"250-mx\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"),
    "mail": (b"MAIL FROM:<a@x.example>\r\n", b"250 2.1.0 ok\r\n"),
    "mail-refused": (b"MAIL FROM:<spam@x.example>\r\n", b"550 5.7.1 no\r\n"),
    "rcpt": (b"RCPT TO:<b@y.example>\r\n", b"250 2.1.5 ok\r\n"),
    "rcpt-refused": (b"RCPT TO:<nobody@y.example>\r\n", b"550 5.1.1 unknown\r\n"),
    "data": (b"DATA\r\n", b"354 go\r\n"),
    "data-refused": (b"DATA\r\n", b"554 5.5.1 no valid recipients\r\n"),
    "message": (b"Subject: hi\r\nTo: b@y.example\r\n\r\nbody\r\n..dot\r\n.\r\n", b"250 2.0.0 queued\r\n"),
    "bdat": (b"BDAT 12 LAST\r\nSubject: x\r\n", b"250 2.0.0 queued\r\n"),
    "rset": (b"RSET\r\n", b"250 ok\r\n"),
    "noop": (b"NOOP\r\n", b"250 ok\r\n"),
    "vrfy": (b"VRFY b\r\n", b"252 maybe\r\n"),
    "unknown": (b"XYZZY\r\n", b"500 5.5.2 what\r\n"),
    "auth": (b"AUTH PLAIN AGEAcA==\r\n", b"235 2.7.0 ok\r\n"),
    "auth-login": (b"AUTH LOGIN\r\n", b"334 VXNlcm5hbWU6\r\n"),
    "auth-answer": (b"dXNlcg==\r\n", b"535 5.7.8 no\r\n"),
    "quit": (b"QUIT\r\n", b"221 bye\r\n"),
}
STEP = st.sampled_from(sorted(set(STEPS) - {"auth-answer", "message"}))   # those follow their command


#: commands whose reply the client waits for before sending more: what it
#: sends next depends on it (a message, a SASL answer; after HELO/EHLO,
#: whether it may pipeline at all, RFC 2920)
BLOCKING = {"data", "auth", "auth-login", "helo", "ehlo"}


def dialogue_of(names):
    """The (client, server, blocking) turns of a dialogue: a greeting, then
    the steps; an AUTH LOGIN is followed by its answer, DATA accepted by its
    message."""
    turns = [(b"", b"220 mx.example ESMTP\r\n", True)]      # the client waits for the greeting
    for name in names:
        turns.append(STEPS[name] + (name in BLOCKING,))
        if name == "auth-login":
            turns.append(STEPS["auth-answer"] + (False,))
        elif name == "data":
            turns.append(STEPS["message"] + (False,))
    return turns


def interleave(turns, delays):
    """The feeding order: ("C"|"S", octets).  The reply of turn i is fed
    ``delays[i]`` client turns later, but never before its command and always
    before the client's next octets after a blocking command (causality);
    with ``delays`` None, every server octet is fed before the client's."""
    if delays is None:
        return [("S", s) for _, s, _ in turns] + [("C", c) for c, _, _ in turns if c]
    order, waiting = [], []
    for i, (client, server, blocking) in enumerate(turns):
        if client:
            order.append(("C", client))
        waiting.append([0 if blocking else delays[i % len(delays)], server])
        for w in waiting:          # in order: a server answers in the order it was asked
            if w[0] > 0:
                break
            order.append(("S", w[1]))
            w[1] = None
        for w in waiting:
            w[0] -= 1
        if blocking:      # what the client sends next waits for this reply, so for all before it
            order += [("S", w[1]) for w in waiting if w[1] is not None]
            waiting = []
        waiting = [w for w in waiting if w[1] is not None]
    order += [("S", w[1]) for w in waiting]
    return order


def in_step(turns):
    """Each command's reply right after it: the order of a dialogue without pipelining."""
    return [x for c, s, _ in turns for x in ((("C", c),) if c else ()) + (("S", s),)]


def run(order):
    conn = SMTPConnection()
    out = []
    for who, data in order:
        out += conn.receive_client(data, 1.0) if who == "C" else conn.receive_server(data, 1.0)
    return out + conn.close(1.0)


def views(events):
    events = strip_ts(events)
    return {
        "client": [e for e in events if not isinstance(e, SERVER_SIDE + (Transaction, SmtpAnomaly,
                                                                           MessageHeaders))],
        "server": [e for e in events if isinstance(e, SERVER_SIDE)],
        "transactions": [e for e in events if isinstance(e, Transaction)],
        "anomalies": Counter((e.name, e.direction) for e in events if isinstance(e, SmtpAnomaly)),
    }


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(STEP, min_size=1, max_size=12),
       delays=st.lists(st.integers(0, 4), min_size=1, max_size=6))
def test_replies_later_in_any_causal_order_give_the_same_events(names, delays):
    turns = dialogue_of(names)
    assert views(run(interleave(turns, delays))) == views(run(in_step(turns)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(STEP, min_size=1, max_size=12))
def test_server_octets_before_the_clients_give_the_same_events(names):
    turns = dialogue_of(names)
    assert views(run(interleave(turns, None))) == views(run(in_step(turns)))
