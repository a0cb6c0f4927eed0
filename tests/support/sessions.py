"""Synthetic TCP sessions for the pipeline and rule tests: a pipelined SMTP
dialogue, and the segments that carry a dialogue in any cut."""

from __future__ import annotations

from sensor.stream.flowid import pack_addr
from sensor.stream.packet import ACK, FIN, PSH, SYN, Segment

CLI, SRV = pack_addr("192.0.2.10"), pack_addr("198.51.100.25")
CPORT = 40000
MASK = 0xFFFFFFFF

DIALOGUE = [
    (False, b"220 mx.example ESMTP\r\n"),
    (True, b"EHLO client.example\r\n"),
    (False, b"250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
    (True, b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\n"
           b"RCPT TO:<nobody@example.net>\r\nDATA\r\n"),
    (False, b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 No such user\r\n354 go ahead\r\n"),
    (True, b"Received: from relay2.example ([203.0.113.9]) by mx.example\r\n"
           b"Received: from laptop ([198.51.100.7]) by relay2.example\r\n"
           b"Subject: =?utf-8?q?caf=C3=A9?=\r\nTo: a@x.example, \"B, C\" <b@x.example>\r\n"
           b"\r\n" + b"line of body text\r\n" * 200 + b"..dot\r\n.\r\n"),
    (False, b"250 2.0.0 queued as X1\r\n"),
    (True, b"QUIT\r\n"),
    (False, b"221 bye\r\n"),
]


def session_segments(dialogue, cisn=1000, sisn=7000, cut=None, rng=None,
                     client="192.0.2.10", server="198.51.100.25", cport=CPORT, sport=25):
    """The segments of one TCP session carrying ``dialogue``; each payload is
    cut into pieces of at most ``cut`` bytes (random sizes when ``rng``)."""
    cli, srv = pack_addr(client), pack_addr(server)
    segs = [Segment(4, cli, srv, cport, sport, cisn, 0, SYN, b"", 0, 0),
            Segment(4, srv, cli, sport, cport, sisn, cisn + 1, SYN | ACK, b"", 0, 0)]
    cseq, sseq = cisn + 1, sisn + 1
    for from_client, data in dialogue:
        i = 0
        while i < len(data):
            n = len(data) - i if cut is None else (rng.randint(1, cut) if rng else cut)
            piece = data[i:i + n]
            if from_client:
                segs.append(Segment(4, cli, srv, cport, sport, cseq & MASK, sseq, PSH | ACK, piece, len(piece), 0))
                cseq += len(piece)
            else:
                segs.append(Segment(4, srv, cli, sport, cport, sseq & MASK, cseq, PSH | ACK, piece, len(piece), 0))
                sseq += len(piece)
            i += n
    segs.append(Segment(4, cli, srv, cport, sport, cseq & MASK, sseq, FIN | ACK, b"", 0, 0))
    segs.append(Segment(4, srv, cli, sport, cport, sseq & MASK, cseq + 1, FIN | ACK, b"", 0, 0))
    return segs
