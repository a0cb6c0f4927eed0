"""The lab's SMTP server: aiosmtpd with a handler that can reject recipients.

    python -m sensor.labserver --listen 192.0.2.1 --port 25 --reject-rcpt 'spamtrap@' --journal FILE

Every connection, accepted message and rejected recipient is appended to the
journal as one JSON line, so tests and the demo can tell what really reached
the server. Prints "ready" on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys

from aiosmtpd.smtp import SMTP


class JournalHandler:
    def __init__(self, journal_path: str | None, reject_rcpt: str | None):
        self.journal = open(journal_path, "a", buffering=1) if journal_path else None
        self.reject_rcpt = re.compile(reject_rcpt, re.I) if reject_rcpt else None

    def record(self, **entry) -> None:
        if self.journal:
            self.journal.write(json.dumps(entry) + "\n")

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.reject_rcpt and self.reject_rcpt.search(address):
            self.record(kind="rcpt_rejected", peer=session.peer[0], rcpt=address)
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.record(kind="message", peer=session.peer[0], mail_from=envelope.mail_from,
                    rcpt_tos=envelope.rcpt_tos, size=len(envelope.content))
        return "250 2.0.0 OK: queued"


class JournalSMTP(SMTP):
    def connection_made(self, transport):
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.event_handler.record(kind="connection", peer=peer[0] if peer else None)


async def serve(args) -> None:
    handler = JournalHandler(args.journal, args.reject_rcpt)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: JournalSMTP(handler, hostname=args.hostname, enable_SMTPUTF8=True),
        host=args.listen, port=args.port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", action="append", required=True, help="address to listen on (repeatable)")
    parser.add_argument("--port", type=int, default=25)
    parser.add_argument("--hostname", default="mx.lab.example")
    parser.add_argument("--journal", help="append one JSON line per connection/message/reject")
    parser.add_argument("--reject-rcpt", help="regular expression: matching recipients get 550")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except OSError as exc:
        print(f"labserver: cannot listen: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
