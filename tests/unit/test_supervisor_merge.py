"""What a supervised sensor says for all its workers (sensor.service.merge),
and how their records become one stream (sensor.service.relay)."""

from __future__ import annotations

import io
import os

import pytest

from sensor.service import merge
from sensor.records.sinks import ListSink
from sensor.service.relay import RecordLines, RecordRelay

pytestmark = pytest.mark.unit


def test_counters_are_summed_ages_take_the_largest_and_identities_the_first():
    a = {"pid": 10, "uptime": 3.0, "events": 5, "pipeline": {"flows": 2, "auth": {"PLAIN": 1}},
         "rules": [{"id": "r1", "calls": 4, "ms": 0.5}], "ports": [25]}
    b = {"pid": 11, "uptime": 2.5, "events": 7, "pipeline": {"flows": 1, "auth": {"LOGIN": 2}},
         "rules": [{"id": "r1", "calls": 6, "ms": 0.25}], "ports": [25]}
    assert merge.sum_trees([a, b]) == {
        "pid": 10, "uptime": 3.0, "events": 12, "pipeline": {"flows": 3, "auth": {"PLAIN": 1, "LOGIN": 2}},
        "rules": [{"id": "r1", "calls": 10, "ms": 0.75}], "ports": [25]}


def test_lists_of_different_shapes_are_not_summed():
    assert merge.sum_trees([{"rules": [1]}, {"rules": [1, 2]}]) == {"rules": [1]}
    assert merge.sum_trees([{"flag": True}, {"flag": False}]) == {"flag": True}


def test_flows_of_every_worker_are_listed_oldest_first_with_their_worker():
    rows = merge.merge_flows({0: [{"uid": "a", "age": 1.0}], 1: [{"uid": "b", "age": 5.0}, {"uid": "c", "age": 0.1}]},
                             limit=2)
    assert rows == [{"uid": "b", "age": 5.0, "worker": 1}, {"uid": "a", "age": 1.0, "worker": 0}]


def test_statistics_of_disjoint_hosts_are_concatenated_and_sorted_as_one_worker_sorts_them():
    def report(hosts, tracked):
        return {"hosts": hosts, "tracked": tracked, "thresholds": {"total": 10}, "counters": {"notices": tracked}}
    merged = merge.merge_stats({0: report([{"host": "192.0.2.1", "total": 3}], 1),
                                1: report([{"host": "192.0.2.2", "total": 9}, {"host": "192.0.2.3", "total": 3}], 2)},
                               limit=10)
    assert [(h["host"], h["worker"]) for h in merged["hosts"]] == [("192.0.2.2", 1), ("192.0.2.1", 0),
                                                                   ("192.0.2.3", 1)]
    assert (merged["tracked"], merged["counters"], merged["thresholds"]) == (3, {"notices": 3}, {"total": 10})


def test_bans_are_listed_once_with_the_note_of_the_worker_that_keeps_it():
    row = {"target": "192.0.2.66/32", "reason": "manual"}
    assert merge.merge_bans({0: [dict(row)], 1: [{**row, "note": "spam run"}]}) == [{**row, "note": "spam run"}]


def test_a_reload_reports_every_workers_errors():
    merged = merge.merge_reload({0: {"changed": False, "rules": ["a"], "errors": {}},
                                 1: {"changed": True, "rules": ["a"], "errors": {"x.py": "SyntaxError"}}})
    assert merged == {"changed": True, "rules": ["a"], "errors": {"x.py": "SyntaxError"}, "workers": 2}


def test_the_relay_writes_whole_lines_only_and_a_cut_last_line_alone():
    out = io.BytesIO()
    relay = RecordRelay(out)
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    relay.add(r1)
    relay.add(r2)
    os.write(w1, b'{"a": 1}\n{"a": ')
    os.write(w2, b'{"b": 1}\n')
    relay.pump(0.1)
    relay.pump(0.1)
    assert sorted(out.getvalue().splitlines()) == [b'{"a": 1}', b'{"b": 1}']
    os.write(w1, b'2}\n{"cut"')
    os.close(w1)
    os.close(w2)
    relay.close()
    assert out.getvalue().splitlines()[2:] == [b'{"a": 2}', b'{"cut"']
    assert relay.lines == 3


def test_the_workers_lines_reach_the_outputs_as_records_and_a_cut_line_is_counted():
    outputs = ListSink()
    relay = RecordRelay(RecordLines(outputs))
    r, w = os.pipe()
    relay.add(r)
    os.write(w, '{"event_type": "smtp", "uid": "C1", "subject": "h\u00e9"}\n{"event_type": "smtp", "ui'.encode())
    os.close(w)
    relay.close()
    assert outputs == [{"event_type": "smtp", "uid": "C1", "subject": "hé"}]
    assert relay.out.bad_lines == 1


class _FakeSensor:
    def __init__(self, n):
        self.n = n

    def status(self):
        return {"events": self.n}


def test_every_worker_is_asked_at_once_and_one_that_is_gone_is_named(tmp_path):
    from sensor.service.control import ControlServer
    from sensor.service.fanout import WorkerUnanswered, ask_all

    servers = {w: ControlServer(tmp_path / f"w{w}.sock", _FakeSensor(10 + w)) for w in (0, 1)}
    paths = {w: s.path for w, s in servers.items()} | {2: str(tmp_path / "gone.sock")}
    try:
        replies = ask_all(paths, {w: {"cmd": "status"} for w in paths},
                          pump=lambda: [s.serve_pending() for s in servers.values()], timeout=5)
    finally:
        for s in servers.values():
            s.close()
    assert replies[0] == {"ok": True, "result": {"events": 10}}
    assert replies[1] == {"ok": True, "result": {"events": 11}}
    assert isinstance(replies[2], WorkerUnanswered) and "worker 2" in str(replies[2])


def _sample(name, kind, value, labels=(), combine="sum"):
    from sensor.service.metrics import Sample
    names = tuple(k for k, _ in labels)
    return list(Sample("smtp_sensor_" + name, kind, "help", names, tuple(v for _, v in labels), value, combine))


def _hist(counts, total):
    return {"buckets": [["0.001", counts[0]], ["+Inf", counts[1]]], "sum": total}


def _combined(wm, answers, workers=2):
    return {(s.name, tuple(s.label_values)): s.value for s in wm.combine(answers, workers)}


def test_worker_metrics_are_summed_histograms_bucket_wise_gauges_as_declared():
    from sensor.service.workermetrics import WorkerMetrics

    def answer(pid, events, flows, rules, fill, hist):
        return {"pid": pid, "samples": [
            _sample("events_total", "counter", events), _sample("active_flows", "gauge", flows),
            _sample("rules_loaded", "gauge", rules, combine="max"),
            _sample("ring_fill_ratio", "gauge", fill, combine="max"),
            _sample("verdict_to_kernel_seconds", "histogram", hist, (("since", "event"),))]}
    got = _combined(WorkerMetrics(), {0: answer(10, 5, 2, 3, 0.1, _hist((1, 2), 0.5)),
                                      1: answer(11, 7, 1, 3, 0.4, _hist((3, 3), 0.25))})
    assert got[("smtp_sensor_events_total", ())] == 12
    assert got[("smtp_sensor_active_flows", ())] == 3
    assert got[("smtp_sensor_rules_loaded", ())] == 3
    assert got[("smtp_sensor_ring_fill_ratio", ())] == 0.4
    assert got[("smtp_sensor_verdict_to_kernel_seconds", ("event",))] == _hist((4, 5), 0.75)
    assert got[("smtp_sensor_workers_up", ())] == 2
    assert got[("smtp_sensor_worker_up", ("1",))] == 1


def test_worker_counters_never_fall_when_a_worker_is_down_or_started_again():
    """A sum that falls is a reset to Prometheus (rate() would jump)."""
    from sensor.service.workermetrics import WorkerMetrics

    def answer(pid, events, flows):
        return {"pid": pid, "samples": [_sample("events_total", "counter", events),
                                        _sample("active_flows", "gauge", flows)]}
    wm = WorkerMetrics()
    _combined(wm, {0: answer(10, 5, 2), 1: answer(11, 7, 1)})
    down = _combined(wm, {0: answer(10, 6, 2)})                     # worker 1 does not answer
    assert down[("smtp_sensor_events_total", ())] == 13             # its last counters
    assert down[("smtp_sensor_active_flows", ())] == 2              # its gauges left out
    assert (down[("smtp_sensor_workers_up", ())], down[("smtp_sensor_worker_up", ("1",))]) == (1, 0)
    again = _combined(wm, {0: answer(10, 6, 2), 1: answer(12, 1, 0)})   # worker 1 started again
    assert again[("smtp_sensor_events_total", ())] == 6 + 7 + 1
