"""IP-fragmented MAIL FROM, live against Postfix: the real sensor (`smtp-sensor
run` with the shipped rules) on the lab server's veth, Postfix in the server
namespace, and a raw packet client (support.raw_tcp) that sends the segment
of a banned ``MAIL FROM:<spammer@suspicious.org>`` as two IP fragments, the
first holding 8 (the ports, not the flags) or 32 octets of TCP, every time
it sends it.

- Monitor only: the kernel pushes the fragments, userland reassembles them,
  so the sensor's record has the sender Postfix accepted (its 250 2.1.0 and
  the message it queued, from its log) and the spam filter's alert fires;
  a first fragment short of the TCP header is an anomaly on the flow.
- Prevention: the kernel drops the first fragment (its own counter,
  ``drop_frag``), so Postfix's stack never completes the datagram: Postfix
  never answers the MAIL FROM and queues nothing from the sender.
"""

from __future__ import annotations

import time

import pytest

from sensor.kernel import abi
from support.lab_hold import postfix_lab, postfix_queued, require, start_sensor, wait_until
from support.raw_tcp import RAW_V4, RawTcpClient
from support.record_schemas import check

POSTFIX_PORT = 587


def banned_sender(test: str, first: int) -> str:
    """The banned sender of one test (the module's Postfix keeps every test's log)."""
    return f"spammer-{test}-{first}@suspicious.org"


@pytest.fixture(scope="module")
def lab(lab_prereqs):
    with postfix_lab(POSTFIX_PORT) as lab:
        yield lab


def greet(client: RawTcpClient) -> None:
    client.connect()
    require(client.wait_reply(b"220 "), f"no greeting: {client.received!r}")
    client.send_pieces([b"EHLO fragments.lab.example\r\n"])
    require(client.wait_reply(b"250 "), f"no EHLO reply: {client.received!r}")


def send_fragmented_mail(client: RawTcpClient, sender: str, first: int) -> None:
    client.fragmented[len(client.segments)] = first
    client.send_pieces([f"MAIL FROM:<{sender}>\r\n".encode()])


@pytest.mark.parametrize("first", [8, 32])
def test_monitor_only_sees_the_sender_postfix_accepts(lab, test_pin_root, tmp_path, first):
    sensor = start_sensor(lab, tmp_path, test_pin_root / f"frag-monitor-{first}" / f"v{abi.ABI_VERSION}",
                          "--monitor-only")
    sender = banned_sender("monitor", first)
    try:
        started = time.time()
        with RawTcpClient(lab, dport=POSTFIX_PORT) as client:
            greet(client)
            send_fragmented_mail(client, sender, first)
            require(client.wait_reply(b"250 2.1.0"), f"Postfix did not accept the sender: {client.received!r}")
            client.send_pieces([b"RCPT TO:<user@lab.example>\r\n"])
            require(client.wait_reply(b"250 2.1.5"), f"no RCPT reply: {client.received[-200:]!r}")
            client.send_pieces([b"DATA\r\n"])
            require(client.wait_reply(b"354 "), f"no 354: {client.received[-200:]!r}")
            client.send_pieces([b"Subject: fragments\r\n\r\nbody\r\n.\r\n"])
            require(client.wait_reply(b"250 2.0.0"), f"not queued: {client.received[-200:]!r}")
            client.send_pieces([b"QUIT\r\n"])
            require(client.wait_reply(b"221 "), f"no 221: {client.received[-200:]!r}")
            sport = client.sport
        # Postfix's word: the message from that sender was queued
        assert wait_until(lambda: postfix_queued(lab.postfix, sender), timeout=10)
        rec = sensor.wait_record(lambda r: r["event_type"] == "smtp" and r["id.orig_h"] == RAW_V4
                                 and r["id.orig_p"] == sport and r["ts"] >= started - 1, timeout=15)
        assert rec["mailfrom"] == sender
        alert = sensor.wait_record(lambda r: r["event_type"] == "alert" and r["uid"] == rec["uid"], timeout=10)
        assert alert["alert"]["signature"] == "forbidden mail domain"
        anomalies = [r for r in sensor.records() if r["event_type"] == "anomaly" and r.get("uid") == rec["uid"]
                     and r["layer"] == "ip"]
        for r in (rec, alert, *anomalies):
            check(r)
        assert [a["name"] for a in anomalies] == (["IPV4_FRAG_TINY_FIRST"] if first < 20 else [])
        status = sensor.control_client.call("status")
        assert status["counters"]["ingress"]["frag_pushed"] >= 2
        assert status["counters"]["ingress"]["drop_frag"] == 0
        assert status["defrag"]["reassembled"] >= 1
    finally:
        require(sensor.stop() == 0, sensor.describe())


@pytest.mark.parametrize("first", [8, 32])
def test_prevention_drops_the_first_fragment_and_postfix_never_has_the_sender(lab, test_pin_root, tmp_path,
                                                                               first):
    sensor = start_sensor(lab, tmp_path, test_pin_root / f"frag-prevent-{first}" / f"v{abi.ABI_VERSION}")
    sender = banned_sender("prevention", first)
    try:
        before = sensor.control_client.call("status")["counters"]["ingress"]["drop_frag"]
        with RawTcpClient(lab, dport=POSTFIX_PORT) as client:
            greet(client)
            send_fragmented_mail(client, sender, first)
            # the client retransmits the fragments every 0.1 s; Postfix never
            # gets the datagram, so it never answers it
            assert not client.wait_reply(b"2.1.0", timeout=3.0), client.received[-200:]
            assert not client.wait_acked(timeout=0.5)
            retransmissions = client.retransmissions
        dropped = sensor.control_client.call("status")["counters"]["ingress"]["drop_frag"] - before
        assert dropped == 1 + retransmissions          # every copy's first fragment
        assert postfix_queued(lab.postfix, sender) == []
    finally:
        require(sensor.stop() == 0, sensor.describe())
    # the sensor saw what Postfix saw: no MAIL from the sender, nothing to alert on
    mine = [r for r in sensor.records() if r.get("id.orig_p", r.get("src_port")) == client.sport]
    assert not [r for r in mine if r["event_type"] == "smtp" and r.get("mailfrom") == sender], mine
    assert not [r for r in mine if r["event_type"] == "alert"], mine
