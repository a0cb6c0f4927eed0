"""Reject statistics and bans shared by several sensors through a real
redis-server (sensor.cluster): two sensors in this process, each with its
own statistics and enforcer, one Redis on loopback.

The shipper's flushes and the ban feed's reads are driven here one at a
time (``flush()``, ``read_once()``), so what each sensor knows when is
decided by the test, not by thread timing; one test runs the threads.
"""

from __future__ import annotations

import time

import pytest

from sensor.cluster import Cluster
from sensor.config import ClusterConfig, Config, ConfigError, SpamStatsConfig, loads
from sensor.rules.enforce import ReplayEnforcer
from sensor.spamstats import POSSIBLE_SPAM, ConnState
from support.redis_server import RedisServer

pytestmark = pytest.mark.unit

SPAMMER = "203.0.113.66"
THRESHOLD = 10
T0 = 1_800_000_000.0          # a bucket boundary of the 60 s window's 5 s buckets


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def server():
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def redis(server):
    client = server.client()
    client.flushall()
    return client


class Sensor:
    """One sensor of the fleet: its Cluster, records and enforcer."""

    def __init__(self, server, name: str, clock: Clock, *, worker: int = 0, workers: int = 1, **cluster):
        self.records: list[dict] = []
        self.enforcer = ReplayEnforcer()
        st = SpamStatsConfig(threshold=THRESHOLD, percent=30, period=60, check_interval=1, sliding_buckets=12)
        cc = ClusterConfig(**{"enabled": True, "url": server.url, "sensor_name": name, "timeout": 0.5, **cluster})
        self.cluster = Cluster(Config(spam_stats=st, cluster=cc), self.records.append, self.enforcer, clock=clock,
                               worker=worker, workers=workers)
        self.clock = clock

    def connections(self, n: int, rejected: int, host: str = SPAMMER) -> None:
        """``n`` connections of ``host`` at the clock's time, the first ``rejected`` of them rejected."""
        stats = self.cluster.stats
        for i in range(n):
            conn = ConnState()
            stats.observe_reply(host, self.clock(), 220, conn)
            if i < rejected:
                stats.observe_reply(host, self.clock(), 550, conn, text="no such user")

    def sync(self) -> None:
        """Flush to Redis, read the ban stream, act on the answers, tick."""
        self.cluster.shipper.flush()
        if self.cluster.link.may_try():
            self.cluster.feed.step()
        self.cluster.poll()
        self.cluster.actor.tick(self.clock())
        self.cluster.shipper.flush()          # what the tick claimed or banned
        self.cluster.poll()

    def notices(self) -> list[dict]:
        return [r for r in self.records if r["event_type"] == "notice"]

    def banned(self, host: str = SPAMMER) -> bool:
        return self.enforcer.verdicts.banned(host, self.clock())


def test_a_host_split_over_two_sensors_gives_one_notice_and_a_ban_on_both(redis, server):
    clock = Clock()
    a, b = Sensor(server, "mx-a", clock), Sensor(server, "mx-b", clock)
    a.connections(5, 2)
    b.connections(5, 2)
    clock.t += 1
    for s in (a, b, a, b):
        s.sync()
    # alone, each saw 5 connections: under the threshold; the fleet saw 10, 40 % rejected
    notices = a.notices() + b.notices()
    assert len(notices) == 1, notices
    (notice,) = notices
    assert notice["note"] == POSSIBLE_SPAM and notice["total"] == 10 and notice["rejects"] == 4
    assert notice["msg"] == f"{SPAMMER} - sent: 10 rejected: 40 percent"
    assert notice["actions"] == ["ban"]
    for s in (a, b):
        s.sync()
    assert a.banned() and b.banned()
    # the sensor that did not raise it applied the other's ban, with a record naming it
    other = b if a.notices() else a
    (drop,) = [r for r in other.records if r["event_type"] == "drop"]
    assert drop["target"] == f"{SPAMMER}/32" and drop["note"].startswith("banned by sensor mx-")
    assert other.cluster.actor.cluster_counters.claimed_elsewhere + len(other.notices()) <= 1
    # more rejects within suppress_for raise nothing more, on either sensor
    clock.t += 1
    a.connections(10, 10)
    b.connections(10, 10)
    clock.t += 1
    for s in (a, b, a, b):
        s.sync()
    assert len(a.notices() + b.notices()) == 1


def test_a_lone_sensor_judges_the_fleet_counts_it_read_back(redis, server):
    clock = Clock()
    a, b = Sensor(server, "mx-a", clock), Sensor(server, "mx-b", clock)
    b.connections(9, 9, host="198.51.100.9")
    b.sync()
    a.connections(1, 0, host="198.51.100.9")
    a.sync()
    clock.t += 1
    a.sync()
    assert [n["total"] for n in a.notices()] == [10] and not b.notices()
    assert a.cluster.shared.fleet_counts("198.51.100.9", clock()) == (10, 9)


def test_malicious_values_in_redis_are_rejected_and_counted_never_a_crash(redis, server):
    clock = Clock()
    a = Sensor(server, "mx-a", clock)
    keys = a.cluster.shipper.keys
    slot = a.cluster.shared.slot(clock())
    redis.set(keys.bucket(SPAMMER, slot), "not a hash")                   # wrong type
    redis.hset(keys.bucket(SPAMMER, slot - 1), mapping={"t": "9" * 40, "r": "1"})   # huge
    redis.hset(keys.bucket(SPAMMER, slot - 2), mapping={"t": "-5", "r": "x"})       # not counts
    redis.xadd(keys.bans, {"sensor": "evil", "network": "not-an-address", "note": "x", "expires": "1e99",
                           "ttl": "5"})
    redis.xadd(keys.bans, {"sensor": "evil", "network": "192.0.2.0/24", "note": "x", "expires": "nan",
                           "ttl": "5"})
    redis.xadd(keys.bans, {"sensor": "evil"})
    redis.xadd(keys.bans, {"sensor": "evil", "network": "0.0.0.0/0", "note": "x", "expires": str(T0 + 100),
                           "ttl": "100"})
    redis.xadd(keys.bans, {"sensor": "evil", "network": "192.0.2.1/32", "note": "x" * 5000,
                           "expires": str(T0 + 100), "ttl": "100"})
    a.connections(3, 3)
    a.sync()
    c = a.cluster.shipper.counters
    assert c.bad_values >= 3                 # the HINCRBY on a string, and both garbled buckets
    assert a.cluster.feed.counters.bad_bans == 5 and a.cluster.feed.counters.bans_read == 0
    assert a.cluster.shared.fleet_counts(SPAMMER, clock()) == (0, 0)
    assert not a.enforcer.verdicts.bans
    # a ban from another sensor with a huge TTL lasts max_remote_ban at most
    redis.xadd(keys.bans, {"sensor": "mx-b", "network": "192.0.2.7/32", "note": POSSIBLE_SPAM,
                           "expires": str(T0 + 10**9), "ttl": str(10**9)})
    a.sync()
    assert a.cluster.actor.bans["192.0.2.7/32"].expires == T0 + ClusterConfig().max_remote_ban
    assert a.banned("192.0.2.7")


def test_redis_down_keeps_local_statistics_and_bans_then_catches_up(redis, server):
    clock = Clock()
    a, b = Sensor(server, "mx-a", clock), Sensor(server, "mx-b", clock)
    server.stop()
    try:
        a.connections(THRESHOLD, THRESHOLD)
        a.connections(4, 0, host="198.51.100.20")
        clock.t += 1
        a.sync()
        link = a.cluster.link
        assert not link.up and link.counters.outages == 1
        # local statistics alone: the notice and the ban, at once (fail open)
        assert len(a.notices()) == 1 and a.banned()
        assert a.cluster.actor.cluster_counters.raised_unclaimed == 1
    finally:
        server.start()
    while not a.cluster.link.may_try():        # the first back-off (0.1 s)
        time.sleep(0.01)
    a.sync()
    assert a.cluster.link.up and a.cluster.link.counters.outage_seconds > 0
    # the ban made during the outage is published: b applies it
    b.sync()
    assert b.banned()
    # the counts made during the outage are in the fleet's: b's next connection of that host sees them
    b.connections(1, 0, host="198.51.100.20")
    b.sync()
    assert b.cluster.shared.fleet_counts("198.51.100.20", clock()) == (5, 0)
    # and the notice's key was set: b does not raise the spammer's notice again
    b.connections(THRESHOLD, THRESHOLD)
    clock.t += 1
    b.sync()
    assert not b.notices() and b.cluster.actor.cluster_counters.claimed_elsewhere == 1


def test_a_remote_ban_is_one_record_across_the_workers_of_a_sensor(redis, server):
    from sensor import shard
    from sensor.cluster.actor import ClusterActor

    clock = Clock()
    a = Sensor(server, "mx-a", clock)
    workers = [Sensor(server, "mx-b", clock, worker=i, workers=2) for i in range(2)]
    owner = shard.worker_of_address(bytes(int(x) for x in SPAMMER.split(".")), 2)
    assert isinstance(workers[0].cluster.actor, ClusterActor)
    other_host = next(f"198.51.100.{i}" for i in range(1, 255)
                      if shard.worker_of_address(bytes([198, 51, 100, i]), 2) != owner)
    for host in (SPAMMER, other_host):
        a.cluster.shipper.publish(f"{host}/32", "by hand", clock() + 600, 600)
    a.sync()
    for w in workers:
        w.sync()
    # each host's ban is applied and recorded by the worker that owns the host, once
    assert [w.banned() for w in workers] == [i == owner for i in range(2)]
    assert [w.banned(other_host) for w in workers] == [i != owner for i in range(2)]
    drops = sorted((i, r["target"]) for i, w in enumerate(workers) for r in w.records if r["event_type"] == "drop")
    assert drops == sorted([(owner, f"{SPAMMER}/32"), (1 - owner, f"{other_host}/32")])
    assert sum(w.cluster.actor.cluster_counters.remote_bans for w in workers) == 2


def test_the_threads_share_a_ban_without_the_loop_waiting(redis, server):
    clock = Clock(time.time())
    a, b = Sensor(server, "mx-a", clock), Sensor(server, "mx-b", clock)
    a.cluster.start()
    b.cluster.start()
    try:
        a.connections(THRESHOLD, THRESHOLD)
        clock.t += 1
        deadline = time.monotonic() + 10
        while not b.banned() and time.monotonic() < deadline:
            a.cluster.poll()
            a.cluster.actor.tick(clock())
            b.cluster.poll()
            time.sleep(0.01)
        assert a.banned() and b.banned()
    finally:
        a.cluster.close()
        b.cluster.close()
    assert not a.cluster.shipper._thread.is_alive() and not b.cluster.feed._thread.is_alive()


def test_cluster_mode_shares_counts_claims_and_bans_through_a_redis_cluster():
    with RedisServer(cluster=True) as srv:
        clock = Clock()
        a, b = Sensor(srv, "mx-a", clock, mode="cluster"), Sensor(srv, "mx-b", clock, mode="cluster")
        assert type(a.cluster.shipper.client.get()).__name__ == "RedisCluster"
        a.connections(5, 5)
        b.connections(5, 5)
        clock.t += 1
        for s in (a, b, a, b, a, b):
            s.sync()
        assert len(a.notices() + b.notices()) == 1
        assert a.banned() and b.banned()
        assert a.cluster.link.counters.outages == 0 and b.cluster.shipper.counters.bad_values == 0


@pytest.mark.parametrize("mode", ["single", "cluster"])
def test_a_sensor_started_while_redis_is_down_judges_alone(mode):
    srv = RedisServer(cluster=mode == "cluster")      # not started: nothing listens on its port
    try:
        clock = Clock()
        a = Sensor(srv, "mx-a", clock, mode=mode)
        a.connections(THRESHOLD, THRESHOLD)
        clock.t += 1
        a.sync()
        assert not a.cluster.link.up and a.cluster.link.counters.outages == 1
        assert len(a.notices()) == 1 and a.banned()
    finally:
        srv.close()


def test_counts_summed_during_a_long_outage_go_out_in_pipelines_of_max_batch(redis, server, monkeypatch):
    from sensor.cluster import shipper
    monkeypatch.setattr(shipper, "MAX_BATCH", 50)
    clock = Clock()
    a = Sensor(server, "mx-a", clock)
    for i in range(120):
        a.connections(1, 0, host=f"198.51.100.{i}")
    for _ in range(3):
        a.cluster.shipper.flush()
    assert a.cluster.shipper.counters.flushes == 3 and a.cluster.shipper.counters.counts_sent == 120
    assert not a.cluster.shipper._counts


def test_counts_past_max_pending_are_counted_not_kept(redis, server):
    clock = Clock()
    a = Sensor(server, "mx-a", clock, max_pending=3)
    for i in range(5):
        a.connections(1, 0, host=f"198.51.100.{i}")
    assert a.cluster.shipper.counters.dropped == {"counts": 2}
    a.sync()
    assert redis.hget(a.cluster.shipper.keys.bucket("198.51.100.0", a.cluster.shared.slot(T0)), "t") == b"1"
    assert redis.exists(a.cluster.shipper.keys.bucket("198.51.100.4", a.cluster.shared.slot(T0))) == 0


def test_a_password_from_a_file_is_sent_and_a_wrong_one_is_an_outage(tmp_path):
    with RedisServer(password="s3cret-test") as srv:
        secret = tmp_path / "redis.pw"
        secret.write_text("s3cret-test\n")
        clock = Clock()
        good = Sensor(srv, "mx-a", clock, password_file=secret)
        good.connections(1, 0)
        good.sync()
        assert good.cluster.link.up and good.cluster.shipper.counters.counts_sent == 1
        bad = Sensor(srv, "mx-b", clock, password="wrong")
        bad.connections(1, 0)
        bad.sync()
        assert not bad.cluster.link.up and "AuthenticationError" in bad.cluster.link.last_error
        assert len(bad.cluster.shipper._counts) == 1          # kept for when it can log in
        # no password at all: Redis answers NOAUTH to every command, an outage too,
        # and a notice is raised here (fail open), not taken for one raised elsewhere
        anonymous = Sensor(srv, "mx-c", clock)
        anonymous.connections(THRESHOLD, THRESHOLD, host="198.51.100.77")
        clock.t += 1
        anonymous.sync()
        assert not anonymous.cluster.link.up and "uthentication" in anonymous.cluster.link.last_error
        assert len(anonymous.notices()) == 1


@pytest.mark.parametrize("text, message", [
    ('url = "http://127.0.0.1"', "[cluster] url: must be a redis://, rediss:// (TLS) or unix:// URL"),
    ('mode = "sharded"', "[cluster] mode: must be one of single, cluster"),
    ('password = "a"\npassword_file = "/x"', "[cluster] password: give password or password_file, not both"),
    ('tls_cert_file = "/c.pem"', "[cluster] tls_cert_file: give tls_cert_file and tls_key_file together"),
    ('sensor_name = "a b"', "[cluster] sensor_name: must be 1..64 letters"),
    ('max_pending = 0', "[cluster] max_pending: must be an integer >= 1"),
    ('enabled = "yes"', "[cluster] enabled: must be true or false"),
])
def test_cluster_config_mistakes_are_one_line(text, message):
    with pytest.raises(ConfigError) as info:
        loads(f"[cluster]\n{text}\n")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_an_unreadable_password_file_is_one_line(tmp_path):
    cfg = loads(f'[cluster]\nenabled = true\npassword_file = "{tmp_path / "missing"}"\n')
    with pytest.raises(ConfigError, match=r"\[cluster\] password_file: cannot read .*missing"):
        cfg.cluster.secret()


def test_only_the_live_userland_shares_a_replay_judges_its_capture_alone():
    from sensor.assembly import Userland
    from sensor.cluster.actor import ClusterActor

    config = Config(cluster=ClusterConfig(enabled=True, url="redis://127.0.0.1:1/0"))
    replay = Userland(config, lambda rec: None)
    assert replay.cluster is None and not isinstance(replay.actor, ClusterActor)
    live = Userland(config, lambda rec: None, cluster=True)
    assert live.cluster is not None and live.actor is live.cluster.actor
    assert live.reject_stats.hook is live.cluster.shared
    off = Userland(Config(), lambda rec: None, cluster=True)
    assert off.cluster is None


def test_the_cluster_counters_are_in_the_status_tree_and_the_metrics():
    from prometheus_client import core
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    from sensor.assembly import Userland
    from sensor.counters import as_tree
    from sensor.service.metrics import families

    live = Userland(Config(cluster=ClusterConfig(enabled=True, url="redis://127.0.0.1:1/0")), lambda rec: None,
                    cluster=True)
    tree = as_tree(live.counter_groups())["cluster"]
    assert {"up", "outages", "pending", "flushes", "claims_won", "claimed_elsewhere", "remote_bans",
            "bad_values", "bad_bans", "dropped"} <= set(tree)

    class Collect:
        def collect(self):
            yield from families(live.counter_groups(), core)

    registry = CollectorRegistry()
    registry.register(Collect())
    text = generate_latest(registry).decode()
    assert "smtp_sensor_cluster_up 1.0" in text and "smtp_sensor_cluster_outages_total 0.0" in text
