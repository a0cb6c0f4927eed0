"""Teardown against a real Postfix: how soon a dropped session's smtpd is free,
and whether a legitimate mail still gets in behind hundreds of dropped ones.

    .venv/bin/python bench/bench_teardown.py [--sessions 100,300,500] [--silent 100,150] [--json]

The sensor is `smtp-sensor run --rules` (the real CLI, as the lab tests run
it) on the lab server's veth, with one rule: MAIL FROM a sender of
reset.example is dropped with flow.drop() (which tears down), of
silent.example with flow.drop(reset=False) (silent, what a drop was before).
Postfix runs with its defaults (default_process_limit 100, smtpd_timeout 300 s).

1. latency, lockstep: --lockstep sessions one at a time; each sends EHLO and
   MAIL FROM a dropped sender, waits for the sensor's drop record, sends RCPT,
   and polls `ss` in the server namespace (1 ms) until the server's socket of
   its port is gone: the time from the MAIL's write to then, p50 / p99 / max.
2. load: N sessions as fast as the client can open them (banner, then EHLO,
   MAIL FROM a dropped sender and RCPT in one write, no more reading). Then:
   how long until the server holds none of them (`ss` polled every 10 ms, from
   the last session's write), how many got their banner at all (a session
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
    """Client ports of the server's established connections on port 25."""
    out = subprocess.run(lab.exec_argv(lab.server_ns, "ss", "-Htn", "state", "established", "( sport = :25 )"),
                         capture_output=True, text=True, check=True).stdout
    found = {int(m.group(1)) for m in re.finditer(r"\S+:25\s+\S+:(\d+)", out)}
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


def lockstep(lab, sensor, sessions: int) -> dict:
    waits = []
    for _ in range(sessions):
        sock, port = open_session(lab)
        try:
            read_reply(sock)
            sock.sendall(b"EHLO bench.lab.example\r\n")
            read_reply(sock)
            t0 = time.monotonic()
            sock.sendall(b"MAIL FROM:<bot@reset.example>\r\n")
            sensor.wait_record(lambda r: r["event_type"] == "drop" and r["id.orig_p"] == port)
            try:
                sock.sendall(b"RCPT TO:<user@lab.example>\r\n")
            except ConnectionError:
                pass
            while port in established(lab, {port}):
                if time.monotonic() - t0 > 10:
                    break
                time.sleep(0.001)
            waits.append((time.monotonic() - t0) * 1000)
        finally:
            sock.close()
    waits.sort()
    return {"sessions": sessions, "p50_ms": round(statistics.median(waits), 2),
            "p99_ms": round(waits[min(len(waits) - 1, int(len(waits) * 0.99))], 2), "max_ms": round(waits[-1], 2)}


def load(lab, domain: str, n: int) -> dict:
    socks, ports, bannerless = [], set(), 0
    for _ in range(n):
        try:
            sock, port = open_session(lab)
            read_reply(sock)
        except (socket.timeout, OSError):
            bannerless += 1
            try:
                sock.close()
            except UnboundLocalError:
                pass
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
    t_last = time.monotonic()
    left = established(lab, ports)
    while left and time.monotonic() - t_last < 5.0:
        time.sleep(0.01)
        left = established(lab, ports)
    freed_ms = (time.monotonic() - t_last) * 1000 if not left else None
    mark = lab.postfix.mark()
    t0 = time.monotonic()
    result = lab.swaks("--from", "legit@example.org", "--to", "user@lab.example", "--timeout", "15", timeout=30)
    took = time.monotonic() - t0
    accepted = result.returncode == 0 and "queued as" in result.stdout
    for sock in socks:
        sock.close()
    return {"mode": domain.split(".")[0], "sessions": n, "opened": len(ports), "no_banner": bannerless,
            "freed_ms": round(freed_ms, 1) if freed_ms is not None else None,
            "still_held_after_5s": len(left), "legit_accepted": accepted, "legit_s": round(took, 3),
            "postfix_log_lines": len(lab.postfix.log_lines()) - mark}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", default="100,300,500", help="N of the reset load runs")
    parser.add_argument("--silent", default="100,150", help="N of the silent load runs (last)")
    parser.add_argument("--lockstep", type=int, default=50, help="sessions of the latency part")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = {"lockstep": None, "load": []}
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
            out["lockstep"] = lockstep(lab, sensor, args.lockstep)
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
