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

__all__ = ["SmtpLimits"]


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
