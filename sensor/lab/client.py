"""The lab's BDAT client: one SMTP session that sends its message with
CHUNKING (RFC 3030), which neither swaks nor smtplib can do.

    python -m sensor.lab.client --server 192.0.2.25 --from a@example.org --to user@lab.example \\
        --chunk-size 100 [--zero-last] [--pipeline] [--expect-reject spam@lab.example]

It speaks EHLO, (STARTTLS,) MAIL, RCPT, then the message as BDAT chunks: every
chunk but the last as ``BDAT n``, the last one as ``BDAT n LAST``, or with
--zero-last all chunks as ``BDAT n`` followed by ``BDAT 0 LAST``; then QUIT.
With --pipeline, MAIL, the RCPTs and all BDAT commands with their data go out
in one write and the replies are read afterwards, in order (RFC 2920 and RFC
3030 allow it). Every reply is read whole (multi-line replies included) and
checked; the transcript goes to stdout, swaks-style ("->" client, "<-"
server, "<**" an unexpected reply, "~>"/"<~" inside TLS).

Exit status: 0 when every reply was the expected one, 1 on an unexpected
reply, 2 on a connection, TLS or protocol error (or a timeout).
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field
from email.utils import formatdate, make_msgid

EXIT_OK, EXIT_UNEXPECTED, EXIT_ERROR = 0, 1, 2


class UnexpectedReply(Exception):
    pass


class ProtocolError(Exception):
    pass


@dataclass
class Reply:
    code: int
    lines: list[str]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return " | ".join(f"{self.code} {line}".rstrip() for line in self.lines)


@dataclass
class Client:
    sock: socket.socket
    out: object = sys.stdout
    tls: bool = False
    _buffer: bytearray = field(default_factory=bytearray)

    # ------------------------------------------------------------ transcript

    def _show(self, prefix: str, text: str) -> None:
        if self.tls:
            prefix = prefix.replace("-", "~")
        for line in text.split("\n"):
            print(f"{prefix} {line}", file=self.out, flush=True)

    # ------------------------------------------------------------ wire

    def send(self, data: bytes, shown: str | None = None) -> None:
        self.sock.sendall(data)
        self._show(" ->", shown if shown is not None else data.decode("utf-8", "replace").rstrip("\r\n"))

    def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end + 1])
                del self._buffer[:end + 1]
                return line
            if len(self._buffer) > 4096:
                raise ProtocolError(f"reply line longer than 4096 bytes: {bytes(self._buffer[:80])!r}...")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ProtocolError("the server closed the connection"
                                    + (f" (unterminated: {bytes(self._buffer)!r})" if self._buffer else ""))
            self._buffer += chunk

    def reply(self, expect: tuple[int, ...] | None, what: str) -> Reply:
        """One whole reply; UnexpectedReply when its code is not in expect."""
        code, lines = None, []
        while True:
            raw = self._line()
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
                raise ProtocolError(f"malformed reply line to {what}: {line!r}")
            if code is None:
                code = int(line[:3])
            elif int(line[:3]) != code:
                raise ProtocolError(f"reply code changed inside a multi-line reply to {what}: {line!r}")
            lines.append(line[4:])
            last = len(line) == 3 or line[3] == " "
            good = expect is None or code in expect
            self._show("<- " if good else "<**", line)
            if last:
                break
        result = Reply(code, lines)
        if expect is not None and code not in expect:
            raise UnexpectedReply(f"{what}: expected {'/'.join(map(str, expect))}, got {result}")
        return result

    def command(self, line: str, expect: tuple[int, ...], what: str | None = None) -> Reply:
        self.send(line.encode() + b"\r\n")
        return self.reply(expect, what or line)

    def starttls(self, server_name: str) -> None:
        self.command("STARTTLS", (220,))
        if self._buffer:
            raise ProtocolError("the server sent data after 220 to STARTTLS (response injection)")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the lab's certificates are self-made
        try:
            self.sock = context.wrap_socket(self.sock, server_hostname=server_name)
        except (ssl.SSLError, OSError) as exc:
            raise ProtocolError(f"TLS handshake failed: {exc}") from None
        self.tls = True
        self._show("===", f"TLS started with cipher {self.sock.version()}:{self.sock.cipher()[0]}")


def ehlo_keywords(reply: Reply) -> dict[str, str]:
    """EHLO extensions, keyword (upper case) -> parameters."""
    keywords = {}
    for line in reply.lines[1:]:
        word, _, params = line.partition(" ")
        keywords[word.upper()] = params
    return keywords


def make_message(args) -> bytes:
    if args.data_file:
        data = sys.stdin.buffer.read() if args.data_file == "-" else open(args.data_file, "rb").read()
    else:
        body = args.body if args.body is not None else "This is a test mailing sent with BDAT.\n"
        headers = [
            f"Date: {formatdate(localtime=False)}",
            f"From: {args.mail_from}",
            f"To: {', '.join(args.to)}",
            f"Subject: {args.subject}",
            f"Message-Id: {make_msgid(domain='client.lab.example')}",
            "X-Mailer: sensor.lab.client",
        ]
        data = ("\n".join(headers) + "\n\n" + body).encode()
        if args.size:
            filler = b"\n" + b"\n".join(b"%06d %s" % (n, b"x" * 70) for n in range(args.size // 78 + 1))
            data += filler[:max(0, args.size - len(data))]
    if not args.raw:
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not data.endswith(b"\r\n"):
            data += b"\r\n"
    return data


def split_chunks(data: bytes, chunk_size: int | None, chunks: int | None) -> list[bytes]:
    if chunks:
        chunk_size = max(1, -(-len(data) // chunks))
    if not chunk_size or chunk_size >= len(data):
        return [data]
    return [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)]


def bdat_plan(data: bytes, args) -> list[tuple[str, bytes]]:
    """(command line, chunk) pairs in the order they are sent."""
    parts = split_chunks(data, args.chunk_size, args.chunks)
    plan = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1 and not args.zero_last
        plan.append((f"BDAT {len(part)}" + (" LAST" if last else ""), part))
    if args.zero_last:
        plan.append(("BDAT 0 LAST", b""))
    return plan


def transaction(client: Client, args, message: bytes) -> str:
    """MAIL, RCPT, BDAT...; returns the final reply's text."""
    expect_reject = {a.lower() for a in args.expect_reject}
    accepted = [a for a in args.to if a.lower() not in expect_reject]
    rcpt_expect = {a: ((550, 551, 552, 553, 554) if a.lower() in expect_reject else (250, 251)) for a in args.to}
    # with no valid recipient Postfix answers the first BDAT with 554 and the
    # pipelined ones after it with 551 ("Discarded ... after earlier error")
    bdat_expect = (250,) if accepted else (503, 551, 554)
    mail = f"MAIL FROM:<{args.mail_from}>" + (f" SIZE={len(message)}" if args.size_param else "")
    plan = bdat_plan(message, args)
    if args.pipeline:
        batch = [mail.encode() + b"\r\n"] + [f"RCPT TO:<{a}>\r\n".encode() for a in args.to]
        shown = [mail] + [f"RCPT TO:<{a}>" for a in args.to]
        for line, part in plan:
            batch += [line.encode() + b"\r\n", part]
            shown += [line, f"<{len(part)} octets of chunk data>"]
        client.send(b"".join(batch), shown="\n".join(shown))
        client.reply((250,), "MAIL")
        for address in args.to:
            client.reply(rcpt_expect[address], f"RCPT TO:<{address}>")
        final = None
        for line, _ in plan:
            final = client.reply(bdat_expect, line)
    else:
        client.command(mail, (250,))
        for address in args.to:
            client.command(f"RCPT TO:<{address}>", rcpt_expect[address])
        final = None
        for line, part in plan:
            client.send(line.encode() + b"\r\n" + part, shown=f"{line}\n<{len(part)} octets of chunk data>")
            final = client.reply(bdat_expect, line)
            if final.code != 250:
                break
    if final.code != 250 and not accepted:
        # some servers keep the transaction open after a failed BDAT
        client.command("RSET", (250,))
    return final.text


def run(args, out=sys.stdout) -> int:
    message = make_message(args)
    try:
        sock = socket.create_connection((args.server, args.port), timeout=args.timeout,
                                        source_address=(args.source, 0) if args.source else None)
    except OSError as exc:
        print(f"*** cannot connect to {args.server}:{args.port}: {exc}", file=out)
        return EXIT_ERROR
    client = Client(sock, out=out)
    print(f"=== connected to {args.server}:{args.port}", file=out, flush=True)
    try:
        client.reply((220,), "greeting")
        keywords = ehlo_keywords(client.command(f"EHLO {args.helo}", (250,)))
        if args.starttls:
            if "STARTTLS" not in keywords:
                raise UnexpectedReply("the server does not advertise STARTTLS")
            client.starttls(args.server)
            keywords = ehlo_keywords(client.command(f"EHLO {args.helo}", (250,)))
        if "CHUNKING" not in keywords and not args.force:
            raise UnexpectedReply("the server does not advertise CHUNKING (--force sends BDAT anyway)")
        if args.pipeline and "PIPELINING" not in keywords and not args.force:
            raise UnexpectedReply("the server does not advertise PIPELINING (--force pipelines anyway)")
        started = time.monotonic()
        for number in range(args.messages):
            if number:
                client.command("RSET", (250,))
            final = transaction(client, args, message)
            print(f"=== message {number + 1}: {final}", file=out, flush=True)
        client.command("QUIT", (221,))
        print(f"=== done in {time.monotonic() - started:.3f} s", file=out, flush=True)
        return EXIT_OK
    except UnexpectedReply as exc:
        print(f"*** unexpected reply: {exc}", file=out, flush=True)
        try:  # replies to pipelined commands may still be on their way: read up to the 221
            client.send(b"QUIT\r\n")
            client.sock.settimeout(min(args.timeout, 2.0))
            while client.reply(None, "QUIT").code != 221:
                pass
        except (OSError, ProtocolError):
            pass
        return EXIT_UNEXPECTED
    except (OSError, ProtocolError) as exc:  # socket.timeout is an OSError
        print(f"*** {type(exc).__name__}: {exc}", file=out, flush=True)
        return EXIT_ERROR
    finally:
        client.sock.close()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True, help="server address (IPv4 or IPv6)")
    parser.add_argument("--port", type=int, default=25)
    parser.add_argument("--source", help="local address to connect from")
    parser.add_argument("--helo", default="client.lab.example")
    parser.add_argument("--from", dest="mail_from", default="alice@example.org")
    parser.add_argument("--to", action="append", help="recipient (repeatable); default user@lab.example")
    parser.add_argument("--expect-reject", action="append", default=[],
                        help="a recipient (also given with --to) that must be refused with 55x")
    parser.add_argument("--subject", default="BDAT test")
    parser.add_argument("--body", help="message body (headers are made up around it)")
    parser.add_argument("--size", type=int, default=0, help="pad the generated message to about this size")
    parser.add_argument("--data-file", help="send this file as the whole message ('-' = stdin)")
    parser.add_argument("--raw", action="store_true", help="send the message bytes as they are (no CRLF fixing)")
    parser.add_argument("--chunk-size", type=int, help="octets per BDAT chunk (default: one chunk)")
    parser.add_argument("--chunks", type=int, help="split the message into this many chunks instead")
    parser.add_argument("--zero-last", action="store_true", help="end with 'BDAT 0 LAST' instead of 'BDAT n LAST'")
    parser.add_argument("--pipeline", action="store_true", help="MAIL, RCPT and all BDATs in one write")
    parser.add_argument("--size-param", action="store_true", help="announce SIZE= in MAIL FROM")
    parser.add_argument("--starttls", action="store_true", help="STARTTLS before MAIL (certificate not checked)")
    parser.add_argument("--messages", type=int, default=1, help="transactions in the one session")
    parser.add_argument("--force", action="store_true", help="BDAT/pipeline even when not advertised")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per socket operation")
    args = parser.parse_args(argv)
    args.to = args.to or ["user@lab.example"]
    missing = {a.lower() for a in args.expect_reject} - {a.lower() for a in args.to}
    if missing:
        parser.error(f"--expect-reject names addresses not given with --to: {sorted(missing)}")
    if args.chunk_size is not None and args.chunk_size < 1 or args.chunks is not None and args.chunks < 1:
        parser.error("--chunk-size and --chunks must be at least 1")
    return args


def main(argv=None) -> None:
    sys.exit(run(parse_args(argv)))


if __name__ == "__main__":
    main()
