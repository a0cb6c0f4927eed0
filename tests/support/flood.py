"""A flood of SMTP-port segments at the lab server's veth, from a process in
the client namespace: 1.4 KB TCP segments to port 25, cycling through
``flows`` source ports (each a connection the sensor follows), checksums
right, to a destination MAC that is not the server's (the server's stack
drops them after XDP and TC; nothing answers).  As fast as one Python
process sends (AF_PACKET; tens of thousands of frames a second here).

    with Flood(lab, flows=20000) as flood:
        ...                     # the sensor under load
    flood.sent                  # frames sent, read when it stopped
"""

from __future__ import annotations

import subprocess
import sys

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from sensor.lab.network import CLIENT_V4, SERVER_V4

# the sender: frame i of the cycle is the base frame with source port
# 1024 + i, its TCP checksum adjusted (RFC 1624)
_SENDER = r"""
import signal, socket, sys
ifname, base, flows = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3])
l4 = 14 + (base[14] & 15) * 4
old_port = int.from_bytes(base[l4:l4 + 2], "big")
old_sum = int.from_bytes(base[l4 + 16:l4 + 18], "big")
frames = []
for i in range(flows):
    port = 1024 + i
    s = (~old_sum & 0xFFFF) + (~old_port & 0xFFFF) + port
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    f = bytearray(base)
    f[l4:l4 + 2] = port.to_bytes(2, "big")
    f[l4 + 16:l4 + 18] = (~s & 0xFFFF).to_bytes(2, "big")
    frames.append(bytes(f))
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((ifname, 0))
sent = 0
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
print("ready", flush=True)
while not stop:
    for f in frames:
        try:
            sock.send(f)
            sent += 1
        except OSError:
            pass
        if stop:
            break
print(sent, flush=True)
"""


class Flood:
    def __init__(self, lab, flows: int = 20000):
        self.lab, self.flows = lab, flows
        self.sent = 0
        self.proc = None

    def start(self) -> "Flood":
        base = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:99") / IP(src=CLIENT_V4, dst=SERVER_V4)
                     / TCP(sport=1024, dport=25, flags="PA", seq=1000, ack=1) / Raw(b"x" * 1400))
        self.proc = subprocess.Popen(self.lab.exec_argv(self.lab.client_ns, sys.executable, "-c", _SENDER,
                                                        self.lab.client_if, base.hex(), str(self.flows)),
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("the flood sender did not start")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        lines = (out or "").split()
        self.sent = int(lines[-1]) if lines and lines[-1].isdigit() else 0
        self.proc = None

    def __enter__(self) -> "Flood":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
