"""sensor.rules.api: what a rule file sees.  ``@rule`` refuses a wrong
declaration at import; ``alert()`` only works inside a rule, checks its
severity and confidence, and writes a Suricata EVE-shaped record with Haka's
fields; ``search()`` never looks past MATCH_LIMIT characters."""

from __future__ import annotations

import re
import time

import pytest

from sensor.rules import MATCH_LIMIT, SEVERITIES, Hook, RuleError, alert, api, hooks, rule, search
from sensor.rules.loader import RuleSet
from support.record_schemas import check
from support.rules_helpers import CLIENT_IP, SERVER_IP, StaticRules, run, write

# ---------------------------------------------------------------- @rule and hooks

def test_hooks_are_listed_in_the_order_they_fire_and_only_content_and_attachments_stream():
    assert [h.name for h in hooks.ALL] == ["connection", "command", "response", "auth", "mail_content", "lenient_terminator",
                                           "attachment", "url", "message_end", "transaction", "anomaly",
                                           "connection_end"]
    assert [h.name for h in hooks.ALL if h.streamable] == ["mail_content", "attachment"]
    assert all(isinstance(h, Hook) for h in hooks.ALL)


def test_rule_records_its_declaration_on_the_function():
    def plain(flow, command):
        pass

    declared = rule(hooks.command, id="api.plain", rev=3, budget_ms=2.5)(plain)
    assert declared is plain
    r = plain.__rule__
    assert (r.hook, r.id, r.rev, r.streamed, r.budget_ms, r.content_cap) == (
        hooks.command, "api.plain", 3, False, 2.5, 1 << 20)
    assert r.file == __file__ and r.line == plain.__code__.co_firstlineno

    @rule(hooks.response)
    def unnamed(flow, reply):
        pass

    # the default id is <file stem>.<function name>
    assert unnamed.__rule__.id == "test_rules_api.unnamed"


@pytest.mark.parametrize("declare, message", [
    (lambda: rule("command"), "rule hook must be one of sensor.rules.hooks (connection, command"),
    (lambda: rule(hooks.command, streamed=True), "only hooks.mail_content and hooks.attachment can be streamed"),
])
def test_a_wrong_hook_or_stream_is_refused(declare, message):
    with pytest.raises(RuleError, match=re.escape(message)):
        declare()


def test_a_streamed_rule_must_be_async_and_only_a_streamed_rule_may_be():
    with pytest.raises(RuleError, match="must be 'async def sync_stream"):
        @rule(hooks.mail_content, streamed=True)
        def sync_stream(flow, content):
            pass

    with pytest.raises(RuleError, match="'async def': only a streamed mail_content or attachment rule"):
        @rule(hooks.command)
        async def async_command(flow, command):
            pass

    with pytest.raises(RuleError, match="'async def'"):
        @rule(hooks.mail_content)
        async def async_but_not_streamed(flow, content):
            pass


# ---------------------------------------------------------------- alert()

def test_alert_outside_a_rule_is_a_rule_error():
    with pytest.raises(RuleError, match="alert\\(\\) called outside a rule evaluation"):
        alert(description="nobody is evaluating", severity="low")


def test_alert_at_import_of_a_rule_file_is_a_load_error(tmp_path):
    path = write(tmp_path / "early.py", '''
    from sensor.rules import alert
    alert(description="too early", severity="low")
    ''')
    rs = RuleSet(tmp_path)
    assert rs.errors[path].startswith(f"{path}:3: RuleError: alert() called outside a rule evaluation")


@pytest.mark.parametrize("kw", [{"severity": "critical"}, {"severity": "LOW"},
                                {"severity": "low", "confidence": "certain"}])
def test_alert_with_a_bad_severity_or_confidence_is_a_rule_error_and_the_others_still_run(kw):
    ran = []

    @rule(hooks.command, id="api.bad_alert")
    def bad_alert(flow, command):
        if command.verb == "MAIL":
            alert(description="bad", **kw)

    @rule(hooks.command, id="api.next")
    def after(flow, command):
        ran.append(command.verb)

    r = run(StaticRules(bad_alert, after))
    assert r.sink.of("alert") == [] and r.engine.counters.alerts == 0
    assert r.engine.counters.errors == 1 and bad_alert.__rule__.counters.errors == 1
    ((_, logged),) = r.logger.of("error")
    assert "RuleError: " in logged["traceback"] and logged["rule"] == "api.bad_alert"
    assert "MAIL" in ran


def test_the_alert_record_is_an_eve_alert_with_hakas_fields():
    returned = []

    @rule(hooks.command, id="api.full", rev=4)
    def full(flow, command):
        if command.verb == "RCPT":
            returned.append(alert(description="forbidden recipient", severity="high",
                                  confidence="medium", method="recipient list",
                                  sources=["mallory"], targets=("bob@example.net",),
                                  ref="CVE-0000-0001", list_name="blocked", hits=2))

    r = run(StaticRules(full))
    (smtp,) = r.sink.of("smtp")
    first, second = r.sink.of("alert")
    assert returned == [first, second]
    for record in (first, second):
        check(record)
    assert first == {
        "ts": first["ts"], "event_type": "alert", "uid": smtp["uid"],
        "src_ip": CLIENT_IP, "src_port": 40000, "dest_ip": SERVER_IP, "dest_port": 25, "proto": "TCP",
        "community_id": smtp["community_id"],
        "alert": {"signature_id": "api.full", "rev": 4, "signature": "forbidden recipient",
                  "severity": "high", "confidence": "medium", "method": "recipient list",
                  "sources": ["mallory"], "targets": ["bob@example.net"], "ref": ["CVE-0000-0001"],
                  "metadata": {"list_name": "blocked", "hits": 2}},
        # what the transaction held when the alert was raised
        "smtp": {"helo": "client.example", "mail_from": "alice@example.org", "rcpt_to": ["bob@example.net"]},
    }
    assert second["smtp"]["rcpt_to"] == ["bob@example.net", "nobody@example.net"]
    # ts: the moment of the event the rule was called for (the RCPT's segment)
    assert 100.0 < first["ts"] < second["ts"] < smtp["ts"] + 1
    assert r.engine.counters.alerts == full.__rule__.counters.alerts == 2


def test_a_minimal_alert_defaults_to_the_client_and_the_server():
    @rule(hooks.connection, id="api.minimal")
    def minimal(flow):
        alert(description="hello")

    r = run(StaticRules(minimal))
    (record,) = r.sink.of("alert")
    check(record)
    assert record["alert"] == {"signature_id": "api.minimal", "rev": 1, "signature": "hello",
                               "severity": "medium", "sources": [CLIENT_IP], "targets": [SERVER_IP]}
    assert record["smtp"] == {}               # no HELO yet, no transaction


def test_severities_are_hakas_three():
    assert SEVERITIES == ("low", "medium", "high")


# ---------------------------------------------------------------- search()

def test_search_looks_at_most_match_limit_characters():
    assert MATCH_LIMIT == 1024
    line = "x" * (MATCH_LIMIT - 6) + "needle" + "y" * 10
    assert search("needle", line).group() == "needle"
    late = "x" * MATCH_LIMIT + "needle"
    assert search("needle", late) is None
    assert search("needle", late, limit=len(late)).group() == "needle"
    assert search(rb"NEEDLE", b"a NEEDLE", re.I).start() == 2
    assert search(re.compile("e+d"), "needle").group() == "eed"


def test_search_with_a_catastrophic_pattern_on_a_100_kB_line_returns_quickly():
    # (a+)+$ backtracks exponentially on "aaa...a!" of any length it must
    # fail on; cut at MATCH_LIMIT the "!" is never reached and $ matches at
    # the cut, at once.  Uncut, this search would not end.
    line = "a" * 100_000 + "!"
    started = time.perf_counter()
    match = search(r"(a+)+$", line)
    assert time.perf_counter() - started < 0.5
    assert match.span() == (0, MATCH_LIMIT)


def test_search_keeps_a_bounded_number_of_compiled_patterns():
    for i in range(3 * api._COMPILED_MAX):
        search(re.escape(f"sender{i}@example.org"), "text")
    assert 0 < len(api._compiled) <= api._COMPILED_MAX
