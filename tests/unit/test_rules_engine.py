"""sensor.rules.engine: every hook fires with its argument; streamed content
is chunks, may stop early and costs one chunk of memory; a running stream
keeps its code across a reload; rule errors, slow rules and foreign awaits
are counted, never fatal; verdicts reach the enforcer before flow.drop()
returns and the dropped flow's later events are only counted."""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.rules import alert, hooks, rule
from sensor.rules.engine import RuleFlow
from sensor.rules.loader import RuleSet
from support.record_schemas import check
from support.rules_helpers import (
    CLIENT_IP,
    CONTENT,
    DIALOGUE,
    SERVER_IP,
    RecordingEnforcer,
    Run,
    StaticRules,
    message_dialogue,
    run,
    session_segments,
    write,
)
from support.sessions import DIALOGUE as PIPELINED_DIALOGUE

# ---------------------------------------------------------------- hooks

def test_every_hook_fires_in_connection_order_with_its_argument():
    seen = []

    @rule(hooks.connection, id="t.connection")
    def on_connection(flow):
        seen.append(("connection", type(flow).__name__))

    @rule(hooks.command, id="t.command")
    def on_command(flow, command):
        seen.append(("command", command.verb, command.parameter))

    @rule(hooks.response, id="t.response")
    def on_response(flow, reply):
        seen.append(("response", reply.code, reply.command))

    @rule(hooks.mail_content, id="t.content")
    def on_content(flow, content):
        seen.append(("mail_content", content))

    @rule(hooks.message_end, id="t.end")
    def on_end(flow, end):
        seen.append(("message_end", end.size, end.complete, end.method))

    @rule(hooks.transaction, id="t.transaction")
    def on_transaction(flow, record):
        check(record)
        seen.append(("transaction", record["event_type"], record["mailfrom"], record["rcptto"]))

    @rule(hooks.anomaly, id="t.anomaly")
    def on_anomaly(flow, record):
        check(record)
        seen.append(("anomaly", record["event_type"], record["name"]))

    @rule(hooks.connection_end, id="t.connection_end")
    def on_connection_end(flow):
        seen.append(("connection_end", type(flow).__name__))

    dialogue = DIALOGUE[:3] + [(True, b"XYZZY\r\n"), (False, b"502 5.5.2 what?\r\n")] + DIALOGUE[3:]
    r = run(StaticRules(on_connection, on_command, on_response, on_content, on_end,
                        on_transaction, on_anomaly, on_connection_end), dialogue)
    assert r.engine.counters.errors == 0
    assert seen == [
        ("connection", "RuleFlow"),
        ("response", 220, ">"),
        ("command", "EHLO", "client.example"),
        ("response", 250, "EHLO"),
        ("command", "XYZZY", ""),
        ("anomaly", "anomaly", "UNKNOWN_COMMAND"),
        ("response", 502, "XYZZY"),
        ("command", "MAIL", "FROM:<alice@example.org>"),
        ("response", 250, "MAIL"),
        ("command", "RCPT", "TO:<bob@example.net>"),
        ("response", 250, "RCPT"),
        ("command", "RCPT", "TO:<nobody@example.net>"),
        ("response", 550, "RCPT"),
        ("command", "DATA", ""),
        ("response", 354, "DATA"),
        ("mail_content", CONTENT),
        ("message_end", len(CONTENT), True, "DATA"),
        ("response", 250, "."),
        ("transaction", "smtp", "alice@example.org", ["bob@example.net", "nobody@example.net"]),
        ("command", "QUIT", ""),
        ("response", 221, "QUIT"),
        ("connection_end", "RuleFlow"),
    ]


def test_transaction_and_anomaly_rules_get_the_very_records_written():
    given = []

    @rule(hooks.transaction, id="t.transaction")
    def on_transaction(flow, record):
        given.append(record)

    @rule(hooks.anomaly, id="t.anomaly")
    def on_anomaly(flow, record):
        given.append(record)

    dialogue = DIALOGUE[:3] + [(True, b"XYZZY\r\n"), (False, b"502 5.5.2 what?\r\n")] + DIALOGUE[3:]
    r = run(StaticRules(on_transaction, on_anomaly), dialogue)
    written = r.sink.of("anomaly") + r.sink.of("smtp")
    assert [rec["event_type"] for rec in given] == ["anomaly", "smtp"]
    # built once: the rules get the dicts the sink got, not copies built again
    assert all(a is b for a, b in zip(given, written)) and len(given) == len(written)


def test_mail_and_rcpt_rules_see_the_parsed_address_in_the_transaction_even_pipelined():
    seen = []

    @rule(hooks.command, id="t.command")
    def on_command(flow, command):
        t = flow.transaction
        seen.append((command.verb, t.depth, t.mailfrom, list(t.rcptto)))

    # MAIL, RCPT, RCPT and DATA in one segment (PIPELINING)
    run(StaticRules(on_command), PIPELINED_DIALOGUE)
    assert seen == [
        ("EHLO", 1, None, []),
        ("MAIL", 1, "alice@example.org", []),
        ("RCPT", 1, "alice@example.org", ["bob@example.net"]),
        ("RCPT", 1, "alice@example.org", ["bob@example.net", "nobody@example.net"]),
        ("DATA", 1, "alice@example.org", ["bob@example.net", "nobody@example.net"]),
        ("QUIT", 2, None, []),        # the transaction ended with its final reply
    ]


def test_the_reply_to_the_end_of_a_message_sees_the_message_s_transaction():
    seen = []

    @rule(hooks.response, id="t.response")
    def on_response(flow, reply):
        if reply.command in (".", "QUIT"):
            seen.append((reply.command, flow.transaction.depth, flow.transaction.mailfrom))

    run(StaticRules(on_response))
    assert seen == [(".", 1, "alice@example.org"), ("QUIT", 2, None)]


def test_the_second_transaction_of_a_connection_is_depth_2_and_starts_empty():
    seen = []

    @rule(hooks.command, id="t.command")
    def on_command(flow, command):
        if command.verb in ("MAIL", "RCPT"):
            seen.append((command.verb, flow.transaction.depth, flow.transaction.mailfrom,
                         list(flow.transaction.rcptto)))

    run(StaticRules(on_command), message_dialogue(b"Subject: x\r\n\r\nhi\r\n", messages=2))
    assert seen == [("MAIL", 1, "alice@example.org", []),
                    ("RCPT", 1, "alice@example.org", ["bob@example.net"]),
                    ("MAIL", 2, "alice@example.org", []),
                    ("RCPT", 2, "alice@example.org", ["bob@example.net"])]


_COMMANDS = [b"MAIL FROM:<a@x.example>", b"MAIL FROM:<b@x.example>", b"MAIL FROM:<>",
             b"MAIL FROM:garbage", b"RCPT TO:<c@y.example>", b"RCPT TO:<d@y.example>",
             b"RSET", b"EHLO again.example", b"NOOP", b"DATA"]


@settings(max_examples=100, deadline=None)
@given(commands=st.lists(st.sampled_from(_COMMANDS), min_size=1, max_size=12),
       pipelined=st.booleans(), rejects=st.lists(st.booleans(), min_size=12, max_size=12))
def test_flow_transaction_is_the_transaction_the_dissector_reports(commands, pipelined, rejects):
    """Whatever the order of MAIL, RCPT, DATA, RSET and EHLO (nested MAIL,
    RCPT before MAIL, unparsable addresses, rejections, pipelining), the
    sender, recipients and depth a command, response or message_end rule
    sees are those of the transaction record of its event."""
    seen, records = {}, []

    def remember(flow, event):
        t = flow.transaction
        assert t.depth == event.trans_depth
        if t.mailfrom is not None or t.rcptto:
            seen[t.depth] = (t.mailfrom, list(t.rcptto))

    @rule(hooks.command, id="t.command")
    def on_command(flow, command):
        remember(flow, command)

    @rule(hooks.response, id="t.response")
    def on_response(flow, reply):
        remember(flow, reply)

    @rule(hooks.message_end, id="t.message_end")
    def on_message_end(flow, end):
        remember(flow, end)

    @rule(hooks.transaction, id="t.transaction")
    def on_transaction(flow, record):
        mails = sum(1 for step in record["steps"] if step["verb"] == "MAIL")
        records.append((flow.transaction.depth, record.get("mailfrom"), record.get("rcptto", []), mails))

    dialogue = [(False, b"220 mx\r\n"), (True, b"EHLO c.example\r\n"), (False, b"250 mx\r\n")]
    client, server = [], []

    def flush():
        if client:
            dialogue.extend([(True, b"".join(client)), (False, b"".join(server))])
            client.clear()
            server.clear()

    for command, rejected in zip(commands, rejects):
        client.append(command + b"\r\n")
        if command == b"DATA":
            server.append(b"554 no\r\n" if rejected else b"354 go\r\n")
            flush()
            if not rejected:
                client.append(b"Subject: s\r\n\r\nhi\r\n.\r\n")
                server.append(b"250 queued\r\n")
        else:
            server.append(b"550 no\r\n" if rejected else b"250 ok\r\n")
        if not pipelined:
            flush()
    flush()
    dialogue += [(True, b"QUIT\r\n"), (False, b"221 bye\r\n")]
    r = run(StaticRules(on_command, on_response, on_message_end, on_transaction), dialogue)
    assert r.engine.counters.errors == 0
    assert set(seen) <= {depth for depth, _, _, _ in records}
    for depth, mailfrom, rcptto, mails in records:
        if depth in seen:
            sender, recipients = seen[depth]
            # the record's rcptto is Zeek's set (each address once); the
            # flow's is every RCPT as sent
            assert list(dict.fromkeys(recipients)) == rcptto, (depth, records, seen)
            # the flow's sender is its last MAIL's (a rule judges each MAIL the
            # client sends); the record's the one the transaction kept: the
            # same unless a second MAIL came
            assert mails > 1 or sender == mailfrom, (depth, records, seen)


def test_rules_see_the_transaction_of_each_event_with_pipelining_rset_and_a_refused_ehlo():
    """Pipelined: a transaction ended by RSET, then one that an EHLO the server
    refuses does not end, with a second MAIL and a message, all sent before
    any reply.  Every command, reply and message_end rule sees the transaction
    of its event (``flow.transaction.depth`` numbers them one by one; the
    records number them as Zeek does): the replies to the first
    transaction's steps come after the client began the second, and still
    see the first; the sender rules see is the last MAIL's."""
    seen, depths = [], []

    def see(what, flow, depth):
        t = flow.transaction
        assert t.depth == depth, (what, t, depth)
        seen.append((what, t.depth, t.mailfrom, list(t.rcptto)))

    @rule(hooks.command, id="t.command")
    def on_command(flow, command):
        see(command.verb, flow, command.trans_depth)

    @rule(hooks.response, id="t.response")
    def on_response(flow, reply):
        see(f"{reply.code} {reply.command}", flow, reply.trans_depth)

    @rule(hooks.message_end, id="t.message_end")
    def on_message_end(flow, end):
        see("message_end", flow, end.trans_depth)

    @rule(hooks.transaction, id="t.transaction")
    def on_transaction(flow, record):
        see("transaction", flow, flow.transaction.depth)
        depths.append((flow.transaction.depth, record["trans_depth"]))

    dialogue = [
        (False, b"220 mx\r\n"), (True, b"EHLO c.example\r\n"), (False, b"250-mx\r\n250 PIPELINING\r\n"),
        (True, b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nRSET\r\n"
               b"MAIL FROM:<c@x.example>\r\nRCPT TO:<d@y.example>\r\nEHLO again.example\r\n"
               b"MAIL FROM:<e@x.example>\r\nRCPT TO:<f@y.example>\r\nDATA\r\n"),
        (False, b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n501 no\r\n"
                b"250 ok\r\n250 ok\r\n354 go\r\n"),
        (True, b"Subject: s\r\n\r\nhi\r\n.\r\n"), (False, b"250 queued\r\n"),
        (True, b"QUIT\r\n"), (False, b"221 bye\r\n"),
    ]
    r = run(StaticRules(on_command, on_response, on_message_end, on_transaction), dialogue)
    assert r.engine.counters.errors == 0
    records = [(rec["trans_depth"], rec.get("mailfrom"), rec.get("rcptto", [])) for rec in r.sink.of("smtp")]
    # Zeek's numbering in the records: no message had ended before either began
    assert records == [(1, "a@x.example", ["b@y.example"]),
                       (1, "c@x.example", ["d@y.example", "f@y.example"])]
    assert depths == [(1, 1), (2, 1)]
    a = ("a@x.example", ["b@y.example"])
    c, e = ("c@x.example", ["d@y.example"]), ("e@x.example", ["d@y.example", "f@y.example"])
    assert seen == [
        ("220 >", 1, None, []),
        ("EHLO", 1, None, []),
        ("250 EHLO", 1, None, []),
        ("MAIL", 1, "a@x.example", []),
        ("RCPT", 1, *a),
        ("RSET", 1, *a),                 # RSET ends the transaction it belongs to
        ("MAIL", 2, "c@x.example", []),
        ("RCPT", 2, *c),
        ("EHLO", 2, *c),                 # refused: the transaction goes on
        ("MAIL", 2, "e@x.example", ["d@y.example"]),   # a second MAIL: rules judge its sender
        ("RCPT", 2, *e),
        ("DATA", 2, *e),
        ("250 MAIL", 1, *a),             # the first transaction's replies: still the first
        ("250 RCPT", 1, *a),
        ("250 RSET", 2, *e),             # after RSET: the next transaction
        ("transaction", 1, *a),          # once the RSET that ended it had its reply
        ("250 MAIL", 2, *e),
        ("250 RCPT", 2, *e),
        ("501 EHLO", 2, *e),
        ("250 MAIL", 2, *e),
        ("250 RCPT", 2, *e),
        ("354 DATA", 2, *e),
        ("message_end", 2, *e),
        ("250 .", 2, *e),
        ("transaction", 2, *e),
        ("QUIT", 3, None, []),
        ("221 QUIT", 3, None, []),
    ]


def test_the_flow_names_the_connection_like_the_records_do():
    seen = {}

    @rule(hooks.command, id="t.command")
    def on_command(flow, command):
        if command.verb == "MAIL":
            seen.update(uid=flow.uid, community_id=flow.community_id,
                        orig=(flow.orig_h, flow.orig_p), resp=(flow.resp_h, flow.resp_p),
                        haka=(flow.src, flow.sport, flow.dst, flow.dport),
                        helo=flow.helo, tls=flow.tls, dropped=flow.dropped, bypassed=flow.bypassed)

    r = run(StaticRules(on_command))
    (smtp,) = r.sink.of("smtp")
    assert seen == {"uid": smtp["uid"], "community_id": smtp["community_id"],
                    "orig": (CLIENT_IP, 40000), "resp": (SERVER_IP, 25),
                    "haka": (CLIENT_IP, 40000, SERVER_IP, 25),
                    "helo": "client.example", "tls": False, "dropped": False, "bypassed": False}


def test_scratch_is_per_flow_storage_kept_across_events():
    @rule(hooks.response, id="t.count")
    def count(flow, reply):
        flow.scratch["replies"] = flow.scratch.get("replies", 0) + 1

    @rule(hooks.connection_end, id="t.report")
    def report(flow):
        alert(description="replies", severity="low", replies=flow.scratch["replies"])

    r = run(StaticRules(count, report))
    (a,) = r.alerts()
    assert a["metadata"] == {"replies": 8}


# ---------------------------------------------------------------- content

def test_non_streamed_content_rules_get_the_message_cut_at_their_content_cap():
    got = {}

    @rule(hooks.mail_content, id="t.whole")
    def whole(flow, content):
        got["whole"] = content

    @rule(hooks.mail_content, id="t.capped", content_cap=100)
    def capped(flow, content):
        got["capped"] = content

    run(StaticRules(whole, capped), content_chunk=256, cut=100)
    assert got == {"whole": CONTENT, "capped": CONTENT[:100]}
    assert isinstance(got["whole"], bytes)


def test_a_streamed_rule_reads_the_content_as_chunks():
    chunks = []

    @rule(hooks.mail_content, id="t.stream", streamed=True)
    async def stream(flow, content):
        async for chunk in content:
            chunks.append((content.offset, chunk))

    r = run(StaticRules(stream), content_chunk=256, cut=100)
    assert r.engine.counters.errors == 0
    assert b"".join(c for _, c in chunks) == CONTENT
    assert [len(c) for _, c in chunks[:-1]] == [256] * (len(chunks) - 1) and len(chunks) > 3
    # offset: octets read so far, this chunk included
    assert [o for o, _ in chunks] == [min(256 * (i + 1), len(CONTENT)) for i in range(len(chunks))]


def test_a_streamed_rule_that_stops_early_is_not_started_again_in_the_same_message():
    starts = []

    @rule(hooks.mail_content, id="t.first_chunk", streamed=True)
    async def first_chunk(flow, content):
        async for chunk in content:
            starts.append(chunk)
            return                      # seen enough

    body = b"Subject: x\r\n\r\n" + b"y" * 2000 + b"\r\n"
    r = run(StaticRules(first_chunk), message_dialogue(body, messages=2), content_chunk=256, cut=300)
    assert r.engine.counters.errors == 0
    # once per message, each time from the start of the message
    assert starts == [body[:256], body[:256]]


def test_a_streamed_rule_that_never_reads_is_started_once_per_message():
    starts = []

    @rule(hooks.mail_content, id="t.lazy", streamed=True)
    async def lazy(flow, content):
        starts.append(flow.transaction.depth)

    run(StaticRules(lazy), message_dialogue(b"Subject: x\r\n\r\n" + b"z" * 3000 + b"\r\n", messages=2),
        content_chunk=256, cut=500)
    assert starts == [1, 2]


def _big_session(size: int):
    body = b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * (size // 80)
    return body, session_segments(message_dialogue(body), cut=65536)


def _peak(ruleset, segments, chunk) -> int:
    r = Run(ruleset, content_chunk=chunk)
    gc.collect()
    tracemalloc.start()
    try:
        r.feed(segments).finish()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_streamed_rule_on_a_20_MB_message_costs_the_engine_one_chunk():
    chunk = 16 * 1024
    body, segments = _big_session(20 << 20)
    size = len(body)
    del body
    seen = {"octets": 0, "largest": 0}

    @rule(hooks.mail_content, id="t.count", streamed=True)
    async def count(flow, content):
        async for data in content:
            seen["octets"] += len(data)
            seen["largest"] = max(seen["largest"], len(data))

    baseline = _peak(StaticRules(), segments, chunk)         # the dissector alone
    with_rule = _peak(StaticRules(count), segments, chunk)
    assert seen == {"octets": size, "largest": chunk}
    # what the engine adds to the peak: a chunk or so, not the message
    assert with_rule - baseline < 4 * chunk, (baseline, with_rule)


def test_a_non_streamed_rule_on_a_20_MB_message_costs_its_content_cap():
    chunk, cap = 16 * 1024, 100_000
    body, segments = _big_session(20 << 20)
    seen = []

    @rule(hooks.mail_content, id="t.head", content_cap=cap)
    def head(flow, content):
        seen.append(len(content))

    baseline = _peak(StaticRules(), segments, chunk)
    with_rule = _peak(StaticRules(head), segments, chunk)
    assert seen == [cap]
    assert with_rule - baseline < 4 * cap + 4 * chunk, (baseline, with_rule)


# ---------------------------------------------------------------- errors and budgets

def test_a_rule_that_raises_is_logged_with_id_uid_and_traceback_counted_and_the_others_run():
    ran = []

    @rule(hooks.command, id="t.broken")
    def broken(flow, command):
        if command.verb == "MAIL":
            raise ZeroDivisionError("rule bug")

    @rule(hooks.command, id="t.fine")
    def fine(flow, command):
        ran.append(command.verb)

    r = run(StaticRules(broken, fine))
    assert ran == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    assert r.engine.counters.errors == 1
    assert broken.__rule__.counters.errors == 1 and fine.__rule__.counters.errors == 0
    ((message, kw),) = r.logger.of("error")
    (smtp,) = r.sink.of("smtp")
    assert message == "rule raised" and kw["rule"] == "t.broken" and kw["uid"] == smtp["uid"]
    assert "ZeroDivisionError: rule bug" in kw["traceback"]
    assert 'raise ZeroDivisionError("rule bug")' in kw["traceback"]     # the rule's own line
    assert len(r.sink.of("smtp")) == 1                                  # the sensor goes on


def test_a_rule_that_calls_sys_exit_is_a_rule_error_not_the_end_of_the_sensor():
    @rule(hooks.command, id="t.exit")
    def leaves(flow, command):
        sys.exit(3)

    r = run(StaticRules(leaves))
    assert r.engine.counters.errors == 6 and len(r.sink.of("smtp")) == 1


def test_a_streamed_rule_that_raises_mid_message_is_counted_and_stopped():
    chunks = []

    @rule(hooks.mail_content, id="t.broken_stream", streamed=True)
    async def broken_stream(flow, content):
        async for chunk in content:
            chunks.append(chunk)
            if len(chunks) == 2:
                raise ValueError("stream bug")

    r = run(StaticRules(broken_stream), content_chunk=256, cut=100)
    assert len(chunks) == 2 and r.engine.counters.errors == 1
    ((message, kw),) = r.logger.of("error")
    assert kw["rule"] == "t.broken_stream" and "ValueError: stream bug" in kw["traceback"]


def test_a_streamed_rule_awaiting_something_else_is_an_error_not_a_hang():
    class Forever:
        def __await__(self):
            while True:
                yield "something that is not the content"

    after = []

    @rule(hooks.mail_content, id="t.awaits", streamed=True)
    async def awaits(flow, content):
        async for chunk in content:
            await Forever()
            after.append(chunk)           # never reached

    @rule(hooks.mail_content, id="t.sleeps", streamed=True)
    async def sleeps(flow, content):
        import asyncio
        await asyncio.sleep(0)            # no event loop drives rules

    started = time.perf_counter()
    r = run(StaticRules(awaits, sleeps), content_chunk=256, cut=100)
    assert time.perf_counter() - started < 5
    assert after == [] and r.engine.counters.errors == 2
    assert awaits.__rule__.counters.errors == 1 and sleeps.__rule__.counters.errors == 1
    tracebacks = [kw["traceback"] for _, kw in r.logger.of("error")]
    assert all("may only await its content" in tb for tb in tracebacks)


def test_a_slow_rule_is_interrupted_at_its_budget_counted_and_disabled_at_its_third_offence():
    finished = []

    @rule(hooks.command, id="t.slow", budget_ms=1)
    def slow(flow, command):
        time.sleep(5)
        finished.append(command.verb)     # never reached: the sleep is interrupted

    @rule(hooks.command, id="t.quick", budget_ms=1000)
    def quick(flow, command):
        pass

    r = run(StaticRules(slow, quick))
    assert finished == []
    # three offences (the default strikes) disable it: the last three commands do not call it
    assert slow.__rule__.counters.calls == slow.__rule__.counters.over_budget == 3
    assert slow.__rule__.disabled == "3 calls over budget within 60 s"
    assert quick.__rule__.counters.over_budget == 0 and quick.__rule__.counters.calls == 6
    assert r.engine.counters.slow_calls == 3 and r.engine.counters.disabled == 1
    assert r.engine.counters.errors == 0
    warnings = r.logger.of("warning")
    assert [kw["strikes"] for _, kw in warnings] == [1, 2, 3]
    message, kw = warnings[0]
    assert message == "rule over its time budget" and kw["rule"] == "t.slow" and kw["budget_ms"] == 1
    assert kw["interrupted"] is True and kw["error"].startswith("RuleTimeout")
    ((message, kw),) = r.logger.of("error")
    assert message == "rule disabled until its file changes" and kw["rule"] == "t.slow"


def test_each_step_of_a_streamed_rule_is_held_to_its_budget():
    steps = []

    @rule(hooks.mail_content, id="t.slow_stream", streamed=True, budget_ms=1)
    async def slow_stream(flow, content):
        async for chunk in content:
            steps.append(len(chunk))
            time.sleep(5)

    r = run(StaticRules(slow_stream), content_chunk=256, cut=100)
    # its first chunk's step is interrupted, which stops it for the rest of the message
    assert steps == [256]
    assert slow_stream.__rule__.counters.over_budget == 1 and r.engine.counters.slow_calls == 1


# ---------------------------------------------------------------- verdicts

def test_flow_drop_reaches_the_enforcer_before_it_returns_and_later_events_are_only_counted():
    enforcer = RecordingEnforcer()
    seen, at_return = [], []

    @rule(hooks.command, id="t.dropper")
    def dropper(flow, command):
        seen.append(command.verb)
        if command.verb == "MAIL":
            flow.drop()
            at_return.append((list(enforcer.calls), flow.dropped))

    @rule(hooks.command, id="t.after")
    def after(flow, command):
        seen.append("after:" + command.verb)

    @rule(hooks.connection_end, id="t.end")
    def end(flow):
        seen.append("end")

    r = run(StaticRules(dropper, after, end), enforcer=enforcer)
    (smtp,) = r.sink.of("smtp")
    assert at_return == [([("drop_flow", smtp["uid"], None, True)], True)]
    # the other rule of the same event is not called either
    assert seen == ["EHLO", "after:EHLO", "MAIL"]
    (drop,) = r.sink.of("drop")
    check(drop)
    assert drop["action"] == "drop_flow" and drop["rule_id"] == "t.dropper" and drop["uid"] == smtp["uid"]
    assert drop["target"] == f"{CLIENT_IP}:40000 <> {SERVER_IP}:25" and drop["enforced_by"] == "replay"
    assert "ttl" not in drop
    assert r.engine.counters.drops == 1 and r.engine.counters.late_events > 10
    assert enforcer.verdicts.flow_dropped(SERVER_IP, 25, CLIENT_IP, 40000)   # both directions


def test_drop_with_a_ttl_expires_in_the_verdict_table():
    @rule(hooks.command, id="t.dropper")
    def dropper(flow, command):
        if command.verb == "MAIL":
            flow.drop(ttl=30)
            flow.drop(ttl=30)          # once is enough: not a second verdict

    r = run(StaticRules(dropper))
    (drop,) = r.sink.of("drop")
    check(drop)
    assert drop["ttl"] == 30
    v = r.enforcer.verdicts
    assert v.flow_dropped(CLIENT_IP, 40000, SERVER_IP, 25, drop["ts"] + 29)
    assert not v.flow_dropped(CLIENT_IP, 40000, SERVER_IP, 25, drop["ts"] + 31)


def test_drop_tears_down_by_default_reset_says_so_and_a_silent_drop_is_asked_for():
    verbs = {"MAIL": lambda flow: flow.drop(), "RCPT": lambda flow: flow.reset(),
             "DATA": lambda flow: flow.drop(reset=False)}
    for verb, act in verbs.items():
        enforcer = RecordingEnforcer()

        @rule(hooks.command, id="t.verdict")
        def verdict(flow, command):
            if command.verb == verb:
                act(flow)

        r = run(StaticRules(verdict), enforcer=enforcer)
        (drop,) = r.sink.of("drop")
        check(drop)
        silent = verb == "DATA"
        assert drop["action"] == "drop_flow" and drop["reset"] is not silent, verb
        assert enforcer.calls == [("drop_flow", drop["uid"], None, not silent)]
        assert bool(enforcer.verdicts.resets) is not silent


def test_ban_source_bans_the_client_prefix_and_stops_the_flow():
    seen = []

    @rule(hooks.command, id="t.banner")
    def banner(flow, command):
        seen.append(command.verb)
        if command.verb == "MAIL":
            flow.ban_source(ttl=600, prefix=24)

    r = run(StaticRules(banner))
    assert r.enforcer.calls == [("ban", "192.0.2.0/24", 600)]
    (drop,) = r.sink.of("drop")
    check(drop)
    assert (drop["action"], drop["target"], drop["ttl"], drop["rule_id"]) == ("ban_source", "192.0.2.0/24", 600, "t.banner")
    assert seen == ["EHLO", "MAIL"] and r.engine.counters.bans == 1
    v = r.enforcer.verdicts
    assert v.banned("192.0.2.200", drop["ts"]) and not v.banned("192.0.3.1", drop["ts"])
    assert not v.banned("192.0.2.200", drop["ts"] + 601)


def test_ban_source_without_prefix_bans_the_address_alone():
    @rule(hooks.connection, id="t.banner")
    def banner(flow):
        flow.ban_source()

    r = run(StaticRules(banner))
    assert r.enforcer.calls == [("ban", "192.0.2.10/32", 3600.0)]


def test_bypass_asks_the_enforcer_once_and_rules_stop_seeing_the_flow():
    seen = []

    @rule(hooks.command, id="t.bypasser")
    def bypasser(flow, command):
        seen.append(command.verb)
        if command.verb == "EHLO":
            flow.bypass()
            flow.bypass()

    r = run(StaticRules(bypasser))
    (smtp,) = r.sink.of("smtp")
    assert r.enforcer.calls == [("bypass", smtp["uid"], 3600.0)]
    assert seen == ["EHLO"]
    assert r.sink.of("drop") == []


def test_a_streamed_rule_can_alert_and_drop_mid_message():
    @rule(hooks.mail_content, id="t.scanner", streamed=True)
    async def scanner(flow, content):
        async for chunk in content:
            if b"abcdef" in chunk:
                alert(description="pattern in content", severity="high", offset=content.offset)
                flow.drop()
                return

    @rule(hooks.message_end, id="t.end")
    def end(flow, end):
        alert(description="not reached", severity="low")

    r = run(StaticRules(scanner, end), content_chunk=256, cut=100)
    (a,) = r.sink.of("alert")
    check(a)
    assert a["alert"]["signature_id"] == "t.scanner" and a["alert"]["metadata"] == {"offset": 256}
    (drop,) = r.sink.of("drop")
    assert drop["rule_id"] == "t.scanner"


def test_a_stream_cut_short_by_a_drop_is_closed_in_its_rule_context():
    """When the flow is dropped mid-message by another rule, a streamed rule's
    ``finally`` runs at the end of the connection, as its rule: it may alert,
    and an exception there is a rule error, not an engine failure."""
    @rule(hooks.mail_content, id="t.dropper", streamed=True)
    async def dropper(flow, content):
        async for chunk in content:
            flow.drop()

    @rule(hooks.mail_content, id="t.last_words", streamed=True)
    async def last_words(flow, content):
        n = 0
        try:
            async for chunk in content:
                n += len(chunk)
        finally:
            alert(description="stream cut", severity="low", read=n)

    @rule(hooks.mail_content, id="t.broken_finally", streamed=True)
    async def broken_finally(flow, content):
        try:
            async for chunk in content:
                pass
        finally:
            raise KeyError("cleanup bug")

    r = run(StaticRules(dropper, last_words, broken_finally), content_chunk=256, cut=100)
    (a,) = r.sink.of("alert")
    assert a["alert"]["signature_id"] == "t.last_words" and a["alert"]["metadata"] == {"read": 0}
    assert r.engine.counters.errors == 1 and broken_finally.__rule__.counters.errors == 1


# ---------------------------------------------------------------- reload

STREAM_RULE = '''
from sensor.rules import alert, hooks, rule

@rule(hooks.mail_content, id="reload.stream", rev={rev}, streamed=True)
async def stream(flow, content):
    n = 0
    async for chunk in content:
        n += len(chunk)
    alert(description="{version}", severity="low", octets=n)
'''


def test_a_stream_running_during_a_reload_finishes_on_the_code_it_started_with(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    path = write(rules / "stream.py", STREAM_RULE.format(rev=1, version="v1"))
    ruleset = RuleSet(rules)
    body = b"Subject: reload\r\n\r\n" + b"w" * 3000 + b"\r\n"
    segments = session_segments(message_dialogue(body, messages=2), cut=200)
    first = next(i for i, s in enumerate(segments) if s.payload.startswith(b"Subject: reload"))
    r = Run(ruleset, content_chunk=256)
    r.feed(segments[:first + 5])                          # the first message is streaming
    write(path, STREAM_RULE.format(rev=2, version="v2"))
    assert ruleset.poll() and ruleset.for_hook(hooks.mail_content)[0].rev == 2
    r.feed(segments[first + 5:]).finish()
    assert [(a["signature"], a["rev"], a["metadata"]["octets"]) for a in r.alerts()] == [
        ("v1", 1, len(body)), ("v2", 2, len(body))]
    assert r.engine.counters.errors == 0


def test_flow_state_survives_a_reload(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    v1 = '''
    from sensor.rules import hooks, rule

    @rule(hooks.command, id="state.remember")
    def remember(flow, command):
        if command.verb == "MAIL":
            flow.scratch["mail_seen_by"] = "v1"
    '''
    v2 = '''
    from sensor.rules import alert, hooks, rule

    @rule(hooks.command, id="state.remember")
    def remember(flow, command):
        if command.verb == "RCPT":
            alert(description="v2", severity="low", by=flow.scratch.get("mail_seen_by"),
                  sender=flow.transaction.mailfrom, depth=flow.transaction.depth)
    '''
    path = write(rules / "state.py", v1)
    ruleset = RuleSet(rules)
    segments = session_segments(DIALOGUE)
    mail = next(i for i, s in enumerate(segments) if s.payload.startswith(b"MAIL"))
    r = Run(ruleset).feed(segments[:mail + 1])
    write(path, v2)
    assert ruleset.poll()
    r.feed(segments[mail + 1:]).finish()
    assert [a["metadata"] for a in r.alerts()] == [
        {"by": "v1", "sender": "alice@example.org", "depth": 1}] * 2


def test_a_rule_removed_by_a_reload_is_not_called_any_more(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    path = write(rules / "gone.py", '''
    from sensor.rules import alert, hooks, rule

    @rule(hooks.command, id="gone.cmd")
    def cmd(flow, command):
        alert(description=command.verb, severity="low")
    ''')
    ruleset = RuleSet(rules)
    segments = session_segments(DIALOGUE)
    mail = next(i for i, s in enumerate(segments) if s.payload.startswith(b"MAIL"))
    r = Run(ruleset).feed(segments[:mail + 1])
    path.unlink()
    assert ruleset.poll()
    r.feed(segments[mail + 1:]).finish()
    assert [a["signature"] for a in r.alerts()] == ["EHLO", "MAIL"]


def test_rule_flow_is_what_rules_get():
    got = []

    @rule(hooks.connection, id="t.type")
    def kind(flow):
        got.append(isinstance(flow, RuleFlow))

    run(StaticRules(kind))
    assert got == [True]
