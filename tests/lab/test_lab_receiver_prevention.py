"""The receiver's view in prevention: the same tricks (support.receiver_tricks)
against Postfix with the sensor enforcing (the shipped rules, commit hold on).
The rule's verdict follows what Postfix reads: a banned sender hidden from a
naive sensor is dropped (the flow torn down at its MAIL, so Postfix never
queues the message; the drop record is the session's), and a legitimate
sender behind a banned fake is not (Postfix queues it, no drop record)."""

from __future__ import annotations

import re
import time

import pytest

from sensor.kernel import abi
from support.lab_hold import drop_of, postfix_lab, postfix_queued, require, start_sensor, wait_until
from support.raw_tcp import RAW_V4, RawTcpClient
from support.receiver_tricks import CASES, SENDER

POSTFIX_PORT = 587
REST = ((b"RCPT TO:<user@lab.example>\r\n", b"250 2.1.5"), (b"DATA\r\n", b"354 "),
        (b"Subject: receiver view\r\n\r\nbody\r\n.\r\n", b"250 2.0.0"), (b"QUIT\r\n", b"221 "))


@pytest.fixture(scope="module")
def lab(lab_prereqs):
    with postfix_lab(POSTFIX_PORT) as lab:
        yield lab


@pytest.fixture(scope="module")
def sensor(lab, test_pin_root, tmp_path_factory):
    proc = start_sensor(lab, tmp_path_factory.mktemp("receiver-prevention"),
                        test_pin_root / "receiver-prevention" / f"v{abi.ABI_VERSION}")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.parametrize("name", CASES)
def test_the_verdict_follows_what_postfix_reads(lab, sensor, name):
    trick, fake, real, accepted, _anomaly = CASES[name]
    started = time.time()
    with RawTcpClient(lab, dport=POSTFIX_PORT) as client:
        client.connect()
        require(client.wait_reply(b"220 "), f"no greeting: {client.received!r}")
        client.send_pieces([b"EHLO raw.lab.example\r\n"])
        require(client.wait_reply(b"\r\n250 "), f"no EHLO reply: {client.received!r}")
        trick(client, client.snd_nxt, fake, real)
        if accepted == SENDER:
            # dropped at its MAIL: whatever follows meets the flow's drop entry
            drop_of(sensor, RAW_V4, client.sport, "spam_filter.mail_from", since=started)
            for line, _reply in REST:
                client.send_pieces([line])
                client.wait_reply(b"250 2.0.0", timeout=0.3)
            assert b"queued as" not in client.received, client.received[-300:]
            time.sleep(1.0)
            assert postfix_queued(lab.postfix, SENDER) == []
            return
        for line, reply in ((b"", b"250 2.1.0"),) + REST:
            if line:
                client.send_pieces([line])
            require(client.wait_reply(reply), f"no {reply!r} after {line!r}: {client.received[-300:]!r}")
        queued = re.search(rb"queued as ([0-9A-F]+)", client.received)
        require(queued, f"no queue id: {client.received[-300:]!r}")
    assert wait_until(lambda: queued[1].decode() in postfix_queued(lab.postfix, accepted), timeout=10)
    assert not [r for r in sensor.records() if r["event_type"] == "drop" and r["id.orig_p"] == client.sport
                and r["ts"] >= started - 0.2]
