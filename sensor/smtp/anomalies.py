"""Stable anomaly names of the SMTP dissector.

Names are part of the output schema: never rename one.  Where Suricata's SMTP
decoder events (``src/app-layer-smtp.c``, ``smtp_decoder_event_table``) mean the
same thing, the same name is used; the others are ours.  ``SmtpAnomaly.detail``
carries the specifics (which pattern, which limit, which reading was followed).
"""

from __future__ import annotations

__all__ = ["ALL", "SURICATA", "excerpt"]

# --- Suricata's names, same meaning -------------------------------------------
#: a server line that is not ``[2-5]dd[ -]text`` (or a multi-line reply whose
#: lines disagree on the code).
INVALID_REPLY = "INVALID_REPLY"
#: a reply with no command waiting for it.
UNABLE_TO_MATCH_REPLY_WITH_REQUEST = "UNABLE_TO_MATCH_REPLY_WITH_REQUEST"
MAX_COMMAND_LINE_LEN_EXCEEDED = "MAX_COMMAND_LINE_LEN_EXCEEDED"
MAX_REPLY_LINE_LEN_EXCEEDED = "MAX_REPLY_LINE_LEN_EXCEEDED"
#: commands sent ahead of the replies (or message data before the 354) when
#: the server did not offer PIPELINING; decided from the timestamps passed in.
INVALID_PIPELINED_SEQUENCE = "INVALID_PIPELINED_SEQUENCE"
BDAT_CHUNK_LEN_EXCEEDED = "BDAT_CHUNK_LEN_EXCEEDED"
#: the first server reply is not a greeting (220, or 421/554 "not available").
NO_SERVER_WELCOME_MESSAGE = "NO_SERVER_WELCOME_MESSAGE"
#: STARTTLS answered with anything but 220.
TLS_REJECTED = "TLS_REJECTED"
#: DATA answered with anything but 354.
DATA_COMMAND_REJECTED = "DATA_COMMAND_REJECTED"
#: the connection ended (or a gap came) in the middle of a line.
TRUNCATED_LINE = "TRUNCATED_LINE"
#: BDAT whose argument is not ``n`` or ``n LAST``.
INVALID_BDAT = "INVALID_BDAT"
#: a message header that may appear once (From, Date, Subject, ...) appears twice.
DUPLICATE_FIELDS = "DUPLICATE_FIELDS"

SURICATA = frozenset({
    INVALID_REPLY, UNABLE_TO_MATCH_REPLY_WITH_REQUEST, MAX_COMMAND_LINE_LEN_EXCEEDED,
    MAX_REPLY_LINE_LEN_EXCEEDED, INVALID_PIPELINED_SEQUENCE, BDAT_CHUNK_LEN_EXCEEDED,
    NO_SERVER_WELCOME_MESSAGE, TLS_REJECTED, DATA_COMMAND_REJECTED, TRUNCATED_LINE,
    INVALID_BDAT, DUPLICATE_FIELDS,
})

# --- ours: SMTP smuggling (reported when the message ends) ---------------------
#: a line made of a single dot delimited by anything but CRLF on both sides
#: (``<LF>.<LF>``, ``<LF>.<CR><LF>``, ``<CR>.<CR>``, ``<CR><LF>.<LF>``, ...).
#: The dissector follows the strict reading: it is message content.
SMUGGLED_DATA_TERMINATOR = "SMUGGLED_DATA_TERMINATOR"
#: a LF not preceded by CR inside DATA content (strict reading: not a line end).
BARE_LF_IN_DATA = "BARE_LF_IN_DATA"
#: a CR not followed by LF inside DATA content (strict reading: not a line end).
BARE_CR_IN_DATA = "BARE_CR_IN_DATA"
#: a client command line ended with a bare LF (it is still parsed); once per connection.
BARE_LF_COMMAND_LINE = "BARE_LF_COMMAND_LINE"

# --- ours: lost data and resynchronisation --------------------------------------
#: bytes lost in one direction (reassembly gap); detail says how the dissector resynchronised.
CONTENT_GAP = "CONTENT_GAP"
#: a reply that would decide how to read the client's bytes (DATA, AUTH,
#: STARTTLS) was not seen in time; the positive one was assumed.
REPLY_ASSUMED = "REPLY_ASSUMED"
#: at close (or after a server gap), a command never got its reply.
REPLY_NOT_SEEN = "REPLY_NOT_SEEN"
#: after a loss (a client gap in the command phase, an AUTH exchange out of
#: step), client lines were skipped until one looked like a command; detail
#: says how many, never what they held (SASL answers, message content).
CLIENT_LINES_SKIPPED = "CLIENT_LINES_SKIPPED"
TOO_MANY_PENDING_COMMANDS = "TOO_MANY_PENDING_COMMANDS"
#: plaintext client octets queued after STARTTLS that are not a TLS record
#: (the STARTTLS command injection of CVE-2011-0411 and its kin).
STARTTLS_PLAINTEXT_INJECTION = "STARTTLS_PLAINTEXT_INJECTION"
#: the client sent commands before the server greeting (per the timestamps).
CLIENT_SPOKE_BEFORE_GREETING = "CLIENT_SPOKE_BEFORE_GREETING"

# --- ours: transaction order and syntax -------------------------------------------
RCPT_BEFORE_MAIL = "RCPT_BEFORE_MAIL"
DATA_BEFORE_RCPT = "DATA_BEFORE_RCPT"
#: MAIL while a transaction is open (no RSET, no end of message in between).
NESTED_MAIL = "NESTED_MAIL"
#: MAIL without ``FROM:``, RCPT without ``TO:``.
INVALID_MAIL_SYNTAX = "INVALID_MAIL_SYNTAX"
#: an address not enclosed in ``<...>`` (``MAIL FROM: a@b``); the address is still extracted.
MISSING_ANGLE_BRACKETS = "MISSING_ANGLE_BRACKETS"
#: an address without ``@domain`` (``RCPT TO: backup``), other than ``<postmaster>``.
ADDRESS_WITHOUT_DOMAIN = "ADDRESS_WITHOUT_DOMAIN"
#: an ESMTP parameter that is not ``KEYWORD[=value]``.
INVALID_ESMTP_PARAMETER = "INVALID_ESMTP_PARAMETER"
UNKNOWN_COMMAND = "UNKNOWN_COMMAND"

# --- ours: limits ------------------------------------------------------------------
TOO_MANY_RECIPIENTS = "TOO_MANY_RECIPIENTS"
#: past SmtpLimits.invalid_transactions: the connection is no longer parsed.
TOO_MANY_INVALID_TRANSACTIONS = "TOO_MANY_INVALID_TRANSACTIONS"
#: past SmtpLimits.unknown_commands: the connection is no longer parsed.
TOO_MANY_UNKNOWN_COMMANDS = "TOO_MANY_UNKNOWN_COMMANDS"
DATA_LINE_TOO_LONG = "DATA_LINE_TOO_LONG"
HEADER_SECTION_TOO_LONG = "HEADER_SECTION_TOO_LONG"
REPLY_TOO_MANY_LINES = "REPLY_TOO_MANY_LINES"
#: the message is larger than the SIZE the server advertised or the client declared.
MESSAGE_SIZE_EXCEEDED = "MESSAGE_SIZE_EXCEEDED"

#: a bug in the dissector caught at its boundary; parsing of the connection stops.
INTERNAL_ERROR = "INTERNAL_ERROR"

ALL = frozenset(
    value for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, str)
)

_EXCERPT = 64   # characters of wire text quoted in a detail


def excerpt(text: str | bytes) -> str:
    """Wire text as quoted in a detail: decoded, cut to 64 characters."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    return text if len(text) <= _EXCERPT else text[:_EXCERPT] + "..."
