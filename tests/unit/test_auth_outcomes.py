"""AUTH outcomes: how each exchange ended (sensor.smtp.auth), the smtp record's
``auth_*`` fields, ``hooks.auth`` with ``flow.auth``, and the shipped brute
force rule (rules/auth_bruteforce.py)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from sensor.pipeline import Pipeline
from sensor.records.sinks import ListSink
from sensor.rules import hooks, rule
from sensor.rules.loader import RuleSet
from sensor.smtp import AuthEvent
from sensor.smtp import auth as A
from support.record_schemas import check
from support.rules_helpers import StaticRules, run
from support.sessions import session_segments
from support.smtp_helpers import GREETING, dialogue, of

REPO = Path(__file__).resolve().parents[2]
SECRET = b"hunter2-Sekr3t"
PLAIN = base64.b64encode(b"\0alice\0" + SECRET)


def ended(*turns) -> list[AuthEvent]:
    return of(dialogue(("S", GREETING), *turns), AuthEvent)


# ---------------------------------------------------------------- outcomes

@pytest.mark.parametrize("reply, result", [
    (b"235 2.7.0 Authentication successful\r\n", "success"),
    (b"535 5.7.8 Authentication credentials invalid\r\n", "failure"),
    (b"454 4.7.0 Temporary authentication failure\r\n", "temporary"),
    (b"534 5.7.9 Authentication mechanism is too weak\r\n", "refused"),
    (b"538 5.7.11 Encryption required\r\n", "refused"),
    (b"554 5.7.0 no\r\n", "failure"),
])
def test_the_final_reply_of_an_exchange_names_its_outcome(reply, result):
    (a,) = ended(("C", b"AUTH PLAIN " + PLAIN + b"\r\n"), ("S", reply))
    assert (a.mechanism, a.code, a.outcome, a.cancelled) == ("PLAIN", int(reply[:3]), result, False)
    assert a.success is (result == "success")


def test_an_unknown_mechanism_is_refused_not_a_failed_login():
    (a,) = ended(("C", b"AUTH FOO\r\n"), ("S", b"504 5.5.4 Unrecognized authentication type\r\n"))
    assert (a.mechanism, a.outcome) == ("FOO", "refused")


def test_a_334_answered_with_a_star_is_cancelled():
    (a,) = ended(("C", b"AUTH LOGIN\r\n"), ("S", b"334 VXNlcm5hbWU6\r\n"),
                 ("C", b"*\r\n"), ("S", b"501 5.7.0 Authentication cancelled\r\n"))
    assert (a.outcome, a.cancelled, a.rounds, a.code) == ("cancelled", True, 1, 501)


def test_a_star_inside_an_answer_is_not_a_cancel():
    (a,) = ended(("C", b"AUTH LOGIN\r\n"), ("S", b"334 VXNlcm5hbWU6\r\n"),
                 ("C", b"Kg*=\r\n"), ("S", b"535 5.7.8 no\r\n"))
    assert (a.outcome, a.cancelled) == ("failure", False)


def test_an_exchange_whose_reply_never_came_is_unanswered():
    (a,) = ended(("C", b"AUTH PLAIN " + PLAIN + b"\r\n"))
    assert (a.code, a.outcome) == (None, "unanswered")


def test_the_classification_of_codes():
    assert [A.outcome(c) for c in (235, 535, 454, 432, 504, 503, 530, 500)] == \
        ["success", "failure", "temporary", "temporary", "refused", "refused", "refused", "refused"]
    assert A.outcome(501, cancelled=True) == "cancelled" and A.outcome(None) == "unanswered"
    assert A.FAILED == {"failure", "temporary"}


# ---------------------------------------------------------------- the record

def attempts(replies, *, then_mail=True):
    """A dialogue of one AUTH PLAIN per reply in ``replies``, then a transaction."""
    d = [(False, b"220 mx\r\n"), (True, b"EHLO c.example\r\n"), (False, b"250-mx\r\n250 AUTH PLAIN LOGIN\r\n")]
    for reply in replies:
        d += [(True, b"AUTH PLAIN " + PLAIN + b"\r\n"), (False, reply)]
    if then_mail:
        d += [(True, b"MAIL FROM:<alice@example.org>\r\n"), (False, b"250 ok\r\n"),
              (True, b"RCPT TO:<bob@example.net>\r\n"), (False, b"250 ok\r\n")]
    return d + [(True, b"QUIT\r\n"), (False, b"221 bye\r\n")]


def records_of(d, sport=587):
    sink = ListSink()
    pipe = Pipeline(sink)
    for i, seg in enumerate(session_segments(d, sport=sport)):
        pipe.feed_segment(seg, 100.0 + i * 0.01)
    pipe.finish()
    return sink, pipe


def test_the_smtp_record_carries_the_connection_auth_outcomes():
    sink, pipe = records_of(attempts([b"535 5.7.8 bad\r\n", b"454 4.7.0 later\r\n", b"235 2.7.0 ok\r\n"]))
    (rec,) = sink.of("smtp")
    check(rec)
    assert {k: v for k, v in rec.items() if k.startswith("auth_")} == {
        "auth_success": True, "auth_result": "success", "auth_mechanism": "PLAIN", "auth_code": 235,
        "auth_attempts": 3, "auth_failures": 2}
    assert pipe.counters.auth == {"failure": 1, "temporary": 1, "success": 1}
    assert SECRET.decode() not in repr(list(sink)) and PLAIN.decode() not in repr(list(sink))


def test_failed_auth_before_a_transaction_says_it_failed():
    sink, _ = records_of(attempts([b"535 5.7.8 bad\r\n"]))
    (rec,) = sink.of("smtp")
    check(rec)
    assert (rec["auth_success"], rec["auth_result"], rec["auth_failures"]) == (False, "failure", 1)


def test_a_connection_that_only_fails_auth_has_its_record_with_the_failures():
    # no mail transaction: the connection's one record (steps []) carries them
    sink, _ = records_of(attempts([b"535 5.7.8 bad\r\n"] * 3, then_mail=False))
    (rec,) = sink.of("smtp")
    check(rec)
    assert (rec["steps"], rec["auth_attempts"], rec["auth_failures"], rec["auth_success"]) == ([], 3, 3, False)


def test_no_auth_no_auth_fields():
    sink, _ = records_of(attempts([]))
    (rec,) = sink.of("smtp")
    assert not [k for k in rec if k.startswith("auth_")]


# ---------------------------------------------------------------- hooks.auth

def test_hooks_auth_sees_each_exchange_with_the_connection_tally():
    seen = []

    @rule(hooks.auth, id="t.auth")
    def on_auth(flow, auth):
        seen.append((auth.outcome, auth.code, flow.auth.attempts, flow.auth.failures, flow.auth.success))

    run(StaticRules(on_auth), attempts([b"535 5.7.8 bad\r\n", b"535 5.7.8 bad\r\n", b"235 2.7.0 ok\r\n"]))
    assert seen == [("failure", 535, 1, 1, False), ("failure", 535, 2, 2, False), ("success", 235, 3, 2, True)]


# ---------------------------------------------------------------- the shipped rule

def shipped(tmp_path, **settings):
    """The shipped rules folder with [auth_bruteforce] settings changed."""
    import shutil
    folder = tmp_path / f"rules{len(list(tmp_path.iterdir()))}"
    shutil.copytree(REPO / "rules", folder)
    toml = (folder / "rules.toml").read_text()
    for key, value in settings.items():      # numbers only
        toml = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", toml)
    (folder / "rules.toml").write_text(toml)
    return RuleSet(folder)


def brute_alerts(sink):
    return [a for a in (r["alert"] for r in sink.of("alert")) if a["signature_id"].startswith("auth_bruteforce.")]


def connections(pipe, n, replies, *, sport=587, client="192.0.2.10", spacing=1.0, start=1000.0):
    for k in range(n):
        segs = session_segments(attempts(replies, then_mail=False), cport=41000 + k, sport=sport, client=client)
        for i, seg in enumerate(segs):
            pipe.feed_segment(seg, start + k * spacing + i * 0.001)
    pipe.finish()


def userland_pipe(ruleset):
    from sensor.rules.enforce import ReplayEnforcer
    from sensor.rules.engine import RuleEngine
    sink = ListSink()
    engine = RuleEngine(ruleset, sink, ReplayEnforcer())
    return sink, Pipeline(sink, listeners=[engine])


def test_many_failures_in_one_connection_raise_one_alert(tmp_path):
    sink, pipe = userland_pipe(shipped(tmp_path))
    connections(pipe, 1, [b"535 5.7.8 bad\r\n"] * 5)
    (a,) = brute_alerts(sink)
    assert a["signature_id"] == "auth_bruteforce.connection" and a["severity"] == "high"
    assert "3 failed AUTH PLAIN exchanges" in a["signature"]
    assert SECRET.decode() not in repr(list(sink))


def test_failures_spread_over_connections_raise_the_client_alert_once_per_window(tmp_path):
    sink, pipe = userland_pipe(shipped(tmp_path, per_client=10, window=600))
    connections(pipe, 25, [b"535 5.7.8 bad\r\n"], spacing=10.0)     # spraying: one try each
    (a,) = brute_alerts(sink)
    assert a["signature_id"] == "auth_bruteforce.client"
    assert "10 failed AUTH exchanges from 192.0.2.10 in 10 connections" in a["signature"]
    assert a["metadata"]["connections"] == 10 and len(a["metadata"]["samples"]) == 5


def test_failures_slower_than_the_window_raise_nothing(tmp_path):
    sink, pipe = userland_pipe(shipped(tmp_path, per_client=3, window=60))
    connections(pipe, 10, [b"535 5.7.8 bad\r\n"], spacing=31.0)     # at most 2 per 60 s
    assert brute_alerts(sink) == []


def test_other_ports_successes_and_refusals_do_not_count(tmp_path):
    sink, pipe = userland_pipe(shipped(tmp_path, per_client=2))
    connections(pipe, 5, [b"535 5.7.8 bad\r\n"] * 4, sport=25)
    assert brute_alerts(sink) == []
    sink, pipe = userland_pipe(shipped(tmp_path, per_client=2))
    connections(pipe, 5, [b"504 5.5.4 unknown\r\n"] * 4 + [b"235 2.7.0 ok\r\n"])
    assert brute_alerts(sink) == []
