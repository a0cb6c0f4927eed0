"""The SMTP connection state machine (sans-IO, in the manner of h11).

Usage::

    conn = SMTPConnection(SmtpLimits())
    for ev in conn.receive_client(data, ts): ...   # octets the client sent
    for ev in conn.receive_server(data, ts): ...   # octets the server sent
    for ev in conn.gap(CLIENT, 1460, ts): ...       # octets lost in one direction
    for ev in conn.close(ts): ...                   # end of the connection

No sockets, no clock, no globals, no logging: every method returns the list of
events it could decide.  Arbitrary input never raises (a dissector bug is
caught at the boundary, reported as an INTERNAL_ERROR anomaly, and the
connection is no longer parsed).

Both directions are fed independently, in any interleaving.  Replies are
matched to commands through a FIFO of commands waiting for their reply (RFC
2920 pipelining); the greeting answers the pseudo-command ``">"``.  Replies
that arrive before the command they answer is known are held (bounded) until
it is.  The client direction is read greedily, except after a command whose
reply decides how to read what follows (DATA: message or commands? AUTH: SASL
answer or command? STARTTLS: TLS or commands?): there the client's octets are
held (bounded) until that reply is known.  Past ``SmtpLimits.unreplied_client_bytes``
(or at close), the positive reply is assumed and REPLY_ASSUMED says so, which
lets a capture holding only the client direction be dissected.

Client modes (``SMTPConnection.state``) and what leads into each:

* ``COMMAND``: start; after a message ends; after a non-354 reply to DATA,
  a final reply to AUTH, a non-220 reply to STARTTLS.
* ``DATA``: 354 reply to DATA.  Only CRLF.CRLF ends it (strict reading).
* ``BDAT``: a valid ``BDAT n [LAST]`` command; for n octets (the reply is
  not needed to frame a chunk, RFC 3030).
* ``AUTH_RESPONSE``: a 334 reply to AUTH or to a SASL answer: the next client
  line is a SASL answer; it never appears in any event.
* ``TLS``: 220 reply to STARTTLS; all further input is ignored and the caller
  should bypass the flow (StartTLS event).
* ``STOPPED``: a connection budget was exhausted or a bug was caught.
* ``CLOSED``: after close().

Determinism: for a given order of feeding the two directions (e.g. the whole
client stream, then the whole server stream), the events do not depend on how
each stream was cut into segments, except for ``ts``.  Each event's ``ts`` is
the one passed to the call that produced it.
"""

from __future__ import annotations

import re
from collections import deque

from sensor.smtp import anomalies as A
from sensor.smtp.address import parse_path
from sensor.smtp.dotdata import DotDecoder
from sensor.smtp.events import (
    CLIENT,
    SERVER,
    AuthEvent,
    Command,
    Greeting,
    MailFrom,
    MessageEnd,
    RcptTo,
    Reply,
    ServerCapabilities,
    SmtpAnomaly,
    StartTLS,
    Step,
    Transaction,
)
from sensor.smtp.limits import SmtpLimits
from sensor.smtp.lines import LineBuffer
from sensor.smtp.message import MessageAssembler
from sensor.smtp.replies import parse_ehlo_keywords, parse_enhanced, parse_reply_line

__all__ = ["SMTPConnection", "KNOWN_VERBS"]

#: verbs that are not counted against SmtpLimits.unknown_commands.
KNOWN_VERBS = frozenset({
    "HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "VRFY",
    "EXPN", "HELP", "QUIT", "AUTH", "STARTTLS", "ETRN", "TURN", "ATRN", "BURL",
    "XCLIENT", "XFORWARD", "SEND", "SOML", "SAML", "VERB", "ONEX", "XEXCH50",
})

COMMAND, DATA, BDAT, AUTH_RESPONSE, TLS, STOPPED, CLOSED = (
    "COMMAND", "DATA", "BDAT", "AUTH_RESPONSE", "TLS", "STOPPED", "CLOSED")
_TERMINAL = (TLS, STOPPED, CLOSED)

_BDAT_RE = re.compile(r"[ \t]*(\d{1,19})(?:[ \t]+(LAST))?[ \t]*\Z", re.I)
_REPLY_START = re.compile(rb"[2-5][0-9][0-9](?:[ -]|\r?\Z)")
_VERB_START = re.compile(rb"([A-Za-z]{4,8})(?: |\r?\Z)")


def _looks_like_reply(line: bytes) -> bool:
    return _REPLY_START.match(line) is not None


def _looks_like_command(line: bytes) -> bool:
    m = _VERB_START.match(line)
    return m is not None and m.group(1).upper().decode() in KNOWN_VERBS


_SASL_RE = re.compile(rb"[A-Za-z0-9+/=]*\Z|\*\Z")
_DETAIL = 64


def _short(text: str | bytes) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    return text if len(text) <= _DETAIL else text[:_DETAIL] + "..."


def _plausible(verb: str, code: int) -> bool:
    """Could ``code`` answer ``verb``?  Used only to resynchronise after a server gap."""
    if code == 354:
        return verb == "DATA"
    if code in (334, 235):
        return verb in ("AUTH", "AUTH_ANSWER")
    if code == 221:
        return verb == "QUIT"
    if code == 220:
        return verb in (">", "STARTTLS")
    if verb == ">":
        return code in (421, 554)
    if verb == "DATA":
        return code >= 400
    return True


class _Pending:
    """A command waiting for its reply."""
    __slots__ = ("verb", "command", "txn", "step", "blocking", "assumed", "last")

    def __init__(self, verb, command=None, txn=None, step=None, blocking=False, last=False):
        self.verb = verb
        self.command = command
        self.txn = txn
        self.step = step          # index in txn.steps
        self.blocking = blocking  # the client's next octets wait for this reply
        self.assumed = False      # the positive reply was assumed (REPLY_ASSUMED)
        self.last = last          # BDAT ... LAST


class _Txn:
    """Mutable state of one mail transaction (becomes a Transaction event)."""
    __slots__ = ("depth", "first_ts", "helo", "mailfrom", "has_mail", "rcptto", "steps",
                 "headers", "size", "last_reply", "tls", "delivered", "pending",
                 "invalid", "too_many")

    def __init__(self, depth: int, ts: float, helo: str | None) -> None:
        self.depth = depth
        self.first_ts = ts
        self.helo = helo
        self.mailfrom = None
        self.has_mail = False
        self.rcptto: list[str] = []
        self.steps: list[list] = []   # [verb, parameter, code, enhanced, text]
        self.headers = None
        self.size = None
        self.last_reply = None
        self.tls = False
        self.delivered = False
        self.pending = 0
        self.invalid = False
        self.too_many = False


class _Auth:
    __slots__ = ("mechanism", "rounds")

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self.rounds = 0


_NO_HELD = ()  # SMTPConnection._cq holding nothing
# _pending, _replies, _waiting and _r_lines holding nothing: a list only while
# they hold something (an empty list is 56-72 bytes, one set per open flow)
_NONE = ()


class SMTPConnection:
    """Sans-IO dissector of one SMTP connection (both directions)."""

    # Slots, and lists rather than deques for the short bounded queues (a
    # deque starts with a 64-slot block, ~760 bytes): one connection is kept
    # per open flow (bench/bench_memory.py).
    __slots__ = ("limits", "_mode", "_cl", "_cq", "_cq_bytes", "_blocked", "_blocked_ts", "_auth", "_dot",
                 "_msg", "_msg_method", "_bdat_left", "_bdat_last", "_sl", "_r_code", "_r_lines", "_r_dropped",
                 "_replies", "_server_resync", "_pending", "_txn", "_waiting", "_depth", "_activity",
                 "_invalid", "_unknown", "_first_cmd_ts", "_said", "helo", "capabilities", "tls")

    def __init__(self, limits: SmtpLimits | None = None) -> None:
        self.limits = limits if limits is not None else SmtpLimits()
        lim = self.limits
        self._mode = COMMAND
        # client side
        self._cl = LineBuffer(lim.command_line)
        # (bytes | int gap length) held while blocked; a deque only while it
        # holds something (an empty deque is ~760 bytes per open flow)
        self._cq: deque | tuple = _NO_HELD
        self._cq_bytes = 0
        self._blocked: _Pending | None = None
        self._blocked_ts: float | None = None
        self._auth: _Auth | None = None
        self._dot: DotDecoder | None = None
        self._msg: MessageAssembler | None = None
        self._msg_method = ""
        self._bdat_left = 0
        self._bdat_last = False
        # server side
        self._sl = LineBuffer(lim.reply_line)
        self._r_code: int | None = None
        self._r_lines: list[str] | tuple = _NONE
        self._r_dropped = 0
        self._replies: list | tuple = _NONE   # complete replies waiting for a command (<= unmatched_replies + 1)
        self._server_resync = False
        # matching and transactions
        self._pending: list[_Pending] = [_Pending(">")]     # <= pending_commands + 1
        self._txn: _Txn | None = None
        self._waiting: list[_Txn] | tuple = _NONE
        self._depth = 0
        self._activity = False             # non-QUIT command since the last transaction began
        self._invalid = 0
        self._unknown = 0
        self._first_cmd_ts: float | None = None
        self._said: set[str] | tuple = ()  # once-per-connection anomalies already raised (a set from the first)
        #: parameter of the last HELO/EHLO.
        self.helo: str | None = None
        #: capabilities of the last positive EHLO reply.
        self.capabilities: ServerCapabilities | None = None
        #: STARTTLS was accepted: the rest of the flow is encrypted.
        self.tls = False

    # ------------------------------------------------------------------ API

    @property
    def state(self) -> str:
        """Client mode: COMMAND, DATA, BDAT, AUTH_RESPONSE, TLS, STOPPED or CLOSED."""
        return self._mode

    @property
    def finished(self) -> bool:
        """No further input will be looked at (TLS, STOPPED or CLOSED)."""
        return self._mode in _TERMINAL

    def receive_client(self, data: bytes, ts: float) -> list:
        """Octets sent by the client (originator -> responder)."""
        out: list = []
        mode = self._mode
        if not data or mode in _TERMINAL:
            return out
        try:
            if mode == DATA and self._blocked is None and not self._cq and \
                    type(data) is bytes and not len(self._cl):
                # Message content, nothing held: straight to the decoder, as
                # _run would do it, without the queue and the line buffer.
                # (Nothing was left to match when the last call returned, and
                # content alone does not change that.)
                content, rest = self._dot.feed(data)
                self._msg.feed(content, ts, out)
                if rest is None:
                    return out
                self._cl.push_front(rest)
                self._end_data(ts, out)
            else:
                if self._blocked is not None and self._blocked_ts is None:
                    self._blocked_ts = ts
                if self._cq is _NO_HELD:
                    self._cq = deque()
                self._cq.append(bytes(data))
                self._cq_bytes += len(data)
            self._run(ts, out)
        except Exception as exc:  # never let a dissector bug escape
            self._internal(exc, CLIENT, ts, out)
        return out

    def receive_server(self, data: bytes, ts: float) -> list:
        """Octets sent by the server (responder -> originator)."""
        out: list = []
        if not data or self._mode in _TERMINAL:
            return out
        try:
            self._sl.feed(data)
            while self._mode not in _TERMINAL:
                got = self._sl.take_line()
                if got is None:
                    break
                if self._reply_line(got, ts, out):
                    self._run(ts, out)
            if self._mode not in _TERMINAL:
                self._run(ts, out)
        except Exception as exc:
            self._internal(exc, SERVER, ts, out)
        return out

    def gap(self, direction: str, length: int, ts: float) -> list:
        """``length`` octets were lost in ``direction`` (CLIENT or SERVER)."""
        out: list = []
        if self._mode in _TERMINAL or length <= 0:
            return out
        try:
            if direction == SERVER:
                self._server_gap(length, ts, out)
                self._run(ts, out)
            else:
                if self._cq is _NO_HELD:
                    self._cq = deque()
                self._cq.append(int(length))
                self._run(ts, out)
        except Exception as exc:
            self._internal(exc, direction, ts, out)
        return out

    def close(self, ts: float) -> list:
        """End of the connection: flush what is pending, emit unfinished transactions."""
        out: list = []
        if self._mode == CLOSED:
            return out
        try:
            if self._mode not in _TERMINAL:
                self._close_streams(ts, out)
            self._close_txn(ts, out)
            while self._waiting:
                self._emit_txn(self._waiting.pop(0), ts, out)
            # Zeek logs a record for a session with client activity but no
            # transaction (EHLO then QUIT, a scanner): so do we, once.
            if self._activity and self._depth == 0 and self._mode != TLS:
                self._new_txn(ts)
                self._close_txn(ts, out)
                while self._waiting:
                    self._emit_txn(self._waiting.pop(0), ts, out)
        except Exception as exc:
            self._internal(exc, CLIENT, ts, out)
        self._mode = CLOSED
        return out

    # ------------------------------------------------------------ plumbing

    def _anomaly(self, out: list, ts: float, name: str, direction: str, detail: str = "") -> None:
        out.append(SmtpAnomaly(ts, name, direction, detail))

    def _once(self, out: list, ts: float, name: str, direction: str, detail: str = "") -> None:
        said = self._said
        if name not in said:
            if not said:
                said = self._said = set()
            said.add(name)
            self._anomaly(out, ts, name, direction, detail)

    def _internal(self, exc: Exception, direction: str, ts: float, out: list) -> None:
        self._anomaly(out, ts, A.INTERNAL_ERROR, direction, _short(f"{type(exc).__name__}: {exc}"))
        self._stop()

    def _stop(self) -> None:
        self._mode = STOPPED
        self._cl.clear()
        self._sl.clear()
        self._cq = _NO_HELD
        self._cq_bytes = 0
        self._replies = _NONE
        self._blocked = None

    def _held(self) -> int:
        return len(self._cl) + self._cq_bytes

    def _run(self, ts: float, out: list) -> None:
        """Read the client as far as possible, then match one reply; repeat."""
        while self._mode not in _TERMINAL:
            self._pump_client(ts, out)
            if self._mode in _TERMINAL:
                return
            if self._match_one(ts, out):
                continue
            if self._blocked is not None and self._held() > self.limits.unreplied_client_bytes:
                self._assume(ts, out)
                continue
            return

    # -------------------------------------------------------------- client

    def _pump_client(self, ts: float, out: list) -> None:
        while self._mode not in _TERMINAL and self._blocked is None:
            if self._step_client(ts, out):
                continue
            if not self._cq:
                return
            item = self._cq.popleft()
            if not self._cq:
                self._cq = _NO_HELD
            if isinstance(item, int):
                self._client_gap(item, ts, out)
            else:
                self._cq_bytes -= len(item)
                self._cl.feed(item)

    def _step_client(self, ts: float, out: list) -> bool:
        """Process one unit of buffered client input; False if more input is needed."""
        mode = self._mode
        if mode == COMMAND or mode == AUTH_RESPONSE:
            got = self._cl.take_line()
            if got is None:
                return False
            if mode == AUTH_RESPONSE:
                self._auth_answer(got[0], ts, out)
            else:
                self._command(got, ts, out)
            return True
        if mode == DATA:
            if not len(self._cl):
                return False
            content, rest = self._dot.feed(self._cl.take_all())
            self._msg.feed(content, ts, out)
            if rest is not None:
                self._cl.push_front(rest)
                self._end_data(ts, out)
            return True
        if mode == BDAT:
            if self._bdat_left:
                n = len(self._cl)
                if not n:
                    return False
                data = self._cl.take(min(n, self._bdat_left))
                self._bdat_left -= len(data)
                self._msg.feed(data, ts, out)
            if not self._bdat_left:
                self._end_bdat_chunk(ts, out)
            return True
        return False

    def _client_gap(self, length: int, ts: float, out: list) -> None:
        mode = self._mode
        if mode == DATA:
            self._msg.feed(self._dot.gap(), ts, out)
            self._msg.gap = True
            how = f"{length} octets of message content lost; still looking for CRLF.CRLF"
        elif mode == BDAT:
            self._msg.gap = True
            if length <= self._bdat_left:
                self._bdat_left -= length
                how = f"{length} octets of a BDAT chunk lost"
            else:
                extra = length - self._bdat_left
                self._bdat_left = 0
                self._end_bdat_chunk(ts, out)
                self._cl.gap(_looks_like_command)
                how = f"{length} octets lost ({extra} past the BDAT chunk); resync at next line"
        else:
            if self._cl.partial:
                self._anomaly(out, ts, A.TRUNCATED_LINE, CLIENT, "line cut by a gap")
            self._cl.gap(_looks_like_command)
            how = f"{length} octets lost; resync at next line"
        self._anomaly(out, ts, A.CONTENT_GAP, CLIENT, how)

    def _push(self, p: _Pending, ts: float, out: list) -> None:
        if self._pending:
            self._pending.append(p)
        else:
            self._pending = [p]
        if p.txn is not None:
            p.txn.pending += 1
        if p.blocking:
            self._blocked = p
            self._blocked_ts = ts if (len(self._cl) or self._cq_bytes) else None
        if len(self._pending) > self.limits.pending_commands:
            old = self._pending.pop(0)
            self._once(out, ts, A.TOO_MANY_PENDING_COMMANDS, CLIENT,
                       f"more than {self.limits.pending_commands} commands without reply; "
                       "the oldest are dropped unanswered")
            self._unanswered(old, ts, out)

    def _unanswered(self, p: _Pending, ts: float, out: list) -> None:
        if p.txn is not None:
            p.txn.pending -= 1
            self._maybe_emit(ts, out)

    def _command(self, got: tuple, ts: float, out: list) -> None:
        line, bare_lf, truncated = got
        text = line.decode("utf-8", "backslashreplace")
        raw_verb, _, param = text.partition(" ")
        verb = raw_verb.upper()
        known = verb in KNOWN_VERBS
        if truncated:
            self._anomaly(out, ts, A.MAX_COMMAND_LINE_LEN_EXCEEDED, CLIENT,
                          f"command line longer than {self.limits.command_line} octets: "
                          f"{_short(text)!r}")
        if bare_lf:
            self._once(out, ts, A.BARE_LF_COMMAND_LINE, CLIENT,
                       f"command {_short(raw_verb)!r} ended with a bare LF; parsed anyway")
        if self._first_cmd_ts is None:
            self._first_cmd_ts = ts
        shown = param
        if verb == "AUTH":   # never expose an initial response
            shown = param.strip().split(" ", 1)[0] if param.strip() else ""
        cmd = Command(ts, verb, raw_verb, shown, bare_lf, truncated, known)
        out.append(cmd)
        if not known:
            self._unknown += 1
            self._anomaly(out, ts, A.UNKNOWN_COMMAND, CLIENT, _short(raw_verb))
            if self._unknown > self.limits.unknown_commands:
                self._anomaly(out, ts, A.TOO_MANY_UNKNOWN_COMMANDS, CLIENT,
                              f"more than {self.limits.unknown_commands} unknown commands; "
                              "connection no longer parsed")
                self._stop()
                return
        handler = _HANDLERS.get(verb)
        if handler is not None:
            handler(self, cmd, param, ts, out)
        else:
            self._push(_Pending(verb, cmd), ts, out)
        if verb != "QUIT":
            self._activity = True

    # --- command handlers (verb -> method) -----------------------------------

    def _cmd_helo(self, cmd, param, ts, out):
        self._close_txn(ts, out)        # HELO/EHLO mid-session resets the transaction
        self.helo = param.strip()
        self._push(_Pending(cmd.verb, cmd), ts, out)

    def _cmd_reset(self, cmd, param, ts, out):   # RSET, QUIT
        self._close_txn(ts, out)
        self._push(_Pending(cmd.verb, cmd), ts, out)

    def _cmd_mail(self, cmd, param, ts, out):
        parsed = parse_path(param, "FROM")
        out.append(MailFrom(ts, parsed.address, parsed.params, param))
        nested = self._txn is not None and self._txn.has_mail
        if nested:
            self._anomaly(out, ts, A.NESTED_MAIL, CLIENT, "MAIL inside an open transaction")
            self._close_txn(ts, out)
        txn = self._txn or self._new_txn(ts)
        txn.has_mail = True
        txn.mailfrom = parsed.address
        txn.invalid |= nested or bool(parsed.problems)
        for name, detail in parsed.problems:
            self._anomaly(out, ts, name, CLIENT, f"MAIL: {detail}")
        self._step(txn, cmd, param, ts, out)

    def _cmd_rcpt(self, cmd, param, ts, out):
        parsed = parse_path(param, "TO")
        out.append(RcptTo(ts, parsed.address, parsed.params, param))
        txn = self._txn
        if txn is None or not txn.has_mail:
            self._anomaly(out, ts, A.RCPT_BEFORE_MAIL, CLIENT, "RCPT without a MAIL")
            txn = txn or self._new_txn(ts)
            txn.invalid = True
        if parsed.address is not None:
            txn.rcptto.append(parsed.address)
        if parsed.problems:
            txn.invalid = True
        for name, detail in parsed.problems:
            self._anomaly(out, ts, name, CLIENT, f"RCPT: {detail}")
        if len(txn.rcptto) > self.limits.recipients and not txn.too_many:
            txn.too_many = True
            self._anomaly(out, ts, A.TOO_MANY_RECIPIENTS, CLIENT,
                          f"more than {self.limits.recipients} recipients")
        self._step(txn, cmd, param, ts, out)

    def _txn_for_message(self, verb: str, ts: float, out: list) -> _Txn:
        txn = self._txn
        if txn is None or not txn.rcptto:
            if self._msg is None:   # a later BDAT chunk of the same message is not reported again
                self._anomaly(out, ts, A.DATA_BEFORE_RCPT, CLIENT, f"{verb} without a RCPT")
            txn = txn or self._new_txn(ts)
            txn.invalid = True
        return txn

    def _cmd_data(self, cmd, param, ts, out):
        txn = self._txn_for_message("DATA", ts, out)
        self._step(txn, cmd, param, ts, out, blocking=True)

    def _cmd_bdat(self, cmd, param, ts, out):
        m = _BDAT_RE.match(param)
        if m is None:
            self._anomaly(out, ts, A.INVALID_BDAT, CLIENT, f"BDAT {_short(param)!r}")
            if self._txn is not None:
                self._txn.invalid = True
            self._push(_Pending("BDAT", cmd), ts, out)
            return
        size, last = int(m.group(1)), m.group(2) is not None
        if size > self.limits.bdat_chunk:
            self._anomaly(out, ts, A.BDAT_CHUNK_LEN_EXCEEDED, CLIENT,
                          f"BDAT chunk of {size} octets > {self.limits.bdat_chunk}")
        txn = self._txn_for_message("BDAT", ts, out)
        if self._msg is None:
            self._msg = MessageAssembler(self.limits)
            self._msg_method = "BDAT"
        self._step(txn, cmd, param, ts, out, last=last)
        self._mode = BDAT
        self._bdat_left = size
        self._bdat_last = last

    def _cmd_auth(self, cmd, param, ts, out):
        self._auth = _Auth(cmd.parameter.upper())
        self._push(_Pending("AUTH", cmd, blocking=True), ts, out)

    def _cmd_starttls(self, cmd, param, ts, out):
        self._push(_Pending("STARTTLS", cmd, blocking=True), ts, out)

    def _step(self, txn, cmd, param, ts, out, blocking=False, last=False):
        txn.steps.append([cmd.verb, param, None, None, None])
        self._push(_Pending(cmd.verb, cmd, txn, len(txn.steps) - 1, blocking, last), ts, out)

    def _auth_answer(self, line: bytes, ts: float, out: list) -> None:
        # The line is a SASL answer (credentials): it never leaves this method.
        if self._auth is not None:
            self._auth.rounds += 1
        self._mode = COMMAND
        self._push(_Pending("AUTH_ANSWER", blocking=True), ts, out)

    # --- messages ---------------------------------------------------------------

    def _start_data(self) -> None:
        self._dot = DotDecoder(self.limits.data_line)
        self._msg = MessageAssembler(self.limits)
        self._msg_method = "DATA"
        self._mode = DATA

    def _finish_message(self, ts: float, out: list, complete: bool) -> None:
        msg, dot = self._msg, self._dot
        self._msg = None
        self._dot = None
        msg.finish(ts, out)
        extra = {}
        if dot is not None:
            if dot.terminators:
                kinds = sorted(set(dot.terminators))
                self._anomaly(out, ts, A.SMUGGLED_DATA_TERMINATOR, CLIENT,
                              f"{len(dot.terminators)} dot line(s) not delimited by CRLF "
                              f"({', '.join(kinds)}); followed the strict reading: only "
                              "CRLF.CRLF ends DATA, these are message content")
            if dot.bare_lf:
                self._anomaly(out, ts, A.BARE_LF_IN_DATA, CLIENT,
                              f"{dot.bare_lf} bare LF in message content; followed the strict "
                              "reading: not a line end")
            if dot.bare_cr:
                self._anomaly(out, ts, A.BARE_CR_IN_DATA, CLIENT,
                              f"{dot.bare_cr} bare CR in message content; followed the strict "
                              "reading: not a line end")
            if dot.long_line:
                self._anomaly(out, ts, A.DATA_LINE_TOO_LONG, CLIENT,
                              f"a line longer than {self.limits.data_line} octets")
            extra = dict(bare_lf=dot.bare_lf, bare_cr=dot.bare_cr,
                         smuggled_terminators=tuple(dot.terminators[:32]))
        caps = self.capabilities
        if caps is not None and caps.size and msg.size > caps.size:
            self._anomaly(out, ts, A.MESSAGE_SIZE_EXCEEDED, CLIENT,
                          f"message of {msg.size} octets > advertised SIZE {caps.size}")
        out.append(MessageEnd(ts, msg.size, self._msg_method, complete, msg.gap, **extra))
        txn = self._txn
        if txn is not None:
            txn.size = msg.size
            txn.headers = msg.headers

    def _end_data(self, ts: float, out: list) -> None:
        self._mode = COMMAND
        self._finish_message(ts, out, True)
        txn = self._txn
        if txn is not None:
            txn.steps.append([".", "", None, None, None])
            self._push(_Pending(".", None, txn, len(txn.steps) - 1), ts, out)
        else:
            self._push(_Pending("."), ts, out)
        self._close_txn(ts, out)

    def _end_bdat_chunk(self, ts: float, out: list) -> None:
        self._mode = COMMAND
        if self._bdat_last:
            self._bdat_last = False
            self._finish_message(ts, out, True)
            self._close_txn(ts, out)

    # -------------------------------------------------------------- server

    def _reply_line(self, got: tuple, ts: float, out: list) -> bool:
        """Add one server line; True when it completed a reply."""
        line, _bare_lf, truncated = got
        if truncated:
            self._anomaly(out, ts, A.MAX_REPLY_LINE_LEN_EXCEEDED, SERVER,
                          f"reply line longer than {self.limits.reply_line} octets")
        parsed = parse_reply_line(line)
        if parsed is None:
            self._anomaly(out, ts, A.INVALID_REPLY, SERVER, repr(_short(line)))
            return False
        code, last, text = parsed
        if self._r_code is None:
            self._r_code = code
            self._r_lines = [text]
            self._r_dropped = 0
        else:
            if code != self._r_code:
                self._anomaly(out, ts, A.INVALID_REPLY, SERVER,
                              f"code {code} inside a multi-line {self._r_code} reply")
            if len(self._r_lines) < self.limits.reply_lines:
                self._r_lines.append(text)
            else:
                self._r_dropped += 1
        if not last:
            return False
        if self._r_dropped:
            self._anomaly(out, ts, A.REPLY_TOO_MANY_LINES, SERVER,
                          f"{self._r_dropped} lines past {self.limits.reply_lines} dropped")
        code = self._r_code
        lines = tuple(self._r_lines)
        reply = (code, parse_enhanced(code, lines[0]), lines, len(lines) > 1 or self._r_dropped > 0)
        if self._replies:
            self._replies.append(reply)
        else:
            self._replies = [reply]
        self._r_code = None
        self._r_lines = _NONE
        return True

    def _server_gap(self, length: int, ts: float, out: list) -> None:
        if self._sl.partial or self._r_code is not None:
            self._anomaly(out, ts, A.TRUNCATED_LINE, SERVER, "reply cut by a gap")
        self._sl.gap(_looks_like_reply)
        self._r_code = None
        self._r_lines = _NONE
        self._server_resync = True
        self._anomaly(out, ts, A.CONTENT_GAP, SERVER,
                      f"{length} octets lost; resync at next line, replies lost in the gap "
                      "are skipped by plausibility of the next reply")

    def _match_one(self, ts: float, out: list) -> bool:
        if not self._replies:
            return False
        if not self._pending:
            if len(self._replies) > self.limits.unmatched_replies:
                self._unmatched(self._replies.pop(0), ts, out)
                return True
            return False
        reply = self._replies.pop(0)
        if not self._replies:
            self._replies = _NONE
        if self._server_resync:
            self._server_resync = False
            if self._resync(reply, ts, out):
                return True
        p = self._pending.pop(0)
        if not self._pending:
            self._pending = _NONE
        self._answer(p, reply, ts, out)
        return True

    def _resync(self, reply: tuple, ts: float, out: list) -> bool:
        """First reply after a server gap: skip commands whose reply was lost.

        Returns True when the reply was put back to be matched again.
        """
        code = reply[0]
        pending = self._pending
        head = pending[0]
        if not _plausible(head.verb, code):
            k = next((i for i, p in enumerate(pending) if _plausible(p.verb, code)), None)
            if k is not None:
                lost = [pending.pop(0) for _ in range(k)]
                self._anomaly(out, ts, A.REPLY_NOT_SEEN, SERVER,
                              "lost in a gap: replies to " + ", ".join(p.verb for p in lost))
                for p in lost:
                    self._unanswered(p, ts, out)
                    if p is self._blocked:
                        self._blocked = None
            elif head is self._blocked and head.verb == "DATA":
                # The 354 was lost: the message was sent; read it, then match again.
                pending.pop(0)
                self._anomaly(out, ts, A.REPLY_ASSUMED, SERVER,
                              "reply to DATA lost in a gap; assumed 354")
                self._unanswered(head, ts, out)
                self._blocked = None
                self._start_data()
                if self._replies:
                    self._replies.insert(0, reply)
                else:
                    self._replies = [reply]
                return True
        return False

    def _unmatched(self, reply: tuple, ts: float, out: list) -> None:
        code, enh, lines, multi = reply
        out.append(Reply(ts, code, enh, lines, None, None, multi, 300 <= code < 400))
        if code != 421:   # 421 may be sent unsolicited before closing (RFC 5321 3.8)
            self._anomaly(out, ts, A.UNABLE_TO_MATCH_REPLY_WITH_REQUEST, SERVER,
                          f"{code} {_short(lines[0])}")

    def _answer(self, p: _Pending, reply: tuple, ts: float, out: list) -> None:
        code, enh, lines, multi = reply
        out.append(Reply(ts, code, enh, lines, p.verb, p.command, multi, 300 <= code < 400))
        verb = p.verb
        # RFC 2920: without PIPELINING, each command waits for the previous reply.
        nxt = self._pending[0].command if self._pending else None
        if verb != ">" and nxt is not None and nxt.ts < ts and not (
                self.capabilities is not None and self.capabilities.pipelining):
            self._once(out, ts, A.INVALID_PIPELINED_SEQUENCE, CLIENT,
                       f"{nxt.verb} sent before the reply to {verb} without PIPELINING")
        if verb == ">":
            self._greeting(code, lines, ts, out)
        elif verb in ("EHLO", "LHLO") and code == 250:
            self.capabilities = ServerCapabilities(ts, **parse_ehlo_keywords(lines[1:]))
            out.append(self.capabilities)
        elif verb == "DATA":
            self._data_reply(p, code, ts, out)
        elif verb in ("AUTH", "AUTH_ANSWER"):
            self._auth_reply(p, code, ts, out)
        elif verb == "STARTTLS":
            self._starttls_reply(p, code, ts, out)
        txn = p.txn
        if txn is not None:
            step = txn.steps[p.step]
            step[2], step[3], step[4] = code, enh, "\n".join(lines)
            txn.last_reply = f"{code} {lines[-1]}" if lines[-1] else str(code)
            if 500 <= code <= 504:
                txn.invalid = True
            if verb == "." or (verb == "BDAT" and p.last):
                txn.delivered = 200 <= code < 300
            txn.pending -= 1
            self._maybe_emit(ts, out)

    def _greeting(self, code: int, lines: tuple, ts: float, out: list) -> None:
        if code not in (220, 421, 554):
            self._anomaly(out, ts, A.NO_SERVER_WELCOME_MESSAGE, SERVER,
                          f"first reply is {code}, not a greeting")
        words = lines[0].split()
        out.append(Greeting(ts, code, code == 220, lines, words[0] if words else ""))
        if self._first_cmd_ts is not None and self._first_cmd_ts < ts:
            self._anomaly(out, ts, A.CLIENT_SPOKE_BEFORE_GREETING, CLIENT,
                          "a command was sent before the server greeting")

    def _data_reply(self, p: _Pending, code: int, ts: float, out: list) -> None:
        if p.assumed:
            if code != 354:
                self._anomaly(out, ts, A.DATA_COMMAND_REJECTED, SERVER,
                              f"DATA got {code} after its content was read as a message "
                              "(354 had been assumed)")
            return
        if p is self._blocked:
            self._blocked = None
        if code == 354:
            # RFC 2920 3.1: DATA ends a pipelined group; content must wait for the 354.
            if self._blocked_ts is not None and self._blocked_ts < ts:
                self._anomaly(out, ts, A.INVALID_PIPELINED_SEQUENCE, CLIENT,
                              "message content sent before the 354 reply to DATA")
            self._start_data()
        else:
            self._anomaly(out, ts, A.DATA_COMMAND_REJECTED, SERVER,
                          f"DATA got {code}; the client's next lines are commands")

    def _auth_reply(self, p: _Pending, code: int, ts: float, out: list) -> None:
        if p is self._blocked:
            self._blocked = None
        if p.assumed:
            return
        auth = self._auth
        if code == 334:
            if self._mode == COMMAND:
                self._mode = AUTH_RESPONSE
            return
        if auth is not None:
            out.append(AuthEvent(ts, auth.mechanism, 200 <= code < 300, code, auth.rounds))
        self._auth = None

    def _starttls_reply(self, p: _Pending, code: int, ts: float, out: list) -> None:
        if p is self._blocked:
            self._blocked = None
        if code != 220:
            self._anomaly(out, ts, A.TLS_REJECTED, SERVER, f"STARTTLS got {code}")
            return
        self._go_tls(ts, out)

    def _go_tls(self, ts: float, out: list) -> None:
        held = bytes(self._cl.take_all())
        if not held:
            held = next((b for b in self._cq if isinstance(b, bytes) and b), b"")
        if held and held[:1] != b"\x16":
            self._anomaly(out, ts, A.STARTTLS_PLAINTEXT_INJECTION, CLIENT,
                          f"plaintext after STARTTLS: {_short(held[:32])!r}")
        self.tls = True
        if self._txn is None:
            self._new_txn(ts)
        self._txn.tls = True
        self._close_txn(ts, out)
        while self._waiting:
            self._emit_txn(self._waiting.pop(0), ts, out)
        self._activity = False
        out.append(StartTLS(ts))
        self._stop()
        self._mode = TLS

    def _assume(self, ts: float, out: list, closing: bool = False) -> None:
        """Stop waiting for the reply to the blocking command: assume the positive one."""
        p = self._blocked
        self._blocked = None
        p.assumed = True
        why = "connection closed" if closing else \
            f"more than {self.limits.unreplied_client_bytes} client octets"
        if p.verb == "DATA":
            self._anomaly(out, ts, A.REPLY_ASSUMED, SERVER,
                          f"no reply to DATA before {why}; assumed 354")
            self._start_data()
        elif p.verb == "STARTTLS":
            self._pump_held()
            first = self._cl.take_all()
            self._cl.push_front(first)
            if first[:1] == b"\x16" and not closing:
                self._anomaly(out, ts, A.REPLY_ASSUMED, SERVER,
                              f"no reply to STARTTLS before {why}; TLS record follows, assumed 220")
                self._go_tls(ts, out)
            else:
                self._anomaly(out, ts, A.REPLY_ASSUMED, SERVER,
                              f"no reply to STARTTLS before {why}; assumed rejected")
        else:   # AUTH, AUTH_ANSWER: never risk reading an answer as a command
            self._pump_held()
            got = None
            if not closing:
                buf = self._cl.take_all()
                self._cl.push_front(buf)
                nl = buf.find(b"\n")
                first = buf[:nl].rstrip(b"\r") if nl >= 0 else b""
                if nl >= 0 and _SASL_RE.match(first) and first.upper() not in (
                        b"QUIT", b"RSET", b"NOOP", b"HELP", b"DATA"):
                    got = "334"
            self._anomaly(out, ts, A.REPLY_ASSUMED, SERVER,
                          f"no reply to {p.verb} before {why}; assumed "
                          + ("334 (next line looks like a SASL answer)" if got else "final"))
            if got:
                self._mode = AUTH_RESPONSE
            else:
                if self._auth is not None:
                    out.append(AuthEvent(ts, self._auth.mechanism, None, None, self._auth.rounds))
                self._auth = None
                if closing:
                    self._cl.clear()
                    self._cq = _NO_HELD
                    self._cq_bytes = 0

    def _pump_held(self) -> None:
        """Move held client octets into the line buffer (stopping at a gap)."""
        while self._cq and not isinstance(self._cq[0], int):
            item = self._cq.popleft()
            if not self._cq:
                self._cq = _NO_HELD
            self._cq_bytes -= len(item)
            self._cl.feed(item)

    # -------------------------------------------------------- transactions

    def _new_txn(self, ts: float) -> _Txn:
        self._depth += 1
        self._txn = _Txn(self._depth, ts, self.helo)
        self._activity = False
        return self._txn

    def _close_txn(self, ts: float, out: list) -> None:
        txn = self._txn
        if txn is None:
            return
        if self._msg is not None and self._msg_method == "BDAT":
            self._finish_message(ts, out, False)   # BDAT message abandoned (RSET, ...)
            self._mode = COMMAND if self._mode == BDAT else self._mode
        self._txn = None
        if self._waiting:
            self._waiting.append(txn)
        else:
            self._waiting = [txn]
        self._maybe_emit(ts, out)

    def _maybe_emit(self, ts: float, out: list) -> None:
        while self._waiting and self._waiting[0].pending <= 0:
            self._emit_txn(self._waiting.pop(0), ts, out)
        if not self._waiting:
            self._waiting = _NONE

    def _emit_txn(self, txn: _Txn, ts: float, out: list) -> None:
        out.append(Transaction(
            ts=ts, trans_depth=txn.depth, helo=txn.helo, mailfrom=txn.mailfrom,
            rcptto=tuple(txn.rcptto), headers=txn.headers, message_size=txn.size,
            last_reply=txn.last_reply, tls=txn.tls,
            steps=tuple(Step(*s) for s in txn.steps), delivered=txn.delivered,
            first_ts=txn.first_ts))
        if txn.invalid and self._mode not in _TERMINAL:
            self._invalid += 1
            if self._invalid > self.limits.invalid_transactions:
                self._anomaly(out, ts, A.TOO_MANY_INVALID_TRANSACTIONS, CLIENT,
                              f"more than {self.limits.invalid_transactions} invalid "
                              "transactions; connection no longer parsed")
                self._stop()

    # --------------------------------------------------------------- close

    def _close_streams(self, ts: float, out: list) -> None:
        # Held client octets: assume the replies that never came, then read them.
        guard = 0
        while self._blocked is not None and (self._held() or self._cq) and guard < 1000:
            guard += 1
            self._assume(ts, out, closing=True)
            self._pump_client(ts, out)
            if self._mode in _TERMINAL:
                return
        if self._mode == DATA:
            self._msg.feed(self._dot.flush(), ts, out)
            self._finish_message(ts, out, False)
            self._mode = COMMAND
        elif self._msg is not None:
            self._finish_message(ts, out, False)
            self._mode = COMMAND
        if self._cl.partial:
            self._anomaly(out, ts, A.TRUNCATED_LINE, CLIENT, "connection ended inside a line")
        if self._sl.partial or self._r_code is not None:
            self._anomaly(out, ts, A.TRUNCATED_LINE, SERVER, "connection ended inside a reply")
        while self._replies:
            self._unmatched(self._replies.pop(0), ts, out)
        lost = list(self._pending)
        self._pending = _NONE
        silent = len(lost) == 1 and lost[0].verb == ">" and self._first_cmd_ts is None
        if lost and not silent:
            verbs = [p.verb for p in lost]
            self._anomaly(out, ts, A.REPLY_NOT_SEEN, SERVER,
                          f"{len(verbs)} command(s) never answered: " + _short(", ".join(verbs)))
        for p in lost:
            if p.txn is not None:
                p.txn.pending -= 1


_HANDLERS = {
    "HELO": SMTPConnection._cmd_helo,
    "EHLO": SMTPConnection._cmd_helo,
    "LHLO": SMTPConnection._cmd_helo,
    "RSET": SMTPConnection._cmd_reset,
    "QUIT": SMTPConnection._cmd_reset,
    "MAIL": SMTPConnection._cmd_mail,
    "RCPT": SMTPConnection._cmd_rcpt,
    "DATA": SMTPConnection._cmd_data,
    "BDAT": SMTPConnection._cmd_bdat,
    "AUTH": SMTPConnection._cmd_auth,
    "STARTTLS": SMTPConnection._cmd_starttls,
}
