"""smtp-sensor's command line."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import structlog

from . import log as sensor_log
from .errors import SensorError

EXAMPLES = """\
examples:
  smtp-sensor demo                      # the netns lab: real server, real client, datapath attached
  smtp-sensor run -i eth1               # attach to eth1 (XDP ingress, TC egress)
  smtp-sensor run -i eth1 -i eth2 --ports 25,587,2525
  smtp-sensor run -i veth0 --netns mail --xdp-mode generic
  smtp-sensor run --ebpf                # print the kernel C source and exit
  smtp-sensor replay capture.pcap       # dissect a capture: JSON records on stdout, summary on stderr
  smtp-sensor replay big.pcapng -o records.json --ports 25,587,2525
  smtp-sensor replay smtp.pcap --rules rules/ --write-passed passed.pcap
  smtp-sensor run -i eth1 --rules /etc/smtp-sensor/rules
"""

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

# Samples per wakeup of the live consumer.  Batched wakeups (64) cost less CPU
# per event, but on a quiet link the consumer then only wakes at the poll
# timeout (50 ms): with rules, a client's whole dialogue (MAIL, RCPT, DATA, the
# message) was over before its MAIL FROM verdict reached the kernel, and a
# banned sender's mail was delivered.  Rules therefore get a wakeup per sample.
RULES_WAKEUP, PASSIVE_WAKEUP = 1, 64


class _Terminate(Exception):
    """SIGTERM, turned into an exception so every finally: block runs."""


def _on_sigterm(signum, frame):
    raise _Terminate()


def parse_ports(text: str) -> tuple[int, ...]:
    try:
        ports = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"ports must be numbers separated by commas: {text!r}") from None
    if not ports or any(not 0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"ports must be 1..65535: {text!r}")
    return ports


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smtp-sensor", description="eBPF/XDP SMTP security sensor",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="default: info (replay: warning, so stderr holds the summary)")
    parser.add_argument("--log-format", choices=["json", "console"], help="default: console on a TTY, else json")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="attach to interfaces and consume events",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("-i", "--interface", action="append", default=[], help="interface (repeatable)")
    run.add_argument("--netns", help="network namespace the interfaces live in")
    run.add_argument("--ports", type=parse_ports, default=(25, 587), help="SMTP ports (default 25,587)")
    run.add_argument("--xdp-mode", choices=["auto", "native", "generic"], default="auto")
    run.add_argument("--pin-dir", type=Path, help="where bans and drops are pinned "
                     "(default /sys/fs/bpf/smtp-sensor/v<ABI>)")
    run.add_argument("-o", "--output", type=Path, help="append records to this file (default stdout)")
    run.add_argument("--rules", type=Path, metavar="DIR", help="run the rules of DIR, reloaded on change and SIGHUP")
    run.add_argument("--reload-interval", type=float, default=1.0, help="seconds between rule file checks")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--stats-interval", type=float, default=10.0, help="seconds between counter lines")
    run.add_argument("--wakeup", type=positive_int, metavar="N",
                     help="perf samples per wakeup of the consumer (default: 1 with --rules, so a verdict "
                          f"lands before the client's next command; {PASSIVE_WAKEUP} without, for throughput)")
    run.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)

    sub.add_parser("demo", help="the netns lab demo (needs root)")

    rep = sub.add_parser("replay", help="dissect a pcap or pcapng file through the live pipeline",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("capture", type=Path, help="pcap or pcapng file")
    rep.add_argument("-o", "--output", type=Path, help="write records here (default stdout)")
    rep.add_argument("--ports", type=parse_ports, default=(25, 587), help="SMTP ports (default 25,587)")
    rep.add_argument("--lenient", action="store_true",
                     help="read what can be read of a truncated capture (a warning, exit 0)")
    rep.add_argument("--uid-seed", type=int, default=0, help="seed of the connection uids (default 0: reproducible)")
    rep.add_argument("--rules", type=Path, metavar="DIR", help="run the rules of DIR (e.g. ./rules)")
    rep.add_argument("--write-passed", type=Path, metavar="OUT.pcap",
                     help="write the packets the rules' verdicts let pass (inline semantics)")
    return parser


def _rule_engine(directory, sink, enforcer):
    from .rules.engine import RuleEngine
    from .rules.loader import RuleSet

    logger = structlog.get_logger("rules")
    ruleset = RuleSet(directory, logger)
    if ruleset.errors:
        first = next(iter(ruleset.errors.values()))
        raise SensorError(f"rules not loaded: {first}")
    return RuleEngine(ruleset, sink, enforcer, logger)


_reload = {"requested": False}


def _on_sighup(signum, frame):
    _reload["requested"] = True


def _open_output(path, mode="a"):
    if path is None:
        return None
    try:
        return open(path, mode, encoding="utf-8")
    except OSError as exc:
        raise SensorError(f"cannot write {path}: {exc.strerror or exc}") from None


def cmd_run(args) -> int:
    import os

    from .datapath import Datapath, DatapathConfig
    from .live import LiveFeed
    from .output import JsonLinesSink
    from .pipeline import Pipeline

    config = DatapathConfig(ports=args.ports)
    if args.pin_dir:
        config.pin_dir = args.pin_dir
    datapath = Datapath(config)
    if args.ebpf:
        print(datapath.source())
        return EXIT_OK
    if not args.interface:
        raise SensorError("no interface given: use -i IFACE (see smtp-sensor run --help)")
    logger = structlog.get_logger("sensor")
    out = _open_output(args.output)
    sink = JsonLinesSink(out or sys.stdout)
    pipeline = Pipeline(sink, ports=args.ports, uid_seed=os.urandom(12))
    try:
        with datapath.load():
            for ifname in args.interface:
                datapath.attach(ifname, netns=args.netns, xdp_mode=args.xdp_mode)
            wakeup = args.wakeup or (RULES_WAKEUP if args.rules is not None else PASSIVE_WAKEUP)
            feed = LiveFeed(datapath.event_reader(wakeup_events=wakeup), pipeline, datapath.maps)
            engine = None
            if args.rules is not None:
                from .rules.enforce import KernelEnforcer
                engine = _rule_engine(args.rules, sink, KernelEnforcer(datapath.maps))
                pipeline.listeners.append(engine)
                pipeline.gate = engine.enforcer.passes   # ring stragglers of dropped flows: counted, not dissected
                signal.signal(signal.SIGHUP, _on_sighup)
            started = last = last_reload = time.monotonic()
            logger.info("running", interfaces=args.interface, ports=list(args.ports),
                        rules=[r.id for r in engine.ruleset.rules] if engine else [])
            try:
                while args.duration is None or time.monotonic() - started < args.duration:
                    feed.step(50)
                    now = time.monotonic()
                    if engine is not None and (_reload["requested"] or now - last_reload >= args.reload_interval):
                        if _reload["requested"]:
                            logger.info("reload requested (SIGHUP)")
                            engine.ruleset.reload(force=True)
                        else:
                            engine.ruleset.poll()
                        _reload["requested"] = False
                        last_reload = now
                    if now - last >= args.stats_interval:
                        logger.info("stats", events=feed.events, lost=feed.reader.lost,
                                    pipeline=pipeline.stats.as_dict(), counters=datapath.maps.counters())
                        last = now
            finally:
                feed.drain()
                pipeline.finish()
                sink.flush()
                logger.info("stopped", events=feed.events, lost=feed.reader.lost,
                            pipeline=pipeline.stats.as_dict(),
                            counters=datapath.maps.counters())
    finally:
        if out is not None:
            out.close()
    return EXIT_OK


def cmd_replay(args) -> int:
    from .output import JsonLinesSink
    from .pipeline import Pipeline
    from .replay import replay

    out = _open_output(args.output, "w")
    try:
        sink = JsonLinesSink(out or sys.stdout)
        pipeline = Pipeline(sink, ports=args.ports, uid_seed=args.uid_seed)
        enforcer = None
        if args.rules is not None:
            from .rules.enforce import ReplayEnforcer
            enforcer = ReplayEnforcer()
            pipeline.listeners.append(_rule_engine(args.rules, sink, enforcer))
        result = replay(args.capture, pipeline, strict=not args.lenient, enforcer=enforcer,
                        write_passed=args.write_passed)
        sink.flush()
    finally:
        if out is not None:
            out.close()
    for warning in result.warnings:
        print(f"smtp-sensor: warning: {warning}", file=sys.stderr)
    summary = result.summary()
    if args.rules is not None:
        engine = pipeline.listeners[-1]
        summary += (f"; rules: {engine.alerts} alerts, {engine.drops} flows dropped, {engine.bans} bans, "
                    f"{engine.errors} rule errors")
    if args.write_passed is not None:
        summary += f"; passed packets written to {args.write_passed}"
    print(summary, file=sys.stderr)
    return EXIT_OK


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    json_logs = None if args.log_format is None else args.log_format == "json"
    if args.command == "demo" and args.log_format is None:
        json_logs = False  # the demo is read by a person
    # replay: records own stdout, logs go to stderr
    level = args.log_level or ("warning" if args.command == "replay" else "info")
    sensor_log.configure(level, json=json_logs,
                         stream=sys.stderr if args.command == "replay" else None)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "demo":
            from .demo import run_demo
            return run_demo(args)
        if args.command == "replay":
            return cmd_replay(args)
    except SensorError as exc:
        print(f"smtp-sensor: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:           # e.g. piped into head
        sys.stderr.close()
        return EXIT_OK
    except (KeyboardInterrupt, _Terminate):
        return EXIT_OK
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
