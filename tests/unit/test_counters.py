"""The counter type: declared once with a help text, plain slots on the hot
path, read by one walk into the status tree and the Prometheus families."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sensor.counters import Counters, Group, as_tree, counter, gauge
from sensor.service.metrics import PREFIX, families
from support.prereqs import require_module


class Parts(Counters):
    METRIC_PREFIX = "parts_"
    made = counter("parts made")
    rejected = counter("parts rejected, by reason", by="reason")
    bans = counter("bans asked for, by who asked", metric="bans", labels={"by": "parts"})
    queued = gauge("parts waiting now", read=lambda line: len(line.queue))


class Other(Counters):
    bans = counter("bans asked for, by who asked", labels={"by": "other"})


def test_declared_fields_are_slots_and_start_at_zero():
    c = Parts(SimpleNamespace(queue=[1, 2]))
    c.made += 2
    c.rejected["cut"] = c.rejected.get("cut", 0) + 1
    assert c.as_dict() == {"made": 2, "rejected": {"cut": 1}, "bans": 0, "queued": 2}
    assert Parts.__slots__ == ("made", "rejected", "bans")       # queued is read, not stored
    assert c.queued == 2
    with pytest.raises(AttributeError):
        c.maed = 1                     # a misspelt counter is an error, not a new attribute
    assert list(Parts.FIELDS) == ["made", "rejected", "bans", "queued"]


def test_update_sets_stored_fields_and_ignores_the_rest():
    c = Parts(SimpleNamespace(queue=[])).update({"made": 5, "queued": 9, "unknown": 1, "rejected": {"x": 2}})
    assert c.as_dict() == {"made": 5, "rejected": {"x": 2}, "bans": 0, "queued": 0}


def test_metric_names_take_the_class_prefix_unless_a_field_names_its_own():
    assert [Parts.metric_name(f) for f in Parts.FIELDS.values()] == [
        "parts_made", "parts_rejected", "bans", "parts_queued"]


def test_groups_on_one_path_share_its_dict_and_pathless_groups_stay_out():
    a, b = Parts(SimpleNamespace(queue=[])), Other()
    a.made = 1
    tree = as_tree([Group((), a), Group(("other",), b), Group(("other", "deeper"), Other()),
                    Group(None, Other(), (("rule", "r1"),))])
    assert tree == {"made": 1, "rejected": {}, "bans": 0, "queued": 0,
                    "other": {"bans": 0, "deeper": {"bans": 0}}}


def test_families_merge_fields_of_one_metric_name_and_carry_the_group_labels():
    require_module("prometheus_client")
    from prometheus_client import core

    a, b = Parts(SimpleNamespace(queue=[1])), Other()
    a.bans, b.bans = 2, 3
    a.rejected.update({"short": 1, "cut": 4})
    fams = {f.name: f for f in families([Group((), a, (("line", "1"),)), Group((), b, (("line", "1"),))], core)}
    bans = fams[PREFIX + "bans"]
    assert bans.type == "counter"
    assert sorted((s.labels["by"], s.value) for s in bans.samples) == [("other", 3), ("parts", 2)]
    rejected = fams[PREFIX + "parts_rejected"]
    assert [(s.labels, s.value) for s in rejected.samples] == [
        ({"line": "1", "reason": "cut"}, 4), ({"line": "1", "reason": "short"}, 1)]
    assert fams[PREFIX + "parts_queued"].type == "gauge"
    assert fams[PREFIX + "parts_made"].documentation == "parts made"


def test_a_histogram_counts_in_buckets_and_reads_cumulative():
    from sensor.counters import Counters, histogram

    class Timed(Counters):
        took = histogram("seconds", (0.1, 1.0))

    timed = Timed()
    for value in (0.05, 0.1, 0.5, 3.0):
        timed.took.observe(value)
    assert timed.took.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]
    assert timed.as_dict() == {"took": {"count": 4, "sum": 3.65, "buckets": {"0.1": 2, "1.0": 3, "+Inf": 4}}}
    timed.update({"took": 7})                 # a restored snapshot never replaces a distribution
    assert timed.took.count == 4
