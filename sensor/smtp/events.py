"""Events of the SMTP dissector: frozen, slotted dataclasses.

Every event has ``ts``: the timestamp passed to the call that produced it (the
moment the dissector could decide it), never a clock read.  Strings decoded
from the wire use UTF-8 with ``backslashreplace``, so they are always valid
text (JSON-safe); raw bytes are only found in :class:`MailContent`.

Pseudo-verbs (Zeek's): a reply to the greeting answers ``">"``, the reply
after a message sent with DATA answers ``"."``, a reply to a SASL response
line answers ``"AUTH_ANSWER"``.

``trans_depth`` (commands, replies, MAIL/RCPT addresses, message content and
end, transactions) numbers the transaction an event belongs to, as the
Transaction event of that transaction does (1-based):

* a command: the transaction under way, or if none the next one to begin
  (RSET, HELO/EHLO and QUIT carry the one they end; a MAIL inside a
  transaction that had its MAIL carries the one it begins);
* a reply: a reply to a step of a transaction (MAIL, RCPT, DATA, BDAT, the
  end of a DATA message) that transaction; any other, the transaction under
  way once its command took effect, or the next one (the reply to RSET
  carries the next one).  A transaction is emitted once its steps are
  answered, so the reply to another command sent inside it (NOOP) may come
  after it;
* MailFrom, RcptTo: the transaction their command is a step of;
* MailContent, MessageHeaders, MessageEnd: the transaction of the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sensor.smtp import auth as _auth
from sensor.stream.direction import CLIENT, SERVER

__all__ = [
    "Event", "Greeting", "Command", "Reply", "ServerCapabilities", "MailFrom",
    "RcptTo", "MailContent", "MessageHeaders", "MessageEnd", "Step", "Transaction",
    "AuthEvent", "StartTLS", "SmtpAnomaly", "CLIENT", "SERVER",
]

# CLIENT and SERVER (sensor.stream.direction) name the direction of an
# anomaly and of SMTPConnection.gap(): the same two the reassembler delivers.


@dataclass(frozen=True, slots=True)
class Event:
    ts: float


@dataclass(frozen=True, slots=True)
class Command(Event):
    """One client command line."""
    verb: str            #: upper-cased verb ("" for an empty line)
    raw_verb: str        #: verb as sent
    parameter: str       #: rest of the line after the first space, raw; for AUTH the mechanism only
    bare_lf: bool = False     #: the line ended with a bare LF instead of CRLF
    truncated: bool = False   #: the line exceeded SmtpLimits.command_line; the prefix was parsed
    known: bool = True        #: the verb is a known SMTP verb
    trans_depth: int = field(kw_only=True)   #: the transaction it belongs to (see above)


@dataclass(frozen=True, slots=True)
class Reply(Event):
    """One complete server reply (all lines of a multi-line reply)."""
    code: int
    enhanced: str | None          #: RFC 3463 enhanced status code of the first line ("5.7.1")
    lines: tuple[str, ...]        #: text of every line, code and separator removed
    command: str | None           #: verb of the command answered (or ">", ".", "AUTH_ANSWER"); None if unmatched
    request: Command | None       #: the command answered, if any (None for ">" and ".")
    multiline: bool = False       #: the reply had continuation lines ("250-...")
    intermediate: bool = False    #: 3xx: the server waits for more from the client (334, 354)
    trans_depth: int = field(kw_only=True)   #: the transaction it belongs to (see above)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass(frozen=True, slots=True)
class Greeting(Event):
    """The server's first reply."""
    code: int
    available: bool               #: False for 421/554 (service not available) or any non-220
    lines: tuple[str, ...]
    domain: str                   #: first word of the first line ("" if none)


@dataclass(frozen=True, slots=True)
class ServerCapabilities(Event):
    """Extensions advertised in a positive EHLO reply (RFC 5321 4.1.1.1)."""
    pipelining: bool
    chunking: bool
    starttls: bool
    size: int | None              #: SIZE limit; 0 means no fixed limit; None if not advertised
    eightbitmime: bool
    smtputf8: bool
    auth_mechanisms: tuple[str, ...]
    keywords: tuple[str, ...]     #: every extension line as sent, in order


@dataclass(frozen=True, slots=True)
class MailFrom(Event):
    """Parsed MAIL FROM."""
    address: str | None           #: without brackets; "" for the null sender <>; None if none found
    params: tuple[tuple[str, str | None], ...]   #: ESMTP parameters, keyword upper-cased
    raw: str                      #: the raw parameter of the command
    trans_depth: int = field(kw_only=True)   #: the transaction of the MAIL


@dataclass(frozen=True, slots=True)
class RcptTo(Event):
    """Parsed RCPT TO."""
    address: str | None
    params: tuple[tuple[str, str | None], ...]
    raw: str
    trans_depth: int = field(kw_only=True)   #: the transaction of the RCPT


@dataclass(frozen=True, slots=True)
class MailContent(Event):
    """A chunk of message content (DATA already dot-unstuffed, or BDAT bytes).

    Chunks are exactly ``SmtpLimits.content_chunk`` octets except the last of a
    message, and only start after the message's :class:`MessageHeaders`, so
    the sequence does not depend on how the stream was segmented.
    """
    data: bytes
    offset: int                   #: offset of ``data`` in the message content
    trans_depth: int = field(kw_only=True)   #: the transaction of the message


@dataclass(frozen=True, slots=True)
class MessageHeaders(Event):
    """Selected header fields of a message (parsed with the ``email`` package)."""
    date: str | None = None
    from_: str | None = None
    to: tuple[str, ...] = ()      #: every To field value, in order
    cc: tuple[str, ...] = ()
    reply_to: str | None = None
    message_id: str | None = None
    in_reply_to: str | None = None
    subject: str | None = None    #: RFC 2047 decoded
    x_originating_ip: str | None = None
    received: tuple[str, ...] = ()   #: every Received value, top (newest) first
    user_agent: str | None = None    #: User-Agent, else X-Mailer (Zeek's user_agent)
    x_mailer: str | None = None
    truncated: bool = False       #: the header section exceeded SmtpLimits.header_section
    complete: bool = True         #: the blank line ending the header section was seen
    trans_depth: int = field(kw_only=True)   #: the transaction of the message


@dataclass(frozen=True, slots=True)
class LenientTerminator(Event):
    """A dot line in a message's content that a lenient MTA reads as its end
    (<LF>.<LF>, <CR>.<CR>, ...), when the decoder meets it (one event each,
    the first 32 of a message): the strict reading goes on, but an MTA that
    honours it commits the message there, so a verdict must come now, not at
    the real end (``MessageEnd`` lists them all again)."""
    label: str                    #: e.g. "<LF>.<LF>"
    trans_depth: int = field(kw_only=True)   #: the transaction of the message


@dataclass(frozen=True, slots=True)
class MessageEnd(Event):
    """The end of one message (CRLF.CRLF, BDAT LAST, or the connection's end)."""
    size: int                     #: octets of content after dot-unstuffing
    method: str                   #: "DATA" or "BDAT"
    complete: bool = True         #: False when the connection ended before the end marker
    gap: bool = False             #: content bytes were lost in a gap
    bare_lf: int = 0              #: bare LF seen in DATA content
    bare_cr: int = 0              #: bare CR seen in DATA content
    smuggled_terminators: tuple[str, ...] = ()   #: e.g. ("<LF>.<LF>",), in order of appearance
    trans_depth: int = field(kw_only=True)   #: the transaction of the message


@dataclass(frozen=True, slots=True)
class Step:
    """A MAIL, RCPT, DATA, BDAT or end-of-message exchange of a transaction."""
    verb: str                     #: "MAIL", "RCPT", "DATA", "BDAT" or "." (end of DATA message)
    parameter: str
    code: int | None = None       #: None if no reply was seen
    enhanced: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Transaction(Event):
    """One mail transaction, Zeek smtp.log meaning, plus every step with its reply.

    Emitted when the transaction is over (final reply to the message, RSET,
    an accepted HELO/EHLO, an accepted MAIL inside it, STARTTLS, QUIT or close)
    and every step of it and command it reports has had its reply (or the
    connection closed).
    """
    trans_depth: int              #: 1-based position of the transaction in the connection
    helo: str | None              #: parameter of the last HELO/EHLO
    mailfrom: str | None          #: address of MAIL FROM, without brackets
    rcptto: tuple[str, ...]       #: addresses of every RCPT TO, without brackets
    headers: MessageHeaders | None
    message_size: int | None      #: octets of content, None if no message was sent
    last_reply: str | None        #: "code text" of the last reply it got (a step's or a command's it reports)
    tls: bool                     #: the connection switched to TLS (STARTTLS accepted)
    steps: tuple[Step, ...] = ()
    delivered: bool = False       #: the message got a 2xx final reply
    first_ts: float = 0.0         #: ts of the transaction's first command
    #: messages whose end had its reply before it began (Zeek's trans_depth is this + 1)
    messages_before: int = 0
    #: steps and RCPT addresses past SmtpLimits.transaction_steps: counted, not kept
    steps_omitted: int = 0
    rcptto_omitted: int = 0


@dataclass(frozen=True, slots=True)
class AuthEvent(Event):
    """Outcome of an AUTH exchange.  Credentials never appear in any event."""
    mechanism: str
    success: bool | None          #: None when the exchange was cancelled or never answered
    code: int | None
    rounds: int = 0               #: 334 challenges answered by the client
    cancelled: bool = False       #: the client answered a 334 with "*" (RFC 4954 4)

    @property
    def outcome(self) -> str:
        """success, cancelled, failure, temporary, refused or unanswered (sensor.smtp.auth)."""
        return _auth.outcome(self.code, self.cancelled)


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """STARTTLS got 220: the rest of the flow is encrypted.

    The caller should stop feeding this connection and ask the datapath to
    bypass the flow; any further input is ignored.
    """


@dataclass(frozen=True, slots=True)
class SmtpAnomaly(Event):
    name: str                     #: one of sensor.smtp.anomalies.ALL
    direction: str                #: CLIENT or SERVER
    detail: str = ""
