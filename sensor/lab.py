"""A network-namespace lab: a client host and a mail server host joined by a
veth pair, on TEST-NET addresses only, with a real SMTP server (aiosmtpd,
sensor.labserver) in the server namespace and real clients (swaks).

    with Lab() as lab:
        lab.start_server(journal=path)
        lab.swaks("--from", "a@example.org", "--to", "b@example.net")

Everything it creates (namespaces, and with them the veth pair; processes) is
removed by close(), which the context manager calls on every exit path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SensorError
from .netns import iproute

SERVER_V4, CLIENT_V4, SPAMMER_V4 = "192.0.2.25", "192.0.2.10", "192.0.2.66"
SERVER_V6, CLIENT_V6 = "2001:db8:25::25", "2001:db8:25::10"
PREFIX_V4, PREFIX_V6 = 24, 64


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: f"{os.getpid() & 0xFFFF:04x}")
    client_addrs: tuple[str, ...] = (CLIENT_V4, SPAMMER_V4)

    def __post_init__(self):
        self.client_ns = f"ss{self.tag}-cli"
        self.server_ns = f"ss{self.tag}-srv"
        self.client_if = f"ss{self.tag}c"
        self.server_if = f"ss{self.tag}s"
        self._procs: list[subprocess.Popen] = []
        self._created: list[str] = []

    # ------------------------------------------------------------ topology

    def up(self) -> "Lab":
        from pyroute2 import IPRoute

        if not shutil.which("ip"):
            raise SensorError("the lab needs iproute2's 'ip' command: ./run setup installs it")
        try:
            for name in (self.client_ns, self.server_ns):
                # iproute2 rather than pyroute2.netns.create: the latter works
                # in a child process with a 2 s timeout, and under load it was
                # seen to leave an unbound namespace file behind.
                _ip("netns", "add", name)
                self._created.append(name)
            with IPRoute() as ipr:
                ipr.link("add", ifname=self.client_if, kind="veth", peer=self.server_if)
                ipr.link("set", index=ipr.link_lookup(ifname=self.client_if)[0], net_ns_fd=self.client_ns)
                ipr.link("set", index=ipr.link_lookup(ifname=self.server_if)[0], net_ns_fd=self.server_ns)
            self._configure(self.client_ns, self.client_if,
                            [(a, PREFIX_V4) for a in self.client_addrs] + [(CLIENT_V6, PREFIX_V6)])
            self._configure(self.server_ns, self.server_if, [(SERVER_V4, PREFIX_V4), (SERVER_V6, PREFIX_V6)])
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def _configure(ns: str, ifname: str, addresses) -> None:
        with iproute(ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            index = _wait_for_link(ipr, ifname)
            for address, prefixlen in addresses:
                extra = {"flags": 0x02} if ":" in address else {}  # IFA_F_NODAD: usable at once
                ipr.addr("add", index=index, address=address, prefixlen=prefixlen, **extra)
            ipr.link("set", index=index, state="up")

    def ifindex(self, ns: str, ifname: str) -> int:
        with iproute(ns) as ipr:
            return ipr.link_lookup(ifname=ifname)[0]

    # ------------------------------------------------------------ processes

    def exec_argv(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def start_server(self, journal: Path | None = None, reject_rcpt: str | None = None,
                     port: int = 25) -> subprocess.Popen:
        argv = [sys.executable, "-m", "sensor.labserver", "--listen", SERVER_V4, "--listen", SERVER_V6,
                "--port", str(port)]
        if journal:
            argv += ["--journal", str(journal)]
        if reject_rcpt:
            argv += ["--reject-rcpt", reject_rcpt]
        proc = subprocess.Popen(self.exec_argv(self.server_ns, *argv), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self._procs.append(proc)
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise SensorError(f"the lab SMTP server did not start: {proc.stderr.read().strip()}")
        return proc

    def swaks(self, *args: str, server: str = SERVER_V4, timeout: float = 30,
              source: str | None = None) -> subprocess.CompletedProcess:
        """One real SMTP session from the client namespace."""
        argv = ["swaks", "--server", server, "--helo", "client.lab.example", *args]
        if source:
            argv += ["--local-interface", source]
        try:
            return subprocess.run(self.exec_argv(self.client_ns, *argv), capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:  # the namespace's teardown kills what is left
            return subprocess.CompletedProcess(argv, 124, exc.stdout or "", f"timed out after {timeout} s")

    # ------------------------------------------------------------ teardown

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        self._procs.clear()
        for name in reversed(self._created):
            _kill_namespace_processes(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._created.clear()

    def __enter__(self) -> "Lab":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.close()


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SensorError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def _wait_for_link(ipr, ifname: str, timeout: float = 3.0) -> int:
    """The index of a link just moved into a namespace (seen to take a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        found = ipr.link_lookup(ifname=ifname)
        if found:
            return found[0]
        if time.monotonic() > deadline:
            present = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
            raise SensorError(f"lab interface {ifname} did not appear in its namespace (it holds {present})")
        time.sleep(0.05)


def _kill_namespace_processes(name: str) -> None:
    """Processes still living in a namespace we made (a client left hanging)."""
    result = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    for pid in result.stdout.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    if result.stdout.strip():
        time.sleep(0.05)
