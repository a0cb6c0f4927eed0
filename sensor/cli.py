"""smtp-sensor's command line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from sensor.errors import SensorError, Shutdown
from sensor.service import log as sensor_log

EXAMPLES = """\
examples:
  smtp-sensor demo                      # the netns lab: real server, real clients, rules, statistics
  smtp-sensor run -i eth1               # attach to eth1 (XDP ingress, TC egress)
  smtp-sensor run --config /etc/smtp-sensor/config.toml
  smtp-sensor run -i eth1 --rules /etc/smtp-sensor/rules --ports 25,587,2525
  smtp-sensor run -i veth0 --netns mail --xdp-mode generic
  smtp-sensor run -c config.toml --log-file /var/log/smtp-sensor/sensor.log --metrics 127.0.0.1:9325
  smtp-sensor run --ebpf                # print exactly the C that bcc compiles, and exit
  smtp-sensor replay capture.pcap       # dissect a capture: JSON records on stdout, summary on stderr
  smtp-sensor replay smtp.pcap --rules rules/ --write-passed passed.pcap
  smtp-sensor replay big.pcap --workers 2 --monitor-only -o records.json   # two cores
  smtp-sensor status                    # ask the running sensor (control socket)
  smtp-sensor ban add 198.51.100.0/24 --ttl 3600 --reason "spam run"
  smtp-sensor ban list | smtp-sensor flows | smtp-sensor stats
  smtp-sensor rules check rules/        # load the rules without running them
  smtp-sensor reload                    # apply a changed config and re-read the rules (same as SIGHUP)
  smtp-sensor unload                    # stop the sensor, remove the pinned maps (--keep-maps: keep bans)
"""

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class _Terminate(Shutdown):
    """SIGTERM, turned into an exception so every finally: block runs (a
    Shutdown: a rule running when it comes does not take it for its own)."""


class _Interrupt(Shutdown):
    """SIGINT (Ctrl-C), the same way: what a rule raises as KeyboardInterrupt
    is that rule's error, the operator's Ctrl-C is not."""


def _on_sigterm(signum, frame):
    raise _Terminate()


def _on_sigint(signum, frame):
    raise _Interrupt()


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
    run.add_argument("-c", "--config", type=Path, help="TOML config (docs/config.example.toml); flags override it")
    run.add_argument("-i", "--interface", action="append", default=[], help="interface (repeatable)")
    run.add_argument("--netns", help="network namespace the interfaces live in")
    run.add_argument("--ports", type=parse_ports, help="SMTP ports (default 25,587)")
    run.add_argument("--xdp-mode", choices=["auto", "native", "generic"])
    run.add_argument("--pin-dir", type=Path, help="where bans and drops are pinned "
                     "(default /sys/fs/bpf/smtp-sensor/v<ABI>)")
    run.add_argument("-o", "--output", type=Path, help="append records to this file (default stdout)")
    run.add_argument("--rules", type=Path, metavar="DIR", help="run the rules of DIR, reloaded on change and SIGHUP")
    run.add_argument("--reload-interval", type=float, default=1.0, help="seconds between rule file checks")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--stats-interval", type=float, default=10.0, help="seconds between counter lines")
    run.add_argument("--state-file", type=Path, help="snapshot of the reject statistics and bans")
    run.add_argument("--ban-file", type=Path, help="snapshot of every source ban, restored at start (reboots)")
    run.add_argument("--monitor-only", action="store_true",
                     help="never drop or ban (a SPAN/mirror port): verdicts are only logged")
    run.add_argument("--wakeup", type=positive_int, metavar="N",
                     help="1: wake the consumer on every event (default with rules, so a verdict "
                          "lands before the client's next command); more: every 64 events per CPU "
                          "(default without rules, for throughput)")
    run.add_argument("--control-socket", default=None, help="default " + _default_socket() + "; 'none': no socket")
    run.add_argument("--log-file", type=Path, metavar="PATH",
                     help="append JSON log lines to PATH instead of stdout; reopened on SIGUSR1 (logrotate)")
    run.add_argument("--metrics", type=_metrics_address, metavar="ADDR:PORT",
                     help="serve Prometheus metrics on ADDR:PORT, e.g. 127.0.0.1:9325 (needs the 'metrics' extra)")
    run.add_argument("--workers", type=positive_int, metavar="N",
                     help="worker processes, each following the clients the kernel's hash gives it "
                          "(default: [sensor] workers, else one per CPU; 1: one process)")
    run.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)

    sub.add_parser("demo", help="the netns lab demo (needs root)")

    def control(name, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--control-socket", default=None, help="default " + _default_socket())
        return p

    control("status", help_text="what the running sensor does: interfaces, programs, counters, rules")
    fl = control("flows", help_text="the SMTP flows the running sensor follows")
    fl.add_argument("--limit", type=positive_int, default=1000)
    stt = control("stats", help_text="reject statistics per host")
    stt.add_argument("--limit", type=positive_int, default=100)
    control("reload", help_text="apply a changed configuration and re-read the rules now (like SIGHUP)")
    ban = sub.add_parser("ban", help="source bans in XDP: add, del, list")
    ban_sub = ban.add_subparsers(dest="ban_command", metavar="ACTION", required=True)
    for name, help_text in (("add", "ban a prefix"), ("del", "lift a ban"), ("list", "the bans")):
        p = ban_sub.add_parser(name, help=help_text)
        p.add_argument("--control-socket", default=None, help="default " + _default_socket())
        if name != "list":
            p.add_argument("prefix", help="address or prefix, e.g. 198.51.100.7 or 2001:db8::/48")
        if name == "add":
            p.add_argument("--ttl", type=float, help="seconds (default: until lifted)")
            p.add_argument("--reason", help="why (shown by ban list, kept in the drop record)")
    rules = sub.add_parser("rules", help="rules: check a directory without running it")
    rules_sub = rules.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    check = rules_sub.add_parser("check", help="load every rule file and rules.toml, report errors")
    check.add_argument("directory", type=Path)
    unload = control("unload", help_text="stop the running sensor (it detaches) and remove the pinned maps")
    unload.add_argument("--keep-maps", action="store_true", help="keep bans and drops pinned")
    unload.add_argument("-c", "--config", type=Path, help="config naming the pin folder")
    unload.add_argument("--pin-dir", type=Path, help="pinned maps folder to remove")
    unload.add_argument("-i", "--interface", action="append", default=[],
                        help="also remove programs left on IFACE by a sensor killed without cleanup")
    unload.add_argument("--netns", help="namespace of those interfaces")

    rep = sub.add_parser("replay", help="dissect a pcap or pcapng file through the live pipeline",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    rep.add_argument("capture", type=Path, help="pcap or pcapng file")
    rep.add_argument("-o", "--output", type=Path, help="write records here (default stdout)")
    rep.add_argument("-c", "--config", type=Path,
                     help="TOML config (a live sensor's own): ports, rules, enforce, limits, spam_stats")
    rep.add_argument("--ports", type=parse_ports, help="SMTP ports (default 25,587)")
    rep.add_argument("--ports-only", action="store_true",
                     help="dissect the flows on the SMTP ports only, as the live sensor does (default: "
                          "also any TCP flow found SMTP by content: a 220 greeting and EHLO/HELO, "
                          "also inside an HTTP CONNECT tunnel)")
    rep.add_argument("--lenient", action="store_true",
                     help="read what can be read of a truncated or corrupt capture: a corrupt "
                          "record is skipped to the next plausible one (a warning, exit 0)")
    rep.add_argument("--uid-seed", type=int, default=0, help="seed of the connection uids (default 0: reproducible)")
    rep.add_argument("--rules", type=Path, metavar="DIR", help="run the rules of DIR (e.g. ./rules)")
    rep.add_argument("--write-passed", type=Path, metavar="OUT.pcap",
                     help="write the packets the rules' verdicts let pass (inline semantics)")
    rep.add_argument("--monitor-only", action="store_true",
                     help="never drop or ban: verdicts are recorded (enforced_by \"monitor\"), not applied")
    rep.add_argument("--workers", type=positive_int, default=1, metavar="N",
                     help="split the capture over N processes by client address (default 1); the same "
                          "records, in another order; not with bans enforced or --write-passed")
    return parser


def _default_socket() -> str:
    from sensor.service.control import DEFAULT_SOCKET
    return DEFAULT_SOCKET


def _load_config(path, text: str | None = None):
    from sensor.config import Config, load, loads
    if path is None:
        return Config()
    return load(path) if text is None else loads(text, source=Path(path))


def resolve_run_config(args, text: str | None = None):
    """The config file (or the defaults), with the command line's flags on top;
    ``text``: the file's content, already read."""
    from dataclasses import replace

    cfg = _load_config(getattr(args, "config", None), text)
    over = {}
    if getattr(args, "interface", None):
        over["interfaces"] = tuple(args.interface)
    for flag, key in (("netns", "netns"), ("ports", "ports"), ("xdp_mode", "xdp_mode"), ("pin_dir", "pin_dir"),
                      ("rules", "rules"), ("state_file", "state_file"), ("ban_file", "ban_file"),
                      ("workers", "workers")):
        value = getattr(args, flag, None)
        if value is not None:
            over[key] = value
    if getattr(args, "output", None) is not None:
        over["output"] = str(args.output)
    if getattr(args, "monitor_only", False):
        over["enforce"] = False
    return replace(cfg, sensor=replace(cfg.sensor, **over)) if over else cfg


def cmd_run(args) -> int:
    from sensor.service.loop import RunOptions, Sensor

    if args.ebpf:   # what this run would compile (the pin folder is a build parameter)
        from sensor.kernel.datapath import Datapath, DatapathConfig
        sensor_cfg = resolve_run_config(args).sensor
        print(Datapath(DatapathConfig(pin_dir=sensor_cfg.pin_dir, workers=sensor_cfg.worker_count)).listing(),
              end="")
        return EXIT_OK
    config = resolve_run_config(args)
    socket_path = args.control_socket or _default_socket()
    options = RunOptions(duration=args.duration, stats_interval=args.stats_interval,
                         reload_interval=args.reload_interval, wakeup=args.wakeup,
                         control_socket=None if socket_path == "none" else socket_path, metrics=args.metrics,
                         load_config=lambda text=None: resolve_run_config(args, text))
    if config.sensor.worker_count > 1:
        from sensor.service.supervisor import Supervisor
        sensor = Supervisor(config, options)
    else:
        sensor = Sensor(config, options)

    def on_sighup(signum, frame):
        sensor.reload_requested = "SIGHUP"

    def on_sigusr1(signum, frame):
        sensor.reopen_requested = True     # done by the loop: never inside a write

    def on_stop(signum, frame):
        # Once the loop runs, a flag: an exception raised here while the event
        # ring's ctypes callback runs would be swallowed by it, and the sensor
        # would not stop.  Before (compiling, attaching), the exception, so
        # every finally: block unwinds what was done so far.
        sensor.request_stop()
        if sensor.started is None:
            raise _Interrupt() if signum == signal.SIGINT else _Terminate()

    signal.signal(signal.SIGHUP, on_sighup)
    signal.signal(signal.SIGUSR1, on_sigusr1)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    code = sensor.run()
    _leave(code)


def _leave(code: int) -> None:
    """Exit at once, everything detached, written and closed: the
    interpreter's own teardown would free the open flows' objects one by one
    (seconds with 100 000 of them, under a flood); the kernel frees the
    process's memory in one go."""
    import logging
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _client(args):
    from sensor.service.control import ControlClient
    return ControlClient(args.control_socket or _default_socket())


def _print(obj) -> None:
    import json
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def cmd_control(args) -> int:
    client = _client(args)
    if args.command == "status":
        _print(client.call("status"))
    elif args.command == "flows":
        _print(client.call("flows", limit=args.limit))
    elif args.command == "stats":
        _print(client.call("stats", limit=args.limit))
    elif args.command == "reload":
        result = client.call("reload")
        _print(result)
        return EXIT_ERROR if result.get("errors") else EXIT_OK
    elif args.command == "ban":
        from sensor.service.control import BadArgument, check_prefix, check_ttl
        try:   # the user's mistakes are found here, before asking the sensor
            prefix = check_prefix(args.prefix) if args.ban_command != "list" else None
            ttl = check_ttl(args.ttl) if args.ban_command == "add" else None
        except BadArgument as exc:
            raise SensorError(str(exc)) from None
        if args.ban_command == "add":
            _print(client.call("ban_add", prefix=prefix, ttl=ttl, reason=args.reason))
        elif args.ban_command == "del":
            _print(client.call("ban_del", prefix=prefix))
        else:
            _print(client.call("bans"))
    return EXIT_OK


def cmd_rules_check(args) -> int:
    from sensor.rules.loader import RuleSet

    ruleset = RuleSet(args.directory)
    for r in ruleset.rules:
        print(f"ok     {r.id} rev {r.rev} ({r.hook.name}{', streamed' if r.streamed else ''}) {r.file}:{r.line}")
    for error in ruleset.errors.values():
        print(f"error  {error}")
    print(f"{len(ruleset.rules)} rules, {len(ruleset.errors)} errors in {args.directory}")
    return EXIT_ERROR if ruleset.errors else EXIT_OK


def cmd_unload(args) -> int:
    import shutil

    from sensor.service.control import NotRunning

    client = _client(args)
    try:
        client.call("stop")
        print(f"asked the sensor on {client.path} to stop")
        deadline = time.monotonic() + 20
        while Path(client.path).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(client.path).exists():
            raise SensorError(f"the sensor did not stop within 20 s (its control socket {client.path} remains)")
        print("sensor stopped: XDP and TC detached")
    except NotRunning:
        print("no sensor running")
    if args.interface:
        from sensor.kernel.datapath import Datapath, check_privileges
        check_privileges()
        for ifname in args.interface:
            removed = Datapath.detach_stale(ifname, args.netns)
            print(f"{ifname}: removed {', '.join(removed)}" if removed else
                  f"{ifname}: no smtp-sensor program attached")
    if args.keep_maps:
        print("pinned maps kept")
        return EXIT_OK
    pin_dir = args.pin_dir or _load_config(args.config).sensor.pin_dir
    if Path(pin_dir).exists():
        shutil.rmtree(pin_dir)
        print(f"removed the pinned maps in {pin_dir}")
    else:
        print(f"no pinned maps in {pin_dir}")
    return EXIT_OK


def _replay_progress(args):
    """A progress line on stderr when it is a terminal (not when the records
    are printed on that terminal too: the line would be torn by them)."""
    from sensor.inputs.replay import TtyProgress
    try:
        if not sys.stderr.isatty() or (args.output is None and sys.stdout.isatty()):
            return None
    except (AttributeError, ValueError):
        return None
    return TtyProgress(sys.stderr, name=args.capture.name)


def _metrics_address(text: str) -> str:
    from sensor.service.metrics import parse_address
    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def cmd_replay(args) -> int:
    from dataclasses import replace

    from sensor.assembly import Userland
    from sensor.inputs.replay import replay
    from sensor.outputs import Outputs

    config = resolve_run_config(args)
    if args.workers > 1:
        from sensor.inputs.workers import check_splittable
        check_splittable(config, args.workers, args.write_passed)
    # the records go to -o (written afresh) or stdout, never to the live sensor's
    # [sensor] output; and to the [[output]] tables, appended to
    config = replace(config, sensor=replace(config.sensor, output=str(args.output) if args.output else "-"))
    outputs = Outputs.from_config(config, mode="w")

    def make_userland(sink):
        return Userland(config, sink, uid_seed=args.uid_seed, by_content=not args.ports_only)

    try:
        progress = _replay_progress(args)
        try:
            if args.workers > 1:
                from sensor.assembly import verdict_summary
                from sensor.inputs.workers import replay_workers
                result = replay_workers(args.capture, make_userland, args.workers, outputs,
                                        strict=not args.lenient, progress=progress)
                verdicts = verdict_summary(result.verdicts)
            else:
                userland = make_userland(outputs)
                result = replay(args.capture, userland, strict=not args.lenient,
                                write_passed=args.write_passed, progress=progress)
                verdicts = userland.summary()
        finally:
            if progress is not None:
                progress.close()
        outputs.flush()
    finally:
        outputs.close()
    for warning in result.warnings:
        print(f"smtp-sensor: warning: {warning}", file=sys.stderr)
    summary = result.summary() + verdicts
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
    try:
        sensor_log.configure(level, json=json_logs, stream=sys.stderr if args.command == "replay" else None,
                             file=getattr(args, "log_file", None))
    except SensorError as exc:
        print(f"smtp-sensor: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, _on_sigterm)
    if args.command in ("replay", "rules"):      # they run rule code in this thread
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "demo":
            from sensor.lab.demo import run_demo
            return run_demo(args)
        if args.command == "replay":
            return cmd_replay(args)
        if args.command in ("status", "flows", "stats", "reload", "ban"):
            return cmd_control(args)
        if args.command == "rules":
            return cmd_rules_check(args)
        if args.command == "unload":
            return cmd_unload(args)
    except SensorError as exc:
        print(f"smtp-sensor: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:           # e.g. piped into head
        sys.stderr.close()
        return EXIT_OK
    except (KeyboardInterrupt, Shutdown) as exc:
        if args.command != "demo":
            return EXIT_OK
        # the demo, interrupted before run_demo() took SIGINT and SIGTERM over
        # (while importing it): nothing was set up; the status it gives later,
        # and nothing may interrupt the exit
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        return 128 + (signal.SIGTERM if isinstance(exc, _Terminate) else signal.SIGINT)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
