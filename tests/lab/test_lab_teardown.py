"""A drop tears the connection down, against a real Postfix: the sensor
(`smtp-sensor run --rules`, the real CLI) on the server's veth drops a
session by its sender, and Postfix's smtpd for it closes (its log says
"disconnect from", `ss` in the server namespace has no socket left) where a
silent drop leaves it waiting; the client gets its RST too; a client that
reuses the source port of a torn-down session connects and delivers; a
ban given while a session of the host is open tears that session down too.

Every session uses its own source port and sender; the rule file below
decides by the sender's domain."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import pytest

from sensor.kernel import abi
from sensor.kernel.netns import socket_in
from sensor.lab.network import CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, Lab
from support.lab_sensor import SensorProcess, flow_drop_entry

RULE = '''\
from sensor.rules import hooks, rule


@rule(hooks.command, id="teardown.by_sender")
def by_sender(flow, command):
    sender = (flow.transaction.mailfrom or "").lower()
    if command.verb != "MAIL":
        return
    if sender.endswith("@reset.example"):
        flow.reset()
    elif sender.endswith("@drop.example"):
        flow.drop()
    elif sender.endswith("@silent.example"):
        flow.drop(reset=False)
'''

ADDRESSES = {"ipv4": (CLIENT_V4, SERVER_V4), "ipv6": (CLIENT_V6, SERVER_V6)}


@pytest.fixture(scope="module")
def lab(lab_prereqs, tmp_path_factory):
    if not shutil.which("postfix"):
        pytest.fail("postfix (installed by ./run setup)")
    with Lab() as lab:
        lab.postfix = lab.start_postfix(tls=False)
        yield lab


@pytest.fixture(scope="module")
def sensor(lab, test_pin_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("teardown-sensor")
    rules = work / "rules"
    rules.mkdir()
    (rules / "teardown.py").write_text(RULE)
    proc = SensorProcess(lab, work / "records.json", test_pin_root / "teardown" / f"v{abi.ABI_VERSION}",
                         work / "control.sock", "--rules", str(rules))
    try:
        proc.wait_log(lambda e: e.get("event") == "running", timeout=90)
        yield proc
    finally:
        proc.stop()


_ports = iter(range(42000, 43000))


class Session:
    """A hand-driven SMTP client from a fixed source port of the client namespace."""

    def __init__(self, lab: Lab, family: str = "ipv4", port: int | None = None):
        self.client, self.server = ADDRESSES[family]
        self.port = port or next(_ports)
        self.sock = socket_in(lab.client_ns, socket.AF_INET6 if family == "ipv6" else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(5)
        self.sock.bind((self.client, self.port))
        self.sock.connect((self.server, 25))
        self.buf = b""

    def reply(self) -> bytes:
        while True:
            while b"\r\n" in self.buf:
                line, self.buf = self.buf.split(b"\r\n", 1)
                if line[3:4] == b" ":
                    return line
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("closed")
            self.buf += data

    def command(self, line: str) -> bytes:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def until_reset(self, timeout: float = 5.0) -> str:
        """Read until the connection ends: 'reset' (an RST came), 'closed', 'timeout'."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(4096):
                pass
            return "closed"
        except ConnectionResetError:
            return "reset"
        except socket.timeout:
            return "timeout"

    def close(self) -> None:
        self.sock.close()


def drop_record(sensor, port: int) -> dict:
    return sensor.wait_record(lambda r: r["event_type"] == "drop" and r.get("id.orig_p") == port)


def server_sockets(lab, port: int) -> list[str]:
    """The server namespace's TCP sockets with the client's port (`ss`)."""
    out = subprocess.run(lab.exec_argv(lab.server_ns, "ss", "-Htan"), capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if re.search(rf"[:\]]{port}\s", line + " ")]


def disconnect_pattern(client: str, port: int) -> str:
    return rf"disconnect from unknown\[{re.escape(client)}\]:{port}\b"


@pytest.mark.parametrize("family", ADDRESSES, ids=ADDRESSES)
@pytest.mark.parametrize("domain", ["reset.example", "drop.example"], ids=["reset", "drop"])
def test_a_dropped_session_frees_postfix_at_once_and_the_client_gets_an_rst(lab, sensor, family, domain):
    s = Session(lab, family)
    mark = lab.postfix.mark()
    try:
        assert s.reply().startswith(b"220")
        assert s.command("EHLO teardown.lab.example").startswith(b"250")
        s.sock.sendall(f"MAIL FROM:<bot@{domain}>\r\n".encode())
        drop = drop_record(sensor, s.port)
        assert (drop["action"], drop["reset"], drop["rule_id"]) == ("drop_flow", True, "teardown.by_sender")
        s.sock.sendall(b"RCPT TO:<user@lab.example>\r\n")
        lab.postfix.wait_for_log(disconnect_pattern(s.client, s.port), since=mark, timeout=10)
        assert server_sockets(lab, s.port) == []
        assert s.until_reset() == "reset"
    finally:
        s.close()
    kernel = sensor.cli("status")["counters"]
    assert kernel["ingress"]["reset"] + kernel["egress"]["reset"] >= 2


def test_a_silent_drop_leaves_postfix_waiting(lab, sensor):
    """What a drop was before it tore down: the smtpd still holds the
    connection (its log has no disconnect, `ss` shows it established)."""
    s = Session(lab)
    mark = lab.postfix.mark()
    try:
        assert s.reply().startswith(b"220")
        assert s.command("EHLO teardown.lab.example").startswith(b"250")
        s.sock.sendall(b"MAIL FROM:<bot@silent.example>\r\n")
        assert drop_record(sensor, s.port)["reset"] is False
        s.sock.sendall(b"RCPT TO:<user@lab.example>\r\n")
        assert s.until_reset(timeout=1.5) == "timeout"
        [line] = server_sockets(lab, s.port)
        assert line.startswith("ESTAB")
        assert not re.search(disconnect_pattern(s.client, s.port), "\n".join(lab.postfix.log_lines()[mark:]))
    finally:
        s.close()


def test_a_pipelined_message_of_a_dropped_sender_is_not_committed_and_postfix_is_freed(lab, sensor):
    """MAIL, RCPT, DATA, the message and QUIT in one write: the commit hold
    keeps the end of data from Postfix until the verdict, and the held
    segment's retransmission is what becomes the server's RST (the server
    had nothing to say: a guess at its rcv_nxt, the segment's own seq)."""
    s = Session(lab)
    mark = lab.postfix.mark()
    try:
        assert s.reply().startswith(b"220")
        assert s.command("EHLO teardown.lab.example").startswith(b"250")
        s.sock.sendall(b"MAIL FROM:<bot@reset.example>\r\nRCPT TO:<user@lab.example>\r\nDATA\r\n"
                       b"Subject: pipelined\r\n\r\nspam\r\n.\r\nQUIT\r\n")
        drop_record(sensor, s.port)
        end = lab.postfix.wait_for_log(disconnect_pattern(s.client, s.port) + ".*", since=mark, timeout=10)
        assert s.until_reset() == "reset"
    finally:
        s.close()
    # the session as Postfix counted it: its EHLO, nothing of the pipelined transaction
    assert end.group(0).endswith(" ehlo=1 commands=1"), end.group(0)
    assert not re.search(r"from=<bot@reset\.example>", "\n".join(lab.postfix.log_lines()[mark:]))
    held = sensor.cli("status")["hold"]
    assert held["held_events"] >= 1 and held["dropped_at_commit"] >= 1, held


@pytest.mark.parametrize("family", ADDRESSES, ids=ADDRESSES)
def test_a_ban_tears_down_the_hosts_open_session(lab, sensor, family):
    """`smtp-sensor ban add` while the host's session is open: the ban
    finds the flow open and tears it down, so Postfix's smtpd is freed on
    the client's next packet instead of waiting out its timeout."""
    s = Session(lab, family)
    mark = lab.postfix.mark()
    try:
        assert s.reply().startswith(b"220")
        assert s.command("EHLO teardown.lab.example").startswith(b"250")
        assert s.command("MAIL FROM:<someone@fine.example>").startswith(b"250")
        sensor.cli("ban", "add", s.client, "--ttl", "60", "--reason", "lab: a ban mid-session")
        try:
            s.sock.sendall(b"RCPT TO:<user@lab.example>\r\n")
            lab.postfix.wait_for_log(disconnect_pattern(s.client, s.port), since=mark, timeout=10)
            assert server_sockets(lab, s.port) == []
            assert s.until_reset() == "reset"
        finally:
            sensor.cli("ban", "del", s.client)
    finally:
        s.close()
    client, server = ADDRESSES[family]
    assert flow_drop_entry(sensor.pin_dir, client, s.port, server, 25) is not None


@pytest.mark.parametrize("family", ADDRESSES, ids=ADDRESSES)
def test_a_client_reusing_the_source_port_of_a_torn_down_session_connects_and_delivers(lab, sensor, family):
    s = Session(lab, family)
    port = s.port
    try:
        assert s.reply().startswith(b"220")
        assert s.command("EHLO teardown.lab.example").startswith(b"250")
        s.sock.sendall(b"MAIL FROM:<bot@reset.example>\r\n")
        drop_record(sensor, port)
        s.sock.sendall(b"RCPT TO:<user@lab.example>\r\n")
        assert s.until_reset() == "reset"
    finally:
        s.close()
    mark = lab.postfix.mark()
    result = lab.swaks("--local-port", str(port), "--from", "ok-after-reset@example.org",
                       "--to", "user@lab.example", server=ADDRESSES[family][1],
                       source=ADDRESSES[family][0])
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    qid = re.findall(r"queued as ([0-9A-F]+)", result.stdout)[-1]
    lab.postfix.wait_for_log(rf"{qid}: to=<user@lab.example>.*status=sent", since=mark)
    assert lab.postfix.session(qid)["client"] == f"unknown[{ADDRESSES[family][0]}]:{port}"
    client, server = ADDRESSES[family]
    # the new connection ended the drop in the kernel
    assert flow_drop_entry(sensor.pin_dir, client, port, server, 25) is None
    assert flow_drop_entry(sensor.pin_dir, server, 25, client, port) is None
    assert sensor.cli("status")["counters"]["ingress"]["drop_ended"] >= 1
