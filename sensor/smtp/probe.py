"""Is this TCP flow SMTP?  Decided from its first bytes, whatever its port.

Zeek's dynamic protocol detection (``scripts/base/protocols/smtp/dpd.sig``)
enables its SMTP analyzer when both of these match: the responder's payload
``/^[[:space:]]*220[[:space:]-]/`` and the originator's
``/(|.*[\\n\\r])[[:space:]]*([hH][eE][lL][oO]|[eE][hH][lL][oO])/``, within the
first ``dpd_buffer_size`` (1024) bytes.  Suricata's protocol detection
(``SMTPRegisterPatternsForProtocolDetection`` in ``app-layer-smtp.c``) looks
at the client only: ``EHLO``, ``HELO`` or ``QUIT`` in its first four bytes,
any case.  We follow Zeek: both sides, so a client that opens with QUIT, or
any protocol whose client happens to start with those letters, is not taken
for SMTP without a 220 greeting.  ``SmtpProbe`` does what Zeek's signature
does, plus two cases:

* an HTTP CONNECT proxy: the client's first bytes are a ``CONNECT`` request;
  once its header and the proxy's 2xx reply header are complete, what follows
  in each direction is probed the same way (the SMTP session inside the
  tunnel; ``skip`` says how many bytes of each direction the proxy's
  exchange took).  A refused CONNECT (not 2xx) is not SMTP.
* implicit TLS (RFC 8314, SMTP submission on 465): a client whose first bytes
  are a TLS handshake record is not readable SMTP (``tls`` says so): the
  caller counts it; nothing of it can be dissected.

Sans-IO: ``feed(direction, data)`` returns ``UNDECIDED``, ``SMTP`` or
``NOT_SMTP``; the caller keeps the bytes (``held``) and, on ``SMTP``, feeds
them to the dissector from ``skip[direction]`` on.
"""

from __future__ import annotations

import re

from sensor.stream.direction import CLIENT, SERVER

__all__ = ["SmtpProbe", "UNDECIDED", "SMTP", "NOT_SMTP", "PROBE_BYTES", "PROXY_HEADER_MAX"]

UNDECIDED, SMTP, NOT_SMTP = "undecided", "smtp", "not smtp"
#: bytes of each direction looked at (after a proxy's exchange): Zeek's dpd_buffer_size
PROBE_BYTES = 1024
#: bytes an HTTP CONNECT request or its reply header may take
PROXY_HEADER_MAX = 4096

_SPACE = rb"[ \t\r\n\f\v]"
_SERVER = re.compile(rb"\A" + _SPACE + rb"*220[ \t\r\n\f\v-]")
_SERVER_NOT_YET = re.compile(rb"\A" + _SPACE + rb"*(?:2(?:20?)?)?\Z")   # could still become "220 "
_CLIENT = re.compile(rb"(?:\A|[\r\n])" + _SPACE + rb"*(?:HELO|EHLO)", re.IGNORECASE)
_CONNECT = b"CONNECT "
_HTTP_OK = re.compile(rb"\AHTTP/1\.[01] 2[0-9][0-9][ \r]")
_END = b"\r\n\r\n"


class SmtpProbe:
    """The first bytes of one flow, until it is known whether it is SMTP."""

    __slots__ = ("held", "skip", "state", "tls", "tunnel", "_bytes", "_proxy")

    def __init__(self) -> None:
        #: (direction, data, ts) in the order they came, for the dissector
        self.held: list = []
        #: bytes of each direction before the SMTP session (an HTTP CONNECT exchange)
        self.skip = {CLIENT: 0, SERVER: 0}
        self.state = UNDECIDED
        self.tls = False          #: the client began with a TLS handshake (implicit TLS)
        self.tunnel: str | None = None   #: the CONNECT request's target, inside a proxy tunnel
        self._bytes = {CLIENT: b"", SERVER: b""}
        self._proxy = None        # None: not known yet; True: a CONNECT under way; False: none

    def feed(self, direction: str, data: bytes, ts: float = 0.0) -> str:
        if self.state is not UNDECIDED:
            return self.state
        self.held.append((direction, data, ts))
        have = self._bytes[direction]
        limit = PROXY_HEADER_MAX + PROBE_BYTES
        if len(have) < limit:
            self._bytes[direction] = have + data[:limit - len(have)]
        self.state = self._decide()
        return self.state

    def _decide(self) -> str:
        c, s = self._bytes[CLIENT], self._bytes[SERVER]
        if self._proxy is None and c:
            if _CONNECT.startswith(c[:len(_CONNECT)]) and len(c) < len(_CONNECT):
                return UNDECIDED
            self._proxy = c.startswith(_CONNECT)
        if self._proxy:
            verdict = self._connect(c, s)
            if verdict is not None:
                return verdict
            c, s = c[self.skip[CLIENT]:], s[self.skip[SERVER]:]
        if c[:1] == b"\x16" and c[1:2] == b"\x03":        # a TLS record: handshake
            self.tls = True
            return NOT_SMTP
        server = _SERVER.match(s) is not None
        if not server and (len(s) >= PROBE_BYTES or _SERVER_NOT_YET.match(s) is None):
            return NOT_SMTP
        client = _CLIENT.search(c, 0, PROBE_BYTES) is not None
        if not client and len(c) >= PROBE_BYTES:
            return NOT_SMTP
        return SMTP if server and client else UNDECIDED

    def _connect(self, c: bytes, s: bytes) -> str | None:
        """The HTTP CONNECT exchange: None once both headers are complete
        (``skip`` set), else the verdict so far."""
        if self.skip[CLIENT] and self.skip[SERVER]:
            return None
        end_c = c.find(_END)
        if end_c < 0:
            return NOT_SMTP if len(c) >= PROXY_HEADER_MAX else UNDECIDED
        if len(s) >= 13 and _HTTP_OK.match(s) is None:
            return NOT_SMTP                                 # the proxy refused (407, 502, ...)
        end_s = s.find(_END)
        if end_s < 0:
            return NOT_SMTP if len(s) >= PROXY_HEADER_MAX else UNDECIDED
        if _HTTP_OK.match(s) is None:
            return NOT_SMTP
        self.skip[CLIENT], self.skip[SERVER] = end_c + 4, end_s + 4
        target = c[len(_CONNECT):end_c].split(None, 1)
        self.tunnel = target[0].decode("ascii", "backslashreplace") if target else ""
        return None
