"""Helpers for the SMTP dissector tests (imported by tests/unit/test_smtp_*.py)."""

from __future__ import annotations

import dataclasses

from sensor.smtp import SMTPConnection, SmtpLimits  # noqa: F401
from sensor.smtp.events import Command, MailContent, Reply, SmtpAnomaly, Transaction

TS = 1.0


def feed(client: bytes | list = b"", server: bytes | list = b"", *, order: str = "client",
         limits: SmtpLimits | None = None, close: bool = True, ts: float = TS) -> list:
    """Feed both directions (each a bytes or a list of chunks), in ``order``, then close.

    ``order``: "client" (client stream first) or "server" (server first);
    ``dialogue`` feeds turns in a given order.
    """
    conn = SMTPConnection(limits or SmtpLimits())
    cl = [client] if isinstance(client, (bytes, bytearray)) else list(client)
    sv = [server] if isinstance(server, (bytes, bytearray)) else list(server)
    out: list = []
    if order == "client":
        for c in cl:
            out += conn.receive_client(c, ts)
        for s in sv:
            out += conn.receive_server(s, ts)
    elif order == "server":
        for s in sv:
            out += conn.receive_server(s, ts)
        for c in cl:
            out += conn.receive_client(c, ts)
    else:
        raise ValueError(order)
    if close:
        out += conn.close(ts)
    return out


def dialogue(*turns: tuple[str, bytes], limits: SmtpLimits | None = None, close: bool = True,
             conn: SMTPConnection | None = None) -> list:
    """Feed ("S"|"C", bytes) turns in this order, with increasing ts."""
    conn = conn or SMTPConnection(limits or SmtpLimits())
    out: list = []
    for i, (who, data) in enumerate(turns):
        if who == "S":
            out += conn.receive_server(data, float(i))
        else:
            out += conn.receive_client(data, float(i))
    if close:
        out += conn.close(float(len(turns)))
    return out


def of(events: list, cls: type) -> list:
    return [e for e in events if isinstance(e, cls)]


def names(events: list) -> list[str]:
    return [e.name for e in events if isinstance(e, SmtpAnomaly)]


def content(events: list) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, MailContent))


def commands(events: list) -> list[tuple[str, str]]:
    return [(e.verb, e.parameter) for e in events if isinstance(e, Command)]


def replies(events: list) -> list[tuple[str | None, int]]:
    return [(e.command, e.code) for e in events if isinstance(e, Reply)]


def transactions(events: list) -> list[Transaction]:
    return of(events, Transaction)


def strip_ts(obj):
    """Replace every ts (recursively) by 0, for comparisons that ignore time."""
    if isinstance(obj, list):
        return [strip_ts(x) for x in obj]
    if isinstance(obj, tuple):
        return tuple(strip_ts(x) for x in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if f.name in ("ts", "first_ts"):
                changes[f.name] = 0.0
            elif dataclasses.is_dataclass(v) or isinstance(v, (list, tuple)):
                changes[f.name] = strip_ts(v)
        return dataclasses.replace(obj, **changes) if changes else obj
    return obj


GREETING = b"220 mx.example.org ESMTP ready\r\n"
EHLO_REPLY = (b"250-mx.example.org Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
              b"250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250-STARTTLS\r\n"
              b"250-AUTH PLAIN LOGIN CRAM-MD5\r\n250 ENHANCEDSTATUSCODES\r\n")
