"""Named limits of the SMTP dissector.

Every limit is a field of :class:`SmtpLimits` with a documented default.  Exceeding
one never raises: the dissector emits the named anomaly given in the comment
and goes on (or, for the two connection budgets, stops parsing the connection
and says so with an anomaly).

Defaults follow aiosmtpd and the RFCs where they exist:

* ``command_line`` 512 octets including CRLF (RFC 5321 4.5.3.1.4, aiosmtpd's
  ``command_size_limit``); beyond it ``MAX_COMMAND_LINE_LEN_EXCEEDED``.
* ``reply_line`` 2048 octets.  RFC 5321 says 512, but real servers (large
  hosted MTAs) send longer 4xx/5xx lines with URLs in them; flagging those
  would be noise, so we are generous.  Beyond it ``MAX_REPLY_LINE_LEN_EXCEEDED``.
* ``data_line`` 1002 octets: 1000 including CRLF (RFC 5321 4.5.3.1.6) plus
  aiosmtpd's slack of 2.  Beyond it ``DATA_LINE_TOO_LONG`` (reported once per
  message, the content is still delivered in full).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SmtpLimits", "MimeLimits"]


@dataclass(frozen=True, slots=True)
class SmtpLimits:
    #: octets of one client command line, CRLF included.
    command_line: int = 512
    #: octets of one server reply line, CRLF included.
    reply_line: int = 2048
    #: octets of a command or reply line past which Suricata's line buffer
    #: gives up on it (TRUNCATED_LINE, beside the MAX_*_LEN_EXCEEDED of the
    #: limits above).
    line_buffer: int = 4096
    #: lines kept in one multi-line reply; more are counted and dropped (REPLY_TOO_MANY_LINES).
    reply_lines: int = 256
    #: octets of one line of DATA content, CRLF included (DATA_LINE_TOO_LONG).
    data_line: int = 1002
    #: RCPT commands per mail transaction (TOO_MANY_RECIPIENTS); all are still parsed.
    recipients: int = 100
    #: transactions with a protocol error (a 500-504 reply, an out-of-order or
    #: malformed MAIL/RCPT/DATA) per connection; past it, parsing stops
    #: (TOO_MANY_INVALID_TRANSACTIONS).
    invalid_transactions: int = 20
    #: unknown verbs per connection; past it, parsing stops (TOO_MANY_UNKNOWN_COMMANDS).
    #: aiosmtpd answers 421 and closes after 20 unrecognised commands.
    unknown_commands: int = 20
    #: largest BDAT chunk accepted without BDAT_CHUNK_LEN_EXCEEDED; the chunk is
    #: still framed (and its bytes delivered) to the announced length.
    bdat_chunk: int = 64 * 1024 * 1024
    #: octets of the message header section handed to the ``email`` parser
    #: (HEADER_SECTION_TOO_LONG); the rest of the message is still delivered.
    header_section: int = 64 * 1024
    #: size of the MailContent chunks: message content is emitted in chunks of
    #: exactly this many octets (the last one shorter), whatever the segmentation.
    content_chunk: int = 64 * 1024
    #: client octets held while waiting for the reply that decides how to read
    #: them (DATA, AUTH, STARTTLS).  Past it the dissector stops waiting and
    #: assumes the positive reply (REPLY_ASSUMED); this is what lets a capture
    #: holding only the client direction be dissected.
    unreplied_client_bytes: int = 256 * 1024
    #: complete server replies held while no client command is known to match
    #: them (the server direction was fed ahead of the client's).  Past it the
    #: oldest is emitted unmatched (UNABLE_TO_MATCH_REPLY_WITH_REQUEST).
    unmatched_replies: int = 64
    #: octets of the lines of those replies (a reply may have 256 lines of
    #: 2048 octets): past it, too, the oldest is emitted unmatched.
    unmatched_reply_octets: int = 64 * 1024
    #: steps (MAIL, RCPT, DATA, BDAT, end of message) and RCPT addresses kept
    #: per transaction (Postfix accepts 1000 recipients by default); past it
    #: each is counted, not kept (the record's ``steps_omitted``,
    #: ``rcptto_omitted``): a transaction's memory and record stay bounded
    #: however many RCPT a client sends.
    transaction_steps: int = 1024
    #: commands waiting for a reply (pipelining depth).  Past it the oldest is
    #: dropped unanswered (TOO_MANY_PENDING_COMMANDS).
    pending_commands: int = 100
    #: anomaly records of one name written per connection (TCP and SMTP
    #: anomalies alike); past it they are counted, and one ANOMALIES_SUPPRESSED
    #: record per name gives the count when the connection ends
    #: (sensor.pipeline).  Listeners (rules) still see every anomaly.
    anomalies_per_name: int = 10


@dataclass(frozen=True, slots=True)
class MimeLimits:
    """Named limits of the MIME parser (``sensor.mime``), each with the
    anomaly that says it was passed.  The first five are Suricata's (its
    ``rust/src/mime/smtp.rs`` constants), with the same meaning; the others
    bound what one message can make the parser hold or do.  Passing one never
    stops the message: the anomaly is emitted once per message and parsing
    goes on (MIME_PARSE_FAILED says which structure was not followed)."""

    #: octets of one line of the message, CRLF excluded (RFC 2045's 998): MIME_LONG_LINE.
    line: int = 998
    #: octets of one line of a base64 or quoted-printable body, CRLF excluded
    #: (RFC 2045's 76): MIME_LONG_ENC_LINE.
    encoded_line: int = 76
    #: octets of a MIME header name (75, plus ":" makes 76): MIME_LONG_HEADER_NAME.
    header_name: int = 75
    #: octets of a MIME header value, unfolded (Suricata's header-value-depth
    #: default); the value is kept to this length: MIME_LONG_HEADER_VALUE.
    header_value: int = 2000
    #: octets of a multipart boundary parameter (RFC 2046 allows 70; Suricata
    #: flags past 254); the boundary is still used: MIME_LONG_BOUNDARY.
    boundary: int = 254
    #: characters of an attachment's file name, kept to this length (Suricata's
    #: token limit): MIME_LONG_FILENAME.
    filename: int = 255
    #: nesting of multipart and message/rfc822 entities; a deeper one is read
    #: as an opaque leaf: MIME_PARSE_FAILED.
    depth: int = 16
    #: entities in one message; past it the rest of the message is not split
    #: into entities (body_md5 and line checks go on): MIME_PARSE_FAILED.
    entities: int = 1000
    #: octets held waiting for a line end; a longer line is read in pieces
    #: (it is also a MIME_LONG_LINE).
    line_buffer: int = 64 * 1024
    #: URLs kept per message (record, ``hooks.url``); more are counted only.
    urls: int = 256
    #: decoded octets of an archive (zip, OOXML) kept to list its members; a
    #: larger archive is hashed but not listed (``members`` is None).
    archive: int = 8 * 1024 * 1024
    #: members listed per archive.
    archive_members: int = 1000
    #: decoded octets at the start of each entity kept for content sniffing
    #: and for rules (``Attachment.head``).
    head: int = 4096
