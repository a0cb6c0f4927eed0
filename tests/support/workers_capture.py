"""A capture for the sharded replay's tests (``replay --workers``): many
client hosts (``bench/gen_capture.py``), a spammer whose connections are
rejected often enough for an ``SMTP_PossibleSpam`` with ``SPAM_CONFIG``, and
SMTP sessions whose MAIL FROM segment is IP-fragmented (IPv4 and IPv6, the
fragments in order and reversed: port-less fragments first), between a
client and a server whose addresses belong to different workers.  TEST-NET
addresses only."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from scapy.layers.inet import IP, TCP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw

from sensor import shard
from sensor.config import Config, SpamStatsConfig
from sensor.inputs.pcapfile import CaptureReader
from sensor.stream.flowid import pack_addr
from support.smtp_pcap import session_frames, smtp_dialogue, write_pcap

BENCH = Path(__file__).resolve().parents[2] / "bench"
SPAMMER = "203.0.113.66"
SPAM_CONNECTIONS = 40
#: the reject statistics judged at 30 connections, every second of capture time
SPAM_CONFIG = replace(Config(), spam_stats=SpamStatsConfig(threshold=30, percent=30, check_interval=1.0))
T0 = 1_700_000_000.0           # bench/gen_capture.py's capture start


def rejected_dialogue(n: int) -> list:
    return [
        (False, b"220 mx.example ESMTP\r\n"),
        (True, b"EHLO spam%d.example\r\n" % n),
        (False, b"250 mx.example\r\n"),
        (True, b"MAIL FROM:<bulk@spam.example>\r\n"),
        (False, b"250 2.1.0 Ok\r\n"),
        (True, b"RCPT TO:<user%d@example.net>\r\n" % n),
        (False, b"554 5.7.1 Rejected: listed\r\n"),
        (True, b"QUIT\r\n"),
        (False, b"221 bye\r\n"),
    ]


def spammer_frames(span: float) -> list:
    """[(ts, frame)]: SPAM_CONNECTIONS rejected connections from SPAMMER over ``span`` seconds."""
    out = []
    for n in range(SPAM_CONNECTIONS):
        out += session_frames(rejected_dialogue(n), sport=25, cport=30000 + n, client=SPAMMER,
                              server="198.51.100.25", t0=T0 + 0.05 + n * span / SPAM_CONNECTIONS,
                              step=0.002)
    return out


def apart(candidates, workers=(2, 3)):
    """The first two addresses of ``candidates`` whose workers differ for every count in ``workers``."""
    first = candidates[0]
    for other in candidates[1:]:
        if all(shard.worker_of_address(pack_addr(first), w) != shard.worker_of_address(pack_addr(other), w)
               for w in workers):
            return first, other
    raise AssertionError("no two addresses in different workers")


def fragmented_frames(family: int, reverse: bool, t0: float, cport: int) -> list:
    """[(ts, frame)]: one SMTP session whose MAIL FROM travels in IP fragments."""
    if family == 4:
        client, server = apart([f"192.0.2.{n}" for n in range(200, 250)])
        ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    else:
        client, server = apart([f"2001:db8:7::{n:x}" for n in range(1, 80)])
        ether = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x86DD)
    frames = []
    v4_ends = {"client": client, "server": server} if family == 4 else {}   # IPv6: rewritten below
    for ts, data in session_frames(_dialogue(), sport=25, cport=cport, t0=t0, step=0.003, **v4_ends):
        pkt = Ether(data)
        payload = bytes(pkt[TCP].payload)
        if not payload.startswith(b"MAIL FROM"):
            frames.append((ts, data if family == 4 else _as_ipv6(pkt, ether, client, server)))
            continue
        if family == 4:
            pieces = [raw(ether / f) for f in fragment(pkt[IP], fragsize=16)]
        else:
            pkt[TCP].chksum = None        # computed again over the IPv6 pseudo-header
            whole = _v6(pkt, client, server) / IPv6ExtHdrFragment(id=0x5150 + cport) / pkt[TCP]
            pieces = [raw(ether / f) for f in fragment6(whole, 80)]
        if reverse:
            pieces.reverse()
        frames += [(round(ts + i * 0.0001, 6), p) for i, p in enumerate(pieces)]
    return frames


def _dialogue():
    return smtp_dialogue(sender=b"frag@" + b"x" * 60 + b".example")


def _v6(pkt, client, server):
    from_client = pkt[TCP].dport == 25
    return IPv6(src=client if from_client else server, dst=server if from_client else client)


def _as_ipv6(pkt, ether, client, server) -> bytes:
    tcp = pkt[TCP]
    tcp.chksum = None
    return raw(ether / _v6(pkt, client, server) / tcp)


def make_workers_capture(folder: Path, size_mb: float = 1.5) -> Path:
    """The capture (``folder/workers.pcap``), made once per folder."""
    path = folder / "workers.pcap"
    if path.exists():
        return path
    sys.path.insert(0, str(BENCH))
    try:
        import gen_capture
    finally:
        sys.path.remove(str(BENCH))
    base = folder / "many-hosts.pcap"
    gen_capture.generate(str(base), size_mb=size_mb, seed=5, concurrency=48)
    reader = CaptureReader(base)
    frames = [(ts, frame) for ts, _lt, frame, _wl in reader]
    reader.close()
    span = max(1.0, frames[-1][0] - frames[0][0])
    frames += spammer_frames(span)
    for k, (family, reverse) in enumerate(((4, False), (4, True), (6, False), (6, True))):
        frames += fragmented_frames(family, reverse, T0 + 0.1 + k * span / 5, 41000 + k)
    frames.sort(key=lambda f: f[0])
    return write_pcap(path, frames)
