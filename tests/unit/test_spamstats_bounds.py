"""What the reject statistics hold per host stays within the configured caps,
whatever the traffic: hostile recipients (as long as a line, astral
characters, lone surrogates), more distinct reject texts than samples, more
hosts than ``max_hosts``, every bucket of a sliding window.  The bound in
bytes (docs/operations.md, "Under attack") is these caps times the octet
limits; the bytes themselves depend on the interpreter, so they are measured
(bench/bench_stats_memory.py), not asserted.  The compact counts give what a
plain model of each window gives.
"""

from __future__ import annotations

import ipaddress
import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.config import SpamStatsConfig
from sensor.spamstats import ConnState, RejectStats, read_snapshot
from sensor.spamstats.hosts import RECIPIENT_OCTETS, SAMPLE_OCTETS, held_text, shown_text

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0

_text = st.text(st.characters(exclude_categories=()), max_size=600) | st.builds(
    lambda c, n: c * n, st.sampled_from(["a", "é", "\u20ac", "\U0001F600", "\udc80"]), st.integers(0, 4100))


def make(**kw) -> RejectStats:
    base = dict(threshold=2, percent=10, period=600, check_interval=60)
    base.update(kw)
    return RejectStats(SpamStatsConfig(**base), clock=lambda: T0, wall=lambda: T0)


def assert_within_caps(stats: RejectStats, conns) -> None:
    cfg = stats.config
    assert len(stats) <= cfg.max_hosts
    assert len(stats._suppressed) <= cfg.max_hosts
    assert len(stats._dirty) <= len(stats)
    assert len(stats._deadlines) <= 2 * len(stats) + 64 + 1
    for h in stats._hosts.values():
        assert len(h.recipients) <= cfg.max_recipients
        assert all(isinstance(r, bytes) and len(r) <= RECIPIENT_OCTETS for r in h.recipients)
        assert len(h.samples) <= cfg.max_samples
        assert all(isinstance(s.text, bytes) and len(s.text) <= SAMPLE_OCTETS for s in h.samples)
        assert stats.window.buckets_held(h) <= (cfg.sliding_buckets if cfg.window == "sliding" else 1)
    for conn in conns:
        assert len(conn.recipients) <= cfg.max_recipients
        assert all(len(r) <= RECIPIENT_OCTETS for r in conn.recipients)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 11),                 # host
                          st.floats(0, 120),                   # seconds since the previous event
                          st.lists(_text, max_size=14),        # its recipients
                          st.sampled_from([250, 550, 551, 553, 554]),
                          _text),                              # the reply's text
                min_size=1, max_size=60),
       st.sampled_from(["fixed", "sliding"]))
def test_a_host_never_holds_more_than_its_caps_whatever_is_sent(events, window):
    stats = make(window=window, sliding_buckets=6, max_hosts=8, max_recipients=4, max_samples=3)
    t, conns = T0, []
    for host, dt, rcpts, code, text in events:
        t += dt
        addr = f"203.0.113.{host}"
        conn = ConnState()
        conns.append(conn)
        stats.observe_reply(addr, t, 220, conn, text="mx ESMTP", uid="C1")
        for r in rcpts:
            stats.observe_recipient(addr, r, conn)
        stats.observe_reply(addr, t, code, conn, enhanced="5.1.1", text=text, uid="C1")
        stats.tick(t)
        assert_within_caps(stats, conns)
    for n in stats.drain():
        assert len(n.recipients) <= 4 and len(n.samples) <= 3
        assert all(len(r.encode("utf-8", "surrogatepass")) <= RECIPIENT_OCTETS for r in n.recipients)


def test_at_the_default_caps_a_spam_host_holds_ten_recipients_and_five_samples():
    stats = make(threshold=10**6)
    cfg = stats.config
    assert (cfg.max_recipients, cfg.max_samples) == (10, 5)
    conns = []
    for i in range(300):                              # every connection: new recipients, a new reject text
        conn = ConnState()
        conns.append(conn)
        stats.observe_reply("2001:db8::66", T0 + i, 220, conn)
        for j in range(20):
            stats.observe_recipient("2001:db8::66", f"user{i}-{j}@" + "x" * 4000, conn)
        stats.observe_reply("2001:db8::66", T0 + i, 550, conn, text=f"<user{i}@x>: unknown " + "\U0001F600" * 1000)
    assert_within_caps(stats, conns[-1:])
    (h,) = stats._hosts.values()
    assert len(h.recipients) == 10 and len(h.samples) == 5
    assert stats.counters.recipients_dropped > 0 and stats.counters.samples_dropped == 295
    assert stats.counts("2001:db8::66") == (300, 300)            # the counts stay exact


@settings(max_examples=200, deadline=None)
@given(_text, st.integers(0, 300))
def test_a_held_text_is_a_whole_character_prefix_within_its_octets(text, limit):
    held = held_text(text, limit)
    assert len(held) <= limit
    assert text.startswith(shown_text(held))
    whole = text.encode("utf-8", "surrogatepass")
    assert held == whole or len(held) > limit - 4              # cut at most one character short


def test_a_hosts_churn_through_max_hosts_keeps_the_tables_bounded():
    stats = make(max_hosts=100, threshold=1, percent=1, suppress_for=10**6)
    conns = []
    for i in range(5_000):
        conn = ConnState()
        addr = str(ipaddress.IPv4Address("10.0.0.0") + i)
        stats.observe_reply(addr, T0 + i, 220, conn)
        stats.observe_recipient(addr, f"r{i}@example.org", conn)
        stats.observe_reply(addr, T0 + i, 550, conn, text=f"no {i}")
        stats.drain()
        if i % 97 == 0:
            assert_within_caps(stats, [conn])
    assert len(stats) == 100 and len(stats._suppressed) == 100


# ---------------------------------------------------------------- the packed counts against a model

class FixedModel:
    """The seed's window, kept as every connection: one window from a host's
    first reply for ``period``; a reply after it opens the next."""

    def __init__(self, period):
        self.period = period
        self.hosts = {}                 # host -> (start, [rejected, ...])

    def add(self, host, t, rejected):
        start, conns = self.hosts.get(host, (None, None))
        if start is None or t >= start + self.period:
            start, conns = t, []
            self.hosts[host] = (start, conns)
        conns.append(rejected)

    def counts(self, host, t):
        start, conns = self.hosts.get(host, (None, []))
        if start is None or t >= start + self.period:
            return 0, 0
        return len(conns), sum(conns)


class SlidingModel:
    """The last ``period`` in buckets, kept as every connection's bucket."""

    def __init__(self, period, buckets):
        self.width, self.buckets = period / buckets, buckets
        self.conns = {}                 # host -> [(bucket, rejected), ...]

    def add(self, host, t, rejected):
        self.conns.setdefault(host, []).append((math.floor(t / self.width), rejected))

    def counts(self, host, t):
        first = math.floor(t / self.width) - self.buckets
        held = [r for b, r in self.conns.get(host, []) if b > first]
        return len(held), sum(held)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.floats(0, 250), st.booleans()), min_size=1, max_size=80),
       st.sampled_from(["fixed", "sliding"]))
def test_the_packed_counts_are_those_of_a_plain_model(events, window):
    stats = make(window=window, period=1200, sliding_buckets=4, threshold=10**6)
    model = FixedModel(1200) if window == "fixed" else SlidingModel(1200, 4)
    t = T0
    for host, dt, rejected in events:
        t += dt
        addr = f"198.51.100.{host}"
        conn = ConnState()
        stats.observe_reply(addr, t, 220, conn)
        stats.observe_reply(addr, t, 550 if rejected else 250, conn)
        model.add(addr, t, int(rejected))
        for other in range(3):
            a = f"198.51.100.{other}"
            assert stats.counts(a, t) == model.counts(a, t)
    for a in (f"198.51.100.{other}" for other in range(3)):
        assert stats.counts(a, t + 1199) == model.counts(a, t + 1199)


# ---------------------------------------------------------------- snapshots of version 1

def v1_snapshot(hosts) -> bytes:
    return msgpack.packb({"format": "smtp-sensor/spam-stats", "version": 1, "saved_at": T0, "window": "fixed",
                          "period": 600, "next_check": None, "hosts": hosts, "suppressed": [], "bans": [],
                          "counters": {}})


def test_a_snapshot_written_before_the_caps_loads_within_them(tmp_path):
    # what a host held before: 100 recipients (some as long as a line), reject
    # texts of 200 characters of any width
    recipients = [f"r{i}@example.org" for i in range(98)] + ["x" * 4000 + "@example.org", "\U0001F600" * 1000]
    samples = [[550, "5.1.1", "\u20ac" * 200, 3, "CAbc", T0], [553, None, "bad", 1, None, T0]]
    path = tmp_path / "spam.msgpack"
    path.write_bytes(v1_snapshot([["203.0.113.9", T0, T0, 40, 30, [], recipients, 0, samples, 0, True]]))
    stats = make(max_samples=1)
    assert read_snapshot(path, stats).ok
    assert stats.counts("203.0.113.9") == (40, 30)
    assert stats.recipients("203.0.113.9") == recipients[:10]
    assert_within_caps(stats, [])
    (h,) = stats._hosts.values()
    assert [(s.code, s.count, shown_text(s.text)) for s in h.samples] == [(550, 3, "\u20ac" * 66)]


def test_buckets_of_a_foreign_snapshot_spread_wider_than_the_window_are_not_all_kept(tmp_path):
    hosts = [["203.0.113.9", T0, T0, 0, 0, [[T0 - 1e9, 1, 1], [T0 - 600, 2, 1], [T0, 5, 3]], [], 0, [], 0, True]]
    path = tmp_path / "spam.msgpack"
    path.write_bytes(v1_snapshot(hosts))
    stats = make(window="sliding", sliding_buckets=6)
    assert read_snapshot(path, stats).ok
    assert_within_caps(stats, [])
    assert stats.counts("203.0.113.9", T0) == (5, 3)        # the newest window's buckets only


def test_a_clock_set_back_across_a_restore_counts_in_the_oldest_bucket(tmp_path):
    hosts = [["203.0.113.9", T0, T0, 0, 0, [[T0, 5, 3]], [], 0, [], 0, False]]
    path = tmp_path / "spam.msgpack"
    path.write_bytes(v1_snapshot(hosts))
    stats = make(window="sliding", sliding_buckets=6)
    assert read_snapshot(path, stats).ok
    conn = ConnState()
    stats.observe_reply("203.0.113.9", T0 - 10**7, 220, conn)          # 116 days before the snapshot
    stats.observe_reply("203.0.113.9", T0 - 10**7, 550, conn)
    assert_within_caps(stats, [conn])
    assert stats.counts("203.0.113.9") == (6, 4)
