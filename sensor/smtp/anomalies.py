"""Stable anomaly names of the SMTP dissector.

Names are part of the output schema.  A name of Suricata's SMTP decoder events
(``src/app-layer-smtp.c``, ``smtp_decoder_event_table``) means exactly what it
means there; what Suricata does not tell has a name of our own.
``SmtpAnomaly.detail`` carries the specifics (which pattern, which limit, which
reading was followed), in one form: wire text through :func:`excerpt`.
"""

from __future__ import annotations

__all__ = ["ALL", "SURICATA", "MIME", "excerpt"]

# --- Suricata's names, same meaning -------------------------------------------
#: a server line that is not ``[2-5]dd[ -]text``, a reply whose code is not in
#: Suricata's table (``REPLY_CODES``), or a first reply that is not 220.
INVALID_REPLY = "INVALID_REPLY"
#: a reply with no command waiting for it.
UNABLE_TO_MATCH_REPLY_WITH_REQUEST = "UNABLE_TO_MATCH_REPLY_WITH_REQUEST"
MAX_COMMAND_LINE_LEN_EXCEEDED = "MAX_COMMAND_LINE_LEN_EXCEEDED"
MAX_REPLY_LINE_LEN_EXCEEDED = "MAX_REPLY_LINE_LEN_EXCEEDED"
#: client octets sent behind a STARTTLS, or behind a DATA to a server that did
#: not offer PIPELINING, before its reply (Suricata reads them as commands
#: queued behind it: RFC 2920 puts either last in a group).
INVALID_PIPELINED_SEQUENCE = "INVALID_PIPELINED_SEQUENCE"
BDAT_CHUNK_LEN_EXCEEDED = "BDAT_CHUNK_LEN_EXCEEDED"
#: the client sent a command before the server's first reply (per the timestamps).
NO_SERVER_WELCOME_MESSAGE = "NO_SERVER_WELCOME_MESSAGE"
#: STARTTLS answered with anything but 220.
TLS_REJECTED = "TLS_REJECTED"
#: DATA answered with anything but 354.
DATA_COMMAND_REJECTED = "DATA_COMMAND_REJECTED"
#: a command or reply line longer than ``SmtpLimits.line_buffer`` (Suricata's
#: line buffer, 4096 octets): the rest of it is not read.
TRUNCATED_LINE = "TRUNCATED_LINE"
#: BDAT whose argument is not ``n`` or ``n LAST``.
INVALID_BDAT = "INVALID_BDAT"
#: a second HELO/EHLO in the session, or a second MAIL in a transaction.
DUPLICATE_FIELDS = "DUPLICATE_FIELDS"

#: Suricata's table of reply codes: a reply with another is INVALID_REPLY.
REPLY_CODES = frozenset((211, 214, 220, 221, 235, 250, 251, 252, 334, 354, 421, 450, 451, 452, 455,
                         500, 501, 502, 503, 504, 550, 551, 552, 553, 554, 555))

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

# --- ours: syntax and order ---------------------------------------------------------
#: a message header that may appear once (From, Date, Subject, ...) appears twice.
DUPLICATE_HEADER = "DUPLICATE_HEADER"
#: a line of a multi-line reply with another code than the reply's first line.
REPLY_CODE_MISMATCH = "REPLY_CODE_MISMATCH"
#: commands sent ahead of the replies when the server did not offer
#: PIPELINING, or behind a HELO/EHLO before its reply (RFC 2920); decided
#: from the timestamps passed in; once.
PIPELINING_NOT_OFFERED = "PIPELINING_NOT_OFFERED"
#: the connection ended (or a gap came) inside a line: it is not read.
INCOMPLETE_LINE = "INCOMPLETE_LINE"

# --- ours: lost data and resynchronisation --------------------------------------
#: bytes lost in one direction (reassembly gap); detail says how the dissector resynchronised.
CONTENT_GAP = "CONTENT_GAP"
#: a reply that would decide how to read the client's bytes (DATA, AUTH,
#: STARTTLS) was not seen in time; the positive one was assumed.
REPLY_ASSUMED = "REPLY_ASSUMED"
#: at close (or after a server gap), a command never got its reply.
REPLY_NOT_SEEN = "REPLY_NOT_SEEN"
#: a reply that only one command gets (354: DATA) came while others waited
#: before it: the replies had fallen behind (a multi-line reply that never
#: ended, a reply lost); those commands are taken as unanswered, so the
#: message is read as a message, never as commands.
REPLY_REALIGNED = "REPLY_REALIGNED"
#: after a loss (a client gap in the command phase, an AUTH exchange out of
#: step), client lines were skipped until one looked like a command; detail
#: says how many, never what they held (SASL answers, message content).
CLIENT_LINES_SKIPPED = "CLIENT_LINES_SKIPPED"
TOO_MANY_PENDING_COMMANDS = "TOO_MANY_PENDING_COMMANDS"
#: plaintext client octets queued after STARTTLS that are not a TLS record
#: (the STARTTLS command injection of CVE-2011-0411 and its kin).
STARTTLS_PLAINTEXT_INJECTION = "STARTTLS_PLAINTEXT_INJECTION"

# --- ours: transaction order and syntax -------------------------------------------
RCPT_BEFORE_MAIL = "RCPT_BEFORE_MAIL"
DATA_BEFORE_RCPT = "DATA_BEFORE_RCPT"
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

# --- Suricata's MIME decoder events, same meaning (raised by sensor.mime) -------
# Each is raised at most once per message; its limit is a field of
# sensor.smtp.limits.MimeLimits (named in brackets).
#: a line of the message longer than 998 octets, CRLF excluded [line].
MIME_LONG_LINE = "MIME_LONG_LINE"
#: a line of a base64 or quoted-printable body longer than 76 octets [encoded_line].
MIME_LONG_ENC_LINE = "MIME_LONG_ENC_LINE"
#: a header name longer than 75 octets, in the message or an entity [header_name].
MIME_LONG_HEADER_NAME = "MIME_LONG_HEADER_NAME"
#: a header value longer than 2000 octets once unfolded [header_value].
MIME_LONG_HEADER_VALUE = "MIME_LONG_HEADER_VALUE"
#: a multipart boundary longer than 254 octets [boundary].
MIME_LONG_BOUNDARY = "MIME_LONG_BOUNDARY"
#: a file name (Content-Disposition filename, Content-Type name) longer than
#: 255 characters; it is cut there [filename].
MIME_LONG_FILENAME = "MIME_LONG_FILENAME"
#: base64 body text with a character outside the base64 alphabet (space and
#: line ends aside); the rest is still decoded.
MIME_INVALID_BASE64 = "MIME_INVALID_BASE64"
#: quoted-printable body text with "=" not followed by two upper-case hex
#: digits or the line end.
MIME_INVALID_QP = "MIME_INVALID_QP"
#: the MIME structure could not be followed further (nesting past [depth],
#: more than [entities] entities); detail says which.
MIME_PARSE_FAILED = "MIME_PARSE_FAILED"

MIME = frozenset({
    MIME_LONG_LINE, MIME_LONG_ENC_LINE, MIME_LONG_HEADER_NAME, MIME_LONG_HEADER_VALUE,
    MIME_LONG_BOUNDARY, MIME_LONG_FILENAME, MIME_INVALID_BASE64, MIME_INVALID_QP,
    MIME_PARSE_FAILED,
})
SURICATA = SURICATA | MIME

ALL = frozenset(
    value for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, str)
)

_EXCERPT = 64   # characters of wire text quoted in a detail
#: control characters as a detail shows them: \xNN (octets that are not
#: UTF-8 are already \xNN from the decoding), so a detail is one printable line
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def excerpt(text: str | bytes) -> str:
    """Wire text as quoted in a detail: decoded (octets that are not UTF-8
    as ``\\xNN``), control characters as ``\\xNN``, cut to 64 characters."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    if len(text) > _EXCERPT:
        text = text[:_EXCERPT] + "..."
    return text.translate(_CONTROLS)
