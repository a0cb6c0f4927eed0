"""The long-running sensor: the datapath and the userland (``sensor.assembly``:
pipeline, rules, reject statistics, built from one ``Config`` as a replay
builds it), and the loop that drives them.

    Sensor(config).run()              attach, loop, detach on every exit path

    sensor = Sensor(config, sink=records.append)   # or driven by the caller:
    sensor.start()                    # build, load, attach, rules, statistics
    while ...: sensor.step()          # one turn of the loop (e.g. in a thread)
    sensor.stop()                     # detach, drain, snapshot, unload (idempotent)

The loop (one thread): read the event ring into the pipeline (rules run there,
each call under its budget: sensor.rules.budget); with ``[cluster]``, act on
what the other sensors shared (``Userland.poll``: remote bans, notice claims,
the fleet's counts; the Redis I/O is sensor.cluster's threads'); every second tick
the reject statistics (notices, bans), flush the outputs (Zeek's logs rotate
when due) and sweep expired kernel entries; poll the rule files (after
SIGHUP / a control request: read the configuration again, apply what changed
or refuse it, and reload the rules at once: sensor.service.reload); write a
statistics snapshot every ``snapshot_interval`` (by a forked child:
sensor.service.snapshots) and at shutdown, and the ban snapshot when bans
changed (sensor.service.bansnapshot); log the counters (a line named
``stats``) every ``stats_interval``.

The shutdown (SIGTERM, ``stop``) is bounded: the programs are detached first
(fail open: the kernel neither holds nor drops any more), then what is left
in the ring and the open flows are dissected for at most ``stop_timeout``
(flows in a mail transaction first), the rest dropped and counted; the final
snapshot and the records' flush follow.  ``status()`` is
what ``smtp-sensor status`` shows through the control socket; it,
``counters()`` (that line) and the
Prometheus families (``sensor.service.metrics``) read ``counter_groups()``:
every component's counters, the kernel's as read from its map.

With rules, two backstops for what a rule's budget cannot interrupt (C code
that never checks for signals, see sensor.rules.budget): the process's data
size is limited (``[limits.rules] process_memory_mb``, RLIMIT_DATA), and a
watchdog (``watchdog_s``) that the loop re-arms every tick: faulthandler's
own C thread, which needs no interpreter, so it runs while a rule holds it.
A loop stuck that long in one turn gets its stacks written to stderr (the
rule's file and line among them) and the process ends with status 1, for
systemd's ``Restart=on-failure``; meanwhile the kernel already lets held
segments pass after ``hold_max_ms``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import structlog

from sensor.config import Config
from sensor.counters import Counters, Group, as_tree, counter, gauge
from sensor.errors import SensorError
from sensor.kernel import abi

__all__ = ["Sensor", "RULES_WAKEUP", "PASSIVE_WAKEUP"]

# Events per wakeup of the live consumer.  Batched wakeups (64) cost less CPU
# per event, but on a quiet link the consumer then only wakes at the poll
# timeout (50 ms): with rules, a client's whole dialogue (MAIL, RCPT, DATA, the
# message) could be over before its MAIL FROM verdict reached the kernel, and a
# banned sender's mail delivered.  Rules therefore get a wakeup per event.
RULES_WAKEUP, PASSIVE_WAKEUP = 1, 64

#: seconds the reassembly takes to end one flow at shutdown (its flush_all:
#: 200 000 flows in 0.47 s on the project's VM, unloaded), doubled for a loaded host
FLOW_END_COST = 5e-6


@dataclass
class RunOptions:
    duration: float | None = None
    stats_interval: float = 10.0
    reload_interval: float = 1.0
    wakeup: int | None = None
    control_socket: str | None = None
    metrics: str | None = None      # ADDR:PORT of the Prometheus endpoint (sensor.service.metrics)
    uid_seed: bytes | int | None = None   # seed of the connection uids; None: random per run
    #: reads the configuration again for ``reload`` (the CLI's: the file with its flags on top),
    #: ``load_config(text)`` from the file's text already read (one read for a supervisor and
    #: its workers); None: the file the configuration came from, if any
    load_config: Callable[..., Config] | None = None


class SensorCounters(Counters):
    """The sensor's own (``owner``: the Sensor)."""

    uptime = gauge("seconds since the sensor started its loop", metric="uptime_seconds",
                   read=lambda s: round(time.monotonic() - s.started, 3) if s.started else 0.0, combine="max")
    active_flows = gauge("SMTP flows followed now",
                         read=lambda s: len(s.pipeline.sessions) if s.pipeline is not None else 0)
    log_reopens = counter("log and record files reopened (SIGUSR1)")


class KernelMapCounters(Counters):
    """``owner``: the KernelMaps."""

    bans_active = gauge("source bans the kernel holds now", read=lambda maps: len(maps.bans()))


def _kernel_field(c: abi.Counter):
    name = c.name.lower()
    if c < abi.VERDICT_COUNTERS:
        return counter("packets by the kernel's verdict (exclusive), read from the map",
                       metric="kernel_packets", labels={"verdict": name})
    return counter("packets also counted under a mark (cut, expired entry)",
                   metric="kernel_marked_packets", labels={"mark": name})


#: one direction of the kernel's counters (``KernelMaps.counters()``), with the verdicts' sum
KernelCounters = type(Counters)("KernelCounters", (Counters,), {
    **{c.name.lower(): _kernel_field(c) for c in abi.Counter},
    "seen": counter("packets the kernel's program saw (the verdicts' sum)", metric="kernel_seen_packets"),
})


def kernel_groups(dp):
    """The kernel's counters, read from the maps of a loaded datapath ``dp``
    (none before it is loaded)."""
    if dp is None or dp.bpf is None:
        return
    # the metrics only: counting the bans walks the tries, not for every stats line
    yield Group(None, KernelMapCounters(dp.maps))
    for direction, values in dp.maps.counters().items():
        yield Group(("counters", direction), KernelCounters().update(values), (("direction", direction),))
    from sensor.service.interfaces import interface_groups
    yield from interface_groups(dp)


def service_groups(owner):
    """The counters of what a sensor process serves (``owner``: a Sensor or
    the Supervisor): its outputs, control socket and metrics endpoint, then
    the kernel's."""
    if owner.outputs is not None:
        yield Group(("outputs",), owner.outputs.counters)
    if owner.control is not None:
        yield Group(("control",), owner.control.counters)
    if owner.metrics is not None:
        yield Group(("metrics_endpoint",), owner.metrics.collector.counters)
    yield from kernel_groups(owner.datapath)


def reopen_files(log, outputs) -> None:
    """SIGUSR1: the log and every output (``outputs``: sensor.outputs.Outputs
    or None) opened again at their paths, in one line saying which; one that
    cannot be is named and keeps writing where it did."""
    from sensor.service import log as sensor_log

    reopened, failed = [], {}
    try:
        reopened += sensor_log.reopen()
    except OSError as exc:
        failed["log"] = exc.strerror or str(exc)
    if outputs is not None:
        done, not_done = outputs.reopen()
        reopened += done
        failed.update(not_done)
    if failed:
        log.error("files not reopened (the old ones are kept)", files=failed, reopened=reopened)
    else:
        log.info("files reopened", files=reopened)


class Sensor:
    def __init__(self, config: Config, options: RunOptions | None = None, logger=None, sink=None,
                 datapath=None, worker: int = 0):
        """sink: where records go (a callable taking one record dict); default:
        the outputs of the config (``sensor.outputs``: ``[[output]]``, or JSON
        lines to ``[sensor] output``).  datapath: a Datapath already
        loaded and attached by someone else (a worker's, from
        sensor.service.supervisor): this sensor reads ring ``worker`` of it
        and never loads, attaches or detaches it."""
        self.config = config
        self.options = options or RunOptions()
        self.log = logger or structlog.get_logger("sensor")
        self.reload_requested = False
        self.stop_requested = False
        self.started = None
        self.last_reload = None
        self.datapath = self.feed = self.userland = None
        self._shared_datapath = datapath
        self.worker = worker
        self.control_class = None       # the ControlServer's class (a worker's: sensor.service.worker)
        self.sink = sink
        self.control = None
        self.metrics = None
        self.reopen_requested = False   # SIGUSR1: reopen the log and record files (logrotate)
        self.own_counters = SensorCounters(self)
        self.outputs = None         # the config's outputs, when no sink was given (sensor.outputs)
        self._stack = None          # what stop() undoes, set by start()
        self._last_tick = self._last_counters = self._last_snapshot = 0.0
        self._ban_snapshots = None      # sensor.service.bansnapshot.BanSnapshots (with a ban file)
        self._holds_seen = (0, 0)       # (late releases, kernel hold timeouts) at the last tick
        self._watchdog_s = 0.0          # > 0 while the watchdog is armed (with rules)
        self._snapshots = None          # the periodic snapshots' writer (with a state file)
        self._stop_asked_at = None      # when request_stop() was first called

    # ------------------------------------------------------------ the userland's parts
    pipeline = property(lambda self: self.userland.pipeline if self.userland else None)
    engine = property(lambda self: self.userland.engine if self.userland else None)
    enforcer = property(lambda self: self.userland.enforcer if self.userland else None)
    reject_stats = property(lambda self: self.userland.reject_stats if self.userland else None)
    actor = property(lambda self: self.userland.actor if self.userland else None)

    # ------------------------------------------------------------ building
    def _build(self):
        from sensor.kernel.datapath import Datapath, DatapathConfig

        cfg = self.config.sensor
        if not cfg.interfaces:
            raise SensorError("no interface given: use -i IFACE or [sensor] interfaces in the config")
        dp_config = DatapathConfig(ports=tuple(cfg.ports), enforce=cfg.enforce,
                                   hold=self.config.holds_commits,
                                   hold_max_ms=self.config.enforce.hold_max_ms)
        dp_config.pin_dir = cfg.pin_dir
        self.datapath = self._shared_datapath or Datapath(dp_config)
        if self.sink is None:
            from sensor.outputs import Outputs
            self.outputs = Outputs.for_live(self.config)
            self.sink = self.outputs

    def _build_userland(self):
        from sensor.assembly import Userland
        from sensor.rules.enforce import KernelEnforcer

        seed = self.options.uid_seed
        self.userland = Userland(self.config, self.sink, KernelEnforcer(self.datapath.maps),
                                 uid_seed=os.urandom(12) if seed is None else seed, cluster=True,
                                 worker=self.worker, workers=self.datapath.config.workers)
        state_file = self.config.sensor.state_file
        if state_file is not None:
            restored = self.userland.restore(state_file)
            if restored is not None:
                level = "info" if restored.ok else "error"
                getattr(self.log, level)("statistics snapshot", message=restored.message)

    # ------------------------------------------------------------ running
    def run(self) -> int:
        """start(), step() until stopped (or ``duration``), stop() on every exit path."""
        self.start()
        try:
            duration = self.options.duration
            while not self.stop_requested and (duration is None or time.monotonic() - self.started < duration):
                self.step()
        finally:
            self.stop()
        return 0

    def start(self) -> "Sensor":
        """Build, load the programs, attach, start rules and statistics.  On an
        error everything done so far is undone; after it, stop() undoes it."""
        from sensor.inputs.hold import CommitHold
        from sensor.inputs.live import LiveFeed

        self._build()
        cfg, opt = self.config.sensor, self.options
        stack = contextlib.ExitStack()
        try:
            stack.callback(self._close_output)          # undone last, as in run() before
            stack.callback(self._close_control)
            if opt.metrics:                             # first: a port in use fails before any loading
                from sensor.service.metrics import MetricsServer
                self.metrics = MetricsServer(opt.metrics, self)
                stack.callback(self._close_metrics)
            if self._shared_datapath is None:
                stack.enter_context(self.datapath.load())
                for ifname in cfg.interfaces:
                    self.datapath.attach(ifname, netns=cfg.netns, xdp_mode=cfg.xdp_mode)
            self._build_userland()
            if cfg.ban_file is not None:
                from sensor.service.bansnapshot import BanSnapshots
                self._ban_snapshots = BanSnapshots(cfg.ban_file, self.enforcer, self.log, time.monotonic())
                self._ban_snapshots.restore()
            stack.callback(self.userland.close_cluster)
            self.userland.start_cluster()
            if self.actor is not None and cfg.state_file:
                from sensor.service.snapshots import SnapshotWriter
                state_file = cfg.state_file
                self._snapshots = SnapshotWriter(lambda: self.userland.snapshot(state_file), self.log)
                stack.callback(self._snapshots.finish)
            wakeup = opt.wakeup or (RULES_WAKEUP if self.engine is not None else PASSIVE_WAKEUP)
            hold = (CommitHold(self.pipeline, self.datapath.maps, self.config.enforce.hold_max_ms,
                               self.datapath.injector(cfg.netns) if self.config.enforce.inject else None)
                    if self.config.holds_commits else None)
            self.feed = LiveFeed(self.datapath.event_reader(wake_batch=wakeup > 1, worker=self.worker),
                                 self.pipeline, self.datapath.maps, hold, enforcer=self.enforcer, owns=self._owns())
            if opt.control_socket:
                from sensor.service.control import ControlServer
                self.control = (self.control_class or ControlServer)(opt.control_socket, self)
            if self.engine is not None:
                self._limit_memory(stack)
                stack.callback(self._stop_watchdog)
                self._watchdog_s = self.config.limits.rules.watchdog_s
                self._pet_watchdog()
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        self.started = now = time.monotonic()
        self._last_tick = self._last_counters = self._last_snapshot = self.last_reload = now
        self.log.info("running", interfaces=list(cfg.interfaces), ports=list(cfg.ports),
                      rules=[r.id for r in self.engine.ruleset.rules] if self.engine else [],
                      spam_stats=self.actor is not None,
                      cluster=self.userland.cluster is not None,
                      control_socket=opt.control_socket,
                      **({"metrics": self.metrics.url} if self.metrics is not None else {}))
        return self

    def step(self, timeout_ms: int | None = None) -> int:
        """One turn of the loop: wait up to timeout_ms (default 50, 20 with a
        control socket) for kernel events and dissect them; serve the control
        socket; reload rules, tick the statistics and sweep, snapshot and log
        the counters when due.  Returns the events read."""
        opt, control = self.options, self.control
        if timeout_ms is None:
            timeout_ms = 50 if control is None else 20
        events = self.feed.step(timeout_ms, self._stopping)
        self.userland.poll()
        if control is not None:
            control.serve_pending()
        if self.reopen_requested:
            self.reopen_files()
        now = time.monotonic()
        if self.reload_requested:
            self.reload()
        elif self.engine is not None and now - self.last_reload >= opt.reload_interval:
            self.reload_rules()
        if now - self._last_tick >= 1.0:
            self._last_tick = now
            self._pet_watchdog()
            self._tick()
        if self._ban_snapshots is not None:
            self._ban_snapshots.poll(now, self.config.sensor.snapshot_interval)
        snapshots = self._snapshots
        if snapshots is not None:
            if snapshots.busy:
                snapshots.poll()
            if now - self._last_snapshot >= self.config.sensor.snapshot_interval:
                self._last_snapshot = now
                snapshots.start()
        if now - self._last_counters >= opt.stats_interval:
            self._last_counters = now
            self.log.info("stats", **self.counters())
        return events

    def request_stop(self) -> None:
        """Ask the loop to stop (a signal handler, the control socket): the
        current step ends at its next chunk of events, then stop() runs."""
        if not self.stop_requested:
            self._stop_asked_at = time.monotonic()
        self.stop_requested = True

    def _owns(self):
        """Whether a flow (src, sport, dst, dport) is this worker's (None: every flow is)."""
        workers = self.datapath.config.workers
        if workers == 1:
            return None
        from sensor import shard
        ports, worker = frozenset(self.config.sensor.ports), self.worker
        return lambda src, sport, dst, dport: shard.worker_of(src, sport, dst, dport, ports, workers) == worker

    def _stopping(self) -> bool:
        return bool(self.stop_requested)

    def stop(self) -> None:
        """Detach first (fail open: the traffic passes from then on), dissect
        what is left in the ring and the open flows within ``stop_timeout``,
        tick and snapshot the statistics, then unload and close.  Idempotent;
        a no-op before start()."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        with stack:                      # detaches even when the shutdown fails
            self._pet_watchdog()         # the shutdown runs rules too (connection_end)
            self._shutdown()

    def _limit_memory(self, stack) -> None:
        """RLIMIT_DATA, the backstop for what rules allocate and keep: once the
        programs are compiled (LLVM's peak is the sensor's, not a rule's);
        the previous limit is put back by stop()."""
        import resource

        from sensor.rules.budget import data_bytes, limit_process_memory

        mb = self.config.limits.rules.process_memory_mb
        if not mb:
            return
        used = data_bytes()
        if used >= mb * 2 ** 20:
            raise SensorError(f"[limits.rules] process_memory_mb = {mb:g} is below the {used >> 20} MB of data "
                              "the sensor already has: raise it (or 0 for no limit)")
        previous = resource.getrlimit(resource.RLIMIT_DATA)
        limit = limit_process_memory(mb)
        stack.callback(resource.setrlimit, resource.RLIMIT_DATA, previous)
        self.log.info("memory limited", data_mb=used >> 20, limit_mb=limit >> 20)

    def _pet_watchdog(self) -> None:
        """Give the loop another ``watchdog_s`` (re-armed every tick)."""
        if self._watchdog_s > 0:
            faulthandler.dump_traceback_later(self._watchdog_s, exit=True, file=sys.stderr)

    def _stop_watchdog(self) -> None:
        if self._watchdog_s > 0:
            faulthandler.cancel_dump_traceback_later()
            self._watchdog_s = 0.0

    def _close_control(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None

    def _close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def reopen_files(self) -> None:
        """Open the log file and the outputs again (SIGUSR1, after logrotate
        renamed them): the next lines go to new files at the same paths, the
        Zeek logs rotate, sockets connect again.  One that cannot be reopened
        is logged and the old one kept."""
        self.reopen_requested = False
        reopen_files(self.log, self.outputs)
        self.own_counters.log_reopens += 1

    def _close_output(self) -> None:
        if self.outputs is not None:
            self.outputs.close()

    # ------------------------------------------------------------ reload
    @property
    def OUTPUTS_RELOAD(self) -> bool:
        """Whether ``reload_outputs`` can rebuild the outputs: when the sensor
        built them from its config (not with a sink given by its caller)."""
        return self.outputs is not None

    def reload(self) -> dict:
        """SIGHUP or the control socket: the configuration read again and what
        changed applied, or refused in one line (``sensor.service.reload``),
        then the rules re-read."""
        from sensor.service.reload import reload_sensor
        return reload_sensor(self)

    def reload_outputs(self, old: Config, new: Config) -> None:
        """The outputs' reload hook: where records go changed (``[sensor] output``,
        ``[[output]]``).  The new config's outputs are opened (a SensorError if
        one cannot be: the old ones stay), then the sink the pipeline holds
        writes to them and the old ones are closed (``Outputs.take_over``)."""
        from sensor.outputs import Outputs
        self.outputs.take_over(Outputs.for_live(new))

    def rearm_watchdog(self, seconds: float) -> None:
        """A new ``[limits.rules] watchdog_s`` (a reload): armed again now, or off at 0."""
        if self._watchdog_s <= 0:
            return
        if seconds <= 0:
            self._stop_watchdog()
            return
        self._watchdog_s = seconds
        self._pet_watchdog()

    def reload_rules(self, force: bool = False) -> bool:
        if self.engine is None:
            return False
        if force:
            why = self.reload_requested if isinstance(self.reload_requested, str) else "control socket"
            self.log.info(f"reload requested ({why})")
        changed = self.engine.ruleset.reload(force=True) if force else self.engine.ruleset.poll()
        self.reload_requested = False
        self.last_reload = time.monotonic()
        return changed

    def _tick(self) -> None:
        self.userland.tick(time.time())
        if self.outputs is not None:
            self.outputs.flush()        # a quiet Zeek log rotates on time too
        self._check_holds()
        try:
            removed = self.datapath.maps.sweep()
        except OSError as exc:
            self.log.error("sweeping expired kernel entries failed", error=str(exc))
            return
        if removed:
            self.log.info("expired kernel entries swept", removed=removed)

    def _check_holds(self) -> None:
        """Say so when the commit hold failed open since the last tick: the
        kernel let held segments pass before userland had judged them."""
        hold = self.feed.hold if self.feed is not None else None
        if hold is None:
            return
        late, timed_out = hold.counters.late, self.datapath.maps.counters()["ingress"]["hold_timeout"]
        (seen_late, seen_timed_out), self._holds_seen = self._holds_seen, (late, timed_out)
        if timed_out > seen_timed_out:
            self.log.warning("held segments passed unjudged after hold_max_ms (the control plane was slow)",
                             hold_timeouts=timed_out - seen_timed_out, late_releases=late - seen_late,
                             hold_max_ms=self.config.enforce.hold_max_ms)

    def _snapshot(self) -> None:
        """The final snapshot, in this process (a periodic one still being
        written by its child is ended first: this one must be the last)."""
        if self._snapshots is not None:
            self._snapshots.finish()
        try:
            self.userland.snapshot(self.config.sensor.state_file)
        except SensorError as exc:
            self.log.error("statistics snapshot not written", error=str(exc))

    def _shutdown(self) -> None:
        took, t0 = {}, time.monotonic()
        t = t0
        asked = t0
        if self._stop_asked_at is not None:
            asked = self._stop_asked_at
            took["noticed_s"] = round(t0 - asked, 3)     # the step under way ended
        # stop_timeout counts from the signal: the ring gets half of it at
        # most, the flows what is left
        drain_deadline = asked + self.config.sensor.stop_timeout / 2
        deadline = asked + self.config.sensor.stop_timeout

        def phase(name):
            nonlocal t
            now = time.monotonic()
            took[name] = round(now - t, 3)
            t = now

        def give_up() -> bool:
            return time.monotonic() >= deadline

        if self._shared_datapath is None:    # a worker's: its supervisor detached it
            self.datapath.detach_all()
        phase("detach_s")
        feed = self.feed
        if feed is not None:
            feed.drain(lambda: time.monotonic() >= drain_deadline)
        phase("drain_s")
        # ending the flows in the reassembly comes first and cannot be
        # interrupted: when there is no time left for it, none are ended
        flows = len(self.pipeline.reassembler.flows)
        out_of_time = deadline - time.monotonic() < flows * FLOW_END_COST
        self.userland.shutdown(time.time(), (lambda: True) if out_of_time else give_up)
        phase("flows_s")
        if self.actor is not None and self.config.sensor.state_file:
            self._snapshot()
        if self._ban_snapshots is not None:
            self._ban_snapshots.final()
        phase("snapshot_s")
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush()
        phase("flush_s")
        took["total_s"] = round(time.monotonic() - t0, 3)
        self.log.info("stopped", shutdown=took, **self.counters())

    # ------------------------------------------------------------ queries
    def counter_groups(self):
        """Every counter of the sensor, for ``counters()``, ``status()`` and the metrics."""
        yield from self.work_groups()
        yield from service_groups(self)

    def work_groups(self):
        """The counters of this process's work on its ring (a worker's share of
        the metrics: sensor.service.workermetrics): the kernel's, the outputs',
        the sockets' left out."""
        yield Group((), self.own_counters)
        if self.feed is not None:
            yield Group((), self.feed.counters)
            if self.feed.hold is not None:
                yield Group(("hold",), self.feed.hold.counters)
        if self.userland is not None:
            yield from self.userland.counter_groups()
            timed = getattr(self.enforcer, "counters", None)       # the kernel's enforcer times its verdicts
            if timed is not None:
                yield Group(("verdicts",), timed)
        if self._snapshots is not None:
            yield Group(("snapshots",), self._snapshots.counters)

    def counters(self) -> dict:
        return as_tree(self.counter_groups())

    def status(self) -> dict:
        cfg = self.config.sensor
        dp = self.datapath
        attachments = []
        if dp is not None and dp.bpf is not None:
            from sensor.kernel.bpfsys import prog_id
            ids = {"xdp_prog_id": prog_id(dp.xdp_fd), "tc_prog_id": prog_id(dp.tc_fd)}
            for a in dp.attachments:
                attachments.append({"interface": a.ifname, "netns": a.netns, "xdp_mode": a.xdp_mode, **ids,
                                    "counters": dp.maps.interface_counters(a.ifindex)})
        rules = []
        if self.engine is not None:
            for r in self.engine.ruleset.rules:
                counts = r.counters.as_dict()
                ms = round(counts.pop("seconds") * 1000, 3)
                rules.append({"id": r.id, "rev": r.rev, "hook": r.hook.name, "file": r.file, **counts, "ms": ms,
                              "disabled": r.disabled})
        return {
            "pid": os.getpid(),
            "interfaces": attachments,
            "ports": list(cfg.ports),
            "rules": rules,
            "rule_errors": {str(k): v for k, v in self.engine.ruleset.errors.items()} if self.engine else {},
            "last_reload_age": round(time.monotonic() - self.last_reload, 3) if self.last_reload else None,
            "metrics": self.metrics.url if self.metrics is not None else None,
            **self.counters(),
        }
