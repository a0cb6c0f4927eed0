"""sensor.spamstats: the Bro reject statistics (seed 004), with a controlled clock.

Each notice type; both sides of both thresholds; suppression; fixed and
sliding windows; no window escapes evaluation; caps and eviction counts;
bans (allow list, StrangeRejectBehavior off by default); snapshots (round
trip, atomicity, corrupt files set aside); and the pipeline listener on
synthetic SMTP sessions.
"""

from __future__ import annotations

import ipaddress
import os

import msgpack
import pytest

from sensor.config import SpamStatsConfig
from sensor.kernel import abi
from sensor.pipeline import Pipeline
from sensor.records.notice import notice_record
from sensor.records.sinks import ListSink
from sensor.rules.enforce import ReplayEnforcer
from sensor.spamstats import (
    POSSIBLE_INTERNAL_SPAM,
    POSSIBLE_SPAM,
    STRANGE_REJECT_BEHAVIOR,
    ConnState,
    RejectStats,
    RejectStatsListener,
    SnapshotError,
    SpamStatsActor,
    read_snapshot,
    write_snapshot,
)
from support.record_schemas import check as check_schema

T0 = 1_700_000_000.0       # a wall-clock epoch; the windows below start here
REMOTE = "203.0.113.9"
LOCAL = "192.0.2.20"
MAILSERVER = "198.51.100.25"


class Clock:
    """A controlled clock: ``clock()`` is ``t``; ``wall`` may run apart (monotonic domain)."""

    def __init__(self, t=T0):
        self.t = t

    def __call__(self):
        return self.t


def make(clock=None, wall=None, **kw) -> RejectStats:
    base = dict(threshold=10, percent=30, period=3600, local_mail=[MAILSERVER + "/32"],
                local_networks=["192.0.2.0/24", "198.51.100.0/24"])
    base.update(kw)
    clock = clock or Clock()
    return RejectStats(SpamStatsConfig(**base), clock=clock, wall=wall or clock)


def connection(stats, host, ts, rejected: bool, rcpts=(), text="No such user", uid=None):
    """One SMTP connection: greeting, optional RCPTs, then a 550 or a 250."""
    conn = ConnState()
    stats.observe_reply(host, ts, 220, conn, text="mx ESMTP", uid=uid)
    for r in rcpts:
        stats.observe_recipient(host, r, conn)
    if rejected:
        stats.observe_reply(host, ts, 550, conn, enhanced="5.1.1", text=text, uid=uid)
    else:
        stats.observe_reply(host, ts, 250, conn, enhanced="2.1.5", text="Ok", uid=uid)
    return conn


def burst(stats, host, ts, total, rejects, step=0.0, **kw):
    for i in range(total):
        connection(stats, host, ts + i * step, i < rejects, **kw)


# ---------------------------------------------------------------- counting

def test_a_connection_counts_once_in_total_and_once_in_rejects():
    stats = make()
    conn = ConnState()
    for code in (220, 250, 550, 250, 550, 554, 221):
        stats.observe_reply(REMOTE, T0, code, conn)
    assert stats.counts(REMOTE) == (1, 1)
    connection(stats, REMOTE, T0 + 1, rejected=False)
    assert stats.counts(REMOTE) == (2, 1)
    assert stats.counters.replies == 9 and stats.counters.connections == 2


def test_reject_codes_are_configurable():
    stats = make(reject_codes=[450])
    conn = ConnState()
    stats.observe_reply(REMOTE, T0, 550, conn)
    assert stats.counts(REMOTE) == (1, 0)
    stats.observe_reply(REMOTE, T0, 450, conn)
    assert stats.counts(REMOTE) == (1, 1)


def test_recipients_of_rejected_connections_only_before_and_after_the_reject():
    stats = make()
    connection(stats, LOCAL, T0, rejected=False, rcpts=["ok@example.net"])
    conn = connection(stats, LOCAL, T0, rejected=True, rcpts=["a@example.net", "b@example.net"])
    stats.observe_recipient(LOCAL, "c@example.net", conn)      # after the reject, same connection
    assert stats.recipients(LOCAL) == ["a@example.net", "b@example.net", "c@example.net"]


# ---------------------------------------------------------------- thresholds

@pytest.mark.parametrize("total,expected", [(299, 0), (300, 1)])
def test_threshold_boundary_with_the_seed_defaults(total, expected):
    stats = RejectStats(SpamStatsConfig(), clock=Clock())
    burst(stats, REMOTE, T0, total, total)         # every connection rejected
    assert len(stats.check(T0 + 10)) == expected


@pytest.mark.parametrize("total,rejects,percent,expected", [
    (300, 89, 29, 0),      # 29.67 % rounds down to 29: below 30
    (300, 90, 30, 1),
    (301, 90, 29, 0),      # 29.9 %
    (310, 93, 30, 1),      # exactly 30 %
    (1000, 299, 29, 0),
])
def test_percent_boundary_with_integer_arithmetic(total, rejects, percent, expected):
    stats = RejectStats(SpamStatsConfig(), clock=Clock())
    burst(stats, REMOTE, T0, total, rejects)
    notices = stats.check(T0 + 10)
    assert len(notices) == expected
    if notices:
        assert notices[0].percent == percent == rejects * 100 // total
        assert notices[0].msg == f"{REMOTE} - sent: {total} rejected: {percent} percent"


# ---------------------------------------------------------------- notice types

def test_each_notice_type_and_its_message():
    stats = make()
    burst(stats, REMOTE, T0, 10, 5, rcpts=["x@example.net"])
    burst(stats, LOCAL, T0, 10, 5, rcpts=["victim1@example.org", "victim2@example.org"])
    burst(stats, MAILSERVER, T0, 10, 5)
    notices = {n.src: n for n in stats.check(T0 + 1)}
    assert notices[REMOTE].note == POSSIBLE_SPAM
    assert notices[REMOTE].msg == f"{REMOTE} - sent: 10 rejected: 50 percent"
    assert notices[LOCAL].note == POSSIBLE_INTERNAL_SPAM
    assert notices[LOCAL].msg == (f"{LOCAL} - sent: 10 rejected: 50 percent "
                                  "mailto: victim1@example.org,victim2@example.org")
    # local_mail wins over local_networks (198.51.100.0/24 is local too)
    assert notices[MAILSERVER].note == STRANGE_REJECT_BEHAVIOR
    assert notices[MAILSERVER].msg == f"{MAILSERVER} - sent: 10 rejected: 50 percent"
    n = notices[REMOTE]
    assert (n.total, n.rejects, n.window, n.suppress_for) == (10, 5, "fixed", 3600)
    assert n.samples[0].code == 550 and n.samples[0].enhanced == "5.1.1" and n.samples[0].count == 5
    assert n.sub == "Sampled rejects: 550 5.1.1 No such user (x5)"


def test_notice_record_matches_its_schema():
    stats = make()
    burst(stats, LOCAL, T0, 10, 10, rcpts=["v@example.org"], uid="CAbc123")
    (n,) = stats.check(T0 + 1)
    rec = notice_record(n, actions=["ban"], ban_ttl=3600.0)
    assert list(rec)[:2] == ["ts", "event_type"] and rec["event_type"] == "notice"
    assert rec["note"] == POSSIBLE_INTERNAL_SPAM and rec["src"] == LOCAL and rec["n"] == 10
    assert rec["recipients"] == ["v@example.org"] and rec["samples"][0]["uid"] == "CAbc123"
    check_schema(rec)
    check_schema(notice_record(n))


# ---------------------------------------------------------------- suppression

def test_one_notice_per_host_per_suppression_period():
    stats = make(check_interval=600)
    burst(stats, REMOTE, T0, 10, 10)
    assert [n.ts for n in stats.tick(T0 + 600)] == [T0 + 600]
    burst(stats, REMOTE, T0 + 700, 5, 5)               # new evidence, still suppressed
    assert stats.tick(T0 + 1200) == []
    assert stats.counters.suppressed == 1
    assert stats.tick(T0 + 3599) == []                 # nothing changed: not even evaluated again


def test_new_evidence_after_the_suppression_period_raises_again():
    stats = make(check_interval=600, suppress_for=900, period=7200)
    burst(stats, REMOTE, T0, 10, 10)
    assert len(stats.tick(T0 + 600)) == 1
    burst(stats, REMOTE, T0 + 1000, 1, 1)
    assert stats.tick(T0 + 1200) == []                 # 1200 < 600 + 900
    burst(stats, REMOTE, T0 + 1300, 1, 1)
    (again,) = stats.tick(T0 + 1800)
    assert again.total == 12


def test_unchanged_counts_never_raise_twice_even_without_suppression():
    # the seed re-noticed at every check; with suppress_for = 0 only new evidence does
    stats = make(check_interval=600, suppress_for=0, period=7200)
    burst(stats, REMOTE, T0, 10, 10)
    assert len(stats.tick(T0 + 600)) == 1
    assert stats.tick(T0 + 1800) == []
    burst(stats, REMOTE, T0 + 1900, 1, 1)
    assert len(stats.tick(T0 + 2400)) == 1


# ---------------------------------------------------------------- windows

def test_fixed_window_from_first_sighting_then_a_new_one():
    stats = make()
    burst(stats, REMOTE, T0 + 100, 9, 9)
    assert stats.counts(REMOTE, T0 + 3699) == (9, 9)
    assert stats.counts(REMOTE, T0 + 3700) == (0, 0)      # closed 3600 s after the first reply
    burst(stats, REMOTE, T0 + 3800, 9, 9)                  # 18 in an hour, but two windows
    assert stats.counts(REMOTE) == (9, 9)
    assert stats.tick(T0 + 10_000) == []
    assert stats.counters.windows_closed == 2


def test_no_window_escapes_evaluation():
    """The seed: checker every period, entries expire a period after creation.
    A host first seen mid-period is checked once with partial data, and what
    it does after that check is never looked at.  Here its window is
    evaluated when it closes."""
    stats = make()
    stats.tick(T0)                                   # checks at T0+3600, T0+7200, ...
    burst(stats, REMOTE, T0 + 1800, 5, 5)            # window T0+1800 .. T0+5400
    assert stats.tick(T0 + 3600) == []               # the periodic check: 5 < 10
    burst(stats, REMOTE, T0 + 4000, 10, 10)
    (n,) = stats.tick(T0 + 7200)                     # the seed's entry is gone by now
    assert (n.total, n.rejects, n.ts) == (15, 15, T0 + 5400)
    assert (n.window_start, n.window_end) == (T0 + 1800, T0 + 5400)


def test_outcome_does_not_depend_on_how_often_tick_is_called():
    def run(ticks):
        stats = make(check_interval=900)
        out = []
        for k in range(40):
            t = T0 + k * 250
            burst(stats, REMOTE, t, 1, k % 2)
            burst(stats, LOCAL, t, 1, 1 if k > 20 else 0)
            if k % ticks == 0:
                out += stats.tick(t)
        out += stats.tick(T0 + 20_000)
        return out

    once = run(10_000)
    assert once and run(1) == once and run(7) == once


def test_a_window_ending_is_seen_when_the_next_reply_arrives_without_any_tick():
    stats = make()
    burst(stats, REMOTE, T0, 10, 10)
    burst(stats, REMOTE, T0 + 4000, 1, 0)            # first reply after the window closed
    (n,) = stats.drain()
    assert n.ts == T0 + 3600 and n.total == 10


def test_sliding_window_sees_a_burst_across_the_fixed_windows_edge():
    def run(window):
        stats = make(window=window, sliding_buckets=4, percent=50)
        burst(stats, REMOTE, T0, 1, 0)                # opens the fixed window T0 .. T0+3600
        burst(stats, REMOTE, T0 + 3000, 6, 6)
        burst(stats, REMOTE, T0 + 3700, 6, 6)
        return stats.tick(T0 + 4000) + stats.tick(T0 + 20_000)

    assert run("fixed") == []
    (n,) = run("sliding")
    assert (n.total, n.rejects, n.window) == (12, 12, "sliding")


def test_sliding_window_forgets_buckets_older_than_the_period():
    stats = make(window="sliding", sliding_buckets=4)      # buckets of 900 s
    t = 900 * 2_000_000.0                                  # a bucket boundary
    burst(stats, REMOTE, t, 3, 1)
    burst(stats, REMOTE, t + 1000, 2, 2)
    assert stats.counts(REMOTE, t + 3599) == (5, 3)
    assert stats.counts(REMOTE, t + 3600) == (2, 2)        # the first bucket slid out
    assert stats.counts(REMOTE, t + 4500) == (0, 0)
    assert REMOTE not in stats


def test_sliding_window_is_evaluated_as_each_bucket_slides_out():
    # a share that only crosses the threshold while the window slides: never
    # at a periodic check (one every 3 hours), yet raised
    stats = make(window="sliding", sliding_buckets=4, check_interval=3 * 3600, percent=50)
    t = 900 * 2_000_000.0
    stats.tick(t)
    burst(stats, REMOTE, t, 10, 0)          # bucket 0: 10 accepted
    burst(stats, REMOTE, t + 2000, 10, 10)  # bucket 2: 10 rejected -> 50 % of 20 ...
    burst(stats, REMOTE, t + 3000, 1, 0)    # ... 47 % of 21
    notices = stats.tick(t + 5000)          # bucket 0 slides out at t+3600: 10 of 11
    assert [(n.total, n.rejects, n.ts) for n in notices] == [(11, 10, t + 3600)]


def test_a_connection_across_two_fixed_windows_counts_in_both():
    stats = make()
    conn = ConnState()
    stats.observe_reply(REMOTE, T0, 220, conn)
    stats.observe_reply(REMOTE, T0 + 4000, 550, conn)          # the first window has closed
    assert stats.counts(REMOTE) == (1, 1)


# ---------------------------------------------------------------- caps

def test_max_hosts_evicts_the_least_active_and_evaluates_it_first():
    stats = make(max_hosts=3, threshold=2)
    burst(stats, "203.0.113.1", T0, 5, 0)
    burst(stats, "203.0.113.2", T0 + 1, 2, 2)        # qualifies, never checked yet
    burst(stats, "203.0.113.3", T0 + 2, 5, 0)
    burst(stats, "203.0.113.4", T0 + 3, 1, 0)        # a fourth host: one must go
    assert stats.counters.hosts_evicted == 1
    assert "203.0.113.2" not in stats and len(stats) == 3
    (n,) = stats.drain()                              # evaluated on its way out
    assert n.src == "203.0.113.2" and n.total == 2


def test_recipient_and_sample_caps_are_counted():
    stats = make(max_recipients=2, max_samples=2)
    conn = ConnState()
    for r in ["a@x", "b@x", "c@x"]:
        stats.observe_recipient(REMOTE, r, conn)
    stats.observe_reply(REMOTE, T0, 550, conn, enhanced="5.1.1", text="no such user a")
    stats.observe_reply(REMOTE, T0, 550, conn, enhanced="5.1.1", text="no such user a")
    stats.observe_reply(REMOTE, T0, 553, conn, text="bad mailbox name")
    stats.observe_reply(REMOTE, T0, 554, conn, text="go away")
    assert conn.recipients == [b"a@x", b"b@x"]          # held as UTF-8 octets
    assert stats.recipients(REMOTE) == ["a@x", "b@x"]
    assert stats.counters.recipients_dropped == 1
    assert stats.counters.samples_dropped == 1
    burst(stats, REMOTE, T0 + 1, 9, 9, text="no such user a")
    (n,) = stats.check(T0 + 2)
    assert [(s.code, s.count) for s in n.samples] == [(550, 11), (553, 1)]


def test_suppression_entries_are_capped():
    stats = make(max_hosts=2, threshold=1, check_interval=10)
    for i in range(4):
        burst(stats, f"203.0.113.{i + 1}", T0 + i, 1, 1)
        stats.check(T0 + i)
    assert len(stats._suppressed) <= 2 and stats.counters.suppressions_evicted >= 1


# ---------------------------------------------------------------- actions

class RecordingEnforcer(ReplayEnforcer):
    def __init__(self):
        super().__init__()
        self.calls = []

    def ban(self, network, ttl, now, reason=abi.Reason.RULE):
        self.calls.append((network, ttl, now, reason))
        super().ban(network, ttl, now, reason)


def actor_with(stats, **kw):
    sink, enforcer = ListSink(), RecordingEnforcer()
    return SpamStatsActor(stats, sink, enforcer, **kw), sink, enforcer


def test_possible_spam_bans_the_host_and_logs_the_drop():
    clock = Clock()
    stats = make(clock)
    actor, sink, enforcer = actor_with(stats)
    burst(stats, REMOTE, T0, 10, 10)
    clock.t = T0 + 3600
    (n,) = actor.tick()
    assert enforcer.calls == [(f"{REMOTE}/32", 3600.0, T0 + 3600, abi.Reason.SPAM_STATS)]
    assert enforcer.verdicts.banned(REMOTE, T0 + 3601)
    notice, drop = sink
    assert notice["event_type"] == "notice" and notice["actions"] == ["ban"] and notice["ban_ttl"] == 3600
    assert drop == {"ts": T0 + 3600, "event_type": "drop", "action": "ban_source",
                    "target": f"{REMOTE}/32", "reason": "spam_stats", "ttl": 3600.0,
                    "enforced_by": "replay"}
    for rec in sink:
        check_schema(rec)
    assert list(actor.bans) == [f"{REMOTE}/32"]
    assert actor.sweep(T0 + 7199) == 0 and actor.sweep(T0 + 7200) == 1 and not actor.bans


def test_ipv6_hosts_are_banned_as_a_128():
    stats = make()
    actor, sink, enforcer = actor_with(stats)
    burst(stats, "2001:db8::25", T0, 10, 10)
    actor.act(stats.check(T0 + 1), T0 + 1)
    assert enforcer.calls[0][0] == "2001:db8::25/128"


def test_allow_list_is_never_banned():
    stats = make(allow=["203.0.113.0/24"])
    actor, sink, enforcer = actor_with(stats)
    burst(stats, REMOTE, T0, 10, 10)
    actor.act(stats.check(T0 + 1), T0 + 1)
    assert enforcer.calls == [] and actor.counters.allow_listed == 1
    (notice,) = sink                                     # still noticed
    assert notice["note"] == POSSIBLE_SPAM and notice["actions"] == []


def test_strange_reject_behavior_is_not_banned_by_default_but_can_be():
    stats = make()
    actor, sink, enforcer = actor_with(stats)
    burst(stats, MAILSERVER, T0, 10, 10)
    actor.act(stats.check(T0 + 1), T0 + 1)
    assert [r["note"] for r in sink] == [STRANGE_REJECT_BEHAVIOR] and enforcer.calls == []

    stats = make(ban={"SMTP_StrangeRejectBehavior": "10m", "SMTP_PossibleSpam": 0})
    actor, sink, enforcer = actor_with(stats)
    burst(stats, MAILSERVER, T0, 10, 10)
    burst(stats, REMOTE, T0, 10, 10)
    actor.act(stats.check(T0 + 1), T0 + 1)
    assert [c[:2] for c in enforcer.calls] == [(f"{MAILSERVER}/32", 600.0)]


def test_a_failing_enforcer_still_logs_the_notice():
    class Broken(ReplayEnforcer):
        def ban(self, *a, **kw):
            raise OSError(1, "Operation not permitted")

    stats = make()
    sink = ListSink()
    actor = SpamStatsActor(stats, sink, Broken())
    burst(stats, REMOTE, T0, 10, 10)
    actor.act(stats.check(T0 + 1), T0 + 1)
    assert [r["event_type"] for r in sink] == ["notice"] and sink[0]["actions"] == []
    assert actor.counters.ban_errors == 1 and "Operation not permitted" in actor.last_error


# ---------------------------------------------------------------- snapshots

def test_snapshot_round_trip_keeps_windows_in_wall_clock_terms(tmp_path):
    # the stats run on a monotonic-like clock 1e9 s behind the wall
    wall = Clock(T0)
    mono = Clock(T0 - 1e9)
    stats = make(mono, wall, check_interval=600)
    actor, _, _ = actor_with(stats)
    burst(stats, REMOTE, mono.t, 10, 10, rcpts=["v@example.org"], uid="CAbc")
    burst(stats, LOCAL, mono.t + 100, 9, 9)
    actor.tick(mono.t + 600)                               # REMOTE noticed and banned
    path = tmp_path / "spam.msgpack"
    actor.snapshot(path)

    # restart 1000 s later on a monotonic clock with another origin (the
    # check schedule comes from the snapshot: T0+1200 wall, then every 2 h)
    wall2, mono2 = Clock(T0 + 1000), Clock(5000.0)
    stats2 = make(mono2, wall2, check_interval=7200)
    actor2, sink2, enforcer2 = actor_with(stats2)
    result = actor2.restore(path)
    assert result.ok and (result.hosts, result.bans) == (2, 1) and "restored 2 hosts" in result.message
    assert stats2.next_check == pytest.approx(5200.0)
    assert stats2.counts(REMOTE) == (10, 10) and stats2.counts(LOCAL) == (9, 9)
    assert stats2.recipients(REMOTE) == ["v@example.org"]
    ban = actor2.bans[f"{REMOTE}/32"]
    assert ban.expires == pytest.approx(5000.0 - 1000 + 600 + 3600)      # wall T0+4200
    # re-applied with the TTL left
    assert enforcer2.calls[0][0] == f"{REMOTE}/32"
    assert enforcer2.calls[0][1] == pytest.approx(3600 - 1000 + 600)
    # the windows still close at their wall-clock times: REMOTE's at T0+3600
    # (mono2 7600), LOCAL's at T0+3700 (mono2 7700)
    burst(stats2, LOCAL, 7000.0, 1, 1)               # LOCAL now qualifies: 10 of 10
    burst(stats2, REMOTE, 7100.0, 1, 1)              # REMOTE is still suppressed
    assert stats2.tick(7599.0) == []
    assert stats2.tick(7699.0) == [] and stats2.counters.suppressed == 1
    notices = stats2.tick(7700.0)
    assert [(n.src, n.total, n.ts) for n in notices] == [(LOCAL, 10, 7700.0)]
    assert stats2.counters.connections == 19 + 2 and stats2.counters.notices == 2


def test_a_restore_replaces_the_statistics_in_place(tmp_path):
    stats = make(threshold=3)
    burst(stats, REMOTE, T0, 3, 3)
    write_snapshot(tmp_path / "s", stats)
    live = make(threshold=3)
    counters = live.counters
    burst(live, LOCAL, T0, 5, 5)
    live.check(T0 + 1)
    burst(live, LOCAL, T0 + 2, 1, 1)
    assert read_snapshot(tmp_path / "s", live).ok
    assert LOCAL not in live and live.counts(REMOTE) == (3, 3)
    # the counters object others hold stays, with the snapshot's values
    assert live.counters is counters and counters.as_dict() == stats.counters.as_dict()
    # what the snapshot held as not judged yet is judged at the next check
    (n,) = live.check(T0 + 3)
    assert (n.src, n.total) == (REMOTE, 3)


def test_a_snapshot_restores_into_the_other_window(tmp_path):
    clock = Clock(900 * 2_000_000.0)
    fixed = make(clock)
    burst(fixed, REMOTE, clock.t, 4, 2)
    write_snapshot(tmp_path / "fixed", fixed)
    sliding = make(Clock(clock.t), window="sliding", sliding_buckets=4)
    assert read_snapshot(tmp_path / "fixed", sliding).ok
    assert sliding.counts(REMOTE, clock.t + 10) == (4, 2)           # one bucket
    write_snapshot(tmp_path / "sliding", sliding)
    again = make(Clock(clock.t))
    assert read_snapshot(tmp_path / "sliding", again).ok
    assert again.counts(REMOTE, clock.t + 10) == (4, 2)
    assert again.counts(REMOTE, clock.t + 3600) == (0, 0)           # from its oldest bucket


def test_snapshot_of_a_sliding_window(tmp_path):
    clock = Clock(900 * 2_000_000.0)
    stats = make(clock, window="sliding", sliding_buckets=4)
    burst(stats, REMOTE, clock.t, 3, 1)
    burst(stats, REMOTE, clock.t + 1000, 2, 2)
    write_snapshot(tmp_path / "s", stats)
    stats2 = make(Clock(clock.t), window="sliding", sliding_buckets=4)
    assert read_snapshot(tmp_path / "s", stats2).ok
    assert stats2.counts(REMOTE, clock.t + 3599) == (5, 3)
    assert stats2.counts(REMOTE, clock.t + 3600) == (2, 2)


def test_a_crash_between_write_and_rename_leaves_the_old_snapshot(tmp_path, monkeypatch):
    path = tmp_path / "spam.msgpack"
    stats = make()
    burst(stats, REMOTE, T0, 3, 1)
    write_snapshot(path, stats)
    old = path.read_bytes()
    burst(stats, REMOTE, T0 + 1, 4, 4)

    def crash(src, dst):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(SnapshotError) as err:
        write_snapshot(path, stats)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert not (tmp_path / "spam.msgpack.tmp").exists()

    # a real crash leaves the temporary file behind: it is ignored, then replaced
    (tmp_path / "spam.msgpack.tmp").write_bytes(b"half a snapsh")
    fresh = make()
    assert read_snapshot(path, fresh).ok and fresh.counts(REMOTE) == (3, 1)
    write_snapshot(path, stats)
    again = make()
    assert read_snapshot(path, again).ok and again.counts(REMOTE) == (7, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spam.msgpack"]


def test_snapshot_write_syncs_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    write_snapshot(tmp_path / "s", make())
    assert synced == [str(tmp_path / "s.tmp"), str(tmp_path)]


@pytest.mark.parametrize("content", [
    b"\xc1 not msgpack at all",
    msgpack.packb([1, 2, 3]),
    msgpack.packb({"format": "smtp-sensor/spam-stats", "version": 1, "saved_at": 1.0,
                   "hosts": [["not an address", 1, 1, 1, 1, [], [], 0, [], 0, True]],
                   "suppressed": [], "bans": []}),
    msgpack.packb({"format": "smtp-sensor/spam-stats", "version": 99}),
    msgpack.packb({"format": "smtp-sensor/spam-stats", "version": 1, "saved_at": 1.0,
                   "hosts": [], "suppressed": [], "bans": [["192.0.2.1/32", "x", 1, "soon", 5]]}),
    msgpack.packb({"format": "smtp-sensor/spam-stats", "version": 1, "saved_at": 1.0,
                   "hosts": [["192.0.2.1", 1, 1, 0, 0, [[1, 2]], [], 0, [], 0, True]],
                   "suppressed": [], "bans": []}),
    msgpack.packb({"format": "smtp-sensor/spam-stats", "version": 1, "saved_at": 1.0,
                   "hosts": [], "suppressed": [["SMTP_PossibleSpam", "192.0.2.1"]], "bans": []}),
    msgpack.packb({"format": "smtp-sensor/spam-stats", "version": 1, "saved_at": 1.0,
                   "hosts": [], "suppressed": [], "bans": [], "counters": [1, 2]}),
    msgpack.packb({"format": "other-tool/state", "version": 1}),
    b"",
], ids=["garbage", "wrong-shape", "bad-host", "future-version", "bad-ban", "bad-bucket", "bad-suppression",
        "counters-not-a-map", "foreign", "empty"])
def test_a_corrupt_snapshot_is_reported_and_set_aside(tmp_path, content):
    path = tmp_path / "spam.msgpack"
    path.write_bytes(content)
    stats = make()
    burst(stats, REMOTE, T0, 2, 1)
    actor, _, _ = actor_with(stats)
    result = actor.restore(path)
    assert not result.ok and "\n" not in result.message and "set aside" in result.message
    assert not path.exists() and result.set_aside.read_bytes() == content
    assert result.set_aside.name.startswith("spam.msgpack.corrupt-")
    assert stats.counts(REMOTE) == (2, 1)          # the live statistics are untouched
    # the next snapshot goes where the corrupt one was
    actor.snapshot(path)
    assert read_snapshot(path, make()).ok


def test_a_truncated_snapshot_is_set_aside(tmp_path):
    path = tmp_path / "s"
    stats = make()
    burst(stats, REMOTE, T0, 5, 5)
    write_snapshot(path, stats)
    path.write_bytes(path.read_bytes()[:-7])
    result = read_snapshot(path, make())
    assert not result.ok and result.set_aside is not None


def test_a_missing_snapshot_is_a_fresh_start(tmp_path):
    result = read_snapshot(tmp_path / "none", make())
    assert result.ok and "no snapshot" in result.message


def test_an_unreadable_snapshot_is_reported_never_raised(tmp_path):
    folder = tmp_path / "is-a-dir"
    folder.mkdir()
    result = read_snapshot(folder, make())
    assert not result.ok and "unreadable" in result.message


def test_expired_bans_are_not_restored(tmp_path):
    clock = Clock()
    stats = make(clock)
    actor, _, _ = actor_with(stats)
    burst(stats, REMOTE, T0, 10, 10)
    actor.act(stats.check(T0), T0)
    actor.snapshot(tmp_path / "s")
    later = Clock(T0 + 4000)
    stats2 = make(later)
    actor2, _, enforcer2 = actor_with(stats2)
    assert actor2.restore(tmp_path / "s").bans == 0 and enforcer2.calls == []


# ---------------------------------------------------------------- pipeline

CLIENTS = {"remote": "203.0.113.50", "local": "192.0.2.50"}
SERVER = "198.51.100.1"


def session_segments(dialogue, client, cport, server=SERVER):
    """One TCP session carrying ``dialogue`` (tests/unit/test_pipeline.py's helper)."""
    from support.sessions import session_segments as segments
    return segments(dialogue, client=client, server=server, cport=cport)


def dialogue(rcpt: str, accepted: bool):
    reply = b"250 2.1.5 Ok\r\n" if accepted else b"550 5.1.1 <" + rcpt.encode() + b">: User unknown\r\n"
    return [
        (False, b"220 mx.example ESMTP\r\n"),
        (True, b"EHLO client.example\r\n"),
        (False, b"250 mx.example\r\n"),
        (True, b"MAIL FROM:<spammer@example.com>\r\n"),
        (False, b"250 2.1.0 Ok\r\n"),
        (True, b"RCPT TO:<" + rcpt.encode() + b">\r\n"),
        (False, reply),
        (True, b"QUIT\r\n"),
        (False, b"221 bye\r\n"),
    ]


def test_pipeline_sessions_give_the_counts_and_the_notice():
    stats = RejectStats(SpamStatsConfig(threshold=6, percent=50, local_networks=["192.0.2.0/24"]),
                        clock=Clock(100.0))
    sink = ListSink()
    actor = SpamStatsActor(stats, sink, ReplayEnforcer())
    pipe = Pipeline(sink, listeners=[RejectStatsListener(stats, actor)])
    ts = 100.0
    for host in CLIENTS.values():
        for i in range(6):
            rejected = i < 3 or host == CLIENTS["local"]
            for seg in session_segments(dialogue(f"user{i}@example.org", not rejected), host, 40000 + i):
                pipe.feed_segment(seg, ts)
                ts += 0.01
    pipe.finish(ts)
    assert pipe.counters.listener_errors == 0
    assert stats.counts(CLIENTS["remote"]) == (6, 3)
    assert stats.counts(CLIENTS["local"]) == (6, 6)
    assert stats.recipients(CLIENTS["remote"]) == [f"user{i}@example.org" for i in range(3)]
    notices = actor.tick(ts + 3600)
    assert sorted((n.note, n.src, n.percent) for n in notices) == [
        (POSSIBLE_INTERNAL_SPAM, CLIENTS["local"], 100), (POSSIBLE_SPAM, CLIENTS["remote"], 50)]
    local = next(n for n in notices if n.src == CLIENTS["local"])
    assert local.msg.endswith("mailto: " + ",".join(f"user{i}@example.org" for i in range(6)))
    assert local.samples[0].text == "<user0@example.org>: User unknown"
    assert local.samples[0].uid.startswith("C")
    records = sink.of("notice") + sink.of("drop")
    assert len(sink.of("notice")) == 2 and len(sink.of("drop")) == 2
    for rec in records:
        check_schema(rec)
    assert actor.enforcer.verdicts.banned(CLIENTS["remote"], ts + 3601)


# ---------------------------------------------------------------- properties

def test_a_long_pause_costs_nothing():
    import time as _time
    stats = make(check_interval=1)
    burst(stats, REMOTE, T0, 3, 1)
    started = _time.perf_counter()
    stats.tick(T0 + 10 * 365 * 86400)           # ten years of one-second checks
    assert _time.perf_counter() - started < 0.5
    assert len(stats) == 0 and stats.counters.checks >= 10 * 365 * 86400 - 1
    burst(stats, REMOTE, T0 + 10 * 365 * 86400 + 5, 1, 1)
    assert stats.counts(REMOTE) == (1, 1)


def test_the_listener_keeps_its_flags_in_the_session_scratch():
    from sensor.smtp.events import RcptTo, Reply

    class Flow:
        orig_h, uid = REMOTE, "CListener1"

    class Session:
        flow = Flow()

        def __init__(self):
            self.scratch = {}

    stats = make()
    listener = RejectStatsListener(stats)
    s = Session()
    listener(s, Reply(T0, 220, None, ("mx",), ">", None, trans_depth=1))
    listener(s, RcptTo(T0, "a@example.org", (), "TO:<a@example.org>", trans_depth=1))
    listener(s, Reply(T0, 550, "5.1.1", ("5.1.1 no", "more"), "RCPT", None, trans_depth=1))
    conn = s.scratch[RejectStatsListener.KEY]
    assert isinstance(conn, ConnState) and conn.recipients == [b"a@example.org"]
    assert stats.counts(REMOTE) == (1, 1) and stats.recipients(REMOTE) == ["a@example.org"]
    assert [(s.code, s.enhanced, s.text, s.count, s.uid, s.ts) for s in stats._hosts[REMOTE].samples] == [
        (550, "5.1.1", b"no more", 1, "CListener1", T0)]


# ---------------------------------------------------------------- the end of a replay

def test_finish_judges_what_the_last_connections_changed_once():
    stats = make(check_interval=1)
    actor, sink, _ = actor_with(stats)
    assert actor.finish() == [] and stats.counters.checks == 0      # nothing seen: nothing to do
    burst(stats, REMOTE, T0, 10, 5, step=0.05)                     # ends before the first check
    assert actor.tick(T0 + 0.5) == []                               # a capture's clock stops here
    notices = actor.finish()
    assert [(n.note, n.msg) for n in notices] == [(POSSIBLE_SPAM, f"{REMOTE} - sent: 10 rejected: 50 percent")]
    assert len(sink.of("notice")) == 1 and len(sink.of("drop")) == 1
    assert actor.finish() == [] and len(sink.of("notice")) == 1    # same evidence: no second notice


def _frame(seg) -> bytes:
    """An Ethernet/IPv4/TCP frame carrying ``seg`` (checksums left at 0)."""
    import struct
    tcp = struct.pack("!HHIIBBHHH", seg.sport, seg.dport, seg.seq, seg.ack, 0x50, seg.flags, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(seg.payload), 0, 0x4000, 64, 6, 0, seg.src, seg.dst)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp + seg.payload


def test_a_replay_ending_right_after_a_burst_gives_the_notice(tmp_path):
    """`smtp-sensor replay --config`: the capture ends 0.3 s after the burst,
    before the first check a second later; the live sensor's next check would
    have raised the notice, so the replay must too (it gave none)."""
    import json
    import subprocess
    import sys

    from sensor.inputs.pcapwriter import PcapWriter

    pcap = tmp_path / "burst.pcap"
    writer = PcapWriter(pcap, 1)
    ts = T0
    for i in range(6):
        for seg in session_segments(dialogue(f"user{i}@example.org", i >= 4), CLIENTS["remote"], 40000 + i):
            writer.write(ts, _frame(seg))
            ts += 0.01
    writer.close()
    config = tmp_path / "sensor.toml"
    config.write_text('[spam_stats]\nthreshold = 6\npercent = 50\ncheck_interval = "1s"\n')
    out = tmp_path / "records.json"
    result = subprocess.run([sys.executable, "-m", "sensor.cli", "replay", str(pcap), "--config", str(config),
                             "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert ts - T0 < 1.0          # the whole capture is shorter than check_interval
    records = [json.loads(line) for line in out.read_text().splitlines()]
    notices = [r for r in records if r["event_type"] == "notice"]
    assert [(n["note"], n["msg"]) for n in notices] == [
        (POSSIBLE_SPAM, f"{CLIENTS['remote']} - sent: 6 rejected: 66 percent")]
    assert [r["target"] for r in records if r["event_type"] == "drop"] == [f"{CLIENTS['remote']}/32"]
    assert "spam stats: 1 notices, 1 bans" in result.stderr


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st

_events = st.lists(st.tuples(st.integers(0, 3),          # host
                             st.floats(0, 400),           # seconds since the previous event
                             st.booleans(),               # rejected
                             st.booleans()),              # tick here
                   min_size=1, max_size=120)


@settings(max_examples=60, deadline=None)
@given(_events, st.sampled_from(["fixed", "sliding"]))
def test_notices_do_not_depend_on_ticks_and_rejects_never_exceed_total(events, window):
    def run(with_ticks):
        stats = make(threshold=3, percent=40, period=1200, check_interval=500, window=window,
                     sliding_buckets=3, suppress_for=0)
        t, out = T0, []
        for host, dt, rejected, tick in events:
            t += dt
            h = f"203.0.113.{host}"
            connection(stats, h, t, rejected)
            total, rejects = stats.counts(h)
            assert 0 <= rejects <= total
            if with_ticks and tick:
                out += stats.tick(t)
        out += stats.tick(t + 10_000)
        return [(n.ts, n.src, n.total, n.rejects) for n in out + stats.drain()]

    assert run(True) == run(False)


def test_host_churn_through_the_cap_keeps_memory_bounded():
    stats = make(max_hosts=50)
    for i in range(20_000):
        host = str(ipaddress.IPv4Address("10.0.0.0") + i)
        burst(stats, host, T0 + i * 0.01, 1, 1, rcpts=["x@example.org"])
    assert len(stats) == 50 and stats.counters.hosts_evicted == 20_000 - 50
    assert len(stats._deadlines) <= 2 * 50 + 64 + 1
    assert len(stats._dirty) <= 50
