"""The lab's SMTP server: aiosmtpd with a handler that can reject recipients,
and optionally STARTTLS and AUTH.

    python -m sensor.lab.server --listen 192.0.2.1 --port 25 --reject-rcpt 'spamtrap@' --journal FILE \\
        [--tls-cert CERT --tls-key KEY] [--auth]

Every connection, STARTTLS, AUTH attempt, accepted message and rejected
recipient is appended to the journal as one JSON line, so tests and the demo
can tell what really reached the server. Prints "ready" on stdout once it
listens.

--auth offers AUTH PLAIN and LOGIN (on plain text too: the lab wants to see
them on the wire) and accepts one fixed lab account, LAB_USER / LAB_PASSWORD;
other credentials get 535.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import signal
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

LAB_USER = "labuser"
LAB_PASSWORD = "lab-password"


class JournalHandler:
    def __init__(self, journal_path: str | None, reject_rcpt: str | None):
        self.journal = open(journal_path, "a", buffering=1) if journal_path else None
        self.reject_rcpt = re.compile(reject_rcpt, re.I) if reject_rcpt else None

    def record(self, **entry) -> None:
        if self.journal:
            self.journal.write(json.dumps(entry) + "\n")

    def handle_STARTTLS(self, server, session, envelope) -> bool:
        ssl_object = session.ssl.get("ssl_object") if session.ssl else None
        self.record(kind="starttls", peer=session.peer[0] if session.peer else None,
                    version=ssl_object.version() if ssl_object else None)
        return True

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.reject_rcpt and self.reject_rcpt.search(address):
            self.record(kind="rcpt_rejected", peer=session.peer[0], rcpt=address)
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        entry = dict(kind="message", peer=session.peer[0], mail_from=envelope.mail_from,
                     rcpt_tos=envelope.rcpt_tos, size=len(envelope.content))
        if session.ssl:
            entry["tls"] = True
        if session.authenticated:
            entry["auth"] = session.auth_data.login.decode("utf-8", "replace")
        self.record(**entry)
        return "250 2.0.0 OK: queued"


class LabAuthenticator:
    """aiosmtpd authenticator: the one lab account, everything journalled."""

    def __init__(self, handler: JournalHandler, user: str = LAB_USER, password: str = LAB_PASSWORD):
        self.handler, self.user, self.password = handler, user.encode(), password.encode()

    def __call__(self, server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login == self.user and auth_data.password == self.password)
        login = auth_data.login.decode("utf-8", "replace") if isinstance(auth_data, LoginPassword) else None
        self.handler.record(kind="auth", peer=session.peer[0] if session.peer else None, mechanism=mechanism,
                            login=login, success=ok, tls=bool(session.ssl))
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


class JournalSMTP(SMTP):
    def connection_made(self, transport):
        upgrade = self._original_transport is not None  # called again after the STARTTLS handshake
        super().connection_made(transport)
        if not upgrade:
            peer = transport.get_extra_info("peername")
            self.event_handler.record(kind="connection", peer=peer[0] if peer else None)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def smtp_factory(args, handler: JournalHandler):
    options = dict(hostname=args.hostname, enable_SMTPUTF8=True)
    if args.tls_cert:
        options["tls_context"] = tls_context(args.tls_cert, args.tls_key)
    if args.auth:
        options.update(authenticator=LabAuthenticator(handler), auth_require_tls=False)
    return lambda: JournalSMTP(handler, **options)


async def serve(args) -> None:
    handler = JournalHandler(args.journal, args.reject_rcpt)
    factory = smtp_factory(args, handler)  # a bad certificate fails here, before "ready"
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, host=args.listen, port=args.port)
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
    parser.add_argument("--tls-cert", help="PEM certificate: offer STARTTLS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--auth", action="store_true",
                        help=f"offer AUTH PLAIN/LOGIN, also without TLS; accepts {LAB_USER} / {LAB_PASSWORD}")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    # aiosmtpd logs every session at INFO; warnings and errors are worth keeping
    logging.basicConfig(level=logging.WARNING, format="labserver %(levelname)s %(name)s: %(message)s")
    # aiosmtpd itself sets the deprecated Session.login_data on every AUTH
    logging.getLogger("mail.log").addFilter(lambda record: "login_data is deprecated" not in record.getMessage())
    try:
        asyncio.run(serve(args))
    except (OSError, ssl.SSLError) as exc:
        print(f"labserver: cannot start: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
