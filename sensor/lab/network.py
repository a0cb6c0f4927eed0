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

Everything it creates (namespaces, and with them the veth pair; processes;
Postfix instances; its temporary folder with the TLS certificate and the
Postfix configuration, queue and log) is removed by close(), which the
context manager calls on every exit path.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from sensor.errors import SensorError
from sensor.kernel.netns import iproute, socket_in

SERVER_V4, CLIENT_V4, SPAMMER_V4 = "192.0.2.25", "192.0.2.10", "192.0.2.66"
SERVER_V6, CLIENT_V6 = "2001:db8:25::25", "2001:db8:25::10"
PREFIX_V4, PREFIX_V6 = 24, 64
LAB_DOMAIN, LAB_HOSTNAME = "lab.example", "mx.lab.example"


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
        also without TLS, for labserver.LAB_USER / LAB_PASSWORD."""
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
        server = PostfixServer(self, self.workdir / f"postfix-{port}-{len(self._postfixes)}", port,
                               tuple(addresses))
        server.write_config(reject, tls, tuple(domains), dict(main_cf or {}))
        self._postfixes.append(server)
        server.start(timeout)
        return server

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
        More labclient options can be passed in args."""
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


# ------------------------------------------------------------------ Postfix

# master.cf of a lab instance: no chroot (nothing to copy into the queue
# folder), only the services a receiving MTA that discards mail uses, and
# postlogd for maillog_file (there is no syslog in a lab namespace).
_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{smtp:<10}inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# The queue folders "postfix start" would make (post-install create-missing):
# made here so the start can skip its integrity checks (quick-start).
_QUEUE_DIRS = [(name, 0o700, "root") for name in
               ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming", "private",
                "saved", "trace")] + [("maildrop", 0o730, "postdrop"), ("public", 0o710, "postdrop")]

_REJECT_ACTION = "550 5.1.1 User unknown in the lab"
_LOG_LINE = re.compile(r"^\S+ +\d+ [\d:]+ \S+ postfix/(?P<daemon>[\w/-]+)\[(?P<pid>\d+)\]: (?P<text>.*)$")


@dataclass
class PostfixServer:
    """One Postfix instance in a lab's server namespace, all of it under `root`."""

    lab: Lab = field(repr=False)
    root: Path
    port: int
    addresses: tuple[str, ...]
    reject: dict[str, str] = field(default_factory=dict)
    tls: bool = False

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.root / "spool"

    @property
    def data_dir(self) -> Path:
        return self.root / "lib"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    # ------------------------------------------------------------ set-up

    def write_config(self, reject, tls: bool, domains: tuple[str, ...], extra: dict[str, str]) -> None:
        import grp
        import pwd

        if not shutil.which("postfix"):
            raise SensorError("Postfix is not installed (the lab runs its own instance): ./run setup installs it")
        try:
            pwd.getpwnam("postfix")
            grp.getgrnam("postdrop")
        except KeyError as exc:
            raise SensorError(f"Postfix's account is missing ({exc}): reinstall the postfix package") from None
        self.reject = dict(reject) if isinstance(reject, Mapping) else {key: _REJECT_ACTION for key in reject}
        self.tls = tls
        for folder in (self.config_dir, self.queue_dir, self.data_dir):
            folder.mkdir(parents=True)
        shutil.chown(self.data_dir, "postfix", "postfix")
        for name, mode, group in _QUEUE_DIRS:
            path = self.queue_dir / name
            path.mkdir()
            path.chmod(mode)
            shutil.chown(path, "postfix", group)
        (self.queue_dir / "pid").mkdir(mode=0o755)
        reject_map = self.config_dir / "reject_recipients"
        reject_map.write_text("".join(f"{key} {action}\n" for key, action in self.reject.items()))
        v6 = [a for a in self.addresses if ":" in a]
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "myhostname": LAB_HOSTNAME,
            "mydomain": LAB_DOMAIN,
            "myorigin": "$mydomain",
            "mydestination": ", ".join(dict.fromkeys([*domains, LAB_HOSTNAME])),
            "inet_interfaces": ", ".join(f"[{a}]" if ":" in a else a for a in self.addresses),
            "inet_protocols": ("all" if len(v6) < len(self.addresses) else "ipv6") if v6 else "ipv4",
            "mynetworks": "127.0.0.0/8, 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, [::1]/128, [2001:db8::]/32",
            "smtpd_banner": "$myhostname ESMTP Postfix (lab)",
            # accept any local part, deliver nothing anywhere: everything is discarded
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "local_transport": "discard:local",
            "virtual_transport": "discard:virtual",
            "relay_transport": "discard:relay",
            "default_transport": "discard:remote",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": f"check_recipient_access texthash:{reject_map}",
            "smtpd_peername_lookup": "no",  # no DNS from a lab namespace
            "smtpd_client_port_logging": "yes",
            "notify_classes": "",
            "biff": "no",
            "smtpd_tls_security_level": "none",
        }
        if tls:
            cert, key = self.lab.tls_files()
            settings.update({
                "smtpd_tls_security_level": "may",
                "smtpd_tls_cert_file": str(cert),
                "smtpd_tls_key_file": str(key),
                "smtpd_tls_loglevel": "1",
            })
        settings.update(extra)
        (self.config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        smtp = "smtp" if self.port == 25 else str(self.port)
        (self.config_dir / "master.cf").write_text(_MASTER_CF.format(smtp=smtp))
        # Postfix waits until a configuration file it reads is at least a
        # second old (it may be half written): backdate ours, start at once.
        past = time.time() - 60
        for path in self.config_dir.iterdir():
            os.utime(path, (past, past))
        (self.queue_dir / "quick-start").touch()  # skip 'postfix check' (folders are made above)

    def _postfix(self, command: str, timeout: float) -> subprocess.CompletedProcess:
        """postfix -c DIR command, in the server namespace. Postfix writes its
        errors to stderr only when that is a terminal (else to syslog, which a
        lab does not have): stderr is a pseudo-terminal here."""
        argv = self.lab.exec_argv(self.lab.server_ns, "postfix", "-c", str(self.config_dir), command)
        pty_master, pty_slave = os.openpty()
        try:
            try:
                result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=pty_slave, stdin=subprocess.DEVNULL,
                                        text=True, timeout=timeout)
            finally:
                os.close(pty_slave)
            os.set_blocking(pty_master, False)
            chunks = []
            while True:
                try:
                    chunk = os.read(pty_master, 65536)
                except (BlockingIOError, OSError):  # nothing more / EIO once no writer is left
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(pty_master)
        result.stderr = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
        return result

    def start(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        # Postfix listens with SO_REUSEPORT: a second instance on the same
        # port would start fine and share the connections. Refuse instead.
        for address in self.addresses:
            try:
                with self.lab.connect(address, self.port, ns=self.lab.server_ns, timeout=1):
                    pass
            except OSError:
                continue
            raise SensorError(f"something already listens on [{address}]:{self.port} in {self.lab.server_ns}: "
                              "give this Postfix another port")
        try:
            result = self._postfix("start", timeout)
        except subprocess.TimeoutExpired:
            raise SensorError(f"'postfix start' in {self.lab.server_ns} did not return within {timeout} s"
                              f"{self._log_tail()}") from None
        if result.returncode != 0:
            said = "; ".join(line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip())
            raise SensorError(f"Postfix did not start in {self.lab.server_ns}: {said or 'no message'}"
                              f"{self._log_tail()}")
        for address in self.addresses:
            self._wait_for_banner(address, deadline)

    def _wait_for_banner(self, address: str, deadline: float) -> None:
        problem = "no answer"
        while time.monotonic() < deadline:
            try:
                with self.lab.connect(address, self.port, ns=self.lab.server_ns,
                                      timeout=max(0.2, deadline - time.monotonic())) as sock:
                    banner = sock.recv(512)
                    if banner.startswith(b"220 "):
                        sock.sendall(b"QUIT\r\n")
                        return
                    problem = f"greeting {banner[:100]!r}"
            except OSError as exc:
                problem = str(exc)
            time.sleep(0.05)
        raise SensorError(f"Postfix in {self.lab.server_ns} does not answer on [{address}]:{self.port} "
                          f"({problem}){self._log_tail()}")

    def _log_tail(self, lines: int = 15) -> str:
        tail = self.log_lines()[-lines:]
        return ("; its log ends with:\n  " + "\n  ".join(tail)) if tail else ""

    # ------------------------------------------------------------ state

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def running(self) -> bool:
        return self.master_pid() is not None

    def stop(self, timeout: float = 5) -> None:
        """Stop the instance as 'postfix stop' does (SIGTERM to its master,
        which ends its daemons), but watch for the end every 20 ms instead of
        postfix-script's 1 s sleeps; whatever is left after `timeout` gets
        SIGKILL (the master leads a session: its daemons are in its group)."""
        pid = self.master_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while self.master_pid() is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    # ------------------------------------------------------------ the log

    def log_lines(self) -> list[str]:
        """The instance's maillog (written by postlogd), one string per
        complete line (not a last one being written)."""
        try:
            text = self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return text.split("\n")[:-1]

    def mark(self) -> int:
        """A position in the log: wait_for_log(..., since=mark) sees only later lines."""
        return len(self.log_lines())

    def wait_for_log(self, pattern: str, since: int = 0, timeout: float = 5) -> re.Match:
        """The first log line after `since` matching the regular expression
        (the log is written asynchronously: deliveries follow the 250 reply)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_lines()[since:]:
                found = regex.search(line)
                if found:
                    return found
            if time.monotonic() > deadline:
                raise SensorError(f"no Postfix log line matching {pattern!r} within {timeout} s{self._log_tail()}")
            time.sleep(0.02)

    def _records(self, since: int = 0) -> list[tuple[str, str, str]]:
        found = (_LOG_LINE.match(line) for line in self.log_lines()[since:])
        return [(m["daemon"], m["pid"], m["text"]) for m in found if m]

    def entries(self, since: int = 0) -> list[tuple[str, str]]:
        """(daemon, text) of every log line, e.g. ("smtpd", "connect from ...")."""
        return [(daemon, text) for daemon, _, text in self._records(since)]

    def deliveries(self, since: int = 0) -> list[dict[str, str]]:
        """Recipients delivered (here: discarded): queue_id, to, status, dsn."""
        out = []
        for daemon, text in self.entries(since):
            m = re.match(r"(?P<queue_id>[0-9A-F]+): to=<(?P<to>[^>]*)>.*dsn=(?P<dsn>[\d.]+), status=(?P<status>\w+)",
                         text)
            if m and daemon in ("discard", "local", "smtp", "error"):
                out.append(m.groupdict())
        return out

    def rejections(self, since: int = 0, mail_from: str | None = None) -> list[dict[str, str]]:
        """smtpd's refusals: stage (RCPT, ...), code, text, from, to, client;
        only those of the sender `mail_from` when given (a test's own sender
        tells its refusals from any other session's)."""
        out = []
        for daemon, text in self.entries(since):
            m = re.match(r"(?:NOQUEUE|[0-9A-F]+): reject: (?P<stage>\S+) from (?P<client>\S+): "
                         r"(?P<code>\d{3}) (?P<text>.*?); from=<(?P<from>[^>]*)> to=<(?P<to>[^>]*)>", text)
            if m and daemon == "smtpd" and mail_from in (None, m["from"]):
                out.append(m.groupdict())
        return out

    def session_log(self, queue_id: str, timeout: float = 5) -> list[str]:
        """smtpd's lines of the session in which `queue_id` was queued, from
        its 'connect from' to its 'disconnect from', waited for (that one is
        logged once the client has quit, possibly after the delivery).  An
        smtpd process serves one session at a time: the session is that of
        the process that logged '<queue_id>: client=...', between its connect
        and disconnect lines, so no other session (an earlier one logged late,
        one at the same time) can be taken for it."""
        deadline = time.monotonic() + timeout
        while True:
            found = _smtpd_session(self._records(), queue_id)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise SensorError(f"no complete smtpd session for queue id {queue_id} within {timeout} s"
                                  f"{self._log_tail()}")
            time.sleep(0.02)

    def session(self, queue_id: str, timeout: float = 5) -> dict[str, str]:
        """smtpd's command counts for the session in which `queue_id` was
        queued, from its 'disconnect' line: {"client": ..., "ehlo": "1",
        "bdat": "3", "commands": "6", ...}."""
        m = re.match(r"disconnect from (?P<client>\S+) (?P<counts>.*)$", self.session_log(queue_id, timeout)[-1])
        counts = dict(item.split("=", 1) for item in m["counts"].split() if "=" in item)
        return {"client": m["client"], **counts}


def _smtpd_session(records: list[tuple[str, str, str]], queue_id: str) -> list[str] | None:
    """The texts of the smtpd session that logged '<queue_id>: client=', or
    None while it is not in the log up to its 'disconnect from' line."""
    queued = f"{queue_id}: client="
    pid = next((pid for daemon, pid, text in records if daemon == "smtpd" and text.startswith(queued)), None)
    if pid is None:
        return None
    session: list[str] = []
    for daemon, line_pid, text in records:
        if daemon != "smtpd" or line_pid != pid:
            continue
        if text.startswith("connect from "):
            session = []
        session.append(text)
        if text.startswith("disconnect from "):
            if any(t.startswith(queued) for t in session):
                return session
            session = []
    return None
