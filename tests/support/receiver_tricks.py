"""The receiver's tricks (issue 12's table) for the lab: crafted segments of a
support.raw_tcp client's connection, each a way to make a sensor that does
not take the receiver's view see another MAIL FROM than Linux hands Postfix."""

from __future__ import annotations

import random
import time

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from support.raw_tcp import ACK, PSH, RST, RawTcpClient

SENDER = "spammer@suspicious.org"
MAIL = f"MAIL FROM:<{SENDER}>\r\n".encode()
URG = 0x20


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


