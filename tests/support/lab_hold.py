"""Helpers of the commit hold's lab tests (tests/lab/test_lab_commit_hold*.py):
the dialogues, a client that writes its whole dialogue in one ``sendall``,
what the MTA host says it got, the sensor process, and the checks of a
session that must be stopped or delivered.

What the MTA committed is read from the MTA itself (aiosmtpd's journal,
Postfix's log); what reached the MTA host's stack of a connection from a
packet socket on the server's interface (``ServerTap``: it sees a frame only
once XDP has passed it, or the sensor has put a released one into the
stack): a connection whose server never received the client's octets up to
the end of data cannot commit the message, whatever comes later, once the
flow's drop entry is in the kernel (the drop also tears the connection
down, so the server's socket may be gone by the time a test looks).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import struct
import time
from collections import defaultdict

import pytest

from sensor.kernel.netns import socket_in
from sensor.lab.network import CLIENT_V4, SERVER_V4, Lab
from sensor.service.control import ControlClient
from support.flow_drops import wait_dropped_packets
from support.lab_sensor import REPO, SensorProcess
from support.prereqs import missing

#: a 78-octet line of message content (no dot, no bare CR or LF)
LINE = b"X" * 76 + b"\r\n"
SO_SNDBUFFORCE = 32
END = b"\r\n.\r\n"


@contextlib.contextmanager
def postfix_lab(port: int):
    """A lab whose server namespace runs a real Postfix on ``port`` (no TLS),
    as ``lab.postfix``; torn down with the lab."""
    if not shutil.which("postfix"):
        missing("postfix (installed by ./run setup)")
    with Lab() as lab:
        lab.postfix = lab.start_postfix(tls=False, port=port)
        yield lab


def content(sender: str, size: int, subject: str = "commit hold") -> bytes:
    """A message of about `size` octets, ending with CRLF; no line starts with a dot."""
    head = f"From: <{sender}>\r\nSubject: {subject}\r\n\r\n".encode()
    return head + LINE * max(1, (size - len(head)) // len(LINE))


def envelope(sender: str, rcpt: str = "user@lab.example", helo: str | None = "pipeline.lab.example") -> bytes:
    """EHLO (when `helo`), MAIL, RCPT and DATA, as one pipelined group."""
    ehlo = f"EHLO {helo}\r\n" if helo else ""
    return f"{ehlo}MAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()


def dialogue(sender: str, size: int, rcpt: str = "user@lab.example") -> bytes:
    """A whole session for one write: EHLO, MAIL, RCPT, DATA, the message, the dot, QUIT."""
    return envelope(sender, rcpt) + content(sender, size) + b".\r\nQUIT\r\n"


def end_offset(stream: bytes) -> int:
    """The offset just past the first CRLF.CRLF of a client stream (the end of data)."""
    return stream.index(END) + len(END)


class PipelinedClient:
    """A kernel TCP socket in the client namespace (TCP_NODELAY, a send
    buffer that takes a whole 1 MB dialogue) that writes without reading."""

    def __init__(self, lab, port: int = 25, source: str = CLIENT_V4, server: str = SERVER_V4,
                 timeout: float = 5.0):
        self.sock = socket_in(lab.client_ns)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 4 << 20)
        self.sock.settimeout(timeout)
        self.sock.bind((source, 0))
        self.sock.connect((server, port))
        self.port = self.sock.getsockname()[1]
        self.received = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, text: bytes, timeout: float = 5.0) -> bool:
        """Read replies until `text` is among them (False: not within `timeout`, or closed)."""
        deadline = time.monotonic() + timeout
        while text not in self.received:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, OSError):
                return False
            if not data:
                return False
            self.received += data
        return True

    def close(self) -> None:
        """Reset the connection (no lingering retransmissions into the next test)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
_SYN = 0x02


class ServerTap:
    """The client's TCP segments as the server host's stack gets them: a
    packet socket on the server's interface (made inside its namespace, so
    it is bound when the constructor returns), read when asked.  A frame
    XDP dropped never reaches it; one the sensor put into the stack does."""

    def __init__(self, lab, ns: str | None = None, ifname: str | None = None):
        self.sock = socket_in(ns or lab.server_ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname or lab.server_if, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)         # SO_RCVBUFFORCE: a 1 MB session fits
        self.isn: dict[tuple, int] = {}
        self.segments: dict[tuple, list[tuple[int, int]]] = defaultdict(list)

    def _drain(self) -> None:
        while True:
            try:
                frame, addr = self.sock.recvfrom(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING or len(frame) < 54 or frame[12:14] != b"\x08\x00":
                continue
            ihl = (frame[14] & 0x0F) * 4
            if frame[23] != socket.IPPROTO_TCP:
                continue
            total = struct.unpack_from("!H", frame, 16)[0]
            tcp = 14 + ihl
            sport, _dport, seq = struct.unpack_from("!HHI", frame, tcp)
            doff = (frame[tcp + 12] >> 4) * 4
            flow = (socket.inet_ntoa(frame[26:30]), sport)
            if frame[tcp + 13] & _SYN:
                self.isn[flow] = (seq + 1) & 0xFFFFFFFF
            length = total - ihl - doff
            if length > 0:
                self.segments[flow].append((seq, length))

    def received(self, client: str, port: int) -> int | None:
        """How many of the client's octets the server host has received in
        order (the offset in its stream up to which it can read); None
        before its SYN."""
        self._drain()
        isn = self.isn.get((client, port))
        if isn is None:
            return None
        spans = sorted((((seq - isn) & 0xFFFFFFFF), length) for seq, length in self.segments[(client, port)])
        upto = 0
        for start, length in spans:
            if start > upto:
                break
            upto = max(upto, start + length)
        return upto

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def journal_messages(lab, sender: str) -> list[dict]:
    """aiosmtpd's accepted messages from `sender` (its journal)."""
    try:
        text = lab.journal.read_text()
    except FileNotFoundError:
        return []
    entries = (json.loads(line) for line in text.splitlines())
    return [e for e in entries if e["kind"] == "message" and e["mail_from"] == sender]


def postfix_queued(postfix, sender: str) -> list[str]:
    """Queue ids of the messages Postfix committed from `sender` (qmgr's
    ``from=<sender>`` line: written once cleanup has the queue file)."""
    found = (re.match(rf"([0-9A-F]+): from=<{re.escape(sender)}>,", text)
             for daemon, text in postfix.entries() if daemon == "qmgr")
    return [m[1] for m in found if m]


def wait_until(pred, timeout: float = 5.0, step: float = 0.02):
    """pred()'s first true value, or its last value after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


class CounterDelta:
    """The sensor's hold counters (through its control socket) now, and how
    they moved since: ``delta()['held']`` etc."""

    KERNEL = ("held", "released", "hold_timeout", "drop_flow")
    USERLAND = ("releases", "dropped_at_commit", "late", "gone")

    def __init__(self, control):
        self.control = control
        self.started = time.time()      # records of the session come after this
        self.before = self.read()

    def read(self) -> dict:
        status = self.control.call("status")
        ingress, hold = status["counters"]["ingress"], status.get("hold", {})
        return {**{k: ingress[k] for k in self.KERNEL}, **{k: hold.get(k, 0) for k in self.USERLAND}}

    def delta(self) -> dict:
        now = self.read()
        return {k: now[k] - self.before[k] for k in now}


# ---------------------------------------------------------------- the sensor

def start_sensor(lab, work, pin_dir, *args, interface: str | None = None, netns: str | None = None) \
        -> SensorProcess:
    """`smtp-sensor run` with a copy of the shipped rules (so the hold is
    on, unless `args` say otherwise), running; ``control_client`` is its
    control socket."""
    rules = work / "rules"
    shutil.copytree(REPO / "rules", rules, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = SensorProcess(lab, work / "records.json", pin_dir, work / "control.sock", "--rules", str(rules), *args,
                         interface=interface, netns=netns)
    proc.control_client = ControlClient(work / "control.sock")
    try:
        proc.wait_log(lambda e: e.get("event") == "running", timeout=90)
    except BaseException:
        proc.stop()
        raise
    return proc


# ---------------------------------------------------------------- checks

def committed(lab, port: int, sender: str) -> list:
    """What the MTA on `port` committed from `sender` (25: aiosmtpd, else the lab's Postfix)."""
    return journal_messages(lab, sender) if port == 25 else postfix_queued(lab.postfix, sender)


def wait_committed(lab, port: int, sender: str, timeout: float = 10.0) -> list:
    return wait_until(lambda: committed(lab, port, sender), timeout)


def require(ok, what: str) -> None:
    """A step a test needs, not what it checks: pytest.fail, never an
    AssertionError (which a test marked xfail(raises=AssertionError) expects
    from its check only)."""
    if not ok:
        pytest.fail(what, pytrace=False)


def drop_of(sensor, client: str, sport: int, rule_id: str, since: float = 0.0) -> dict:
    """The sensor's drop record of the connection from client:sport, by
    `rule_id`, of a packet seen after `since` (wall clock, less 0.2 s for the
    sensor's kernel-to-wall-clock conversion): an earlier test's session may
    have had the same client port."""
    drop = sensor.wait_record(lambda r: r["event_type"] == "drop" and r["id.orig_h"] == client
                              and r["id.orig_p"] == sport and r["ts"] >= since - 0.2, timeout=10)
    require(drop["rule_id"] == rule_id and drop["enforced_by"] == "kernel", f"another drop: {drop}")
    return drop


def assert_stopped(lab, sensor, counters, tap, port, client, sport, end, sender,
                   rule_id="spam_filter.mail_from", pump=None, server: str = SERVER_V4) -> dict:
    """A dropped session: drop record, a later copy caught by the flow's drop
    entry in XDP, no segment that can end a message passed (`counters`: a
    CounterDelta taken before the session), the server host never received
    the client's octets up to `end` (the offset past the first end of data
    the MTA honours; `tap`: a ServerTap opened before the session), and the
    MTA committed nothing."""
    drop_of(sensor, client, sport, rule_id, since=counters.started)
    dropped = wait_dropped_packets(sensor.pin_dir, client, sport, server, port, pump=pump)
    assert dropped >= 1, "no later packet of the dropped flow met its drop entry in XDP"
    moved = counters.delta()
    received = tap.received(client, sport)
    assert moved["released"] == moved["hold_timeout"] == 0, f"a commit candidate passed: {moved}"
    assert received is not None and received < end, f"the server received {received} octets, the end is at {end}"
    found = committed(lab, port, sender)
    assert found == [], f"the MTA committed {found}"
    return moved


def pipelined_banned(lab, sensor, port: int, sender: str, size: int, server: str = SERVER_V4) -> dict:
    """A banned sender's whole session in one write: stopped."""
    stream = dialogue(sender, size)
    counters = CounterDelta(sensor.control_client)
    with ServerTap(lab) as tap, PipelinedClient(lab, port, server=server) as client:
        client.send(stream)
        return assert_stopped(lab, sensor, counters, tap, port, CLIENT_V4, client.port, end_offset(stream), sender,
                              server=server)


def pipelined_legitimate(lab, sensor, port: int, sender: str, size: int, server: str = SERVER_V4) -> dict:
    """A legitimate sender's whole session in one write: delivered, after a hold."""
    stream = dialogue(sender, size)
    counters = CounterDelta(sensor.control_client)
    with PipelinedClient(lab, port, server=server) as client:
        client.send(stream)
        assert client.read_until(b"221 ", timeout=15), client.received[-500:]
        assert b"250 2.0.0 O" in client.received, client.received[-500:]   # "OK: queued" / "Ok: queued as"
    moved = counters.delta()
    messages = wait_committed(lab, port, sender)
    assert len(messages) == 1, messages
    if port == 25:
        assert messages[0]["size"] == len(content(sender, size)), messages
    # the segment with the end of data was held, then released by userland
    assert moved["held"] >= 1 and moved["releases"] >= 1, moved
    return moved
