"""The receiver's view, live against Postfix: a raw client (support.raw_tcp)
sends a banned ``MAIL FROM:<spammer@suspicious.org>`` with one trick each
that makes a naive sensor see another sender, or nothing, while Linux (the
lab server's stack, which verifies the client's full checksums) hands Postfix
the banned one:

- a fake segment out of order, then the real one covering it (Linux keeps the
  later, covering data);
- a fake copy without ACK, or with a wrong TCP checksum (Linux discards it);
- an RST inside the window but not at the exact sequence number (Linux
  answers a challenge ACK), or an RST with a wrong checksum, then the data;
- an urgent byte inside the domain (Linux takes it out of the stream).

The sensor runs monitor-only (verdicts logged, nothing dropped), so Postfix's
log says what it accepted: every session queues a message from the banned
sender (its ``queued as`` id in qmgr's ``from=<spammer@suspicious.org>``),
and the sensor's smtp record of that session has that sender, the rule's
alert fires for it, and the trick is reported as its TCP anomaly.
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
FAKE = b"MAIL FROM:<friend123@goodmail.org>\r\n"     # the same length as MAIL
URG = 0x20
assert len(FAKE) == len(MAIL)


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


def fake_out_of_order_then_covering(client, seq):
    send_raw(client, seq + 11, FAKE[11:])              # a hole of 11 bytes before it: out of order
    time.sleep(0.05)
    client.send_pieces([MAIL])


def fake_without_ack(client, seq):
    send_raw(client, seq, FAKE, flags=PSH)
    time.sleep(0.05)
    client.send_pieces([MAIL])


def fake_with_bad_checksum(client, seq):
    send_raw(client, seq, FAKE, bad_checksum=True)
    time.sleep(0.05)
    client.send_pieces([MAIL])


def rst_in_window_not_exact(client, seq):
    send_raw(client, seq + 10, flags=RST | ACK)
    time.sleep(0.05)
    client.send_pieces([MAIL])


def rst_with_bad_checksum(client, seq):
    send_raw(client, seq, flags=RST | ACK, bad_checksum=True)
    time.sleep(0.05)
    client.send_pieces([MAIL])


def urgent_byte_in_the_domain(client, seq):
    spoiled = MAIL.replace(b"suspicious", b"suspicXious")
    send_urgent(client, spoiled, spoiled.index(b"X"))


TRICKS = {
    "fake out of order, then the real covering it": (fake_out_of_order_then_covering,
                                                     "STREAM_REASSEMBLY_OVERLAP_DIFFERENT_DATA"),
    "fake copy without ACK": (fake_without_ack, "TCP_DATA_WITHOUT_ACK"),
    "fake copy with a wrong checksum": (fake_with_bad_checksum, "TCP_BAD_CHECKSUM"),
    "RST in the window, not at the sequence": (rst_in_window_not_exact, "TCP_RST_NOT_EXACT"),
    "RST with a wrong checksum": (rst_with_bad_checksum, "TCP_BAD_CHECKSUM"),
    "urgent byte inside the domain": (urgent_byte_in_the_domain, "TCP_URGENT_BYTE_REMOVED"),
}


def session(lab, trick) -> tuple[RawTcpClient, str]:
    """The banned sender's whole session with `trick` on its MAIL; the queue
    id Postfix gave the message."""
    with RawTcpClient(lab, dport=POSTFIX_PORT) as client:
        client.connect()
        require(client.wait_reply(b"220 "), f"no greeting: {client.received!r}")
        client.send_pieces([b"EHLO raw.lab.example\r\n"])
        require(client.wait_reply(b"\r\n250 "), f"no EHLO reply: {client.received!r}")
        trick(client, client.snd_nxt)
        require(client.wait_reply(b"250 2.1.0"), f"MAIL not accepted: {client.received[-300:]!r}")
        for line, reply in ((b"RCPT TO:<user@lab.example>\r\n", b"250 2.1.5"), (b"DATA\r\n", b"354 "),
                            (b"Subject: receiver view\r\n\r\nbody\r\n.\r\n", b"250 2.0.0"),
                            (b"QUIT\r\n", b"221 ")):
            client.send_pieces([line])
            require(client.wait_reply(reply), f"no {reply!r} after {line!r}: {client.received[-300:]!r}")
        queued = re.search(rb"queued as ([0-9A-F]+)", client.received)
        require(queued, f"no queue id: {client.received[-300:]!r}")
        return client, queued[1].decode()


@pytest.mark.parametrize("name", TRICKS)
def test_the_sensor_sees_what_postfix_accepted(lab, sensor, name):
    trick, anomaly = TRICKS[name]
    client, queue_id = session(lab, trick)
    # Postfix's word: the message from the banned sender was queued
    assert wait_until(lambda: queue_id in postfix_queued(lab.postfix, SENDER), timeout=10), \
        f"Postfix did not queue {queue_id} from {SENDER}"
    mine = lambda r: r.get("id.orig_p", r.get("src_port")) == client.sport   # noqa: E731 - this session's
    smtp = sensor.wait_record(lambda r: r["event_type"] == "smtp" and mine(r), timeout=15)
    assert smtp["mailfrom"] == SENDER, smtp
    alert = sensor.wait_record(lambda r: r["event_type"] == "alert" and mine(r))
    assert alert["alert"]["signature"] == "forbidden mail domain", alert
    sensor.wait_record(lambda r: r["event_type"] == "anomaly" and mine(r) and r["name"] == anomaly)
    assert not [r for r in sensor.records() if mine(r) and r.get("mailfrom") == "friend123@goodmail.org"]
