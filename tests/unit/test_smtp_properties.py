"""SMTP dissector properties (hypothesis).

* Any segmentation of each direction gives the same events as each stream in
  one piece (fed client stream first, then server stream; only ts differs).
* Feeding the server first, or both in lock-step, gives the same commands,
  replies, content and transactions.
* Arbitrary bytes, gaps and closes, on both sides, never raise and never hit
  the INTERNAL_ERROR safety net.
"""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensor.smtp import CLIENT, SERVER, LenientTerminator, SMTPConnection, SmtpLimits
from sensor.smtp import anomalies as A
from support.smtp_helpers import EHLO_REPLY, GREETING, commands, content, feed, names, replies, strip_ts, transactions

ENV = b"EHLO c.example\r\nMAIL FROM:<a@x.example> SIZE=99\r\nRCPT TO:<b@y.example>\r\n"
ENV_OK = GREETING + EHLO_REPLY + b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n"
HDR = (b"Received: from a by b\r\nReceived: from c\r\n by d\r\nSubject: =?utf-8?q?h=C3=A9?=\r\n"
       b"From: a@x.example\r\nTo: b@y.example\r\nMessage-ID: <1@x>\r\n\r\n")

DIALOGUES = {
    "haka": (b"HELO some_domain\nMAIL FROM: hacker@suspicious.org\nRCPT TO: backup\nDATA\n"
             b"BLA BLA BLA ...\r\nMORE BLA BLA BLA ...\r\n.\r\nQUIT\n",
             b"220 metasploitable.localdomain ESMTP Postfix (Ubuntu)\r\n"
             b"250 metasploitable.localdomain\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
             b"354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 Ok: queued as 2E1B4C934\r\n"
             b"221 2.0.0 Bye\r\n"),
    "data": (ENV + b"DATA\r\n" + HDR + b"body\r\n..dot\r\nx\n.\ny\rz\r\n" + b"L" * 1200
             + b"\r\n.\r\nRSET\r\nQUIT\r\n",
             ENV_OK + b"354 go\r\n250 2.0.0 queued\r\n250 ok\r\n221 bye\r\n"),
    "rejected-data": (ENV + b"DATA\r\nNOOP\r\nQUIT\r\n",
                      ENV_OK + b"554 5.5.1 no\r\n250 ok\r\n221 bye\r\n"),
    "bdat": (ENV + b"BDAT 20\r\n" + HDR[:20] + b"BDAT %d LAST\r\n" % (len(HDR) - 20) + HDR[20:]
             + b"BDAT 0 LAST\r\nQUIT\r\n",
             ENV_OK + b"250 ok\r\n250 queued\r\n503 no\r\n221 bye\r\n"),
    "auth": (b"EHLO c\r\nAUTH LOGIN\r\n" + base64.b64encode(b"u") + b"\r\n"
             + base64.b64encode(b"p") + b"\r\nAUTH PLAIN AHUAcA==\r\nQUIT\r\n",
             GREETING + EHLO_REPLY + b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n535 no\r\n"
             b"235 ok\r\n221 bye\r\n"),
    "starttls": (b"EHLO c\r\nSTARTTLS\r\n\x16\x03\x01\x00\x04abcd",
                 GREETING + EHLO_REPLY + b"220 go ahead\r\n\x16\x03\x03\x00\x02zz"),
    "junk": (b"FOO\r\n\r\nMAIL FROM:x\r\nRCPT TO:\r\nDATA\r\n" + b"Z" * 700 + b"\r\nVRFY a\r\n",
             GREETING + b"500 what\r\n500 what\r\n250 ok\r\n501 bad\r\n503 no\r\nnot a reply\r\n"
             b"252-a\r\n252 b\r\n421 bye\r\n"),
    "two-messages": (ENV + b"DATA\r\nSubject: 1\r\n\r\n.\r\nMAIL FROM:<c@d>\r\nRCPT TO:<e@f>\r\n"
                     b"DATA\r\nSubject: 2\r\n\r\nx\r\n.\r\n",
                     ENV_OK + b"354 go\r\n250 q\r\n250 ok\r\n250 ok\r\n354 go\r\n250 q\r\n"),
}
SMALL = SmtpLimits(command_line=24, reply_line=32, reply_lines=3, data_line=10, header_section=40,
               content_chunk=7, unreplied_client_bytes=50, unmatched_replies=2, recipients=1)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    pts = sorted({p % (len(data) + 1) for p in points})
    out, prev = [], 0
    for p in pts + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return [c for c in out if c]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(DIALOGUES)), small=st.booleans(),
       cpoints=st.lists(st.integers(0, 10_000), max_size=12),
       spoints=st.lists(st.integers(0, 10_000), max_size=12))
def test_any_segmentation_gives_the_same_events(name, small, cpoints, spoints):
    client, server = DIALOGUES[name]
    limits = SMALL if small else None
    whole = feed(client, server, limits=limits)
    split = feed(cut(client, cpoints), cut(server, spoints), limits=limits)
    # a LenientTerminator is told when the octets holding it arrive (a verdict
    # must come before the next segment reaches the MTA): where it sits among
    # the content chunks depends on the segments; what it says does not
    assert strip_ts(lenient(split)) == strip_ts(lenient(whole))
    assert strip_ts(without_lenient(split)) == strip_ts(without_lenient(whole))
    assert A.INTERNAL_ERROR not in names(whole)


def lenient(events):
    return [e for e in events if isinstance(e, LenientTerminator)]


def without_lenient(events):
    return [e for e in events if not isinstance(e, LenientTerminator)]


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(DIALOGUES)), points=st.lists(st.integers(0, 10_000), max_size=8))
def test_server_first_gives_the_same_commands_replies_and_transactions(name, points):
    client, server = DIALOGUES[name]
    a = feed(client, server, order="client")
    b = feed(cut(client, points), server, order="server")
    assert commands(a) == commands(b)
    assert replies(a) == replies(b)
    assert content(a) == content(b)
    assert strip_ts(transactions(a)) == strip_ts(transactions(b))


FRAGMENTS = [
    b"HELO x\r\n", b"EHLO x\r\n", b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<c@d>\r\n", b"DATA\r\n",
    b"BDAT 3\r\n", b"BDAT 2 LAST\r\n", b"BDAT x\r\n", b"AUTH LOGIN\r\n", b"AUTH PLAIN Zm9v\r\n",
    b"STARTTLS\r\n", b"RSET\r\n", b"QUIT\r\n", b".\r\n", b"\n.\n", b"\r.\r", b"..\r\n", b"\r\n",
    b"\n", b"\r", b"abc", b"dXNlcg==\r\n", b"*\r\n", b"\x16\x03\x01",
    b"220 hi\r\n", b"250 ok\r\n", b"250-x\r\n", b"354 go\r\n", b"334 x\r\n", b"235 ok\r\n",
    b"550 5.7.1 no\r\n", b"221 bye\r\n", b"421 x\r\n", b"999 x\r\n",
]
ITEM = st.one_of(
    st.tuples(st.sampled_from("CS"), st.binary(max_size=64)),
    st.tuples(st.sampled_from("CS"), st.lists(st.sampled_from(FRAGMENTS), max_size=8).map(b"".join)),
    st.tuples(st.just("G"), st.tuples(st.sampled_from([CLIENT, SERVER]), st.integers(-5, 3000))),
)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(ITEM, max_size=25), small=st.booleans(), close=st.booleans())
def test_arbitrary_input_never_raises(items, small, close):
    conn = SMTPConnection(SMALL if small else SmtpLimits())
    out = []
    for i, (kind, data) in enumerate(items):
        if kind == "C":
            out += conn.receive_client(data, float(i))
        elif kind == "S":
            out += conn.receive_server(data, float(i))
        else:
            out += conn.gap(data[0], data[1], float(i))
    if close:
        out += conn.close(float(len(items)))
    assert A.INTERNAL_ERROR not in names(out), [a for a in out if getattr(a, "name", "") == A.INTERNAL_ERROR]
    assert all(a.name in A.ALL for a in out if hasattr(a, "name"))
