"""The sensor as N worker processes (``[sensor] workers``, ``run --workers N``)
and one supervisor, which

- loads the datapath with one event ring per worker (bpf/shard.h: a packet
  goes to the ring of its client's worker, sensor/shard.py's function) and
  attaches it, once;
- forks the workers (sensor.service.worker): each a ``Sensor`` on its own
  ring, with its own userland (pipeline, rules, reject statistics) and its
  own statistics snapshot (its hosts are disjoint from the others');
- copies their records, JSON lines through one pipe each, into the one
  output (sensor.service.relay);
- answers the control socket for all of them, asking each over its private
  socket (sensor.service.fanout) and merging (sensor.service.merge): status
  and stats summed, with a row per worker; flows listed across workers; a
  ban of one address goes to the worker of that address (its flows are
  there), a ban of a wider prefix to every worker (the kernel's ban map is
  one, shared: any worker's enforcement writes it);
- serves the Prometheus endpoint (``--metrics``): the kernel's counters
  read once, the workers' asked and combined (sensor.service.workermetrics);
- reloads the configuration: the outputs are its own (opened first, swapped
  between two relayed records), the rest each worker applies;
- restarts a worker that dies (counted, logged): the new one reads the same
  ring and picks the flows up mid-stream. One that keeps dying (``RESTARTS_MAX``
  deaths in ``RESTART_WINDOW`` seconds) stops the sensor: detached, the
  traffic passes (fail open);
- detaches on every way out: SIGTERM/SIGINT, an error in its own code (the
  ``finally`` of ``run``), a worker that cannot be kept alive. Only a
  SIGKILL of the supervisor leaves the programs attached; the workers then
  get SIGTERM from the kernel (PR_SET_PDEATHSIG) and the next start takes the
  programs over (sensor.kernel.takeover).

The shutdown: detach (fail open), SIGTERM every worker, relay their last
records while they drain their rings and end their flows (each within
``stop_timeout``), SIGKILL what is still alive after ``stop_timeout`` plus
``STOP_GRACE``, unload.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field

import structlog

from sensor import shard
from sensor.config import Config
from sensor.counters import Counters, counter, gauge
from sensor.errors import SensorError
from sensor.service import merge
from sensor.service.control import BadArgument, ControlServer, check_prefix
from sensor.service.fanout import WorkerUnanswered, ask_all
from sensor.service.metrics import SensorCollector, samples
from sensor.service.relay import RecordLines, RecordRelay, widen
from sensor.service.workermetrics import WorkerMetrics

__all__ = ["Supervisor", "RESTARTS_MAX", "RESTART_WINDOW"]

#: deaths of one worker within RESTART_WINDOW seconds after which the sensor stops
RESTARTS_MAX, RESTART_WINDOW = 5, 60.0
#: seconds a worker gets beyond stop_timeout to end (its snapshot, its last records)
STOP_GRACE = 10.0
#: seconds the supervisor waits for the workers' answers to one control request
ASK_TIMEOUT = 5.0
#: seconds a scrape waits for the workers' counters (Prometheus's own scrape timeout is 10 s)
SCRAPE_TIMEOUT = 2.0


class SupervisorCounters(Counters):
    """``owner``: the Supervisor."""

    workers = gauge("worker processes configured", read=lambda s: s.worker_count)
    workers_alive = gauge("worker processes running now",
                          read=lambda s: sum(1 for w in s.procs if w.pid is not None))
    worker_restarts = counter("workers that died and were started again")
    records_relayed = counter("record lines copied from the workers to the output",
                              read=lambda s: s.relay.lines if s.relay is not None else 0)
    worker_unanswered = counter("control requests a worker did not answer in time")


@dataclass
class WorkerProc:
    index: int
    pid: int | None = None
    fd: int | None = None           # the read end of its record pipe
    started: float = 0.0
    restarts: int = 0
    deaths: list = field(default_factory=list)   # when it died, within RESTART_WINDOW
    last_status: int | None = None


class Supervisor:
    def __init__(self, config: Config, options=None, logger=None):
        from sensor.service.loop import RunOptions

        self.config = config
        self.options = options or RunOptions()
        self.log = logger or structlog.get_logger("sensor")
        self.worker_count = config.sensor.worker_count
        self.reload_requested = False
        self.reopen_requested = False
        self.stop_requested = False
        self.started = None
        self.exit_code = 0
        self.datapath = None
        self.control = None
        self.relay = None
        self.procs = [WorkerProc(i) for i in range(self.worker_count)]
        self.own_counters = SupervisorCounters(self)
        self._out = None
        self.outputs = None             # sensor.outputs.Outputs: where the workers' records go
        self._last_flush = 0.0
        self._sockets = None            # the folder of the workers' control sockets
        self._stack = None
        self.metrics = None             # the Prometheus endpoint (sensor.service.metrics), with --metrics
        self.worker_metrics = WorkerMetrics()

    # ------------------------------------------------------------ life
    def run(self) -> int:
        self.start()
        try:
            duration = self.options.duration
            while not self.stop_requested and (duration is None or time.monotonic() - self.started < duration):
                self.step()
        finally:
            self.stop()
        return self.exit_code

    def start(self) -> "Supervisor":
        from sensor.kernel.datapath import Datapath, DatapathConfig

        cfg, opt = self.config.sensor, self.options
        if not cfg.interfaces:
            raise SensorError("no interface given: use -i IFACE or [sensor] interfaces in the config")
        stack = contextlib.ExitStack()
        try:
            if opt.metrics:                             # first: a port in use fails before any loading
                from sensor.service.metrics import MetricsServer
                self.metrics = MetricsServer(opt.metrics, self, collector=SupervisorCollector)
                stack.callback(self._close_metrics)
            self._open_output()
            stack.callback(self._close_output)
            self._sockets = tempfile.mkdtemp(prefix="smtp-sensor-workers-")
            stack.callback(shutil.rmtree, self._sockets, True)
            dp_config = DatapathConfig(ports=tuple(cfg.ports), enforce=cfg.enforce, hold=self.config.holds_commits,
                                       hold_max_ms=self.config.enforce.hold_max_ms, workers=self.worker_count)
            dp_config.pin_dir = cfg.pin_dir
            self.datapath = Datapath(dp_config)
            stack.enter_context(self.datapath.load())
            for ifname in cfg.interfaces:
                self.datapath.attach(ifname, netns=cfg.netns, xdp_mode=cfg.xdp_mode)
            self.relay = RecordRelay(self._out)
            stack.callback(self._stop_workers)          # before the datapath's close (detach, unload)
            for proc in self.procs:
                self._spawn(proc)
            if opt.control_socket:      # once there is something to answer (the workers have none of it)
                self.control = SupervisorControl(opt.control_socket, self)
                stack.callback(self._close_control)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        self.started = time.monotonic()
        self.log.info("supervising", workers=self.worker_count, pids=[p.pid for p in self.procs],
                      interfaces=list(cfg.interfaces), ports=list(cfg.ports), control_socket=opt.control_socket,
                      **({"metrics": self.metrics.url} if self.metrics is not None else {}))
        return self

    def step(self, timeout: float = 0.02) -> None:
        """One turn: copy records, answer the control socket, forward
        SIGHUP/SIGUSR1, restart dead workers."""
        self.relay.pump(timeout)
        if self.control is not None:
            self.control.serve_pending()
        if self.reload_requested:
            why = self.reload_requested if isinstance(self.reload_requested, str) else "SIGHUP"
            self.reload_requested = False
            self.reload(why)
        if self.reopen_requested:
            self.reopen_files()
        now = time.monotonic()
        if now - self._last_flush >= 1.0:       # Zeek's logs rotate when due, files reach the disk
            self._last_flush = now
            self.outputs.flush()
        self._reap(restart=True)

    def request_stop(self) -> None:
        self.stop_requested = True

    def stop(self) -> None:
        """Detach (fail open), stop the workers, relay their last records,
        unload.  Idempotent."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        t0 = time.monotonic()
        with stack:
            self.datapath.detach_all()
        self.log.info("stopped", took_s=round(time.monotonic() - t0, 3), **self.counters())

    # ------------------------------------------------------------ workers
    def worker_socket(self, index: int) -> str:
        return os.path.join(self._sockets, f"worker{index}.sock")

    def _spawn(self, proc: WorkerProc) -> None:
        from sensor.service.worker import run_worker

        read_fd, write_fd = os.pipe()
        widen(write_fd)
        options = self._worker_options(proc.index)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:                       # the worker: never returns
            code = 1
            try:
                os.close(read_fd)
                for other in self.procs:
                    if other.fd is not None:
                        os.close(other.fd)
                if self.control is not None:
                    self.control.sel.close()
                    self.control.sock.close()
                    self.control = None
                code = run_worker(self.config, options, self.datapath, proc.index, write_fd)
            except BaseException as exc:  # noqa: BLE001 - a worker's end is its status, never the supervisor's code
                try:
                    self.log.exception("worker failed", worker=proc.index, error=f"{type(exc).__name__}: {exc}")
                except BaseException:  # noqa: BLE001
                    pass
            finally:
                os._exit(code)
        os.close(write_fd)
        self.relay.add(read_fd)
        proc.pid, proc.fd, proc.started = pid, read_fd, time.monotonic()

    def _worker_options(self, index: int):
        from dataclasses import replace
        return replace(self.options, control_socket=self.worker_socket(index), metrics=None, duration=None)

    def _reap(self, restart: bool) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = next((p for p in self.procs if p.pid == pid), None)
            if proc is None:
                continue
            self._ended(proc, status, restart)

    def _ended(self, proc: WorkerProc, status: int, restart: bool) -> None:
        self.relay.finish(proc.fd)
        proc.pid, proc.fd, proc.last_status = None, None, status
        if not restart or self.stop_requested:
            return
        now = time.monotonic()
        proc.deaths = [t for t in proc.deaths if now - t < RESTART_WINDOW] + [now]
        how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit status {os.WEXITSTATUS(status)}")
        if len(proc.deaths) > RESTARTS_MAX:
            self.log.error("a worker keeps dying: stopping the sensor (detached: the traffic passes)",
                           worker=proc.index, ended_by=how, deaths=len(proc.deaths), window_s=RESTART_WINDOW)
            self.exit_code = 1
            self.request_stop()
            return
        proc.restarts += 1
        self.own_counters.worker_restarts += 1
        self.log.error("worker died: started again (its flows are picked up mid-stream)",
                       worker=proc.index, ended_by=how, restarts=proc.restarts)
        self._spawn(proc)

    def _signal_workers(self, signum: int) -> None:
        for proc in self.procs:
            if proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    def _stop_workers(self) -> None:
        """After the detach: SIGTERM, relay until they end, SIGKILL the late ones."""
        self.datapath.detach_all()      # fail open first, whatever the workers do now
        self._signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + self.config.sensor.stop_timeout + STOP_GRACE
        while any(p.pid is not None for p in self.procs) and time.monotonic() < deadline:
            self.relay.pump(0.05)
            self._reap(restart=False)
        late = [p for p in self.procs if p.pid is not None]
        if late:
            self.log.error("workers did not stop in time: killed", workers=[p.index for p in late])
            self._signal_workers(signal.SIGKILL)
            for proc in late:
                with contextlib.suppress(ChildProcessError):
                    _, status = os.waitpid(proc.pid, 0)
                    self._ended(proc, status, restart=False)
        self.relay.close()

    # ------------------------------------------------------------ output
    def _open_output(self) -> None:
        from sensor.outputs import Outputs

        self.outputs = Outputs.for_live(self.config)
        self._out = RecordLines(self.outputs)

    def _close_output(self) -> None:
        if self._out is not None:
            self.outputs.close()
        self._out = None

    def _close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    def _close_control(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None

    def reopen_files(self) -> None:
        """SIGUSR1 (logrotate): the supervisor's log and outputs, and every worker's log."""
        from sensor.service.loop import reopen_files

        self.reopen_requested = False
        reopen_files(self.log, self.outputs)
        self._signal_workers(signal.SIGUSR1)

    # ------------------------------------------------------------ reload
    def reload(self, why: str) -> dict:
        """SIGHUP or the control socket: the configuration read again and
        planned as a single sensor plans it (sensor.service.reload).  The
        outputs are the supervisor's: changed ones are opened first (one that
        cannot be refuses the reload), swapped in between two records of the
        relay (``Outputs.take_over``: what the pipes hold goes to the new
        ones, nothing is lost), the old ones closed; then each worker applies
        the rest.  A refusal (one line) leaves every configuration as it was
        and the workers re-read their rules only.  The file is read once,
        here: the workers are given its text (``config_text``), so they
        apply what was planned even if the file changes meanwhile.  Returns
        ``config_error`` and ``workers``, the workers' merged answer."""
        from sensor.config import loads, read_text
        from sensor.outputs import Outputs
        from sensor.service.reload import OUTPUT_KEYS, plan_reload

        source = self.config.source
        loader = self.options.load_config
        if loader is None and source is not None:
            loader = lambda text: loads(text, source=source)      # noqa: E731
        error = plan = text = None
        if loader is not None:
            try:
                text = read_text(source) if source is not None else None
                plan = plan_reload(self.config, loader() if text is None else loader(text), outputs_live=True)
            except SensorError as exc:
                error = f"configuration not reloaded: {exc}"
            else:
                error = plan.refusal
        if error is None and plan is not None and any(k in OUTPUT_KEYS for k in plan.changed):
            try:
                opened = Outputs.for_live(plan.new)
            except SensorError as exc:
                error = f"configuration not reloaded: {exc}; the running configuration stays"
            else:
                self.relay.pump(0)
                self.outputs.take_over(opened)
        if error is not None:
            self.log.error(error, reason=why)
            return {"config_error": error, "workers": merge.merge_reload(self.ask("reload_rules", why=why) or {0: {}})}
        if plan is not None:
            self._apply_own(plan)
        return {"config_error": None,
                "workers": merge.merge_reload(self.ask("reload", why=why, config_text=text))}

    def _apply_own(self, plan) -> None:
        """The supervisor's share of a reload: the configuration a restarted
        worker starts from, the datapath's view of the kernel's settings."""
        dp = self.datapath
        if dp is not None:
            dp.config.ports = tuple(plan.new.sensor.ports)
            dp.config.hold_max_ms = plan.new.enforce.hold_max_ms
        self.config = plan.new
        if plan.changed:
            self.log.info("configuration reloaded", changed=list(plan.changed))

    # ------------------------------------------------------------ asking the workers
    def ask(self, cmd: str, workers=None, **args) -> dict:
        """{worker: result} of one request to ``workers`` (default: all);
        a worker that failed or did not answer is left out, logged, counted."""
        targets = range(self.worker_count) if workers is None else workers
        requests = {w: {"cmd": cmd, **args} for w in targets}
        replies = ask_all({w: self.worker_socket(w) for w in targets}, requests,
                          pump=lambda: self.relay.pump(0), timeout=ASK_TIMEOUT)
        out, errors = {}, {}
        for worker, reply in replies.items():
            if isinstance(reply, WorkerUnanswered):
                self.own_counters.worker_unanswered += 1
                self.log.warning("a worker did not answer", worker=worker, cmd=cmd, error=str(reply))
            elif not isinstance(reply, dict) or not reply.get("ok"):
                errors[worker] = str(reply.get("error") if isinstance(reply, dict) else reply)
            else:
                out[worker] = reply.get("result")
        if errors and not out:
            raise SensorError(next(iter(errors.values())))
        return out

    def worker_of(self, network: str) -> int | None:
        """The worker of a single address (a /32 or /128), None for a wider prefix."""
        net = ipaddress.ip_network(network)
        if net.prefixlen != net.max_prefixlen:
            return None
        return shard.worker_of_address(net.network_address.packed, self.worker_count)

    # ------------------------------------------------------------ queries
    def counters(self) -> dict:
        """The supervisor's own counters and its outputs' (the workers' records are written here)."""
        found = {"supervisor": self.own_counters.as_dict()}
        if self.outputs is not None:
            found["outputs"] = self.outputs.counters.as_dict()
        return found

    def counter_groups(self):
        """The supervisor's own counters and the kernel's, for the metrics (the
        workers' are theirs: ``metric_samples``)."""
        from sensor.counters import Group
        from sensor.service.loop import service_groups

        yield Group((), self.own_counters)
        yield from service_groups(self)

    def metric_samples(self) -> list:
        """One scrape: the supervisor's counters and the kernel's, and every
        worker's, asked over their sockets and combined
        (sensor.service.workermetrics).  Runs in the endpoint's thread: the
        loop goes on relaying records meanwhile."""
        targets = range(self.worker_count)
        replies = ask_all({w: self.worker_socket(w) for w in targets}, {w: {"cmd": "metrics"} for w in targets},
                          timeout=SCRAPE_TIMEOUT)
        answers = {w: r["result"] for w, r in replies.items() if isinstance(r, dict) and r.get("ok")}
        return samples(self.counter_groups()) + self.worker_metrics.combine(answers, self.worker_count)

    def status(self) -> dict:
        answers = self.ask("status")
        kernel = {}
        dp = self.datapath
        if dp is not None and dp.bpf is not None:
            kernel = dp.maps.counters()
        summed = merge.sum_trees([{k: v for k, v in a.items() if k != "counters"} for a in answers.values()]) or {}
        rows = []
        for proc in self.procs:
            answer = answers.get(proc.index)
            rows.append({"worker": proc.index, "pid": proc.pid, "restarts": proc.restarts,
                         "alive": proc.pid is not None, "answered": answer is not None,
                         **({k: v for k, v in answer.items() if k not in ("counters", "interfaces", "rules")}
                            if answer else {})})
        return {**summed, "pid": os.getpid(), "counters": kernel, "workers": rows,
                "uptime": round(time.monotonic() - self.started, 3) if self.started else 0.0,
                **self.counters()}


class SupervisorCollector(SensorCollector):
    """The supervisor's scrapes: its counters, the kernel's and its workers'."""

    def read(self) -> list:
        return self.sensor.metric_samples()


class SupervisorControl(ControlServer):
    """The control socket of a supervised sensor: the commands of
    sensor.service.control, answered for every worker."""

    def cmd_status(self) -> dict:
        return self.sensor.status()

    def cmd_flows(self, limit: int = 1000):
        from sensor.service.control import STREAM_CHUNK, _limit
        rows = merge.merge_flows(self.sensor.ask("flows", limit=_limit(limit)), limit)
        return (rows[i:i + STREAM_CHUNK] for i in range(0, len(rows), STREAM_CHUNK))

    def cmd_stats(self, limit: int = 100) -> dict:
        from sensor.service.control import _limit
        return merge.merge_stats(self.sensor.ask("stats", limit=_limit(limit)), limit)

    def cmd_bans(self) -> list:
        return merge.merge_bans(self.sensor.ask("bans"))

    def cmd_ban_add(self, prefix: str, ttl: float | None = None, reason: str | None = None) -> dict:
        network = check_prefix(prefix)
        if reason is not None and (not isinstance(reason, str) or len(reason) > 200):
            raise BadArgument("reason must be a string of at most 200 characters")
        owner = self.sensor.worker_of(network)
        first = 0 if owner is None else owner
        args = {"prefix": network, "ttl": ttl, "reason": reason}
        answer = self.sensor.ask("ban_add", workers=[first], **{k: v for k, v in args.items() if v is not None})
        if first not in answer:
            raise SensorError(f"worker {first} did not take the ban: try again")
        self.counters.bans_added += 1
        if owner is None:       # hosts of the prefix live in every worker: each tears its flows down
            others = [w for w in range(self.sensor.worker_count) if w != first]
            self.sensor.ask("ban_local", workers=others, **{k: v for k, v in args.items() if v is not None})
        return answer[first]

    def cmd_ban_del(self, prefix: str) -> dict:
        network = check_prefix(prefix)
        owner = self.sensor.worker_of(network)
        first = 0 if owner is None else owner
        answer = self.sensor.ask("ban_del", workers=[first], prefix=network)
        if owner is None:
            self.sensor.ask("unban_local", workers=[w for w in range(self.sensor.worker_count) if w != first],
                            prefix=network)
        return answer[first]

    def cmd_reload(self) -> dict:
        result = self.sensor.reload("control socket")
        if result["config_error"]:
            raise SensorError(result["config_error"])
        return result["workers"]

    def cmd_stop(self) -> dict:
        self.sensor.request_stop()
        return {"stopping": True}
