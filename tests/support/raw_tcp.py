"""A TCP client made of raw packets, in the lab's client namespace, for
segments the kernel's own TCP would not send: each piece of the stream is
one segment with exactly those bytes, sent in any order, and retransmitted
as the same segment until the server acknowledges it (what a kernel's RTO
does, every ``rto`` seconds here).

It speaks from an address of its own on the client's link (``RAW_V4``),
which the client namespace does not have, so the namespace's TCP never
answers the server's packets with a reset; the server namespace gets a
permanent neighbour entry for it (removed by ``close()``).  Frames are
built and parsed with scapy and go through an AF_PACKET socket made inside
the client namespace.

    with RawTcpClient(lab) as c:
        c.connect()
        c.wait_reply(b"220 ")
        c.send_pieces([b"EHLO x\\r\\n...\\r\\n", b".\\r\\n"], order=[1, 0])
        c.wait_acked()

A piece named in ``fragmented`` (piece index -> N) goes out, each time it is
sent, as two IP fragments of one datagram: the first with N octets of TCP
(a multiple of 8: 8 holds the ports but not the flags), the second the rest.
"""

from __future__ import annotations

import os
import random
import select
import socket
import time

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from sensor.kernel.netns import iproute, socket_in
from sensor.lab.network import SERVER_V4

#: the raw client's address: on the lab's link, not configured in any namespace
RAW_V4 = "192.0.2.11"
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
NUD_PERMANENT = 0x80
SYN, FIN, RST, PSH, ACK = 0x02, 0x01, 0x04, 0x08, 0x10
_MASK = 0xFFFFFFFF


def _after(a: int, b: int) -> bool:
    """a is after b in sequence space."""
    return 0 < ((a - b) & _MASK) < 0x80000000


class RawTcpClient:
    def __init__(self, lab, dport: int = 25, dst: str = SERVER_V4, src: str = RAW_V4, rto: float = 0.1):
        self.lab, self.dst, self.src, self.dport, self.rto = lab, dst, src, dport, rto
        self.sport = random.randint(20000, 60000)
        with iproute(lab.client_ns) as ipr:
            index = ipr.link_lookup(ifname=lab.client_if)[0]
            self.mac = ipr.get_links(index)[0].get_attr("IFLA_ADDRESS")
        with iproute(lab.server_ns) as ipr:
            self._server_index = ipr.link_lookup(ifname=lab.server_if)[0]
            self.server_mac = ipr.get_links(self._server_index)[0].get_attr("IFLA_ADDRESS")
            ipr.neigh("replace", dst=src, lladdr=self.mac, ifindex=self._server_index, state=NUD_PERMANENT)
        self.sock = socket_in(lab.client_ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((lab.client_if, 0))
        self.isn = int.from_bytes(os.urandom(4), "big")
        self.snd_una = self.snd_nxt = self.isn
        self.rcv_nxt = None
        self.received = b""
        self.server_fin = self.server_rst = False
        #: (seq, bytes) of every data segment sent, in stream order
        self.segments: list[tuple[int, bytes]] = []
        #: retransmissions: piece index -> the bytes to send instead (the same length or not)
        self.replacements: dict[int, bytes] = {}
        #: piece index -> octets of TCP in the first of the two IP fragments it is sent as
        self.fragmented: dict[int, int] = {}
        self.retransmissions = 0
        self._last_sent = 0.0

    # ------------------------------------------------------------ frames
    def _send(self, flags: int, seq: int, payload: bytes = b"", options=()) -> None:
        self.sock.send(self._frame(flags, seq, payload, options))

    def _frame(self, flags: int, seq: int, payload: bytes = b"", options=()) -> bytes:
        frame = (Ether(src=self.mac, dst=self.server_mac)
                 / IP(src=self.src, dst=self.dst, id=random.randint(0, 0xFFFF))
                 / TCP(sport=self.sport, dport=self.dport, seq=seq, ack=self.rcv_nxt or 0, flags=flags,
                       window=65535, options=list(options)))
        if payload:
            frame = frame / payload
        return bytes(frame)

    def _frames(self, index: int, flags: int, seq: int, payload: bytes) -> list[bytes]:
        """The frames of piece `index`: one, or its IP fragments (``fragmented``)."""
        frame = self._frame(flags, seq, payload)
        first = self.fragmented.get(index)
        if first is None:
            return [frame]
        assert first % 8 == 0, "a first fragment holds a multiple of 8 octets"
        eth, ip = Ether(frame), Ether(frame)[IP]
        tcp = bytes(ip.payload)             # checksummed over the whole segment
        head = Ether(src=eth.src, dst=eth.dst) / IP(src=ip.src, dst=ip.dst, id=ip.id, proto=6, flags="MF")
        tail = Ether(src=eth.src, dst=eth.dst) / IP(src=ip.src, dst=ip.dst, id=ip.id, proto=6, frag=first // 8)
        return [bytes(head / Raw(tcp[:first])), bytes(tail / Raw(tcp[first:]))]

    def _receive(self, timeout: float) -> bool:
        """Read the server's frames of this connection for up to `timeout` s
        (returns as soon as one came), acknowledging its data."""
        ready, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not ready:
            return False
        got = False
        while True:
            try:
                frame, addr = self.sock.recvfrom(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return got
            if addr[2] == PACKET_OUTGOING:
                continue
            pkt = Ether(frame)
            if IP not in pkt or TCP not in pkt:
                continue
            ip, tcp = pkt[IP], pkt[TCP]
            if ip.src != self.dst or ip.dst != self.src or tcp.sport != self.dport or tcp.dport != self.sport:
                continue
            got = True
            self._segment(tcp, bytes(tcp.payload)[: ip.len - ip.ihl * 4 - tcp.dataofs * 4])

    def _segment(self, tcp, payload: bytes) -> None:
        flags = int(tcp.flags)
        if flags & RST:
            self.server_rst = True
            return
        if flags & SYN:
            self.rcv_nxt = (tcp.seq + 1) & _MASK
            self.snd_una = self.snd_nxt = (self.isn + 1) & _MASK
            self._send(ACK, self.snd_nxt)
            return
        if flags & ACK and _after(tcp.ack, self.snd_una) and not _after(tcp.ack, self.snd_nxt):
            self.snd_una = tcp.ack
        if self.rcv_nxt is None:
            return
        if payload or flags & FIN:
            if tcp.seq == self.rcv_nxt:
                self.received += payload
                self.rcv_nxt = (self.rcv_nxt + len(payload)) & _MASK
                if flags & FIN:
                    self.server_fin = True
                    self.rcv_nxt = (self.rcv_nxt + 1) & _MASK
            self._send(ACK, self.snd_nxt)

    # ------------------------------------------------------------ the connection
    def connect(self, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while self.rcv_nxt is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no SYN-ACK from {self.dst}:{self.dport}")
            self._send(SYN, self.isn, options=[("MSS", 1460)])
            self._receive(min(self.rto, deadline - time.monotonic()))

    def send_pieces(self, pieces, order=None) -> None:
        """Each piece of `pieces` (the next bytes of the stream, in stream
        order) becomes one segment; they go out in `order` (indices of
        pieces; default: stream order)."""
        start = len(self.segments)
        seq = self.snd_nxt
        for piece in pieces:
            self.segments.append((seq, bytes(piece)))
            seq = (seq + len(piece)) & _MASK
        self.snd_nxt = seq
        # built first, then sent back to back (scapy takes ~1 ms a frame)
        frames = [f for i in (order if order is not None else range(len(pieces)))
                  for f in self._frames(start + i, PSH | ACK, *self.segments[start + i])]
        for frame in frames:
            self.sock.send(frame)
        self._last_sent = time.monotonic()

    def _retransmit(self) -> None:
        for i, (seq, data) in enumerate(self.segments):
            if _after((seq + len(data)) & _MASK, self.snd_una):
                for frame in self._frames(i, PSH | ACK, seq, self.replacements.get(i, data)):
                    self.sock.send(frame)
                self.retransmissions += 1
        self._last_sent = time.monotonic()

    def pump(self, until, timeout: float) -> bool:
        """Receive, acknowledge and retransmit until `until()` is true (True)
        or `timeout` seconds have passed (False)."""
        deadline = time.monotonic() + timeout
        while not until():
            now = time.monotonic()
            if now >= deadline:
                return False
            if _after(self.snd_nxt, self.snd_una) and now - self._last_sent >= self.rto:
                self._retransmit()
            self._receive(min(self.rto, deadline - now, max(0.0, self._last_sent + self.rto - now)))
        return True

    def wait_acked(self, timeout: float = 5.0) -> bool:
        """Everything sent acknowledged by the server (False: not within `timeout`)."""
        return self.pump(lambda: not _after(self.snd_nxt, self.snd_una), timeout)

    def wait_reply(self, text: bytes, timeout: float = 5.0) -> bool:
        """`text` among the server's bytes (False: not within `timeout`)."""
        return self.pump(lambda: text in self.received, timeout)

    def close(self) -> None:
        try:
            if self.rcv_nxt is not None:
                self._send(RST | ACK, self.snd_nxt)
        finally:
            self.sock.close()
            with iproute(self.lab.server_ns) as ipr:
                try:
                    ipr.neigh("del", dst=self.src, lladdr=self.mac, ifindex=self._server_index)
                except Exception:  # noqa: BLE001 - another client of the same address removed it
                    pass

    def __enter__(self) -> "RawTcpClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
