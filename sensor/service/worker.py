"""One worker process of a supervised sensor (sensor.service.supervisor):
a ``Sensor`` on the supervisor's datapath, reading its own event ring, its
records written as JSON lines into a pipe to the supervisor, its control
socket private (the supervisor asks it, and answers the operator).

Runs in a child forked by the supervisor, after the programs are loaded
and attached: it never loads, attaches or detaches them. It stops on
SIGTERM (the supervisor's, or the kernel's when the supervisor dies:
PR_SET_PDEATHSIG), ignores SIGINT (a terminal's ^C reaches the whole group;
the supervisor decides the order), reloads when the supervisor asks (``reload``,
``reload_rules``) and reopens its log on SIGUSR1, as the single-process
sensor does.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import structlog

from sensor.config import load, loads
from sensor.errors import SensorError
from sensor.service.control import ControlServer, check_prefix, check_ttl
from sensor.service.loop import Sensor

__all__ = ["WorkerControl", "WorkerSensor", "worker_config", "worker_seed", "run_worker"]

PR_SET_PDEATHSIG = 1


class WorkerControl(ControlServer):
    """A worker's control socket: the usual commands, and the parts of a
    ban the supervisor spreads over every worker (a prefix holds hosts of
    several): ``ban_local``/``unban_local`` change this worker's verdicts and
    tear its flows down, without a record (one worker writes it); ``metrics``
    its counters for the supervisor's Prometheus endpoint.  Its one client
    is the supervisor, whose reload request carries the configuration file's
    text: hence the larger request bound."""

    max_request = 16 << 20

    def cmd_ban_local(self, prefix: str, ttl: float | None = None, reason: str | None = None) -> dict:
        import time

        from sensor.kernel import abi
        network = check_prefix(prefix)
        self.sensor.enforcer.ban(network, check_ttl(ttl), time.time(), abi.Reason.MANUAL, note=reason)
        return {"banned": network}

    def cmd_unban_local(self, prefix: str) -> dict:
        network = check_prefix(prefix)
        self.sensor.enforcer.unban(network)
        return {"unbanned": network}

    def cmd_reload(self, why: str = "control socket", config_text: str | None = None) -> dict:
        """The configuration and the rules, as the supervisor's reload asks
        (``why``: SIGHUP or its control socket, for the log line;
        ``config_text``: the file as the supervisor read and planned it); the
        outputs are the supervisor's, already swapped when they changed."""
        self.sensor.reload_requested = why
        self.sensor.config_text = config_text
        return super().cmd_reload()

    def cmd_reload_rules(self, why: str = "control socket") -> dict:
        """The rules alone: the supervisor refused the configuration, this
        worker keeps its own."""
        sensor = self.sensor
        if sensor.engine is None:
            return {}
        sensor.reload_requested = why
        changed = sensor.reload_rules(force=True)
        rs = sensor.engine.ruleset
        return {"changed": changed, "rules": [r.id for r in rs.rules],
                "errors": {str(k): v for k, v in rs.errors.items()}}

    def cmd_metrics(self) -> dict:
        """This worker's share of a scrape (sensor.service.workermetrics): its
        pid and the samples of its work's counters."""
        from sensor.service.metrics import samples
        return {"pid": os.getpid(), "samples": [list(s) for s in samples(self.sensor.work_groups())]}


class WorkerSensor(Sensor):
    """A worker's sensor: its records go to the supervisor, whose outputs
    they are; a reload that changes them is the supervisor's to apply (it
    opened and swapped them before asking the workers), here nothing to do."""

    OUTPUTS_RELOAD = True
    #: the configuration file's text of the reload under way, as the supervisor read it
    config_text: str | None = None

    def take_config_text(self) -> str | None:
        text, self.config_text = self.config_text, None
        return text

    def reload_outputs(self, old, new) -> None:
        pass


def worker_state_file(path: Path | None, worker: int) -> Path | None:
    """Worker ``worker``'s statistics snapshot: its hosts are its own."""
    return None if path is None else path.with_name(f"{path.name}.worker{worker}")


def worker_config(config, worker: int):
    """Worker ``worker``'s configuration: its own statistics snapshot; the
    ban snapshot (the kernel's bans, shared by all) kept by worker 0 alone."""
    cfg = config.sensor
    return replace(config, sensor=replace(cfg, state_file=worker_state_file(cfg.state_file, worker),
                                          ban_file=cfg.ban_file if worker == 0 else None))


def worker_config_loader(load_config, source, worker: int, pending_text):
    """Worker ``worker``'s ``RunOptions.load_config``: its own view of a
    reload's configuration (a reload compares like with like), made from the
    file's text the supervisor read and planned (``pending_text()``), or,
    without one, read here (``load_config``: the command line's loader,
    else the file ``source``)."""

    def reload_config():
        text = pending_text()
        if load_config is not None:
            new = load_config() if text is None else load_config(text)
        else:
            new = load(source) if text is None else loads(text, source=source)
        return worker_config(new, worker)

    return reload_config


def worker_seed(seed, worker: int):
    """The uid seed of worker ``worker``: random (None), or derived from the
    run's seed so that two workers never make the same uids."""
    if seed is None:
        return os.urandom(12)
    return hashlib.sha256(f"{seed!r}/{worker}".encode()).digest()[:12]


def run_worker(config, options, datapath, worker: int, pipe_fd: int) -> int:
    """The worker's life: a Sensor on ring ``worker`` until SIGTERM. Returns the exit status."""
    from sensor.records.sinks import JsonLinesSink

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    log = structlog.get_logger("sensor").bind(worker=worker)
    out = os.fdopen(pipe_fd, "w", encoding="utf-8", buffering=1 << 16)
    if options.load_config is not None or config.source is not None:
        options = replace(options, load_config=worker_config_loader(
            options.load_config, config.source, worker, lambda: sensor.take_config_text()))
    sensor = WorkerSensor(worker_config(config, worker),
                          replace(options, uid_seed=worker_seed(options.uid_seed, worker)),
                          logger=log, sink=JsonLinesSink(out), datapath=datapath, worker=worker)
    sensor.control_class = WorkerControl

    def on_stop(signum, frame):
        sensor.request_stop()

    def on_sighup(signum, frame):
        sensor.reload_requested = "SIGHUP"

    def on_sigusr1(signum, frame):
        sensor.reopen_requested = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, on_sighup)
    signal.signal(signal.SIGUSR1, on_sigusr1)
    try:
        return sensor.run()
    except SensorError as exc:
        log.error("worker stopped", error=str(exc))
        return exc.exit_code or 1
    finally:
        try:
            out.flush()
        except (OSError, ValueError):
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
