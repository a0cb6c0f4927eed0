"""``replay --workers N``: the records of a capture split over N worker
processes are those of one process (compared as normalised JSON after a
sort), on every capture of the repository and on a generated one with many
client hosts, a spammer who earns an SMTP_PossibleSpam, and IP fragments."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from sensor.assembly import Userland
from sensor.config import Config
from sensor.errors import SensorError
from sensor.inputs.replay import replay
from sensor.inputs.workers import check_splittable, replay_workers
from sensor.records.sinks import JsonLinesSink, ListSink
from support.captures import PCAPS_DIR, captures_in
from support.workers_capture import SPAM_CONFIG, SPAMMER, make_workers_capture

pytestmark = pytest.mark.offline

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules"
MONITOR = replace(Config(), sensor=replace(Config().sensor, enforce=False))


def _config(base: Config, rules=None) -> Config:
    return replace(base, sensor=replace(base.sensor, enforce=False, rules=rules))


def _one(path, config):
    sink = ListSink()
    result = replay(path, Userland(config, sink, uid_seed=0, by_content=True))
    return [_text(r) for r in sink], result.counters


def _split(path, config, workers):
    out = io.StringIO()
    result = replay_workers(path, lambda sink: Userland(config, sink, uid_seed=0, by_content=True),
                            workers, JsonLinesSink(out))
    return [_text(json.loads(line)) for line in out.getvalue().splitlines()], result.counters


def _text(record) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("capture", captures_in(PCAPS_DIR))
def test_every_repository_capture_gives_one_process_records_with_workers(capture, workers):
    path = PCAPS_DIR / capture
    one, one_counts = _one(path, MONITOR)
    split, split_counts = _split(path, MONITOR, workers)
    assert sorted(split) == sorted(one)
    assert split_counts == one_counts


@pytest.fixture(scope="module")
def many_hosts(tmp_path_factory):
    return make_workers_capture(tmp_path_factory.mktemp("workers"))


@pytest.mark.parametrize("workers", [2, 3])
def test_many_hosts_a_spammer_and_fragments_give_one_process_records(many_hosts, workers):
    config = _config(SPAM_CONFIG, RULES)
    one, one_counts = _one(many_hosts, config)
    split, split_counts = _split(many_hosts, config, workers)
    assert sorted(split) == sorted(one)
    records = [json.loads(r) for r in one]
    notices = [r for r in records if r["event_type"] == "notice"]
    assert [n["note"] for n in notices] == ["SMTP_PossibleSpam"]
    assert notices[0]["src"] == SPAMMER
    assert sum(1 for r in records if r["event_type"] == "smtp" and r.get("mailfrom", "").startswith("frag@")) == 4
    assert len({r["id.orig_h"] for r in records if r["event_type"] == "smtp"}) > 40
    # the reversed fragments, held until their first fragment named their worker, are counted once
    assert split_counts == one_counts


def test_ticks_happen_in_every_worker_at_the_capture_times_of_one_process(many_hosts):
    """A spammer judged by a periodic check: its notice carries the time of
    the tick that judged it, the same in the worker that follows it."""
    config = _config(replace(SPAM_CONFIG, spam_stats=replace(SPAM_CONFIG.spam_stats, check_interval=0.5)))
    one, _ = _one(many_hosts, config)
    split, _ = _split(many_hosts, config, 2)
    ts_one = [json.loads(r)["ts"] for r in one if '"notice"' in r]
    ts_split = [json.loads(r)["ts"] for r in split if '"notice"' in r]
    assert ts_one and ts_split == ts_one


def test_a_workers_records_reach_the_output_while_the_other_worker_still_runs(many_hosts, tmp_path):
    """The worker that starts second waits, before it reads a packet, until
    the output has a record of the first: records that were put out only
    after every worker had ended would never come, and it would give up."""
    first, arrived = tmp_path / "first", tmp_path / "arrived"

    def make_userland(sink):
        try:
            os.close(os.open(first, os.O_CREAT | os.O_EXCL))
        except FileExistsError:        # the second worker
            deadline = time.monotonic() + 10
            while not arrived.exists():
                if time.monotonic() > deadline:
                    raise SensorError("no record of the first worker reached the output")
                time.sleep(0.01)
        return Userland(MONITOR, sink, uid_seed=0)

    class Output(ListSink):
        def __call__(self, record):
            arrived.touch()
            super().__call__(record)

        def flush(self):
            pass

    out = Output()
    replay_workers(many_hosts, make_userland, 2, out)
    one = ListSink()
    replay(many_hosts, Userland(MONITOR, one, uid_seed=0))
    assert sorted(map(_text, out)) == sorted(map(_text, one))


def test_a_worker_that_dies_is_one_error_after_the_other_workers_records(many_hosts, tmp_path):
    first = tmp_path / "first"

    def make_userland(sink):
        try:
            os.close(os.open(first, os.O_CREAT | os.O_EXCL))
        except FileExistsError:        # the second worker: killed before it reads a packet
            os._exit(3)
        return Userland(MONITOR, sink, uid_seed=0)

    out = ListSink()
    with pytest.raises(SensorError, match=r"a replay worker failed: worker \d+ ended without an answer"):
        replay_workers(many_hosts, make_userland, 2, out)
    assert out.of("smtp")                      # the other worker's records are out


def test_banning_and_writing_passed_packets_are_refused_with_workers(tmp_path):
    with pytest.raises(SensorError, match="cannot enforce bans"):
        check_splittable(Config(), 2)
    with pytest.raises(SensorError, match="--write-passed"):
        check_splittable(MONITOR, 2, tmp_path / "passed.pcap")
    check_splittable(MONITOR, 2)
    check_splittable(Config(), 1, tmp_path / "passed.pcap")
    no_bans = replace(Config(), spam_stats=replace(Config().spam_stats,
                                                   ban={k: 0 for k in Config().spam_stats.ban}))
    check_splittable(no_bans, 2)     # enforcing, nothing can ban: flow drops stay in their worker


def test_the_command_splits_and_refuses_in_one_line(tmp_path):
    capture = PCAPS_DIR / "ndpi__smtp-starttls.pcap"

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "sensor.cli", "replay", str(capture), *extra],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)

    one = run("--monitor-only")
    two = run("--monitor-only", "--workers", "2")
    assert one.returncode == two.returncode == 0
    assert sorted(one.stdout.splitlines()) == sorted(two.stdout.splitlines())
    assert one.stderr.split(" in ")[0] == two.stderr.split(" in ")[0]     # the summary, without the time
    refused = run("--workers", "2")
    assert refused.returncode != 0 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "cannot enforce bans" in refused.stderr


def test_a_corrupt_capture_is_an_error_after_every_workers_records(tmp_path):
    good = (PCAPS_DIR / "ndpi__smtp.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(good[: len(good) - 7])
    out = io.StringIO()
    with pytest.raises(SensorError, match="after"):
        replay_workers(cut, lambda sink: Userland(MONITOR, sink), 2, JsonLinesSink(out))
    assert out.getvalue().count("\n") >= 1


def test_an_idle_flow_times_out_at_the_same_capture_time_in_its_worker(tmp_path):
    """Client A's connection goes quiet; only client B (another worker's)
    is heard after it: A's worker reads B's packets too, so A's flow ends
    by timeout at the packet one process ends it at."""
    from support.smtp_pcap import session_frames, smtp_dialogue, write_pcap
    from support.workers_capture import T0, apart

    a, b = apart([f"192.0.2.{n}" for n in range(20, 90)], workers=(2,))
    frames = session_frames(smtp_dialogue()[:4], sport=25, client=a, t0=T0, fin=False)
    for k in range(4):     # B's sessions, one every 200 s: past A's idle timeout (300 s)
        frames += session_frames(smtp_dialogue(), sport=25, cport=41000 + k, client=b, t0=T0 + 200.0 * (k + 1))
    path = write_pcap(tmp_path / "idle.pcap", sorted(frames, key=lambda f: f[0]))
    one, one_counts = _one(path, MONITOR)
    split, split_counts = _split(path, MONITOR, 2)
    assert sorted(split) == sorted(one)
    assert split_counts == one_counts
    # ended at B's first packet past the timeout (capture time 400 s), in either run
    ended = [json.loads(r) for r in split if json.loads(r).get("id.orig_h") == a]
    assert [round(r["ts"] - T0, 3) for r in ended if r["event_type"] == "anomaly"] == [400.0]


def test_a_datagram_of_another_workers_flow_is_not_dissected():
    """The datagram filter (a worker's own flows) keeps a reassembled datagram out of the pipeline."""
    from scapy.layers.inet import IP, TCP, fragment
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw, raw

    from sensor.pipeline import Pipeline

    pkt = IP(src="192.0.2.5", dst="198.51.100.25", id=5) / TCP(sport=40000, dport=25, flags="S") / Raw(b"x" * 40)
    frames = [raw(Ether() / f) for f in fragment(pkt, fragsize=16)]
    for keep, flows in ((True, 1), (False, 0)):
        pipeline = Pipeline(ListSink())
        pipeline.datagram_filter = lambda seg, keep=keep: keep
        for i, frame in enumerate(frames):
            pipeline.feed_frame(1, frame, len(frame), 1.0 + i / 100)
        assert pipeline.counters.flows == flows
