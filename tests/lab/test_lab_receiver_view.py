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

import re

import pytest

from sensor.kernel import abi
from support.lab_hold import postfix_lab, postfix_queued, require, start_sensor, wait_until
from support.raw_tcp import RawTcpClient
from support.receiver_tricks import CASES, SENDER

POSTFIX_PORT = 587


@pytest.fixture(scope="module")
def lab(lab_prereqs):
    with postfix_lab(POSTFIX_PORT) as lab:
        yield lab


@pytest.fixture(scope="module")
def sensor(lab, test_pin_root, tmp_path_factory):
    proc = start_sensor(lab, tmp_path_factory.mktemp("receiver-sensor"),
                        test_pin_root / "receiver" / f"v{abi.ABI_VERSION}", "--monitor-only")
    try:
        yield proc
    finally:
        proc.stop()


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
