"""The bounded shutdown and the background snapshots, without a kernel:

* ``LiveFeed.step`` stops between chunks when the stop flag is up, and
  ``drain`` dissects what it left, then the ring, until its deadline (the
  rest counted as discarded);
* ``Pipeline.finish(give_up=...)`` ends the flows in a mail transaction
  first, then those with a dialogue, then the rest, and drops (counts) what
  is left when time is out; without ``give_up`` it ends them all;
* ``SnapshotWriter`` writes in a forked child that keeps none of the
  parent's descriptors, reports a failure in one line, runs one child at a
  time (a snapshot due meanwhile is skipped and counted) and ends a child
  still writing when asked (shutdown).
"""

from __future__ import annotations

import os
import time

from types import SimpleNamespace

from sensor.errors import SensorError
from sensor.inputs.live import DRAIN_CHUNK, LiveFeed
from sensor.pipeline import Pipeline
from sensor.records.sinks import ListSink
from sensor.service.snapshots import SnapshotWriter
from support.sessions import DIALOGUE, session_segments


def open_flows(pipe: Pipeline) -> None:
    """Three flows left open (no FIN), in this order: one with nothing of
    SMTP (a flood's), one after EHLO, one in a mail transaction."""
    flows = [([(True, b"x" * 100)], 40001), (DIALOGUE[:3], 40002), (DIALOGUE[:6], 40003)]
    ts = 100.0
    for dialogue, port in flows:
        for seg in session_segments(dialogue, cport=port)[:-2]:        # without the FINs
            pipe.feed_segment(seg, ts)
            ts += 0.001


class Budget:
    """give_up(): False for the first ``n`` questions, then True."""

    def __init__(self, n: int):
        self.left = n

    def __call__(self) -> bool:
        self.left -= 1
        return self.left < 0


def test_a_deadline_finishes_the_flow_in_a_transaction_first_and_counts_the_rest():
    sink = ListSink()
    pipe = Pipeline(sink)
    open_flows(pipe)
    assert len(pipe.sessions) == 3
    pipe.finish(give_up=Budget(2))      # asked once before ending the flows, then before each
    (rec,) = sink.of("smtp")       # the message sent, its final reply not seen yet
    assert rec["mailfrom"] == "alice@example.org" and rec["id.orig_p"] == 40003
    assert rec["delivered"] is False
    assert pipe.counters.unfinished == 2
    assert pipe.sessions == [] and len(pipe.reassembler.flows) == 0


def test_the_dialogue_comes_before_the_flood_flow():
    seen = []
    pipe = Pipeline(ListSink(), listeners=[lambda sess, ev: seen.append(sess.flow.orig_p)])
    open_flows(pipe)
    seen.clear()
    pipe.finish(give_up=Budget(3))
    assert sorted(set(seen)) == [40002, 40003] and pipe.counters.unfinished == 1


def test_no_time_left_at_all_leaves_every_flow_unfinished():
    sink = ListSink()
    pipe = Pipeline(sink)
    open_flows(pipe)
    pipe.finish(give_up=lambda: True)
    assert sink.of("smtp") == [] and pipe.counters.unfinished == 3 and pipe.sessions == []


def test_without_a_deadline_every_flow_is_finished():
    sink = ListSink()
    pipe = Pipeline(sink)
    open_flows(pipe)
    pipe.finish()
    assert sorted(r["id.orig_p"] for r in sink.of("smtp")) == [40002, 40003]
    assert pipe.counters.unfinished == 0 and pipe.sessions == []


# ---------------------------------------------------------------- LiveFeed

class FakeReader:
    """The event ring: each poll() returns the next batch."""

    lost = bad_records = callback_errors = 0

    def __init__(self, *batches):
        self.batches = list(batches)

    def poll(self, timeout_ms):
        return self.batches.pop(0) if self.batches else []


def events(n: int) -> list:
    frame = b"\x02" * 60            # not IP: the pipeline counts it and goes on
    return [SimpleNamespace(header=SimpleNamespace(flags=0, wire_len=60, ts_ns=i, direction=0, lost=0), frame=frame) for i in range(n)]


def test_a_stop_interrupts_a_step_and_drain_dissects_the_rest():
    feed = LiveFeed(FakeReader(events(1000), events(10)), Pipeline(ListSink()), maps=None)
    asked = []
    feed.step(0, interrupt=lambda: asked.append(1) or len(asked) > 1)       # up after the first chunk
    assert feed.counters.events == DRAIN_CHUNK
    feed.drain()
    assert feed.counters.events == 1010 and feed.counters.discarded == 0


def test_drain_stops_at_its_deadline_and_counts_what_it_left():
    feed = LiveFeed(FakeReader(events(1000)), Pipeline(ListSink()), maps=None)
    feed.drain(give_up=Budget(2))
    assert feed.counters.events == 2 * DRAIN_CHUNK and feed.counters.discarded == 1000 - 2 * DRAIN_CHUNK


# ---------------------------------------------------------------- SnapshotWriter

class Log:
    def __init__(self):
        self.errors = []

    def error(self, event, **kw):
        self.errors.append((event, kw))


def wait_done(writer: SnapshotWriter, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while writer.busy:
        assert time.monotonic() < deadline, "the snapshot child did not end"
        writer.poll()
        time.sleep(0.01)


def test_the_snapshot_is_written_by_a_child_holding_none_of_our_descriptors(tmp_path):
    out = tmp_path / "fds.txt"
    keep_r, keep_w = os.pipe()          # stands for the BPF programs, maps and sockets
    try:
        def write():
            out.write_text(" ".join(sorted(os.listdir("/proc/self/fd"), key=int)) + f" pid {os.getpid()}")

        writer = SnapshotWriter(write, Log())
        assert writer.start() is True
        child = writer.pid
        assert child != os.getpid()
        wait_done(writer)
    finally:
        os.close(keep_r)
        os.close(keep_w)
    fds, pid = out.read_text().split(" pid ")
    assert int(pid) == child
    inherited = {int(fd) for fd in fds.split()} - {0, 1, 2}
    assert keep_r not in inherited and keep_w not in inherited
    assert len(inherited) <= 3     # the report pipe, the file being written, the listing's own
    assert writer.counters.written == 1 and writer.counters.failed == 0


def test_a_failing_snapshot_is_logged_in_one_line():
    log = Log()

    def write():
        raise SensorError("cannot write the snapshot /x: No space left on device")

    writer = SnapshotWriter(write, log)
    writer.start()
    wait_done(writer)
    assert writer.counters.failed == 1 and writer.counters.written == 0
    ((event, kw),) = log.errors
    assert event == "statistics snapshot not written" and "No space left" in kw["error"]
    assert "\n" not in kw["error"]


def test_one_child_at_a_time_and_finish_ends_it(tmp_path):
    writer = SnapshotWriter(lambda: time.sleep(60), Log())
    assert writer.start() is True
    child = writer.pid
    assert writer.start() is False and writer.counters.skipped == 1
    writer.finish()
    assert not writer.busy
    assert not os.path.exists(f"/proc/{child}") or "Z" not in open(f"/proc/{child}/stat").read().split()[2]
    assert writer.counters.written == 0
