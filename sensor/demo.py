"""The lab demo behind './run demo': a client and a mail server in network
namespaces, the datapath attached on the server's side, real SMTP sessions,
what the kernel pushed, its counters, and a ban that drops a host in XDP."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from . import abi
from .datapath import Datapath, DatapathConfig
from .lab import CLIENT_V4, SERVER_V4, SPAMMER_V4, Lab

ARROW = {abi.Direction.INGRESS: "C>", abi.Direction.EGRESS: "S<"}


def show_session(title: str, events: list[abi.Event]) -> None:
    print(f"\n== {title}: {len(events)} events from the kernel ==")
    for event in events:
        h = event.header
        where = "XDP" if h.direction == abi.Direction.INGRESS else "TC "
        flags = "".join(name for bit, name in ((abi.TCP_SYN, "S"), (abi.TCP_FIN, "F"), (abi.TCP_RST, "R"))
                        if h.tcp_flags & bit)
        if not event.payload:
            print(f"  {where} {event.src}:{h.sport} -> {event.dst}:{h.dport} [{flags}]")
            continue
        for line in event.payload.split(b"\r\n"):
            if line:
                text = line[:72].decode("utf-8", "replace")
                print(f"  {where} {ARROW[abi.Direction(h.direction)]} {text}")


def show_counters(datapath: Datapath) -> None:
    counters = datapath.maps.counters()
    names = [name for name in counters["ingress"] if counters["ingress"][name] or counters["egress"][name]]
    print("\n  counter        ingress(XDP)  egress(TC)")
    for name in names:
        print(f"  {name:<14} {counters['ingress'][name]:>12}  {counters['egress'][name]:>10}")


def run_demo(args) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="smtp-sensor-demo-"))
    journal = workdir / "server-journal.jsonl"
    started = time.monotonic()
    print("smtp-sensor demo: building the lab (two network namespaces, one veth pair, TEST-NET addresses)")
    with Lab() as lab:
        lab.start_server(journal=journal, reject_rcpt=r"^spamtrap@")
        print(f"  server {SERVER_V4}:25 (aiosmtpd) in {lab.server_ns}; clients {CLIENT_V4}, {SPAMMER_V4} "
              f"(swaks) in {lab.client_ns}")
        pin_root = Path(f"/sys/fs/bpf/smtp-sensor-demo-{os.getpid()}")  # the demo's own, removed at the end
        config = DatapathConfig(pin_dir=pin_root / f"v{abi.ABI_VERSION}")
        try:
            run_sessions(lab, Datapath(config))
        finally:
            shutil.rmtree(pin_root, ignore_errors=True)
        print("\nwhat reached the server (its journal):")
        print("  " + journal.read_text().replace("\n", "\n  ").rstrip())
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"lab torn down, datapath detached ({time.monotonic() - started:.1f} s)")
    return 0


def run_sessions(lab: Lab, datapath: Datapath) -> None:
    with datapath:
        attachment = datapath.attach(lab.server_if, netns=lab.server_ns)
        print(f"  datapath attached to {lab.server_if}: XDP ({attachment.xdp_mode}) ingress, TC egress")
        reader = datapath.event_reader()

        def session(title, *swaks_args, source=CLIENT_V4):
            result = lab.swaks(*swaks_args, source=source, timeout=20)
            events = reader.poll(100) + reader.poll(50)
            show_session(title, events)
            outcome = "delivered" if result.returncode == 0 else f"failed (swaks exit {result.returncode})"
            print(f"  -> {outcome}")
            return result

        session("legitimate mail", "--from", "alice@example.org", "--to", "bob@example.net")
        session("a rejected recipient", "--from", "promo@spam.example", "--to", "spamtrap@example.net",
                source=SPAMMER_V4)
        show_counters(datapath)

        print(f"\n== banning {SPAMMER_V4}/32 for 60 s in the XDP ban map ==")
        datapath.maps.ban(f"{SPAMMER_V4}/32", ttl=60, reason=abi.Reason.MANUAL)
        session("the banned host tries again", "--from", "promo@spam.example", "--to", "bob@example.net",
                "--timeout", "3", source=SPAMMER_V4)
        session("the legitimate host still gets through", "--from", "alice@example.org",
                "--to", "bob@example.net")
        for ban in datapath.maps.bans():
            print(f"  ban {ban.target}: {ban.packets} packets dropped, reason {ban.reason.name.lower()}, "
                  f"{ban.ttl_left():.0f} s left")
        show_counters(datapath)
        datapath.maps.unban(f"{SPAMMER_V4}/32")
