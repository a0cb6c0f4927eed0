"""Sans-IO SMTP dissector: bytes in, typed events out (the model is h11).

Modules, one job each:

* :mod:`.connection`: :class:`SMTPConnection`, the state machine (read its docstring first):
  reading the client, the modes, what each command and each reply does.
* :mod:`.replies`: the server's octets read into replies; reply syntax and EHLO keywords.
* :mod:`.pending`: commands and replies waiting for each other, resync after a server gap.
* :mod:`.transaction`: the transactions, their numbering and their Transaction events.
* :mod:`.events`: the event dataclasses.
* :mod:`.limits`: :class:`SmtpLimits`, every limit with its default.
* :mod:`.anomalies`: stable anomaly names.
* :mod:`.lines`, :mod:`.address`, :mod:`.dotdata`, :mod:`.message`, :mod:`.headers`:
  line framing, MAIL/RCPT parameters, DATA framing and smuggling evidence,
  message assembly, header extraction.
"""

from sensor.smtp import anomalies
from sensor.smtp.connection import KNOWN_VERBS, SMTPConnection
from sensor.smtp.events import (
    CLIENT,
    SERVER,
    AuthEvent,
    Command,
    Event,
    Greeting,
    LenientTerminator,
    MailContent,
    MailFrom,
    MessageEnd,
    MessageHeaders,
    RcptTo,
    Reply,
    ServerCapabilities,
    SmtpAnomaly,
    StartTLS,
    Step,
    Transaction,
)
from sensor.smtp.limits import SmtpLimits

__all__ = [
    "SMTPConnection", "SmtpLimits", "anomalies", "KNOWN_VERBS", "CLIENT", "SERVER",
    "Event", "Greeting", "Command", "Reply", "ServerCapabilities", "MailFrom", "RcptTo",
    "MailContent", "MessageHeaders", "LenientTerminator", "MessageEnd", "Step", "Transaction", "AuthEvent",
    "StartTLS", "SmtpAnomaly",
]
