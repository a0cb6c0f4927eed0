"""The receiver's view, live against Postfix: a raw client (support.raw_tcp)
sends a banned ``MAIL FROM:<spammer@suspicious.org>`` with one trick each
that makes a naive sensor see another sender, or nothing, while Linux (the
lab server's stack, which verifies the client's full checksums) hands Postfix
the banned one (and, the other way round, shows a naive sensor the banned
sender while Postfix gets a legitimate one):

- a fake segment out of order, then the real one covering it (Linux keeps the
  later, covering data);
- a fake copy without ACK, or with a wrong TCP checksum (Linux discards it);
- an RST inside the window but not at the exact sequence number (Linux
  answers a challenge ACK), or an RST with a wrong checksum, then the data;
- an urgent byte inside the domain (Linux takes it out of the stream).

The sensor runs monitor-only (verdicts logged, nothing dropped), so Postfix's
log says what it accepted: every session queues a message (its ``queued as``
id in qmgr's ``from=<...>`` line), and the sensor's smtp record of that
session has that sender, the rule's alert fires exactly when it is the
banned one, and the trick is reported as its TCP anomaly.
"""

from __future__ import annotations

import random
import re
import shutil
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from sensor.kernel import abi
from sensor.lab.network import Lab
from support.lab_hold import postfix_queued, require, start_sensor, wait_until
from support.prereqs import missing
from support.raw_tcp import ACK, PSH, RST, RawTcpClient

POSTFIX_PORT = 587
SENDER = "spammer@suspicious.org"
MAIL = f"MAIL FROM:<{SENDER}>\r\n".encode()
URG = 0x20


@pytest.fixture(scope="module")
def lab(lab_prereqs):
    if not shutil.which("postfix"):
        missing("postfix (installed by ./run setup)")
    with Lab() as lab:
        lab.postfix = lab.start_postfix(tls=False, port=POSTFIX_PORT)
        yield lab


@pytest.fixture(scope="module")
def sensor(lab, test_pin_root, tmp_path_factory):
    proc = start_sensor(lab, tmp_path_factory.mktemp("receiver-sensor"),
                        test_pin_root / "receiver" / f"v{abi.ABI_VERSION}", "--monitor-only")
    try:
        yield proc
    finally:
        proc.stop()


def send_raw(client: RawTcpClient, seq: int, payload: bytes = b"", flags: int = PSH | ACK,
             urg: int = 0, bad_checksum: bool = False) -> None:
    """One crafted segment of the client's connection, outside its own bookkeeping."""
    frame = bytearray(bytes(
        Ether(src=client.mac, dst=client.server_mac)
        / IP(src=client.src, dst=client.dst, id=random.randint(0, 0xFFFF))
        / TCP(sport=client.sport, dport=client.dport, seq=seq & 0xFFFFFFFF, ack=client.rcv_nxt or 0,
              flags=flags, window=65535, urgptr=urg)
        / payload))
    if bad_checksum:
        frame[14 + 20 + 16] ^= 0x5A           # the TCP checksum field
    client.sock.send(bytes(frame))


def send_urgent(client: RawTcpClient, data: bytes, urgent_at: int) -> None:
    """``data`` as the client's next segment, with URG and the pointer just
    past ``data[urgent_at]`` (Linux's tcp_stdurg 0: that byte is the urgent one)."""
    seq = client.snd_nxt
    client.segments.append((seq, data))
    client.snd_nxt = (seq + len(data)) & 0xFFFFFFFF
    send_raw(client, seq, data, PSH | ACK | URG, urg=urgent_at + 1)
    client._last_sent = time.monotonic()


def fake_out_of_order_then_covering(client, seq, fake, real):
    send_raw(client, seq + 11, fake[11:])              # a hole of 11 bytes before it: out of order
    time.sleep(0.05)
    client.send_pieces([real])


def fake_without_ack(client, seq, fake, real):
    send_raw(client, seq, fake, flags=PSH)
    time.sleep(0.05)
    client.send_pieces([real])


def fake_with_bad_checksum(client, seq, fake, real):
    send_raw(client, seq, fake, bad_checksum=True)
    time.sleep(0.05)
    client.send_pieces([real])


def rst_in_window_not_exact(client, seq, fake, real):
    send_raw(client, seq + 10, flags=RST | ACK)
    time.sleep(0.05)
    client.send_pieces([real])


def rst_with_bad_checksum(client, seq, fake, real):
    send_raw(client, seq, flags=RST | ACK, bad_checksum=True)
    time.sleep(0.05)
    client.send_pieces([real])


def urgent_byte(client, seq, fake, real):
    """``fake``: the bytes on the wire, ``real`` the byte of it that is urgent."""
    send_urgent(client, fake, real)


LEGIT = "friend123@goodmail.org"
LEGIT_MAIL = f"MAIL FROM:<{LEGIT}>\r\n".encode()
URG_BANNED = MAIL.replace(b"suspicious", b"suspicXious")          # Postfix reads the banned sender
URG_LEGIT = b"MAIL FROM:<friend@suspicious.org>\r\n"             # the '.' before org is urgent
assert len(LEGIT_MAIL) == len(MAIL)

#: id -> (trick, fake, real, the sender Postfix gets, the anomaly): first the
#: banned sender hidden from a naive sensor, then a banned one shown to it
#: that Postfix never gets (the rule must not fire)
CASES = {
    "out of order, then the real covering it": (fake_out_of_order_then_covering, LEGIT_MAIL, MAIL, SENDER,
                                                "STREAM_REASSEMBLY_OVERLAP_DIFFERENT_DATA"),
    "copy without ACK": (fake_without_ack, LEGIT_MAIL, MAIL, SENDER, "TCP_DATA_WITHOUT_ACK"),
    "copy with a wrong checksum": (fake_with_bad_checksum, LEGIT_MAIL, MAIL, SENDER, "TCP_BAD_CHECKSUM"),
    "RST in the window, not at the sequence": (rst_in_window_not_exact, None, MAIL, SENDER, "TCP_RST_NOT_EXACT"),
    "RST with a wrong checksum": (rst_with_bad_checksum, None, MAIL, SENDER, "TCP_BAD_CHECKSUM"),
    "urgent byte inside the domain": (urgent_byte, URG_BANNED, URG_BANNED.index(b"X"), SENDER,
                                      "TCP_URGENT_BYTE_REMOVED"),
    "banned fake out of order, legitimate real": (fake_out_of_order_then_covering, MAIL, LEGIT_MAIL, LEGIT,
                                                  "STREAM_REASSEMBLY_OVERLAP_DIFFERENT_DATA"),
    "banned copy without ACK": (fake_without_ack, MAIL, LEGIT_MAIL, LEGIT, "TCP_DATA_WITHOUT_ACK"),
    "banned copy with a wrong checksum": (fake_with_bad_checksum, MAIL, LEGIT_MAIL, LEGIT, "TCP_BAD_CHECKSUM"),
    "urgent dot out of a banned domain": (urgent_byte, URG_LEGIT, URG_LEGIT.rindex(b"."), "friend@suspiciousorg",
                                          "TCP_URGENT_BYTE_REMOVED"),
}


def session(lab, trick, fake, real) -> tuple[RawTcpClient, str]:
    """A whole session with `trick` on its MAIL; the queue id Postfix gave the message."""
    with RawTcpClient(lab, dport=POSTFIX_PORT) as client:
        client.connect()
        require(client.wait_reply(b"220 "), f"no greeting: {client.received!r}")
        client.send_pieces([b"EHLO raw.lab.example\r\n"])
        require(client.wait_reply(b"\r\n250 "), f"no EHLO reply: {client.received!r}")
        trick(client, client.snd_nxt, fake, real)
        require(client.wait_reply(b"250 2.1.0"), f"MAIL not accepted: {client.received[-300:]!r}")
        for line, reply in ((b"RCPT TO:<user@lab.example>\r\n", b"250 2.1.5"), (b"DATA\r\n", b"354 "),
                            (b"Subject: receiver view\r\n\r\nbody\r\n.\r\n", b"250 2.0.0"),
                            (b"QUIT\r\n", b"221 ")):
            client.send_pieces([line])
            require(client.wait_reply(reply), f"no {reply!r} after {line!r}: {client.received[-300:]!r}")
        queued = re.search(rb"queued as ([0-9A-F]+)", client.received)
        require(queued, f"no queue id: {client.received[-300:]!r}")
        return client, queued[1].decode()


@pytest.mark.parametrize("name", CASES)
def test_the_sensor_sees_what_postfix_accepted(lab, sensor, name):
    trick, fake, real, accepted, anomaly = CASES[name]
    client, queue_id = session(lab, trick, fake, real)
    # Postfix's word: the message was queued from the sender it read
    assert wait_until(lambda: queue_id in postfix_queued(lab.postfix, accepted), timeout=10), \
        f"Postfix did not queue {queue_id} from {accepted}"
    mine = lambda r: r.get("id.orig_p", r.get("src_port")) == client.sport   # noqa: E731 - this session's
    smtp = sensor.wait_record(lambda r: r["event_type"] == "smtp" and mine(r), timeout=15)
    assert smtp["mailfrom"] == accepted, smtp
    sensor.wait_record(lambda r: r["event_type"] == "anomaly" and mine(r) and r["name"] == anomaly)
    alerts = [r for r in sensor.records() if r["event_type"] == "alert" and mine(r)]
    if accepted == SENDER:
        # the rule fires, about the sender Postfix queued
        assert [a["alert"]["signature"] for a in alerts] == ["forbidden mail domain"], alerts
        assert alerts[0]["smtp"]["mail_from"] == SENDER
    else:
        # the smtp record is written after the MAIL's verdict: no alert came
        assert alerts == [], alerts
