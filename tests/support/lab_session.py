"""An SMTP session from the lab's client namespace driven line by line, so a
test can leave it open (across a stop, a reload) and go on later."""

from __future__ import annotations

from sensor.kernel.netns import socket_in
from sensor.lab.network import SERVER_V4


class LineSession:
    """Connected, the greeting read; ``say`` sends a line and returns the
    last line of its reply."""

    def __init__(self, lab, port: int = 25, server: str = SERVER_V4, timeout: float = 10):
        self.sock = socket_in(lab.client_ns)
        self.sock.settimeout(timeout)
        self.sock.connect((server, port))
        self.buf = b""
        self.greeting = self.reply()

    def reply(self) -> bytes:
        """The last line of the next reply (``250 ...``, after its ``250-`` lines)."""
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if line[3:4] == b" ":
                    self.buf = b"\r\n".join(lines[i + 1:])
                    return line
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the server closed the session")
            self.buf += chunk

    def say(self, line: str) -> bytes:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def gateway_with_server(tmp_path_factory, name: str):
    """A GatewayLab (sensor.lab.gateway) with aiosmtpd on the server's link
    journalling to ``lab.journal``: the body of a module's fixture, ``yield from`` it."""
    from sensor.lab.gateway import GATEWAY_SERVER_V4, GatewayLab

    journal = tmp_path_factory.mktemp(name) / "journal.jsonl"
    with GatewayLab() as lab:
        lab.journal = journal
        lab.start_server(journal=journal, addresses=(GATEWAY_SERVER_V4,))
        yield lab
