"""The lab demo behind './run demo' (``smtp-sensor demo``): the whole product
on a realistic mix of mail, in network namespaces, in well under a minute.

    lab       two namespaces joined by a veth pair, TEST-NET-1 addresses only:
              clients 192.0.2.10 (legitimate), 192.0.2.77 (forged senders),
              192.0.2.66 (a spam host) | server 192.0.2.25
    server    aiosmtpd (sensor.lab.server): bob@ and carol@lab.example exist,
              any other recipient gets "550 5.1.1 User unknown"; it journals
              every connection and message, so we see what really arrived
    sensor    the real one (sensor.service.loop.Sensor), in this process: XDP on
              the server's ingress, TC on its egress, the shipped rules/ and
              a scaled-down [spam_stats] (8 connections, 30 % rejected,
              checked every second, SMTP_PossibleSpam bans for 60 s);
              its records go to a sink of ours, printed for a person

The story: a legitimate mail is delivered, its end of data held by the
kernel until the sensor had judged it (the commit hold); a sender of a banned
domain and a malformed sender are alerted and their connections dropped in
XDP before the message reaches the server; one that writes its whole session
at once has its end of data held, then dropped: the server never commits it; a spam host guessing recipients collects 550s
until the reject statistics raise SMTP_PossibleSpam and ban it in XDP, and
its next connection is dropped while the legitimate host still gets through.
Then the kernel's counters, bans and flow drops, the operator's view over the
control socket, and the server's journal.

Everything is torn down on every exit path (end, error, Ctrl-C, SIGTERM): the
sensor detaches, its pin folder (this process's own, never the production
one) is removed, the namespaces and servers go.  A Ctrl-C (or SIGTERM) at any
moment of the demo gives that teardown, complete, and exit status 130 (143):
during the story it unwinds through the teardown; once the teardown has begun
it is only noted, so it cannot cut the teardown short.  From the first one on,
and after the demo, both are ignored: a second Ctrl-C changes nothing, nor
does one while the interpreter exits.  The story is printed line by line,
also into a pipe (`./run demo | tee demo.txt`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from sensor.config import POSSIBLE_SPAM, Config, SensorConfig, SpamStatsConfig
from sensor.errors import SensorError
from sensor.kernel import abi
from sensor.kernel.netns import socket_in
from sensor.lab.network import CLIENT_V4, LAB_DOMAIN, SERVER_V4, SPAMMER_V4, Lab

FORGER_V4 = "192.0.2.77"
RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
USERS = ("bob", "carol")                                  # the server's mailboxes
REJECT_OTHERS = rf"^(?!({'|'.join(USERS)})@{re.escape(LAB_DOMAIN)}$)"
GUESSES = tuple(f"{name}@{LAB_DOMAIN}" for name in ("info", "sales", "admin", "office", "contact", "jobs",
                                                     "billing", "support", "hr", "marketing"))
SPAM_FROM = "news@bulk-offers.example"
DEAD_SESSION_TIMEOUT = 2          # seconds a client waits on a dropped connection

# the scaled-down reject statistics: the seed's 300 connections / 60 min would not fit a demo
DEMO_SPAM_STATS = dict(threshold=8, percent=30, period="10m", check_interval=1,
                       ban={POSSIBLE_SPAM: 60})


def demo_config(lab: Lab, pin_dir: Path) -> Config:
    return Config(
        sensor=SensorConfig(interfaces=(lab.server_if,), netns=lab.server_ns, ports=(25,),
                            pin_dir=pin_dir, rules=RULES_DIR),
        spam_stats=SpamStatsConfig(**DEMO_SPAM_STATS))


# ------------------------------------------------------------------ records

class Records(list):
    """The sensor's sink: keeps every record; ``new()`` returns those not yet shown."""

    def __init__(self):
        super().__init__()
        self.shown = 0

    def __call__(self, record: dict) -> None:
        self.append(record)          # from the sensor's thread: list.append is atomic

    def new(self) -> list[dict]:
        end = len(self)
        out, self.shown = self[self.shown:end], end
        return out

    def of(self, event_type: str, **match) -> list[dict]:
        return [r for r in self if r["event_type"] == event_type
                and all(r.get(k) == v for k, v in match.items())]


def where(rec: dict) -> str:
    if "src_ip" in rec:
        return f"{rec['src_ip']}:{rec['src_port']} -> {rec['dest_ip']}:{rec['dest_port']}"
    if "id.orig_h" in rec:
        return f"{rec['id.orig_h']}:{rec['id.orig_p']} -> {rec['id.resp_h']}:{rec['id.resp_p']}"
    return ""


def describe(rec: dict) -> list[str]:
    """A record as a person reads it (a line or two), or [] to leave it out."""
    kind = rec["event_type"]
    if kind == "alert":
        a, smtp = rec["alert"], rec.get("smtp", {})
        said = f" MAIL FROM:<{smtp['mail_from']}>" if smtp.get("mail_from") is not None else ""
        return [f"ALERT   {a['signature']} ({a['signature_id']} rev {a['rev']}, severity {a['severity']}) "
                f"{where(rec)}{said}"]
    if kind == "drop":
        if rec["action"] == "drop_flow":
            return [f"DROP    flow {rec['target']}: dropped in XDP/TC from now on (rule {rec.get('rule_id')})"]
        ttl = f" for {rec['ttl']:g} s" if rec.get("ttl") else ""
        return [f"BAN     {rec['target']}{ttl}: its SMTP packets dropped in XDP ({rec['reason']})"]
    if kind == "notice":
        lines = [f"NOTICE  {rec['note']}: {rec['msg']}"]
        for sample in rec.get("samples", [])[:2]:
            lines.append(f"          e.g. {sample['count']} x {sample['code']} {sample.get('enhanced', '')} "
                         f"{sample['text'][:90]}")
        return lines
    if kind == "smtp":
        steps = ", ".join(f"{s['verb']} {s.get('code', '-')}" for s in rec.get("steps", []))
        rcpt = ",".join(rec.get("rcptto", [])) or "-"
        state = "delivered" if rec.get("delivered") else "not delivered"
        return [f"smtp    {rec.get('mailfrom', '?')} -> {rcpt}: {state} [{steps}]"]
    if kind == "anomaly":
        return [f"anomaly {rec['layer']}/{rec['name']} {where(rec)} {rec.get('detail', '')}".rstrip()]
    return [f"{kind}  {json.dumps(rec, default=str)[:100]}"]


def show_records(records: Records, indent: str = "   sensor: ", skip=()) -> list[dict]:
    new = records.new()
    for rec in new:
        if rec["event_type"] in skip:
            continue
        for i, line in enumerate(describe(rec)):
            print((indent if i == 0 else " " * len(indent)) + line)
    return new


# ------------------------------------------------------------------ the sensor in a thread

class SensorThread:
    """Sensor.start() here, Sensor.step() in a thread until stop(), then
    Sensor.stop() here (detach)."""

    def __init__(self, sensor):
        self.sensor = sensor
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.sensor.start()
        self._thread = threading.Thread(target=self._loop, name="sensor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._halt.is_set():
                self.sensor.step(20)
        except BaseException as exc:        # noqa: BLE001 - reported by settle()
            self.error = exc

    def settle(self, quiet: float = 0.15, limit: float = 3.0) -> None:
        """Wait until the sensor has read everything the kernel pushed (no new
        event for `quiet` seconds), at most `limit` seconds."""
        feed = self.sensor.feed
        deadline = time.monotonic() + limit
        seen, since = feed.counters.events, time.monotonic()
        while time.monotonic() < deadline:
            if self.error is not None:
                raise SensorError(f"the sensor stopped: {self.error!r}")
            time.sleep(0.03)
            if feed.counters.events != seen:
                seen, since = feed.counters.events, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return

    def wait_for(self, records: Records, event_type: str, limit: float, **match) -> list[dict]:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.error is not None:
                raise SensorError(f"the sensor stopped: {self.error!r}")
            found = records.of(event_type, **match)
            if found:
                return found
            time.sleep(0.05)
        return []

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None and self._thread.is_alive():  # never started: start() was interrupted
            self._thread.join()
        self.sensor.stop()


# ------------------------------------------------------------------ clients

class SwaksRun:
    """What a swaks run saw: the replies to each command, or that it gave up."""

    def __init__(self, result):
        self.code = result.returncode
        self.replies: list[tuple[str, str]] = []      # (command, reply line)
        self.rcpts: list[tuple[str, str]] = []        # (recipient, code)
        command = None
        for line in result.stdout.splitlines():
            if line.startswith(" -> "):
                command = line[4:]
            elif line.startswith(("<-  ", "<** ")) and command is not None:
                reply = line[4:]
                self.replies.append((command, reply))
                m = re.match(r"RCPT TO:<([^>]*)>", command)
                if m:
                    self.rcpts.append((m.group(1), reply[:3]))
                command = None
        # a dropped flow: a command the server never answered (swaks: "<** Timeout ...")
        self.unanswered = next((c for c, r in self.replies if r.startswith("Timeout")), None)
        self.dead = self.unanswered is not None or self.code == 124
        self.connected = "=== Connected to" in result.stdout

    def summary(self) -> str:
        if not self.connected:
            return f"no answer to its SYN: gave up after {DEAD_SESSION_TIMEOUT} s (the host is banned in XDP)"
        if self.dead:
            answered = [f"{c.split(':')[0].split()[0]} {r[:3]}" for c, r in self.replies if not r.startswith("Timeout")]
            return (f"{', '.join(answered[-2:])}, then {(self.unanswered or '?').split(':')[0]}: no reply, "
                    f"gave up after {DEAD_SESSION_TIMEOUT} s (the connection is dropped)")
        data = [reply for command, reply in self.replies if command == "."]
        if data and data[-1].startswith("250"):
            return f"delivered ({data[-1]})"
        return f"not delivered (swaks exit {self.code}; last reply {self.replies[-1][1] if self.replies else '-'})"


def pipelined(lab: Lab, attempts: Counter, source: str, sender: str, recipient: str) -> str:
    """EHLO, then MAIL, RCPT, DATA, the message, its end and QUIT in one write,
    without waiting for a reply (a client that ignores the protocol's turns);
    says what came back."""
    attempts[source] += 1
    sock = socket_in(lab.client_ns)
    replies = b""
    try:
        sock.settimeout(DEAD_SESSION_TIMEOUT)
        sock.bind((source, 0))
        sock.connect((SERVER_V4, 25))
        replies += sock.recv(4096)                      # the greeting
        sock.sendall(b"EHLO bulk.example\r\n")
        replies += sock.recv(4096)
        sock.sendall(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n"
                     "Subject: limited offer\r\n\r\nBuy now.\r\n.\r\nQUIT\r\n".encode())
        while chunk := sock.recv(4096):
            replies += chunk
    except OSError:                                     # a timeout: the connection is dropped
        pass
    finally:
        sock.close()
    codes = [line[:3] for line in replies.decode("ascii", "replace").splitlines() if line[:3].isdigit()]
    if "250" in codes[2:] and codes[-1:] == ["221"]:
        return f"replies {' '.join(codes)}: delivered"
    return (f"replies {' '.join(codes) or 'none'}, then nothing: gave up after {DEAD_SESSION_TIMEOUT} s "
            "(the connection is dropped)")


def show_holds(sensor, seen: list, quiet: bool = False) -> None:
    """The commit holds that ended since the last call (``seen``: [how many
    had ended then]); ``quiet``: only note them."""
    hold = sensor.feed.hold if sensor.feed is not None else None
    if hold is None:
        return
    new = list(hold.recent)[len(hold.recent) - min(hold.ended - seen[0], len(hold.recent)):]
    seen[0] = hold.ended
    for h in [] if quiet else new:
        if h.outcome == "released":
            how = ("the sensor put it into the server's stack at once" if h.injected
                   else "the server got it on the client's retransmission")
            print(f"   kernel: end of data held, released after {h.ms:.1f} ms: {how}")
        else:
            print(f"   kernel: end of data held, then the flow dropped ({h.ms:.1f} ms): "
                  "the server never got it")


def send(lab: Lab, attempts: Counter, source: str, sender: str, recipients, *extra: str) -> SwaksRun:
    attempts[source] += 1
    return SwaksRun(lab.swaks("--from", sender, "--to", ",".join(recipients), "--timeout",
                             str(DEAD_SESSION_TIMEOUT), *extra, source=source, timeout=20))


# ------------------------------------------------------------------ the story

class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during the story: unwinds through every finally: block (the teardown)."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """SIGINT and SIGTERM, from run_demo()'s start to the process's exit.

    The first one makes both ignored (SIG_IGN) from then on.  Before the
    teardown it raises Interrupted; once the teardown has begun
    (``teardown()``) it is only noted in ``received``: raised there, it would
    skip the rest of a finally: block.  ``ignore()`` after the demo: SIG_IGN
    until the exit (a Python handler does not last through the interpreter's
    finalisation, SIG_IGN does)."""

    def __init__(self):
        self.received: signal.Signals | None = None
        self.tearing_down = False
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.ignore()
        if self.received is not None:       # both arrived at once: the first one is being handled
            return
        self.received = signal.Signals(signum)
        if not self.tearing_down:
            raise Interrupted(self.received.name)

    def teardown(self) -> None:
        self.tearing_down = True

    @staticmethod
    def ignore() -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def run_demo(args) -> int:
    started = time.monotonic()
    stop = StopSignals()                    # first: a Ctrl-C from here on tears down what was made
    pin_root = Path(f"/sys/fs/bpf/smtp-sensor-demo-{os.getpid()}")   # the demo's own, removed at the end
    try:
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(line_buffering=True)  # into a pipe too, each line when it happens
        if getattr(args, "log_level", None) is None:
            logging.getLogger().setLevel(logging.WARNING)  # the story is printed; warnings still show
        if not (RULES_DIR / "spam_filter.py").is_file():
            raise SensorError(f"the shipped rules are not in {RULES_DIR}: run the demo from the repository")
        records = Records()
        print("smtp-sensor demo: a mail server in a network namespace lab, the sensor on its interface")
        demo_in_lab(pin_root, records, stop)
    except Interrupted:
        pass                                # stop.received says which
    finally:
        stop.ignore()                       # the status is decided: nothing may interrupt the exit
    gone = "removed" if not pin_root.exists() else "STILL PRESENT"
    if stop.received is not None:
        print(f"\ninterrupted ({stop.received.name}): the sensor detached, the lab is torn down, "
              f"pin folder {pin_root} {gone}")
        return 128 + stop.received
    print(f"lab torn down (namespaces, server, veth), pin folder {pin_root} {gone} "
          f"({time.monotonic() - started:.1f} s)")
    return 0


def demo_in_lab(pin_root: Path, records: Records, stop: StopSignals) -> None:
    from sensor.service.loop import RunOptions, Sensor

    lab = Lab(client_addrs=(CLIENT_V4, SPAMMER_V4, FORGER_V4))
    runner = None
    try:
        lab.up()
        journal = lab.workdir / "server-journal.jsonl"
        lab.start_server(journal=journal, reject_rcpt=REJECT_OTHERS, addresses=(SERVER_V4,))
        print(f"  lab     namespaces {lab.client_ns} (clients {CLIENT_V4} legitimate, {FORGER_V4} forged "
              f"senders, {SPAMMER_V4} spam host) and {lab.server_ns}, one veth pair, TEST-NET-1 only")
        print(f"  server  {SERVER_V4}:25 (aiosmtpd) in {lab.server_ns}: mailboxes "
              f"{', '.join(u + '@' + LAB_DOMAIN for u in USERS)}; any other recipient gets 550 5.1.1")
        config = demo_config(lab, pin_root / f"v{abi.ABI_VERSION}")
        options = RunOptions(stats_interval=3600.0, control_socket=str(lab.workdir / "control.sock"))
        runner = SensorThread(Sensor(config, options, sink=records))
        runner.start()
        show_setup(runner.sensor, config)
        attempts = story(lab, runner, records)
        operator_view(options.control_socket)
        show_kernel(runner.sensor)
        stop.teardown()
        runner.stop()                      # drain, detach, unload: before the lab goes
        late = show_records(records, indent="  ", skip=("smtp", "anomaly"))
        kinds = Counter(r["event_type"] for r in records)
        print(f"\nsensor stopped, XDP and TC detached: {len(records)} records "
              f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}), "
              f"{len(late)} written at shutdown for the flows still open")
        show_journal(journal, attempts)
    finally:
        stop.teardown()
        if runner is not None:
            runner.stop()                  # idempotent: a no-op after the one above
        shutil.rmtree(pin_root, ignore_errors=True)
        lab.close()                        # idempotent: also finishes a clean-up of Lab.up() cut short


def show_setup(sensor, config: Config) -> None:
    a = sensor.datapath.attachments[0]
    st = config.spam_stats
    print(f"  sensor  XDP ({a.xdp_mode}) on {a.ifname} ingress, TC on its egress; pins in {config.sensor.pin_dir}")
    print(f"          rules from {RULES_DIR}: {', '.join(r.id for r in sensor.engine.ruleset.rules)}")
    print(f"          reject statistics: {st.threshold} connections with >= {st.percent} % rejected, checked "
          f"every {st.check_every:g} s; {POSSIBLE_SPAM} bans the host for {st.ban_ttl(POSSIBLE_SPAM):g} s")


def story(lab: Lab, runner: SensorThread, records: Records) -> Counter:
    """The mail of the demo; returns the connections tried per client address."""
    attempts: Counter = Counter()
    holds = [0]

    def step(title: str, source: str, sender: str, recipients, *extra: str, skip=()) -> SwaksRun:
        print(f"\n{title}\n   client: {source} MAIL FROM:<{sender}> RCPT TO:{','.join(recipients)}")
        run = send(lab, attempts, source, sender, recipients, *extra)
        runner.settle()
        print(f"   client: {run.summary()}")
        show_records(records, skip=skip)
        show_holds(runner.sensor, holds)
        return run

    bob, carol = (f"{u}@{LAB_DOMAIN}" for u in USERS)
    step("1. legitimate mail", CLIENT_V4, "alice@example.org", [bob],
         "--header", "Subject: minutes of Monday's meeting")
    step("2. a sender of a banned domain (rules.toml: suspicious.org, packet-level.com, spam.example)",
         FORGER_V4, "offers@suspicious.org", [carol])
    step("3. a malformed sender", FORGER_V4, "offers.bulk-mail.example", [carol])
    print("\n4. a banned domain that writes its whole transaction at once (MAIL, RCPT, DATA, message, QUIT)"
          f"\n   client: {FORGER_V4} MAIL FROM:<deals@packet-level.com> RCPT TO:{carol}")
    print(f"   client: {pipelined(lab, attempts, FORGER_V4, 'deals@packet-level.com', carol)}")
    runner.settle()
    show_records(records)
    show_holds(runner.sensor, holds)

    print(f"\n5. a spam host: {SPAMMER_V4} sends {SPAM_FROM} to guessed mailboxes, "
          f"{DEMO_SPAM_STATS['threshold']} connections")
    # a dictionary sweep, then a mix: most connections hit a guessed mailbox (550), some only bob
    plans = [[*GUESSES[:6], bob]] + [[g, bob] if i % 3 else [bob] for i, g in enumerate(GUESSES[6:] + GUESSES, 1)]
    for n, rcpts in enumerate(plans[:DEMO_SPAM_STATS["threshold"]], 1):
        run = send(lab, attempts, SPAMMER_V4, SPAM_FROM, rcpts)
        runner.settle(quiet=0.05)
        said = ", ".join(f"{r.split('@')[0]}@ {code}" for r, code in run.rcpts)
        print(f"   #{n} {said} -> {'delivered' if run.summary().startswith('delivered') else 'nothing delivered'}")
        show_records(records, indent="      sensor: ", skip=("smtp",))
        show_holds(runner.sensor, holds, quiet=True)
    print("   (the statistics are checked every second)")
    found = runner.wait_for(records, "drop", limit=5.0, action="ban_source", reason="spam_stats")
    show_records(records, skip=("smtp",))
    if not found:
        print("   sensor: no ban yet (the check did not run in 5 s)")
    print(f"   #{DEMO_SPAM_STATS['threshold'] + 1} the spam host connects again")
    run = send(lab, attempts, SPAMMER_V4, SPAM_FROM, [bob])
    runner.settle()
    print(f"   client: {run.summary()}")
    show_records(records, skip=("smtp",))
    step("6. the legitimate host still gets through", CLIENT_V4, "alice@example.org", [carol])
    return attempts


def operator_view(socket_path: str) -> None:
    from sensor.service.control import ControlClient

    client = ControlClient(socket_path)
    print("\nthe operator's view, over the control socket (smtp-sensor stats / ban list):")
    report = client.call("stats")
    limits = report["thresholds"]
    for row in report["hosts"]:
        over = row["total"] >= limits["total"] and row["percent"] >= limits["percent"]
        verdict = f"over the thresholds: {row['class']}" if over else "below the thresholds"
        print(f"  stats   {row['host']:<12} {row['total']:>2} connections, {row['rejects']:>2} rejected "
              f"({row['percent']} %): {verdict}")
    for ban in client.call("bans"):
        print(f"  ban     {ban['target']:<16} {ban['reason']}, {ban['ttl_left']:.0f} s left")


def show_kernel(sensor) -> None:
    maps = sensor.datapath.maps
    counters = maps.counters()
    print("\nthe kernel's side: counters of the XDP (ingress) and TC (egress) programs")
    print("  counter        ingress(XDP)  egress(TC)")
    for name in counters["ingress"]:
        if counters["ingress"][name] or counters["egress"][name]:
            print(f"  {name:<14} {counters['ingress'][name]:>12}  {counters['egress'][name]:>10}")
    for ban in maps.bans():
        print(f"  ban {ban.target}: {ban.packets} packets dropped, reason {ban.reason.name.lower()}, "
              f"{ban.ttl_left():.0f} s left")
    flows: dict[str, dict[str, int]] = {}
    for drop in maps.drops():                    # one entry per direction of a dropped flow
        src, _, dst = drop.target.partition(" > ")
        to_server = int(dst.rpartition(":")[2]) in sensor.config.sensor.ports
        client, server = (src, dst) if to_server else (dst, src)
        side = "XDP" if to_server else "TC"
        flows.setdefault(f"{client} <> {server}", {})[side] = drop.packets
    for flow, sides in sorted(flows.items()):
        print(f"  flow drop {flow}: {sides.get('XDP', 0)} client packets dropped in XDP, "
              f"{sides.get('TC', 0)} server packets in TC")


def show_journal(journal: Path, attempts: Counter) -> None:
    entries = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    print("\nwhat reached the server (its journal):")
    for peer in dict.fromkeys(e["peer"] for e in entries):
        mine = [e for e in entries if e["peer"] == peer]
        kinds = Counter(e["kind"] for e in mine)
        senders = sorted({e["mail_from"] for e in mine if e["kind"] == "message"})
        print(f"  {peer:<12} {kinds['connection']:>2} of {attempts[peer]:>2} connections arrived, "
              f"{kinds['message']:>2} messages, {kinds['rcpt_rejected']:>2} recipients rejected; "
              f"senders: {', '.join(senders) or 'none'}")
