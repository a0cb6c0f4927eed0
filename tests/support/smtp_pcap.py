"""Captures of synthetic TCP sessions, built with scapy: Ethernet frames of a
dialogue (handshake, each turn in one segment with its ACK, FIN both ways),
written as pcap or pcapng.  Used for the SMTP-by-content captures in
tests/data/pcaps (``make_content_captures``) and the corrupt-capture tests.
Addresses are TEST-NET ones."""

from __future__ import annotations

from pathlib import Path

from scapy.all import IP, TCP, Ether, raw
from scapy.utils import PcapNgWriter, wrpcap

CLIENT, SERVER = "192.0.2.10", "198.51.100.25"
CMAC, SMAC = "02:00:00:00:00:0a", "02:00:00:00:00:19"


def session_frames(dialogue, *, sport: int, cport: int = 40000, client: str = CLIENT,
                   server: str = SERVER, t0: float = 1_700_000_000.0, step: float = 0.01,
                   handshake: bool = True, fin: bool = True):
    """[(ts, frame bytes)] of one TCP session carrying ``dialogue``:
    [(from_client, bytes)], each turn one segment, ACKed by the peer."""
    cseq, sseq = 1000, 7000
    out = []
    t = t0

    def frame(from_client, flags, seq, ack, payload=b""):
        nonlocal t
        if from_client:
            pkt = Ether(src=CMAC, dst=SMAC) / IP(src=client, dst=server) / TCP(
                sport=cport, dport=sport, flags=flags, seq=seq, ack=ack, window=65535)
        else:
            pkt = Ether(src=SMAC, dst=CMAC) / IP(src=server, dst=client) / TCP(
                sport=sport, dport=cport, flags=flags, seq=seq, ack=ack, window=65535)
        out.append((round(t, 6), raw(pkt / payload) if payload else raw(pkt)))
        t += step

    if handshake:
        frame(True, "S", cseq, 0)
        frame(False, "SA", sseq, cseq + 1)
        cseq += 1
        sseq += 1
        frame(True, "A", cseq, sseq)
    for from_client, data in dialogue:
        if from_client:
            frame(True, "PA", cseq, sseq, data)
            cseq += len(data)
            frame(False, "A", sseq, cseq)
        else:
            frame(False, "PA", sseq, cseq, data)
            sseq += len(data)
            frame(True, "A", cseq, sseq)
    if fin:
        frame(True, "FA", cseq, sseq)
        frame(False, "FA", sseq, cseq + 1)
        frame(True, "A", cseq + 1, sseq + 1)
    return out


def write_pcap(path: Path, frames) -> Path:
    pkts = []
    for ts, data in frames:
        p = Ether(data)
        p.time = ts
        pkts.append(p)
    wrpcap(str(path), pkts)
    return path


def write_pcapng(path: Path, frames) -> Path:
    w = PcapNgWriter(str(path))
    for ts, data in frames:
        p = Ether(data)
        p.time = ts
        w.write(p)
    w.close()
    return path


def smtp_dialogue(*, helo=b"EHLO client.example", sender=b"alice@example.org",
                  subject=b"hello") -> list:
    """A plain SMTP session: greeting, EHLO, one delivered message, QUIT."""
    return [
        (False, b"220 mx.example ESMTP\r\n"),
        (True, helo + b"\r\n"),
        (False, b"250-mx.example\r\n250 8BITMIME\r\n"),
        (True, b"MAIL FROM:<" + sender + b">\r\n"),
        (False, b"250 2.1.0 Ok\r\n"),
        (True, b"RCPT TO:<bob@example.net>\r\n"),
        (False, b"250 2.1.5 Ok\r\n"),
        (True, b"DATA\r\n"),
        (False, b"354 go ahead\r\n"),
        (True, b"From: alice@example.org\r\nSubject: " + subject + b"\r\n\r\nbody\r\n.\r\n"),
        (False, b"250 2.0.0 queued as X1\r\n"),
        (True, b"QUIT\r\n"),
        (False, b"221 2.0.0 bye\r\n"),
    ]
