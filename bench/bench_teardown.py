"""Teardown against a real Postfix: how soon a dropped session's smtpd is free,
and whether a legitimate mail still gets in behind hundreds of dropped ones.

    .venv/bin/python bench/bench_teardown.py [--sessions 100,300,500] [--silent 100,150] [--json]

The sensor is `smtp-sensor run --rules` (the real CLI, as the lab tests run
it) on the lab server's veth, with one rule: MAIL FROM a sender of
reset.example is dropped with flow.drop() (which tears down), of
silent.example with flow.drop(reset=False) (silent, what a drop was before).
Postfix runs with its defaults (default_process_limit 100, smtpd_timeout 300 s).

1. latency: --lockstep sessions one at a time, the time from the write that
   gets a session dropped to the server's socket gone (the server namespace's
   TCP table polled every 0.1 ms), p50 / p99 / max: lockstep (MAIL FROM the
   dropped sender alone), and pipelined (MAIL ... QUIT in one write);
2. load: N sessions as fast as the client can open them (banner, then EHLO,
   MAIL FROM a dropped sender and RCPT in one write; then DATA from each,
   read or not, as a bot goes on). Then: how long until the server holds
   none of them (polled every 10 ms, from the last write), how many got
   their banner at all (a session
   that gets none in 3 s means every smtpd is busy), and one legitimate mail
   (swaks, 15 s timeout): accepted or not, and how long it took.
   Reset runs first; silent runs last, since their smtpds stay busy for
   Postfix's timeout (the lab is torn down after them).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from sensor.kernel import abi  # noqa: E402
from sensor.kernel.netns import socket_in  # noqa: E402
from sensor.lab.network import CLIENT_V4, SERVER_V4, Lab  # noqa: E402
from support.lab_sensor import SensorProcess  # noqa: E402

RULE = '''\
from sensor.rules import hooks, rule


@rule(hooks.command, id="bench.by_sender")
def by_sender(flow, command):
    sender = (flow.transaction.mailfrom or "").lower()
    if command.verb == "MAIL" and sender.endswith("@reset.example"):
        flow.drop()
    elif command.verb == "MAIL" and sender.endswith("@silent.example"):
        flow.drop(reset=False)
'''


def established(lab, ports=None) -> set[int]:
    """Client ports of the server's established connections on port 25, read
    from /proc/<Postfix master>/net/tcp: the server namespace's table, in
    ~0.1 ms (no `ss` process)."""
    found = set()
    with open(f"/proc/{lab.postfix.master_pid()}/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "01" and local.endswith(":0019"):
                found.add(int(remote.rsplit(":", 1)[1], 16))
    return found if ports is None else found & ports


def open_session(lab, banner_timeout: float = 3.0):
    sock = socket_in(lab.client_ns, socket.AF_INET)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(banner_timeout)
    sock.bind((CLIENT_V4, 0))
    sock.connect((SERVER_V4, 25))
    return sock, sock.getsockname()[1]


def read_reply(sock) -> bytes:
    buf = b""
    while True:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("closed")
        buf += data
        lines = buf.split(b"\r\n")
        if any(line[3:4] == b" " for line in lines[:-1]):
            return buf


def lockstep(lab, sensor, sessions: int, pipelined: bool = False) -> dict:
    """Per session: from the write that gets it dropped to the server's socket
    gone. Lockstep: EHLO answered, then MAIL FROM the dropped sender alone;
    the server's reply to it is what the datapath makes into the server's
    RST. Pipelined: MAIL, RCPT, DATA, a message, "." and QUIT in one write
    behind the EHLO: held (the commit hold), then its retransmission is the
    client's first packet after the verdict, made into the server's RST."""
    waits = []
    for _ in range(sessions):
        sock, port = open_session(lab)
        try:
            read_reply(sock)
            sock.sendall(b"EHLO bench.lab.example\r\n")
            read_reply(sock)
            t0 = time.monotonic()
            sock.sendall(b"MAIL FROM:<bot@reset.example>\r\nRCPT TO:<user@lab.example>\r\nDATA\r\n"
                         b"Subject: x\r\n\r\nspam\r\n.\r\nQUIT\r\n" if pipelined
                         else b"MAIL FROM:<bot@reset.example>\r\n")
            while port in established(lab, {port}) and time.monotonic() - t0 < 10:
                time.sleep(0.0001)
            waits.append((time.monotonic() - t0) * 1000)
        finally:
            sock.close()
    waits.sort()
    return {"sessions": sessions, "pipelined": pipelined, "p50_ms": round(statistics.median(waits), 2),
            "p99_ms": round(waits[min(len(waits) - 1, int(len(waits) * 0.99))], 2), "max_ms": round(waits[-1], 2)}


def legit(lab) -> tuple[bool, float]:
    """One legitimate mail with swaks: (accepted, seconds from start to exit)."""
    t0 = time.monotonic()
    result = lab.swaks("--from", "legit@example.org", "--to", "user@lab.example", "--timeout", "15", timeout=30)
    return result.returncode == 0 and "queued as" in result.stdout, round(time.monotonic() - t0, 3)


def load(lab, domain: str, n: int) -> dict:
    socks, ports, bannerless = [], set(), 0
    for _ in range(n):
        sock = None
        try:
            sock, port = open_session(lab)
            read_reply(sock)
        except (socket.timeout, OSError):
            bannerless += 1
            if sock is not None:
                sock.close()
            if bannerless >= 3:
                break                                   # every smtpd busy: stop opening
            continue
        try:
            sock.sendall(b"EHLO bench.lab.example\r\nMAIL FROM:<bot@" + domain.encode()
                         + b">\r\nRCPT TO:<user@lab.example>\r\n")
        except ConnectionError:
            pass
        socks.append(sock)
        ports.add(port)
    # what a bot does next, replies or not: on with its message
    for sock in socks:
        try:
            sock.sendall(b"DATA\r\n")
        except ConnectionError:
            pass
    t_last = time.monotonic()
    left = established(lab, ports)
    while left and time.monotonic() - t_last < 5.0:
        time.sleep(0.01)
        left = established(lab, ports)
    freed_ms = (time.monotonic() - t_last) * 1000 if not left else None
    mark = lab.postfix.mark()
    accepted, took = legit(lab)
    for sock in socks:
        sock.close()
    return {"mode": domain.split(".")[0], "sessions": n, "opened": len(ports), "no_banner": bannerless,
            "freed_ms": round(freed_ms, 1) if freed_ms is not None else None,
            "still_held_after_5s": len(left), "legit_accepted": accepted, "legit_s": took,
            "postfix_log_lines": len(lab.postfix.log_lines()) - mark}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", default="100,300,500", help="N of the reset load runs")
    parser.add_argument("--silent", default="100,150", help="N of the silent load runs (last)")
    parser.add_argument("--lockstep", type=int, default=50, help="sessions of the latency part")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = {"lockstep": [], "load": []}
    work = Path(tempfile.mkdtemp(prefix="bench-teardown-"))
    (work / "rules").mkdir()
    (work / "rules" / "bench.py").write_text(RULE)
    pin_dir = Path(f"/sys/fs/bpf/smtp-sensor-bench-teardown-{id(work) & 0xffff:x}") / f"v{abi.ABI_VERSION}"
    with Lab() as lab:
        lab.postfix = lab.start_postfix(tls=False)
        sensor = SensorProcess(lab, work / "records.json", pin_dir, work / "control.sock",
                               "--rules", str(work / "rules"))
        try:
            sensor.wait_log(lambda e: e.get("event") == "running", timeout=90)
            out["legit_baseline_s"] = [legit(lab)[1] for _ in range(3)]
            print("legit mail before any drop, s:", out["legit_baseline_s"], flush=True)
            out["lockstep"] = [lockstep(lab, sensor, args.lockstep), lockstep(lab, sensor, args.lockstep, True)]
            print("lockstep", out["lockstep"], flush=True)
            for n in (int(x) for x in args.sessions.split(",") if x):
                out["load"].append(load(lab, "reset.example", n))
                print(out["load"][-1], flush=True)
            for n in (int(x) for x in args.silent.split(",") if x):
                out["load"].append(load(lab, "silent.example", n))
                print(out["load"][-1], flush=True)
            out["kernel"] = sensor.cli("status")["counters"]
        finally:
            sensor.stop()
            subprocess.run(["rm", "-rf", str(pin_dir.parent)])
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
