"""A packet capture on a lab interface, for tests that compare what the
live sensor logged with a replay of the wire.

An AF_PACKET socket made inside the namespace (so it is bound before the
constructor returns: nothing is missed at the start, unlike dumpcap, which
was seen to start capturing a few hundred ms after writing its file header),
read by a thread into a pcap file; ``stop()`` drains the socket first.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path

from sensor.inputs.pcapwriter import PcapWriter
from sensor.kernel.netns import socket_in

ETH_P_ALL = 0x0003
LINKTYPE_ETHERNET = 1


class Capture:
    def __init__(self, lab, ns: str, ifname: str, path: Path):
        self.path = path
        self.sock = socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.writer = PcapWriter(path, LINKTYPE_ETHERNET)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        sock, writer = self.sock, self.writer
        while True:
            ready, _, _ = select.select([sock], [], [], 0.05)
            if not ready:
                if self._stop.is_set():
                    return
                continue
            frame = sock.recv(65536)
            writer.write(time.time(), frame)

    def stop(self) -> Path:
        if not self._stop.is_set():
            time.sleep(0.05)
            self._stop.set()
            self._thread.join()
            self.sock.close()
            self.writer.close()
        return self.path
