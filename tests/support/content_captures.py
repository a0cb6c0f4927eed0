"""The captures of tests/data/pcaps/by_content/: SMTP on ports other than 25
and 587, found by content in a replay, and flows that look like it but are
not SMTP.  Built with scapy (``support.smtp_pcap``), deterministic; write
them again with::

    .venv/bin/python -m support.content_captures      # from tests/

then regenerate their golden files (tests/offline/test_golden_by_content.py).
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

from support.captures import PCAPS_DIR
from support.smtp_pcap import session_frames, smtp_dialogue, write_pcap

BY_CONTENT_DIR = PCAPS_DIR / "by_content"

GREETING = b"220 mx.example ESMTP\r\n"
CONNECT = b"CONNECT mx.example:25 HTTP/1.1\r\nHost: mx.example:25\r\n\r\n"
CONNECTED = b"HTTP/1.1 200 Connection established\r\n\r\n"
# the first bytes of a TLS ClientHello and ServerHello (record headers and
# handshake types right; the rest filler): what a client of implicit TLS sends
CLIENT_HELLO = b"\x16\x03\x01\x00\x40\x01\x00\x00\x3c\x03\x03" + bytes(range(32)) + b"\x00" * 29
SERVER_HELLO = b"\x16\x03\x03\x00\x30\x02\x00\x00\x2c\x03\x03" + bytes(range(32, 64)) + b"\x00" * 12


def _auth_dialogue():
    """SMTP with AUTH LOGIN: one failure, then a success, then a message."""
    d = smtp_dialogue(sender=b"dave@example.org")
    user, bad = (base64.b64encode(x) + b"\r\n" for x in (b"dave", b"wrong"))
    auth = [
        (True, b"AUTH LOGIN\r\n"), (False, b"334 VXNlcm5hbWU6\r\n"), (True, user),
        (False, b"334 UGFzc3dvcmQ6\r\n"), (True, bad),
        (False, b"535 5.7.8 Authentication credentials invalid\r\n"),
        (True, b"AUTH PLAIN " + base64.b64encode(b"\0dave\0right") + b"\r\n"),
        (False, b"235 2.7.0 Authentication successful\r\n"),
    ]
    return d[:3] + auth + d[3:]


def _tunnelled(dialogue, *, same_segment: bool):
    """``dialogue`` inside an HTTP CONNECT tunnel; ``same_segment``: the proxy's
    200 and the server's greeting arrive in one segment."""
    first = dialogue[0]
    assert not first[0]
    if same_segment:
        return [(True, CONNECT), (False, CONNECTED + first[1])] + dialogue[1:]
    return [(True, CONNECT), (False, CONNECTED)] + dialogue


def _client_first():
    d = smtp_dialogue(sender=b"erin@example.org")
    return [d[1], d[0]] + d[2:]          # EHLO sent before the greeting


#: name -> (server port, dialogue): what each capture holds
CASES = {
    "smtp-port-225": (225, smtp_dialogue(sender=b"alice@example.org")),
    "smtp-port-2525-auth": (2525, _auth_dialogue()),
    "smtp-port-465-plaintext": (465, smtp_dialogue(sender=b"bob@example.org")),
    "smtp-port-465-implicit-tls": (465, [(True, CLIENT_HELLO), (False, SERVER_HELLO),
                                         (True, b"\x14\x03\x03\x00\x01\x01"),
                                         (True, b"\x17\x03\x03\x00\x20" + b"\xaa" * 32)]),
    "smtp-http-connect-8240": (8240, _tunnelled(smtp_dialogue(sender=b"frank@example.org"),
                                                same_segment=False)),
    "smtp-http-connect-8240-one-segment": (8240, _tunnelled(smtp_dialogue(sender=b"gina@example.org"),
                                                            same_segment=True)),
    "smtp-client-first-port-10025": (10025, _client_first()),
    # not SMTP
    "ftp-port-21": (21, [(False, b"220 ftp.example FTP server ready\r\n"), (True, b"USER anonymous\r\n"),
                         (False, b"331 Please specify the password.\r\n"), (True, b"PASS x@\r\n"),
                         (False, b"230 Login successful.\r\n"), (True, b"QUIT\r\n"),
                         (False, b"221 Goodbye.\r\n")]),
    "http-connect-refused-8240": (8240, [(True, CONNECT),
                                         (False, b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                                 b"Content-Length: 0\r\n\r\n"),
                                         (True, b"EHLO client.example\r\n")]),
    "http-port-8080": (8080, [(True, b"GET / HTTP/1.1\r\nHost: www.example\r\n\r\n"),
                              (False, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n220 ")]),
}


def write_all(folder: Path = BY_CONTENT_DIR) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, (name, (port, dialogue)) in enumerate(sorted(CASES.items())):
        frames = session_frames(dialogue, sport=port, cport=41000 + n,
                                t0=1_700_000_000.0 + 100 * n)
        out.append(write_pcap(folder / f"synthetic__{name}.pcap", frames))
    return out


if __name__ == "__main__":
    for path in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else BY_CONTENT_DIR):
        print(path)
