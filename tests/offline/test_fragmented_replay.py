"""A capture (made here with scapy) of an SMTP session whose MAIL FROM segment
is IP-fragmented, the first fragment holding 8 or 32 bytes of TCP, IPv4 and
IPv6: replayed, the record has the sender the MTA received, the shipped spam
filter's alert fires, and the tiny first fragment is an anomaly on the flow."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw
from scapy.utils import wrpcap

from sensor.assembly import Userland
from sensor.config import Config, SensorConfig, StreamConfig
from sensor.inputs.replay import replay
from sensor.records.sinks import ListSink
from support.record_schemas import check

RULES = Path(__file__).resolve().parents[2] / "rules"
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
ETH6 = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x86DD)
BANNED = b"MAIL FROM:<spammer@suspicious.org>\r\n"

DIALOGUE = [
    (False, b"220 mx.example ESMTP\r\n"),
    (True, b"EHLO client.example\r\n"),
    (False, b"250-mx.example\r\n250 8BITMIME\r\n"),
    (True, BANNED),
    (False, b"250 2.1.0 Ok\r\n"),
    (True, b"RCPT TO:<bob@example.net>\r\n"),
    (False, b"250 2.1.5 Ok\r\n"),
    (True, b"DATA\r\n"),
    (False, b"354 go ahead\r\n"),
    (True, b"Subject: hi\r\n\r\nbody\r\n.\r\n"),
    (False, b"250 2.0.0 queued as X1\r\n"),
    (True, b"QUIT\r\n"),
    (False, b"221 bye\r\n"),
]


def _ip(family, client, src, dst, ident):
    if family == 4:
        return IP(src=src, dst=dst, id=ident)
    return IPv6(src=src, dst=dst)


def cut(first: int, reverse: bool = False):
    """A split of a segment's TCP bytes: the first fragment with ``first``
    bytes, then 16-byte ones, the last what is left; sent in reverse when told."""
    def split(tcp_bytes: bytes):
        cuts = sorted({0, first, *range(first + 16, len(tcp_bytes), 16), len(tcp_bytes)})
        pieces = [(a, tcp_bytes[a:b], b < len(tcp_bytes)) for a, b in zip(cuts, cuts[1:])]
        return pieces[::-1] if reverse else pieces
    return split


def _fragments(family, ip_layer, pieces, ident: int):
    """IP fragments of (offset, bytes, more) pieces of one datagram."""
    frames = []
    for a, data, more in pieces:
        chunk = Raw(data)
        if family == 4:
            pkt = ETH / IP(src=ip_layer.src, dst=ip_layer.dst, id=ident, proto=6,
                           flags="MF" if more else 0, frag=a // 8) / chunk
        else:
            pkt = ETH6 / IPv6(src=ip_layer.src, dst=ip_layer.dst) / IPv6ExtHdrFragment(
                id=ident, offset=a // 8, m=int(more), nh=6) / chunk
        frames.append(raw(pkt))
    return frames


def make_capture(path, family: int, first: int = 8, reverse: bool = False, split=None):
    """The session of DIALOGUE, its MAIL FROM segment fragmented (by ``split``:
    TCP bytes -> (offset, bytes, more) pieces in the order sent; default
    ``cut(first, reverse)``)."""
    split = split or cut(first, reverse)
    client, server = ("198.51.100.7", "192.0.2.25") if family == 4 else ("2001:db8:1::7", "2001:db8:2::25")
    cseq, sseq, ident = 1000, 7000, 300
    frames = []

    def seg(from_client, flags, payload=b""):
        src, dst = (client, server) if from_client else (server, client)
        sp, dp = (40000, 25) if from_client else (25, 40000)
        ip = _ip(family, from_client, src, dst, 0)
        tcp = TCP(sport=sp, dport=dp, flags=flags, seq=cseq if from_client else sseq,
                  ack=sseq if from_client else cseq)
        return ip / tcp / Raw(payload) if payload else ip / tcp

    frames.append(raw(ETH / seg(True, "S")) if family == 4 else raw(ETH6 / seg(True, "S")))
    cseq += 1
    frames.append(raw((ETH if family == 4 else ETH6) / seg(False, "SA")))
    sseq += 1
    for from_client, data in DIALOGUE:
        pkt = seg(from_client, "PA", data)
        if data is BANNED:
            ident += 1
            tcp_bytes = raw(pkt[TCP])
            frames += _fragments(family, pkt, split(tcp_bytes), ident)
        else:
            frames.append(raw((ETH if family == 4 else ETH6) / pkt))
        if from_client:
            cseq += len(data)
        else:
            sseq += len(data)
    frames.append(raw((ETH if family == 4 else ETH6) / seg(True, "FA")))
    frames.append(raw((ETH if family == 4 else ETH6) / seg(False, "FA")))
    packets = [Ether(f) for f in frames]
    for i, p in enumerate(packets):
        p.time = 1_700_000_000 + i * 0.01
    wrpcap(str(path), packets)
    return path


def run(path, policy: str = "linux", checksums: str = "auto"):
    sink = ListSink()
    config = Config(sensor=SensorConfig(rules=RULES, enforce=False),
                    stream=StreamConfig(defrag_policy=policy, checksum_validation=checksums))
    replay(path, Userland(config, sink))
    for record in sink:
        check(record)
    return sink


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("first", [8, 32])
@pytest.mark.parametrize("reverse", [False, True], ids=["in_order", "reversed"])
def test_a_fragmented_mail_from_replays_with_the_right_sender(tmp_path, family, first, reverse):
    path = make_capture(tmp_path / "frag.pcap", family, first, reverse)
    sink = run(path)
    [rec] = sink.of("smtp")
    ip_anomalies = [a for a in sink.of("anomaly") if a["layer"] == "ip"]
    if family == 6 and first < 20:
        # Linux drops an IPv6 first fragment short of the TCP header (RFC 8200
        # 4.5): the MTA never had this MAIL FROM, and neither has the record
        assert rec.get("mailfrom") is None and sink.of("alert") == []
    else:
        assert rec["mailfrom"] == "spammer@suspicious.org"
        assert [a["alert"]["signature"] for a in sink.of("alert")] == ["forbidden mail domain"]
        assert not [a for a in sink.of("anomaly") if a["layer"] == "smtp"]
    assert rec["rcptto"] == ["bob@example.net"]
    if first < 20:
        [an] = ip_anomalies
        assert an["name"] == f"IPV{family}_FRAG_TINY_FIRST" and an["uid"] == rec["uid"]
        assert an["direction"] == "client"
    else:
        assert ip_anomalies == []


def test_without_the_first_fragment_the_sender_is_a_gap_not_a_guess(tmp_path):
    from scapy.utils import rdpcap
    path = make_capture(tmp_path / "frag.pcap", 4, 32)
    packets = [p for p in rdpcap(str(path)) if not (p.haslayer(IP) and p[IP].flags.MF and p[IP].frag == 0)]
    wrpcap(str(tmp_path / "nofirst.pcap"), packets)
    sink = run(tmp_path / "nofirst.pcap")
    [rec] = sink.of("smtp")
    assert rec.get("mailfrom") != "spammer@suspicious.org"
    assert sink.of("alert") == []


FAKE = b"MAIL FROM:<friend1@harmlessly.org>\r\n"     # as long as BANNED


def overlap(tcp_bytes: bytes):
    """The sender's bytes twice at the same offset (the banned one first,
    then a harmless one), then the first fragment."""
    fake = tcp_bytes.replace(BANNED, FAKE)
    return [(24, tcp_bytes[24:], False), (24, fake[24:], False), (0, tcp_bytes[:24], True)]


def partial_overlap(tcp_bytes: bytes):
    """The sender's bytes from 24 on, then a harmless sender from 16 on (an
    overlap that is no duplicate), then the first fragment."""
    fake = tcp_bytes.replace(BANNED, FAKE)
    return [(24, tcp_bytes[24:], False), (16, fake[16:], False), (0, tcp_bytes[:16], True)]


@pytest.mark.parametrize("split,policy,sender,detail", [
    # Linux: a fragment wholly inside one held is a duplicate, the first copy kept ...
    (overlap, "linux", "spammer@suspicious.org", "first copy kept"),
    # ... any other overlap discards the datagram: the MTA never had this MAIL FROM
    (partial_overlap, "linux", None, "datagram discarded"),
    (overlap, "first", "spammer@suspicious.org", "policy first"),
    (overlap, "last", "friend1@harmlessly.org", "policy last"),
    (partial_overlap, "bsd", "friend1@harmlessly.org", "policy bsd"),
], ids=["linux-duplicate", "linux-overlap", "first", "last", "bsd"])
def test_overlapping_fragments_resolve_by_the_policy_and_are_reported_on_the_flow(tmp_path, split, policy,
                                                                                  sender, detail):
    assert len(FAKE) == len(BANNED)
    # the harmless copy keeps the banned one's TCP checksum: a datagram made of
    # it fails the TCP layer's check (tests/unit/test_receiver_view.py), which
    # is not what this test is about: the IP layer's choice
    sink = run(make_capture(tmp_path / "overlap.pcap", 4, split=split), policy, checksums="no")
    [rec] = sink.of("smtp")
    assert rec.get("mailfrom") == sender
    names = [a["name"] for a in sink.of("anomaly") if a["layer"] == "ip" and a.get("uid") == rec["uid"]]
    assert "IPV4_FRAG_OVERLAP" in names
    [an] = [a for a in sink.of("anomaly") if a["name"] == "IPV4_FRAG_OVERLAP"]
    assert detail in an["detail"] and an["direction"] == "client"


def test_a_reassembled_datagram_is_checksummed_like_any_segment(tmp_path):
    """Policy last keeps the harmless copy, whose bytes do not match the TCP
    checksum the datagram carries: the TCP layer ignores the segment, as a
    receiver would, and says so."""
    sink = run(make_capture(tmp_path / "overlap.pcap", 4, split=overlap), "last", checksums="auto")
    [rec] = sink.of("smtp")
    assert rec.get("mailfrom") is None
    assert "TCP_BAD_CHECKSUM" in [a["name"] for a in sink.of("anomaly") if a.get("uid") == rec["uid"]]


@pytest.mark.parametrize("family", [4, 6])
def test_enforcing_a_replay_drops_the_fragmented_datagram_as_the_kernel_does(tmp_path, family):
    """In prevention the kernel drops the first fragment of an SMTP datagram,
    so the MTA host never has it: a replay that enforces reads the capture as
    the MTA got it (no sender), where monitoring it reads the sender."""
    path = make_capture(tmp_path / "frag.pcap", family, 32)
    sink = ListSink()
    userland = Userland(Config(sensor=SensorConfig(rules=RULES, enforce=True)), sink)
    replay(path, userland)
    [rec] = sink.of("smtp")
    assert rec.get("mailfrom") is None and sink.of("alert") == []
    assert userland.pipeline.counters.gated == 1
    assert run(path).of("smtp")[0]["mailfrom"] == "spammer@suspicious.org"
