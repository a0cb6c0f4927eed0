"""A network-namespace lab: a client host and a mail server host joined by a
veth pair, on TEST-NET addresses only, with real SMTP servers in the server
namespace (aiosmtpd through sensor.lab.server; Postfix) and real clients in
the client namespace (swaks; sensor.lab.client for BDAT).

    with Lab() as lab:
        lab.start_server(journal=path, tls=True, auth=True, port=587)
        postfix = lab.start_postfix(reject=("spam@lab.example",), tls=True)
        lab.swaks("--from", "a@example.org", "--to", "user@lab.example", "--tls")
        lab.bdat_client(to=("user@lab.example",), chunk_size=100, zero_last=True)
        postfix.wait_for_log(r"status=sent")

Postfix instances are sensor.lab.postfix's. Everything the lab creates
(namespaces, and with them the veth pair; processes; Postfix instances; its
temporary folder with the TLS certificate and the Postfix configuration,
queue and log) is removed by close(), which the context manager calls on
every exit path.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping

from sensor.errors import SensorError
from sensor.kernel.netns import iproute, socket_in

if TYPE_CHECKING:
    from sensor.lab.postfix import PostfixServer

SERVER_V4, CLIENT_V4, SPAMMER_V4 = "192.0.2.25", "192.0.2.10", "192.0.2.66"
SERVER_V6, CLIENT_V6 = "2001:db8:25::25", "2001:db8:25::10"
PREFIX_V4, PREFIX_V6 = 24, 64
LAB_DOMAIN, LAB_HOSTNAME = "lab.example", "mx.lab.example"
_XDP_FLAGS_DRV_MODE = 1 << 2


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
        self._postfixes: list[PostfixServer] = []
        self._workdir: Path | None = None
        self._tls_files: tuple[Path, Path] | None = None

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
            self._pass_xdp(self.client_ns, self.client_if)
            self._configure(self.server_ns, self.server_if, [(SERVER_V4, PREFIX_V4), (SERVER_V6, PREFIX_V6)])
            # the clients' checksums computed in full, as frames from a real NIC
            # arrive: a veth leaves them to an offload that never happens, and the
            # server's stack trusts them (CHECKSUM_PARTIAL) where it checks a NIC's
            _ethtool(self.client_ns, "-K", self.client_if, "tx", "off")
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

    @staticmethod
    def _pass_xdp(ns: str, ifname: str) -> None:
        """A pass-everything XDP program on the client's veth: a veth drops
        what its peer's XDP sends back (XDP_TX: the RSTs of a torn-down flow,
        bpf/teardown.h) unless it runs XDP itself, which a real NIC needs
        not. It goes with the namespace."""
        from sensor.kernel import bpfsys

        fd = bpfsys.load_xdp_pass("lab_xdp_pass")
        try:
            with iproute(ns) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0],
                         xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", _XDP_FLAGS_DRV_MODE)]})
        finally:
            os.close(fd)

    def ifindex(self, ns: str, ifname: str) -> int:
        with iproute(ns) as ipr:
            return ipr.link_lookup(ifname=ifname)[0]

    # ------------------------------------------------------------ processes

    def exec_argv(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    @property
    def workdir(self) -> Path:
        """The lab's own temporary folder (certificates, Postfix, logs), made on first use."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"ss{self.tag}-lab-"))
            self._workdir.chmod(0o755)  # Postfix's unprivileged daemons walk into their queue below it
        return self._workdir

    def tls_files(self) -> tuple[Path, Path]:
        """(certificate, key) of a self-signed certificate for mx.lab.example, made once per lab."""
        if self._tls_files is None:
            if not shutil.which("openssl"):
                raise SensorError("the lab needs 'openssl' for its TLS certificate: ./run setup installs it")
            cert, key = self.workdir / "tls-cert.pem", self.workdir / "tls-key.pem"
            san = f"DNS:{LAB_HOSTNAME},IP:{SERVER_V4},IP:{SERVER_V6}"
            result = subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-days", "30", "-subj", f"/CN={LAB_HOSTNAME}", "-addext", f"subjectAltName={san}",
                 "-keyout", str(key), "-out", str(cert)], capture_output=True, text=True, timeout=30)
            if result.returncode != 0:
                raise SensorError(f"openssl could not make the lab certificate: {result.stderr.strip()}")
            self._tls_files = (cert, key)
        return self._tls_files

    def start_server(self, journal: Path | None = None, reject_rcpt: str | None = None,
                     port: int = 25, tls: bool = False, auth: bool = False,
                     addresses: Iterable[str] = (SERVER_V4, SERVER_V6), timeout: float = 20) -> subprocess.Popen:
        """aiosmtpd (sensor.lab.server) in the server namespace; returns once it listens.

        tls: offer STARTTLS with the lab certificate. auth: offer AUTH PLAIN/LOGIN,
        also without TLS, for sensor.lab.server.LAB_USER / LAB_PASSWORD."""
        argv = [sys.executable, "-m", "sensor.lab.server", "--port", str(port)]
        for address in addresses:
            argv += ["--listen", address]
        if journal:
            argv += ["--journal", str(journal)]
        if reject_rcpt:
            argv += ["--reject-rcpt", reject_rcpt]
        if tls:
            cert, key = self.tls_files()
            argv += ["--tls-cert", str(cert), "--tls-key", str(key)]
        if auth:
            argv += ["--auth"]
        # stderr to a file: a pipe nobody reads would stall the server once full
        log = self.workdir / f"labserver-{port}-{len(self._procs)}.log"
        with open(log, "w") as stderr:
            proc = subprocess.Popen(self.exec_argv(self.server_ns, *argv), stdout=subprocess.PIPE,
                                    stderr=stderr, text=True)
        self._procs.append(proc)
        proc.log_path = log
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            problem = log.read_text().strip() or ("no output" if ready else f"no 'ready' within {timeout} s")
            raise SensorError(f"the lab SMTP server did not start: {problem}")
        return proc

    def start_postfix(self, reject: Iterable[str] | Mapping[str, str] = ("spam@lab.example",), tls: bool = True,
                      port: int = 25, addresses: Iterable[str] = (SERVER_V4, SERVER_V6),
                      domains: Iterable[str] = (LAB_DOMAIN,), main_cf: Mapping[str, str] | None = None,
                      timeout: float = 15) -> "PostfixServer":
        """A real Postfix in the server namespace, configured and started in
        the lab's own folder; returns once every address answers with 220.

        Mail for `domains` (any local part) and, from the lab's TEST-NET
        networks, for any other domain is accepted and discarded; recipients
        in `reject` (access(5) keys: address, domain or user@; a mapping gives
        each its own action) get "550 5.1.1". tls: STARTTLS with the lab
        certificate. main_cf: more main.cf settings (they win)."""
        from sensor.lab.postfix import PostfixServer

        server = PostfixServer(self, self.workdir / f"postfix-{port}-{len(self._postfixes)}", port,
                               tuple(addresses))
        server.write_config(reject, tls, tuple(domains), dict(main_cf or {}))
        self._postfixes.append(server)
        server.start(timeout)
        return server

    def start_postfix_relay(self, relayhost: str, port: int = 2525, timeout: float = 15,
                            main_cf: Mapping[str, str] | None = None) -> "PostfixServer":
        """A Postfix in the client namespace that takes mail on loopback
        (127.0.0.1:`port`) and sends all of it with Postfix's own smtp client
        to `relayhost` ("[address]:port", e.g. the server's Postfix), from
        the client's address. Its hostname is relay.lab.example, so the
        server's greeting is not its own (Postfix would see a loop)."""
        from sensor.lab.postfix import PostfixServer

        relay = PostfixServer(self, self.workdir / f"relay-{port}-{len(self._postfixes)}", port, ("127.0.0.1",),
                              ns=self.client_ns, relayhost=relayhost)
        settings = {"myhostname": "relay.lab.example", "smtp_bind_address": CLIENT_V4,
                    "smtp_bind_address6": CLIENT_V6}
        settings.update(main_cf or {})
        relay.write_config((), False, (), settings)
        self._postfixes.append(relay)
        relay.start(timeout)
        return relay

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

    def bdat_client(self, *args: str, server: str = SERVER_V4, port: int = 25,
                    mail_from: str = "alice@example.org", to: Iterable[str] = ("user@lab.example",),
                    chunk_size: int | None = None, chunks: int | None = None, zero_last: bool = False,
                    pipeline: bool = False, expect_reject: Iterable[str] = (), starttls: bool = False,
                    source: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        """One SMTP session with the message in BDAT chunks (sensor.lab.client)
        from the client namespace. Return code 0: every reply as expected; 1:
        an unexpected reply; 2: connection/protocol error; 124: timed out.
        More sensor.lab.client options can be passed in args."""
        argv = [sys.executable, "-m", "sensor.lab.client", "--server", server, "--port", str(port),
                "--from", mail_from]
        for address in to:
            argv += ["--to", address]
        for address in expect_reject:
            argv += ["--expect-reject", address]
        if chunk_size:
            argv += ["--chunk-size", str(chunk_size)]
        if chunks:
            argv += ["--chunks", str(chunks)]
        argv += ["--zero-last"] * zero_last + ["--pipeline"] * pipeline + ["--starttls"] * starttls
        if source:
            argv += ["--source", source]
        argv += [*args, "--timeout", str(max(1.0, timeout / 3))]
        try:
            return subprocess.run(self.exec_argv(self.client_ns, *argv), capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(argv, 124, exc.stdout or "", f"timed out after {timeout} s")

    def connect(self, address: str = SERVER_V4, port: int = 25, ns: str | None = None,
                timeout: float = 5) -> socket.socket:
        """A TCP socket connected from inside a lab namespace (the client's by
        default) without a helper process: made there, used from here."""
        sock = socket_in(ns or self.client_ns, socket.AF_INET6 if ":" in address else socket.AF_INET)
        try:
            sock.settimeout(timeout)
            sock.connect((address, port))
        except OSError:
            sock.close()
            raise
        return sock

    # ------------------------------------------------------------ teardown

    def close(self) -> None:
        for server in self._postfixes:
            try:
                server.stop()
            except Exception:  # noqa: BLE001 - the namespace teardown below kills what is left
                pass
        self._postfixes.clear()
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
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir, self._tls_files = None, None

    def __enter__(self) -> "Lab":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.close()


def _ethtool(ns: str, *args: str) -> None:
    if not shutil.which("ethtool"):
        raise SensorError("the lab needs the 'ethtool' command: ./run setup installs it")
    result = subprocess.run(["ip", "netns", "exec", ns, "ethtool", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SensorError(f"ethtool {' '.join(args)} in {ns} failed: {result.stderr.strip()}")


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


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an exited daemon waits for
    its reaper, which in a container may take its time)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


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
