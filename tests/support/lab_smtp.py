"""Plain SMTP sessions from a chosen client address of the netns lab
(sensor.lab.network.Lab), for the tests of the reject statistics: every reply
code seen, and whether a new connection gets through at all."""

from __future__ import annotations

import socket

from sensor.kernel.netns import socket_in
from sensor.lab.network import SERVER_V4, Lab

__all__ = ["SmtpError", "smtp_session", "connection_times_out"]


class SmtpError(Exception):
    pass


def smtp_session(lab: Lab, source: str, port: int, rcpts=(), data: bool = False,
                 timeout: float = 5.0) -> list[int]:
    """One SMTP session from ``source`` (an address of the client namespace)
    to the server: greeting, EHLO, MAIL and each RCPT (if any), DATA if asked
    and a recipient was accepted, QUIT.  Returns the reply codes in order."""
    sock = socket_in(lab.client_ns)
    codes: list[int] = []
    buf = b""

    def reply() -> int:
        nonlocal buf
        while True:
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                if len(line) >= 4 and line[3:4] == b" ":
                    codes.append(int(line[:3]))
                    return codes[-1]
            chunk = sock.recv(4096)
            if not chunk:
                raise SmtpError(f"{source} -> :{port}: connection closed after {codes}")
            buf += chunk

    def command(line: str) -> int:
        sock.sendall(line.encode() + b"\r\n")
        return reply()

    try:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((source, 0))
        sock.connect((SERVER_V4, port))
        if reply() != 220:
            raise SmtpError(f"{source} -> :{port}: greeting {codes}")
        command(f"EHLO host-{source.replace('.', '-')}.lab.example")
        if rcpts:
            command(f"MAIL FROM:<sender@{source}.example>")
            accepted = [command(f"RCPT TO:<{r}>") == 250 for r in rcpts]
            if data and any(accepted):
                if command("DATA") == 354:
                    command(f"From: <sender@{source}.example>\r\nSubject: lab\r\n\r\nhello\r\n.")
        command("QUIT")
        return codes
    finally:
        sock.close()


def connection_times_out(lab: Lab, source: str, port: int = 25, timeout: float = 1.0) -> bool:
    sock = socket_in(lab.client_ns)
    try:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        try:
            sock.connect((SERVER_V4, port))
        except socket.timeout:
            return True
        return False
    finally:
        sock.close()
