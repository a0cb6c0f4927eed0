"""The drop record: one builder, one shape for every producer (a rule's
verdict, a ban by the reject statistics, a manual ban or unban through the
control socket), pinned by its JSON Schema."""

from __future__ import annotations

from types import SimpleNamespace

import jsonschema
import pytest
from support.record_schemas import check
from support.rules_helpers import StaticRules, run

from sensor.config import SpamStatsConfig
from sensor.kernel import abi
from sensor.kernel.maps import Entry
from sensor.records import drop_record
from sensor.records.sinks import ListSink
from sensor.rules import hooks, rule
from sensor.rules.enforce import KernelEnforcer, ReplayEnforcer
from sensor.service.control import ControlServer
from sensor.spamstats import ConnState, RejectStats, SpamStatsActor

#: every field a drop record may have, in the order the builder writes them
ORDER = ["ts", "event_type", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "community_id",
         "action", "target", "reason", "enforced_by", "reset", "rule_id", "ttl", "note"]


def rule_drops() -> list[dict]:
    @rule(hooks.command, id="t.dropper")
    def dropper(flow, command):
        if command.verb == "MAIL":
            flow.drop()

    @rule(hooks.command, id="t.banner")
    def banner(flow, command):
        if command.verb == "MAIL":
            flow.ban_source(ttl=600, prefix=24)

    return run(StaticRules(dropper)).sink.of("drop") + run(StaticRules(banner)).sink.of("drop")


def spam_stats_drops() -> list[dict]:
    stats = RejectStats(SpamStatsConfig(threshold=2), clock=lambda: 1000.0)
    sink = ListSink()
    actor = SpamStatsActor(stats, sink, ReplayEnforcer())
    for _ in range(2):
        stats.observe_reply("203.0.113.9", 1000.0, 550, ConnState())
    actor.finish()
    return sink.of("drop")


class FakeMaps:
    def __init__(self):
        self.banned = {}

    def ban(self, network, ttl=None, reason=None):
        self.banned[network] = reason

    def unban(self, network):
        return self.banned.pop(network, None) is not None

    def bans(self):
        return [Entry(n, reason, 0, 0, 0) for n, reason in self.banned.items()]


def manual_drops(tmp_path) -> list[dict]:
    maps, sink = FakeMaps(), ListSink()
    sensor = SimpleNamespace(enforcer=KernelEnforcer(maps), sink=sink)
    server = ControlServer(tmp_path / "control.sock", sensor)
    try:
        server.cmd_ban_add("198.51.100.0/24", ttl=60, reason="scanner")
        assert maps.banned == {"198.51.100.0/24": abi.Reason.MANUAL}
        server.cmd_ban_del("198.51.100.0/24")
        assert maps.banned == {}
    finally:
        server.close()
    return list(sink)


def test_every_producer_writes_one_shape_in_one_order(tmp_path):
    by_producer = {"rule": rule_drops(), "spam_stats": spam_stats_drops(), "manual": manual_drops(tmp_path)}
    assert [len(v) for v in by_producer.values()] == [2, 1, 2]
    for reason, recs in by_producer.items():
        for rec in recs:
            check(rec)
            assert rec["reason"] == reason
            assert list(rec) == [k for k in ORDER if k in rec], rec
    flow_drop, rule_ban = by_producer["rule"]
    assert (flow_drop["action"], rule_ban["action"]) == ("drop_flow", "ban_source")
    assert flow_drop["reset"] is True and "reset" not in rule_ban      # a flow drop says whether it tears down
    assert "uid" in rule_ban and rule_ban["rule_id"] == "t.banner" and rule_ban["ttl"] == 600
    (spam_ban,) = by_producer["spam_stats"]
    assert spam_ban == {"ts": 1000.0, "event_type": "drop", "action": "ban_source",
                        "target": "203.0.113.9/32", "reason": "spam_stats", "enforced_by": "replay",
                        "ttl": 3600.0}
    ban, unban = by_producer["manual"]
    assert (ban["action"], ban["ttl"], ban["note"]) == ("ban_source", 60.0, "scanner")
    assert unban["action"] == "unban_source" and "ttl" not in unban and "note" not in unban


FLOW = SimpleNamespace(uid="CAbc123", orig_h="192.0.2.10", orig_p=40000, resp_h="198.51.100.25", resp_p=25,
                       community_id="1:" + "A" * 27 + "=")


@pytest.mark.parametrize("rec", [
    drop_record(1.0, "drop_flow", "x", "spam_stats", "replay", ttl=5),            # a flow drop is a rule's
    drop_record(1.0, "drop_flow", "x", "rule", "replay", rule_id="r"),            # with its flow
    drop_record(1.0, "ban_source", "192.0.2.0/24", "rule", "kernel", flow=FLOW),  # and its rule
    drop_record(1.0, "ban_source", "192.0.2.1/32", "spam_stats", "kernel"),       # a statistics ban has a TTL
    drop_record(1.0, "ban_source", "192.0.2.1/32", "manual", "kernel", flow=FLOW),
    drop_record(1.0, "ban_source", "192.0.2.1/32", "spam_stats", "kernel", ttl=5, note="why"),
    drop_record(1.0, "unban_source", "192.0.2.1/32", "rule", "kernel", flow=FLOW, rule_id="r"),
    drop_record(1.0, "unban_source", "192.0.2.1/32", "manual", "kernel", ttl=5),
], ids=["flow-drop-by-stats", "flow-drop-without-flow", "rule-without-rule-id", "stats-ban-without-ttl",
        "manual-with-a-flow", "note-not-manual", "unban-by-a-rule", "unban-with-ttl"])
def test_the_schema_refuses_a_drop_record_no_producer_writes(rec):
    with pytest.raises(jsonschema.ValidationError):
        check(rec)
