"""One Postfix instance in a lab namespace: a receiving MTA in the server's
(``Lab.start_postfix``) or a relay in the client's (``Lab.start_postfix_relay``:
Postfix's own smtp client, which takes mail on loopback and sends it to the
server's MTA through the sensor). Its own configuration, queue and log under
the lab's folder, started with ``postfix -c DIR`` inside the namespace,
stopped and removed with the lab. What it accepted, refused, sent and
deferred is read from its log, session by session."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from sensor.errors import SensorError
from sensor.lab.network import LAB_DOMAIN, LAB_HOSTNAME, _alive

if TYPE_CHECKING:
    from sensor.lab.network import Lab

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
{client}"""

# master.cf line of the smtp client (a relay's: it sends what it takes)
_SMTP_CLIENT = "smtp      unix  -       -       n       -       -       smtp\n"

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
    #: the lab namespace it runs in (None: the server's)
    ns: str | None = None
    #: a relay sends everything to this next hop ("[address]:port") with its smtp client
    relayhost: str | None = None

    @property
    def namespace(self) -> str:
        return self.ns or self.lab.server_ns

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
        if self.relayhost:
            settings.update({
                "relayhost": self.relayhost,
                "default_transport": "smtp",
                "relay_transport": "smtp",
                "smtp_tls_security_level": "none",
                "smtp_dns_support_level": "disabled",     # the next hop is an address: no DNS
            })
        settings.update(extra)
        (self.config_dir / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        smtp = "smtp" if self.port == 25 else str(self.port)
        (self.config_dir / "master.cf").write_text(
            _MASTER_CF.format(smtp=smtp, client=_SMTP_CLIENT if self.relayhost else ""))
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
        argv = self.lab.exec_argv(self.namespace, "postfix", "-c", str(self.config_dir), command)
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
                with self.lab.connect(address, self.port, ns=self.namespace, timeout=1):
                    pass
            except OSError:
                continue
            raise SensorError(f"something already listens on [{address}]:{self.port} in {self.namespace}: "
                              "give this Postfix another port")
        try:
            result = self._postfix("start", timeout)
        except subprocess.TimeoutExpired:
            raise SensorError(f"'postfix start' in {self.namespace} did not return within {timeout} s"
                              f"{self._log_tail()}") from None
        if result.returncode != 0:
            said = "; ".join(line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip())
            raise SensorError(f"Postfix did not start in {self.namespace}: {said or 'no message'}"
                              f"{self._log_tail()}")
        for address in self.addresses:
            self._wait_for_banner(address, deadline)

    def _wait_for_banner(self, address: str, deadline: float) -> None:
        problem = "no answer"
        while time.monotonic() < deadline:
            try:
                with self.lab.connect(address, self.port, ns=self.namespace,
                                      timeout=max(0.2, deadline - time.monotonic())) as sock:
                    banner = sock.recv(512)
                    if banner.startswith(b"220 "):
                        sock.sendall(b"QUIT\r\n")
                        return
                    problem = f"greeting {banner[:100]!r}"
            except OSError as exc:
                problem = str(exc)
            time.sleep(0.05)
        raise SensorError(f"Postfix in {self.namespace} does not answer on [{address}]:{self.port} "
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
