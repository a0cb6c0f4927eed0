"""A replay split over worker processes: ``smtp-sensor replay --workers N``.

Each worker is a process forked from the command, with its own userland
(``sensor.assembly.Userland``, built by the caller's ``make_userland(sink)``:
its rules, its reject statistics).  Every worker reads the whole capture and
keeps the packets of its own clients (``sensor.inputs.split.FrameOwners``:
the client's address hashed, ``sensor.shard``): all of a host's connections,
its flows and its reject statistics are in one worker, and the workers share
nothing while they run.  Reading is cheap beside dissecting (a header peek
per packet of the others; docs/benchmarks.md), and a worker that reads every
packet keeps the capture's clock as one process does: its ticks (statistics)
and its expiries (idle flows) come at the same packets, and the end of the
input at the capture's last packet, in every worker.

Each worker writes its records as JSON lines into a pipe of its own, and
the command puts them, whole records as they come, into its outputs
(``sensor.service.relay``, as the live supervisor does): the output holds
the records one process writes, in another order (``tests/offline/
test_replay_workers.py`` compares them after a stable sort), and the
workers' records are written while they run, not after them.  The summary's
counts are the workers' added up.

What cannot be split: a verdict that reaches past its worker.  A ban (by a
rule, or by the statistics) covers its prefix wherever it appears, also as
the server of another worker's client, from the packet that earned it on;
and ``--write-passed`` writes one pcap in capture order.  An enforcing
replay that can ban, and ``--write-passed``, are refused with more than one
worker (``check_splittable``); flow drops alone would split, but rules may
ban.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback

from sensor.counters import add_counts
from sensor.errors import SensorError
from sensor.inputs.replay import ReplayError, ReplayResult, replay
from sensor.inputs.split import FrameOwners, ShardFilter
from sensor.service.relay import RecordLines, RecordRelay, widen

__all__ = ["replay_workers", "check_splittable", "WorkersResult"]


class WorkersResult(ReplayResult):
    """A ``ReplayResult`` whose counters are the workers' sum, with their verdict counts."""

    def __init__(self, path, packets, seconds, counters, warnings, verdicts, worker_cpu):
        super().__init__(path=path, packets=packets, seconds=seconds, counters=counters, warnings=warnings)
        self.verdicts = verdicts
        #: CPU seconds (user + system) of each worker: how evenly the work was split
        self.worker_cpu = worker_cpu


def check_splittable(config, workers: int, write_passed=None) -> None:
    """Refuse, in one line, what a replay over ``workers`` cannot do as one process does."""
    if workers <= 1:
        return
    if write_passed is not None:
        raise SensorError(f"--workers {workers} with --write-passed: the passed packets are one pcap "
                          "in capture order, written by the process that judges them all; use --workers 1")
    cfg, st = config.sensor, config.spam_stats
    can_ban = cfg.rules is not None or (st.enabled and any(ttl > 0 for ttl in st.ban.values()))
    if cfg.enforce and can_ban:
        raise SensorError(f"--workers {workers} cannot enforce bans: a ban decided in one worker stops, "
                          "from that packet on, packets other workers follow; use --workers 1, "
                          "or --monitor-only (verdicts recorded, not applied)")


def replay_workers(path, make_userland, workers: int, out, *, strict: bool = True,
                   progress=None) -> WorkersResult:
    """Replay ``path`` over ``workers`` processes; their records go to ``out``
    (a sink: sensor.outputs.Outputs) as they come, whole records.  ``make_userland(sink)`` is
    called in each worker.  ``progress``: shown by worker 0.  A worker's
    ``SensorError`` (rules that do not load, a corrupt capture) is raised
    here, after the records of what was read are written."""
    import time

    started = time.perf_counter()
    for stream in (sys.stdout, sys.stderr, out):
        flush = getattr(stream, "flush", None)
        if flush is not None:
            flush()        # nothing buffered is written twice by the children
    relay = RecordRelay(RecordLines(out))
    children = []
    try:
        for index in range(workers):
            children.append(_start(path, make_userland, workers, index, strict,
                                   progress if index == 0 else None, relay))
        open_records = {records_fd for _, _, records_fd in children}
        while open_records:
            for fd in relay.pump(1.0):
                relay.finish(fd)
                open_records.discard(fd)
        answers = [_answer(pid, fd) for pid, fd, _ in children]
        children = []
    finally:
        for pid, fd, _ in children:       # interrupted: ours only, by pid
            _stop(pid, fd)
        relay.close()
    for kind, *what in answers:
        if kind == "error":
            error_type, message = what
            raise (ReplayError if error_type == "ReplayError" else SensorError)(message)
        if kind == "crash":
            raise SensorError(f"a replay worker failed: {what[0]}")
    counters, verdicts = {}, {}
    for _, result, counts, _cpu in answers:
        add_counts(counters, result.counters)
        add_counts(verdicts, counts)
    first = answers[0][1]
    return WorkersResult(str(path), first.packets, time.perf_counter() - started, counters,
                         first.warnings, verdicts, [a[3] for a in answers])


def _start(path, make_userland, workers, index, strict, progress, relay):
    """Fork worker ``index``: its records come through a pipe of their own
    (``relay``), its answer through another once its records are all written."""
    read_fd, write_fd = os.pipe()
    records_read, records_write = os.pipe()
    widen(records_write)
    pid = os.fork()
    if pid:
        os.close(write_fd)
        os.close(records_write)
        relay.add(records_read)
        return pid, read_fd, records_read
    # the worker: never returns into the caller's code
    os.close(read_fd)
    os.close(records_read)
    for fd in relay.fds():
        os.close(fd)              # the pipes of the workers forked before this one
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        answer = _work(path, make_userland, workers, index, records_write, strict, progress)
    except BaseException:           # noqa: BLE001 - reported to the parent, which decides
        answer = ("crash", traceback.format_exc(limit=3).strip().splitlines()[-1])
        code = 1
    try:
        with os.fdopen(write_fd, "wb") as pipe:
            pickle.dump(answer, pipe)
    finally:
        os._exit(code)


def _work(path, make_userland, workers, index, records_fd, strict, progress):
    from sensor.records.sinks import JsonLinesSink

    with open(records_fd, "w", encoding="utf-8", buffering=1 << 16) as records:
        sink = JsonLinesSink(_FlushedAtClose(records))
        try:
            userland = make_userland(sink)
        except SensorError as exc:
            return ("error", type(exc).__name__, str(exc))
        pipeline = userland.pipeline
        pipeline.datagram_filter = ShardFilter(pipeline.ports, workers, index).keeps
        owners = FrameOwners(pipeline.ports, workers, index, timeout=pipeline.defragmenter.limits.timeout)
        try:
            result = replay(path, userland, strict=strict, progress=progress, shard=owners)
        except SensorError as exc:
            return ("error", type(exc).__name__, str(exc))
        finally:
            if progress is not None:
                progress.close()
    times = os.times()            # a forked child's start at zero
    return ("ok", result, userland.verdict_counts(), times.user + times.system)


class _FlushedAtClose:
    """A text stream whose ``flush`` waits for its ``close``: structlog's
    ``WriteLogger`` flushes after every record, which through a pipe is one
    wakeup of the command per record; the records go in 64 KiB writes."""

    def __init__(self, stream):
        self.write = stream.write

    def flush(self) -> None:
        pass


def _answer(pid: int, fd: int):
    with os.fdopen(fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        return ("crash", f"worker {pid} ended without an answer (status {status})")
    return pickle.loads(data)


def _stop(pid: int, fd: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    finally:
        os.close(fd)
