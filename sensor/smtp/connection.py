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
matched to commands in order (:mod:`.pending`, RFC 2920 pipelining); replies
that arrive before the command they answer is known wait (bounded) until it
is.  The client direction is read greedily, except after a command whose
reply decides how to read what follows (DATA: message or commands? AUTH: SASL
answer or command? STARTTLS: TLS or commands?): there the client's octets are
held (bounded) until that reply is known.  Past ``SmtpLimits.unreplied_client_bytes``
(or at close), the positive reply is assumed and REPLY_ASSUMED says so, which
lets a capture holding only the client direction be dissected.

Credentials never leave the dissector.  From an AUTH command to the final
reply of its exchange, what the client sends is a SASL answer (mode
AUTH_RESPONSE), never a command, and no event or anomaly quotes it.  When the
exchange loses its step (a gap in either direction, a reply that answers it
first after a server gap, a reply assumed), the number of answers is no longer
known: the client is read in mode RESYNC (a line is read only once one looks
like a command; those before it are counted, never shown) and the server's
334s and final reply go to an absorbing "AUTH_ANSWER" (``Pending.absorbs``).
After a final reply in step, lines that do not look like commands are still
not shown (mode AFTER_AUTH: answers sent past the server's refusal), though
matched with their replies.  A client gap elsewhere in the command phase
resyncs as RESYNC does: what follows may be the answers of an AUTH lost in
the gap, or message content.

The parts, one job each: :class:`~.replies.ReplyReader` reads the server's
octets into replies, :class:`~.pending.PendingQueue` holds the commands and
replies waiting for each other, :class:`~.transaction.Transactions` builds
the transactions, :class:`~.message.MessageAssembler` a message's content.
This class reads the client's octets and holds what each command and each
reply does (``_ON_COMMAND``, ``_ON_REPLY``: per verb).

The client modes (``SMTPConnection.state``) are the constants below, each
with what leads into it.

Determinism: for a given order of feeding the two directions (e.g. the whole
client stream, then the whole server stream), the events do not depend on how
each stream was cut into segments, except for ``ts``.  Each event's ``ts`` is
the one passed to the call that produced it.

Interleaving: how the two directions interleave in time does not change the
events either, within each direction: the client's events (commands,
addresses, content, message ends) come in the same order, the server's
(replies, each with the command it answers; greeting, capabilities, AUTH
outcomes) in the same order, and the transactions and anomalies are the
same, whether each reply is fed right after its command, several commands
later (pipelining, a slow capture path), or every server octet before any of
the client's (tests/unit/test_smtp_interleaving.py).  What does depend on it,
and why it cannot be otherwise:

- where a server event falls among the client's: it is emitted when it can
  be decided, i.e. once both the reply and its command are known, which is
  the interleaving itself;
- ``ts``, and what is decided by comparing them (INVALID_PIPELINED_SEQUENCE,
  CLIENT_SPOKE_BEFORE_GREETING);
- after a connection budget stops parsing (TOO_MANY_UNKNOWN_COMMANDS,
  TOO_MANY_INVALID_TRANSACTIONS, INTERNAL_ERROR), nothing more is read: what
  the other direction had delivered before the stop depends on the feeding;
- a reply that answers no command (more replies than commands) is emitted
  unmatched when the replies waiting pass their bounds or at close: its
  position and ``trans_depth`` are those of that moment;
- a command sent behind a HELO/EHLO before its reply (a client cannot know
  it may pipeline before that reply): only an accepted HELO/EHLO resets the
  transaction, so the command's ``trans_depth`` is the one before the reset
  if the reply was not known when it was read, the one after if it was;
- a client that does not wait for the reply that decides how to read what
  follows (content before the 354, answers before the 334: not a causal
  order for a real client) is read by what is assumed past
  ``unreplied_client_bytes`` (REPLY_ASSUMED) when the reply comes late.
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
    LenientTerminator,
    MessageEnd,
    RcptTo,
    Reply,
    ServerCapabilities,
    SmtpAnomaly,
    StartTLS,
)
from sensor.smtp.limits import SmtpLimits
from sensor.smtp.lines import LineBuffer
from sensor.smtp.message import MessageAssembler
from sensor.smtp.pending import AUTH_VERBS, Pending, PendingQueue, plausible
from sensor.smtp.replies import ReplyReader, parse_ehlo_keywords
from sensor.smtp.transaction import Transactions, TransactionState

__all__ = ["SMTPConnection", "KNOWN_VERBS"]

#: verbs that are not counted against SmtpLimits.unknown_commands.
KNOWN_VERBS = frozenset({
    "HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "VRFY",
    "EXPN", "HELP", "QUIT", "AUTH", "STARTTLS", "ETRN", "TURN", "ATRN", "BURL",
    "XCLIENT", "XFORWARD", "SEND", "SOML", "SAML", "VERB", "ONEX", "XEXCH50",
})

# Client modes, and what leads into each:
#: the start; the end of a message; a non-354 reply to DATA, a final reply to
#: AUTH, a non-220 reply to STARTTLS.
COMMAND = "COMMAND"
#: a 354 reply to DATA.  Only CRLF.CRLF ends it (strict reading).
DATA = "DATA"
#: a valid ``BDAT n [LAST]`` command, for n octets (the reply is not needed to
#: frame a chunk, RFC 3030).
BDAT = "BDAT"
#: a 334 reply to AUTH or to a SASL answer: the next client line is a SASL
#: answer; it never appears in any event.
AUTH_RESPONSE = "AUTH_RESPONSE"
#: a client gap in the command phase; an AUTH exchange that lost its step (a
#: gap, a reply after a server gap, a reply assumed): client lines are skipped
#: (counted, never shown) until one looks like a command, which is read.
RESYNC = "RESYNC"
#: the final reply of an AUTH exchange in step.  The server reads what follows
#: as commands, but a client may have sent more answers than it was asked for
#: (answers pipelined after an AUTH that got 503, 504 or 530): until a line
#: looks like a command, each is a command whose text is never shown (verb
#: HIDDEN), then COMMAND.
AFTER_AUTH = "AFTER_AUTH"
#: the verb of a client line read as a command but not shown (AFTER_AUTH).
HIDDEN = "(hidden)"
#: a 220 reply to STARTTLS: all further input is ignored and the caller should
#: bypass the flow (StartTLS event).
TLS = "TLS"
#: a connection budget was exhausted or a bug was caught.
STOPPED = "STOPPED"
#: close().
CLOSED = "CLOSED"
_TERMINAL = (TLS, STOPPED, CLOSED)

#: commands that say nothing of the client: a session of only these (and its
#: greeting) leaves no record, as in Zeek (a session with any other command
#: and no transaction leaves one: EHLO then QUIT, a scanner's VRFY)
_NO_ACTIVITY = frozenset(("QUIT", "RSET", "NOOP"))


def _shown(verb: str) -> str:
    """A verb as a detail names it: the greeting's pseudo-command by its name."""
    return "the greeting" if verb == ">" else verb


_BDAT_RE = re.compile(r"[ \t]*(\d{1,19})(?:[ \t]+(LAST))?[ \t]*\Z", re.I)
_VERB_START = re.compile(rb"([A-Za-z]{4,8})(?: |\r?\Z)")


# SASL mechanism names (RFC 4422 3.1: 1-20 of A-Z, 0-9, "-", "_"), as clients
# send them: in capitals, or in small letters ("auth login"), or a registered
# name in any case.  A word in mixed case is not a name but most likely a
# credential sent without one ("AUTH dXNlcjpwYXNz"): it is not shown.
_MECHANISM_RE = re.compile(r"[A-Z0-9_-]{1,20}\Z|[a-z0-9_-]{1,20}\Z")
_REGISTERED_MECHANISMS = frozenset({
    "PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "XOAUTH2", "OAUTHBEARER", "EXTERNAL",
    "ANONYMOUS", "GSSAPI", "GS2-KRB5", "NTLM", "SCRAM-SHA-1", "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS",
})
#: what a command or an event shows for a mechanism that is not a name.
NOT_A_MECHANISM = "(not a mechanism name)"


def _mechanism(param: str) -> str:
    """The SASL mechanism of an AUTH command's parameter, upper-cased; never the initial response."""
    words = param.split()
    if not words:
        return ""
    word = words[0]
    if _MECHANISM_RE.match(word) or word.upper() in _REGISTERED_MECHANISMS:
        return word.upper()
    return NOT_A_MECHANISM


def _looks_like_command(line: bytes) -> bool:
    m = _VERB_START.match(line)
    return m is not None and m.group(1).upper().decode() in KNOWN_VERBS


class _Auth:
    """One AUTH exchange, from the command to its final reply."""

    __slots__ = ("mechanism", "rounds", "lost", "cancelled")

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self.rounds = 0       # SASL answers read in step
        self.lost = False     # something of the exchange was lost: it is out of step
        self.cancelled = False   # the client answered "*" (RFC 4954 4)


_NO_HELD = ()  # SMTPConnection._cq holding nothing


class SMTPConnection:
    """Sans-IO dissector of one SMTP connection (both directions)."""

    # Slots, and the held client octets a deque only while it holds something
    # (a deque starts with a 64-slot block, ~760 bytes): one connection is kept
    # per open flow (bench/bench_memory.py).
    __slots__ = ("limits", "_mode", "_cl", "_cq", "_cq_bytes", "_blocked", "_auth",
                 "_dot", "_msg", "_bdat_left", "_bdat_last", "_server", "_pending", "_txns",
                 "_activity", "_unknown", "_first_cmd_ts", "_said", "_pipelining", "_max_size",
                 "_skipped", "_helo_seen", "helo", "tls")

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
        self._blocked: Pending | None = None   # the command whose reply the client waits for
        self._auth: _Auth | None = None      # the exchange whose final reply is not known yet
        self._skipped = 0                    # client lines skipped (RESYNC, AFTER_AUTH)
        self._dot: DotDecoder | None = None
        self._msg: MessageAssembler | None = None
        self._bdat_left = 0
        self._bdat_last = False
        # server side, matching, transactions
        self._server = ReplyReader(lim.reply_line, lim.reply_lines, lim.line_buffer)
        self._pending = PendingQueue()
        self._txns = Transactions(lim)
        self._activity = False             # non-QUIT command since the last transaction began
        self._unknown = 0
        self._first_cmd_ts: float | None = None
        self._said: set[str] | tuple = ()  # once-per-connection anomalies already raised (a set from the first)
        #: parameter of the last HELO/EHLO not refused (and not empty).
        self.helo: str | None = None
        self._helo_seen = False
        # of the last positive EHLO reply (its ServerCapabilities event): the
        # server offers PIPELINING; the SIZE it announced (0: none)
        self._pipelining = False
        self._max_size = 0
        #: STARTTLS was accepted: the rest of the flow is encrypted.
        self.tls = False

    # ------------------------------------------------------------------ API

    @property
    def state(self) -> str:
        """Client mode: COMMAND, DATA, BDAT, AUTH_RESPONSE, RESYNC, AFTER_AUTH, TLS, STOPPED
        or CLOSED."""
        return self._mode

    @property
    def finished(self) -> bool:
        """No further input will be looked at (TLS, STOPPED or CLOSED)."""
        return self._mode in _TERMINAL

    @property
    def unread_client_octets(self) -> int:
        """Client octets given to the dissector that it has not read yet
        because their meaning waits for the reply to a command (DATA, AUTH,
        STARTTLS): content pipelined behind DATA is read once the 354 comes.
        The start of a command line not yet ended counts as read: it can end
        no message."""
        if self._blocked is None:
            return 0
        held = len(self._cl) + self._cq_bytes
        if self._cq:
            held += sum(item for item in self._cq if type(item) is int)
        return held

    @property
    def in_transaction(self) -> bool:
        """A mail transaction is open (MAIL seen, not yet ended) or waits for
        its replies (a message sent, its final reply not yet seen)."""
        txns = self._txns
        return txns.current is not None or bool(txns.waiting)

    def receive_client(self, data: bytes, ts: float) -> list:
        """Octets sent by the client (originator -> responder)."""
        out: list = []
        mode = self._mode
        if not data or mode in _TERMINAL:
            return out
        try:
            if mode == DATA and self._blocked is None and not self._cq and \
                    type(data) is bytes and not self._cl._buf:
                # Message content, nothing held: straight to the decoder, as
                # _run would do it, without the held octets and the line buffer.
                # (Nothing was left to match when the last call returned, and
                # content alone does not change that.)  An empty storage means
                # nothing is buffered: tested without calling len() on the
                # per-segment path.
                rest = self._feed_dot(data, ts, out)
                if rest is None:
                    return out
                self._cl.push_front(rest)
                self._end_data(ts, out)
            else:
                if self._blocked is not None and self._blocked.held_since is None:
                    self._blocked.held_since = ts
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
            server = self._server
            push_reply = self._pending.push_reply
            server.feed(data)
            while self._mode not in _TERMINAL:
                reply = server.next_reply(ts, out)
                if reply is None:
                    break
                push_reply(reply)
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
                self._server.lost(ts, out)
                self._pending.server_gap()
                self._anomaly(out, ts, A.CONTENT_GAP, SERVER,
                              f"{length} octets lost; resync at next line, replies lost in the gap "
                              "are skipped by plausibility of the next reply")
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
            txns = self._txns
            if self._mode not in _TERMINAL:
                self._close_streams(ts, out)
            self._close_txn(ts, out)
            if txns.flush(ts, out):
                self._stop()
            # a session with client activity but no transaction (EHLO then
            # QUIT, a scanner) leaves one record (_NO_ACTIVITY)
            if self._activity and txns.begun == 0 and self._mode != TLS:
                self._new_txn(ts)
                self._close_txn(ts, out)
                if txns.flush(ts, out):
                    self._stop()
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
        # The exception's type and where it was raised, not its message: a
        # message may quote the octets being read (a credential among them).
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f" in {tb.tb_frame.f_code.co_name} line {tb.tb_lineno}" if tb is not None else ""
        self._anomaly(out, ts, A.INTERNAL_ERROR, direction, f"{type(exc).__name__}{where}")
        self._stop()

    def _stop(self) -> None:
        self._mode = STOPPED
        self._cl.clear()
        self._server.clear()
        self._cq = _NO_HELD
        self._cq_bytes = 0
        self._pending.clear_replies()
        self._blocked = None
        self._txns.counting = False

    def _held(self) -> int:
        return len(self._cl) + self._cq_bytes

    def _run(self, ts: float, out: list) -> None:
        """Read the client as far as possible, then match one reply; repeat."""
        pending = self._pending
        while self._mode not in _TERMINAL:
            # something to read: client octets held or buffered (the line
            # buffer's storage is empty when nothing is), or the end of a BDAT
            # chunk (which needs none: BDAT 0)
            if self._cq or self._mode == BDAT or self._cl._buf:
                self._pump_client(ts, out)
                if self._mode in _TERMINAL:
                    return
            if pending.replies and self._match_one(ts, out):
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
        if mode == COMMAND or mode == AUTH_RESPONSE or mode == RESYNC or mode == AFTER_AUTH:
            got = self._cl.take_line()
            if got is None:
                return False
            if mode == COMMAND:
                self._command(got, ts, out)
            elif mode == AUTH_RESPONSE:
                self._auth_answer(got[0], ts, out)
            elif _looks_like_command(got[0]):
                self._end_resync(ts, out)
                self._command(got, ts, out)
            else:
                # an answer, content or garbage: never shown
                self._skipped += 1
                if mode == AFTER_AUTH:
                    self._hidden_command(ts, out)
            return True
        if mode == DATA:
            if not len(self._cl):
                return False
            rest = self._feed_dot(self._cl.take_all(), ts, out)
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
                self._mode = RESYNC
                how = (f"{length} octets lost ({extra} past the BDAT chunk); "
                       "resync at the next line that looks like a command")
        else:
            if self._cl.partial:
                self._anomaly(out, ts, A.INCOMPLETE_LINE, CLIENT, "line cut by a gap")
            self._cl.gap(_looks_like_command)
            if mode == AUTH_RESPONSE and self._auth is not None:
                self._out_of_step(self._auth, ts, out)
            else:
                self._mode = RESYNC
            how = f"{length} octets lost; resync at the next line that looks like a command"
        self._anomaly(out, ts, A.CONTENT_GAP, CLIENT, how)

    def _hidden_command(self, ts: float, out: list) -> None:
        """A line the server reads as a command, not shown: its reply is matched
        to it, and it counts as an unknown command."""
        self._push(Pending(HIDDEN), ts, out)
        self._unknown += 1
        if self._unknown > self.limits.unknown_commands:
            self._end_resync(ts, out)
            self._anomaly(out, ts, A.TOO_MANY_UNKNOWN_COMMANDS, CLIENT,
                          f"more than {self.limits.unknown_commands} unknown commands; "
                          "connection no longer parsed")
            self._stop()

    def _end_resync(self, ts: float, out: list) -> None:
        """A line that looks like a command ends mode RESYNC or AFTER_AUTH: say what was skipped."""
        if self._skipped:
            self._anomaly(out, ts, A.CLIENT_LINES_SKIPPED, CLIENT,
                          f"{self._skipped} client line(s) "
                          + ("after an AUTH exchange" if self._mode == AFTER_AUTH else "after a loss")
                          + " skipped until one looked like a command; not shown (SASL answers "
                          "or message content may be among them)")
            self._skipped = 0
        self._mode = COMMAND

    def _out_of_step(self, auth: _Auth, ts: float, out: list) -> None:
        """The AUTH exchange lost its step: skip the client's answers, absorb the server's replies."""
        auth.lost = True
        if self._mode in (COMMAND, AUTH_RESPONSE):
            self._mode = RESYNC
        self._push(Pending("AUTH_ANSWER", absorbs=auth), ts, out)

    def _auth_end(self, auth: _Auth, code: int | None, ts: float, out: list) -> None:
        """The exchange's final reply (``code``; None: it was not seen)."""
        out.append(AuthEvent(ts, auth.mechanism, None if code is None else 200 <= code < 300,
                             code, auth.rounds, auth.cancelled))
        if self._auth is auth:
            self._auth = None

    def _push(self, p: Pending, ts: float, out: list) -> None:
        waiting = self._pending.push(p)
        txn = p.txn
        if txn is not None:
            txn.pending += 1
            p.trans_depth = txn.depth
        else:
            p.trans_depth = self._txns.depth
        if p.blocking:
            self._blocked = p
            p.held_since = ts if (len(self._cl) or self._cq_bytes) else None
        if waiting > self.limits.pending_commands:
            old = self._pending.pop_command()
            self._once(out, ts, A.TOO_MANY_PENDING_COMMANDS, CLIENT,
                       f"more than {self.limits.pending_commands} commands without reply; "
                       "the oldest are dropped unanswered")
            self._unanswered(old, ts, out)

    def _unanswered(self, p: Pending, ts: float, out: list) -> None:
        if p.absorbs is not None:
            self._auth_end(p.absorbs, None, ts, out)
        if p.txn is not None and self._txns.unanswered(p.txn, ts, out):
            self._stop()
        if p.reports_to is not None and self._txns.unanswered(p.reports_to, ts, out):
            self._stop()

    def _reporting(self) -> TransactionState | None:
        """The transaction under way, counting on one more reply (a command it
        reports): the reply's Pending holds it as ``reports_to``."""
        txn = self._txns.current
        if txn is not None:
            txn.pending += 1
        return txn

    def _command(self, got: tuple, ts: float, out: list) -> None:
        line, bare_lf, truncated = got
        text = line.decode("utf-8", "backslashreplace")
        raw_verb, _, param = text.partition(" ")
        verb = raw_verb.upper()
        known = verb in KNOWN_VERBS
        if truncated:
            if verb == "AUTH":   # what follows the mechanism is a credential
                self._anomaly(out, ts, A.MAX_COMMAND_LINE_LEN_EXCEEDED, CLIENT,
                              f"AUTH {_mechanism(param)} line of {self._cl.overlong} octets, longer "
                              f"than {self.limits.command_line}; its initial response not shown")
            else:
                self._anomaly(out, ts, A.MAX_COMMAND_LINE_LEN_EXCEEDED, CLIENT,
                              f"command line longer than {self.limits.command_line} octets: "
                              f"'{A.excerpt(text)}'")
            if self._cl.overlong > self.limits.line_buffer:
                self._anomaly(out, ts, A.TRUNCATED_LINE, CLIENT,
                              f"command line of {self._cl.overlong} octets, longer than "
                              f"{self.limits.line_buffer}")
        if bare_lf:
            self._once(out, ts, A.BARE_LF_COMMAND_LINE, CLIENT,
                       f"command '{A.excerpt(raw_verb)}' ended with a bare LF; parsed anyway")
        if self._first_cmd_ts is None:
            self._first_cmd_ts = ts
        shown = param
        if verb == "AUTH":   # never expose an initial response
            shown = _mechanism(param)
        cmd = Command(ts, verb, raw_verb, shown, bare_lf, truncated, known, trans_depth=self._txns.depth)
        out.append(cmd)
        if not known:
            self._unknown += 1
            self._anomaly(out, ts, A.UNKNOWN_COMMAND, CLIENT, f"'{A.excerpt(raw_verb)}'")
            if self._unknown > self.limits.unknown_commands:
                self._anomaly(out, ts, A.TOO_MANY_UNKNOWN_COMMANDS, CLIENT,
                              f"more than {self.limits.unknown_commands} unknown commands; "
                              "connection no longer parsed")
                self._stop()
                return
        handler = _ON_COMMAND.get(verb)
        if handler is not None:
            handler(self, cmd, param, ts, out)
        else:
            self._push(Pending(verb, cmd, reports_to=self._reporting()), ts, out)
        if verb not in _NO_ACTIVITY:
            self._activity = True

    # --- what each command does (_ON_COMMAND: verb -> method) ---------------

    def _cmd_helo(self, cmd, param, ts, out):
        # The name counts unless refused (then the one before is back: _helo_reply);
        # an accepted HELO/EHLO resets the transaction under way, a refused one does not.
        if self._helo_seen:
            self._anomaly(out, ts, A.DUPLICATE_FIELDS, CLIENT, f"a second {cmd.verb} in the session")
        self._helo_seen = True
        p = Pending(cmd.verb, cmd, reports_to=self._reporting())
        # the name it replaces; where the steps sent behind it begin
        p.carry = (self.helo, len(p.reports_to.steps) if p.reports_to is not None else 0)
        name = param.strip()
        if name or self.helo is None:     # no name: "" (as Zeek logs it), never over a name
            self.helo = name
        self._push(p, ts, out)

    def _cmd_reset(self, cmd, param, ts, out):   # RSET, QUIT
        p = Pending(cmd.verb, cmd, reports_to=self._reporting())
        self._close_txn(ts, out)
        self._push(p, ts, out)

    def _cmd_mail(self, cmd, param, ts, out):
        parsed = parse_path(param, "FROM")
        out.append(MailFrom(ts, parsed.address, parsed.params, param, trans_depth=cmd.trans_depth))
        current = self._txns.current
        if current is not None and current.has_mail:
            # A second MAIL: a step of the transaction under way, whose sender
            # stays the first MAIL's (as Suricata keeps it: most servers refuse
            # it, 503); rules judge its address all the same (MailFrom).
            self._anomaly(out, ts, A.DUPLICATE_FIELDS, CLIENT, "a second MAIL in the transaction")
            for name, detail in parsed.problems:
                self._anomaly(out, ts, name, CLIENT, f"MAIL: {detail}")
            self._step(current, cmd, param, ts, out)
            return
        txn = current or self._new_txn(ts)
        txn.has_mail = True
        txn.mailfrom = parsed.address
        txn.invalid |= bool(parsed.problems)
        for name, detail in parsed.problems:
            self._anomaly(out, ts, name, CLIENT, f"MAIL: {detail}")
        self._step(txn, cmd, param, ts, out)

    def _cmd_rcpt(self, cmd, param, ts, out):
        parsed = parse_path(param, "TO")
        out.append(RcptTo(ts, parsed.address, parsed.params, param, trans_depth=cmd.trans_depth))
        txn = self._txns.current
        if txn is None or not txn.has_mail:
            self._anomaly(out, ts, A.RCPT_BEFORE_MAIL, CLIENT, "RCPT without a MAIL")
            txn = txn or self._new_txn(ts)
            txn.invalid = True
        if parsed.address is not None:
            if len(txn.rcptto) < self.limits.transaction_steps:
                txn.rcptto.append(parsed.address)
            else:
                txn.rcptto_omitted += 1
        if parsed.problems:
            txn.invalid = True
        for name, detail in parsed.problems:
            self._anomaly(out, ts, name, CLIENT, f"RCPT: {detail}")
        if len(txn.rcptto) + txn.rcptto_omitted > self.limits.recipients and not txn.too_many:
            txn.too_many = True
            self._anomaly(out, ts, A.TOO_MANY_RECIPIENTS, CLIENT,
                          f"more than {self.limits.recipients} recipients")
        self._step(txn, cmd, param, ts, out)

    def _txn_for_message(self, verb: str, ts: float, out: list) -> TransactionState:
        txn = self._txns.current
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
            self._anomaly(out, ts, A.INVALID_BDAT, CLIENT, f"BDAT '{A.excerpt(param)}'")
            txn = self._txns.current
            if txn is not None:    # a step of it: its reply is the transaction's
                txn.invalid = True
                self._step(txn, cmd, param, ts, out)
            else:
                self._push(Pending("BDAT", cmd), ts, out)
            return
        size, last = int(m.group(1)), m.group(2) is not None
        if size > self.limits.bdat_chunk:
            self._anomaly(out, ts, A.BDAT_CHUNK_LEN_EXCEEDED, CLIENT,
                          f"BDAT chunk of {size} octets > {self.limits.bdat_chunk}")
        txn = self._txn_for_message("BDAT", ts, out)
        if self._msg is None:
            self._msg = MessageAssembler(self.limits, "BDAT", txn.depth)
        step = self._step(txn, cmd, param, ts, out, last=last)
        if last:
            step.carry = self._txns.message_ended()
        self._mode = BDAT
        self._bdat_left = size
        self._bdat_last = last

    def _cmd_auth(self, cmd, param, ts, out):
        self._auth = _Auth(cmd.parameter)
        self._push(Pending("AUTH", cmd, blocking=True), ts, out)

    def _cmd_starttls(self, cmd, param, ts, out):
        self._push(Pending("STARTTLS", cmd, blocking=True, reports_to=self._reporting()), ts, out)

    def _step(self, txn, cmd, param, ts, out, blocking=False, last=False) -> Pending:
        p = Pending(cmd.verb, cmd, txn, self._txns.add_step(txn, cmd.verb, param), blocking, last)
        self._push(p, ts, out)
        return p

    def _auth_answer(self, line: bytes, ts: float, out: list) -> None:
        # The line is a SASL answer (credentials): it never leaves this method.
        if self._auth is not None:
            self._auth.rounds += 1
            if line.strip() == b"*":
                self._auth.cancelled = True
        self._mode = COMMAND
        self._push(Pending("AUTH_ANSWER", blocking=True), ts, out)

    # --- messages ---------------------------------------------------------------

    def _start_data(self) -> None:
        self._dot = DotDecoder(self.limits.data_line)
        self._msg = MessageAssembler(self.limits, "DATA", self._txns.depth)
        self._mode = DATA

    def _feed_dot(self, data: bytes, ts: float, out: list):
        """DATA octets through the dot decoder into the message; returns what
        follows the end of data (None: the message goes on).  A lenient end
        of data met here is told at once (LenientTerminator)."""
        dot = self._dot
        seen = len(dot.terminators)
        content, rest = dot.feed(data)
        self._msg.feed(content, ts, out)
        found = dot.terminators
        if len(found) > seen and seen < 32:
            depth = self._msg.trans_depth
            out += [LenientTerminator(ts, label, trans_depth=depth) for label in found[seen:32]]
        return rest

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
        if self._max_size and msg.size > self._max_size:
            self._anomaly(out, ts, A.MESSAGE_SIZE_EXCEEDED, CLIENT,
                          f"message of {msg.size} octets > advertised SIZE {self._max_size}")
        out.append(MessageEnd(ts, msg.size, msg.method, complete, msg.gap, **extra,
                              trans_depth=msg.trans_depth))
        txn = self._txns.current
        if txn is not None:
            txn.size = msg.size
            txn.headers = msg.headers

    def _end_data(self, ts: float, out: list) -> None:
        self._mode = COMMAND
        self._finish_message(ts, out, True)
        txn = self._txns.current
        if txn is not None:
            p = Pending(".", None, txn, self._txns.add_step(txn, ".", ""))
        else:
            p = Pending(".")
        p.carry = self._txns.message_ended()
        self._push(p, ts, out)
        self._close_txn(ts, out)

    def _end_bdat_chunk(self, ts: float, out: list) -> None:
        self._mode = COMMAND
        if self._bdat_last:
            self._bdat_last = False
            self._finish_message(ts, out, True)
            self._close_txn(ts, out)

    # -------------------------------------------------------- transactions

    def _new_txn(self, ts: float) -> TransactionState:
        self._activity = False
        return self._txns.begin(ts, self.helo)

    def _close_txn(self, ts: float, out: list) -> None:
        if self._txns.current is None:
            return
        if self._msg is not None and self._msg.method == "BDAT":
            self._finish_message(ts, out, False)   # BDAT message abandoned (RSET, ...)
            self._mode = COMMAND if self._mode == BDAT else self._mode
        if self._txns.end(ts, out):
            self._stop()

    # -------------------------------------------------------------- server

    def _match_one(self, ts: float, out: list) -> bool:
        """Match the oldest reply (there is one) to the oldest command; False if it must wait."""
        pending = self._pending
        if not pending.commands:
            if len(pending.replies) > self.limits.unmatched_replies or \
                    pending.reply_octets > self.limits.unmatched_reply_octets:
                self._unmatched(pending.pop_reply(), ts, out)
                return True
            return False
        if pending.after_gap:
            reply = pending.pop_reply()
            if self._resync(reply, ts, out):
                return True
            p = pending.pop_command()
            if p.verb in AUTH_VERBS and self._auth is not None:
                self._auth.lost = True   # which of the exchange's replies this is, is unknown
            self._answer(p, reply, ts, out)
            return True
        head, code = pending.commands[0], pending.replies[0][0]
        if head.absorbs is not None and not plausible("AUTH_ANSWER", code):
            # the final reply of an exchange out of step was lost
            pending.pop_command()
            self._anomaly(out, ts, A.REPLY_NOT_SEEN, SERVER,
                          f"the final reply to AUTH {head.absorbs.mechanism} was not seen")
            self._unanswered(head, ts, out)
            return True
        if code == 354 and head.verb != "DATA" and self._realign(ts, out):
            return True
        if (code == 334 or code == 235) and head.verb not in AUTH_VERBS:
            # only AUTH gets these: it was lost in a client gap
            if code == 334:
                self._lost_auth(ts, out)
            else:
                self._unmatched(pending.pop_reply(), ts, out)
            return True
        p, reply = pending.take()
        self._answer(p, reply, ts, out)
        return True

    def _realign(self, ts: float, out: list) -> bool:
        """A 354 while the oldest command waiting is not DATA: only a DATA gets
        one, so the replies fell behind (a multi-line reply never ended, a
        reply lost) and the commands before the first DATA waiting will get
        none.  Taken off unanswered; True if there was such a DATA."""
        pending = self._pending
        k = next((i for i, q in enumerate(pending.commands) if q.verb == "DATA"), None)
        if k is None:
            return False
        skipped = [pending.pop_command() for _ in range(k)]
        self._anomaly(out, ts, A.REPLY_REALIGNED, SERVER,
                      "354 answers DATA: no reply was seen to " + ", ".join(_shown(q.verb) for q in skipped))
        for q in skipped:
            if q is self._blocked:
                self._blocked = None
            self._unanswered(q, ts, out)
        return True

    def _resync(self, reply: tuple, ts: float, out: list) -> bool:
        """First reply after a server gap: skip commands whose reply was lost.

        Returns True when the reply was put back to be matched again.
        """
        code = reply[0]
        pending = self._pending
        head = pending.commands[0]
        if plausible(head.verb, code):
            return False
        lost = pending.lost_before(code)
        if lost is not None:
            self._anomaly(out, ts, A.REPLY_NOT_SEEN, SERVER,
                          "lost in a gap: replies to " + ", ".join(_shown(p.verb) for p in lost))
            for p in lost:
                self._unanswered(p, ts, out)
                if p is self._blocked:
                    self._blocked = None
        elif code == 334:
            pending.put_back_reply(reply)
            self._lost_auth(ts, out)
            return True
        elif head is self._blocked and head.verb in AUTH_VERBS:
            # The exchange's end was lost (this reply answers a later command):
            # what the client sent after it is read from a line that looks like a command.
            pending.pop_command()
            self._anomaly(out, ts, A.REPLY_NOT_SEEN, SERVER,
                          f"reply to {head.verb} lost in a gap; the exchange's end is unknown")
            self._blocked = None
            if self._auth is not None:
                self._auth_end(self._auth, None, ts, out)
            self._mode = RESYNC
            pending.put_back_reply(reply)
            return True
        elif head is self._blocked and head.verb == "DATA":
            # The 354 was lost: the message was sent; read it, then match again.
            pending.pop_command()
            self._anomaly(out, ts, A.REPLY_ASSUMED, SERVER,
                          "reply to DATA lost in a gap; assumed 354")
            self._unanswered(head, ts, out)
            self._blocked = None
            self._start_data()
            pending.put_back_reply(reply)
            return True
        return False

    def _lost_auth(self, ts: float, out: list) -> None:
        """A 334 with no AUTH waiting: the AUTH was lost in a client gap.  Its
        exchange is out of step from the start: an absorbing AUTH_ANSWER takes
        this 334, the next ones and the final reply."""
        self._anomaly(out, ts, A.UNABLE_TO_MATCH_REPLY_WITH_REQUEST, SERVER,
                      "334: its AUTH was not seen (lost in a gap); the replies of the exchange "
                      "are taken up to its final one")
        auth = _Auth("")
        auth.lost = True
        self._pending.push_front(Pending("AUTH_ANSWER", absorbs=auth))

    def _unmatched(self, reply: tuple, ts: float, out: list) -> None:
        code, enh, lines, multi = reply
        out.append(Reply(ts, code, enh, lines, None, None, multi, 300 <= code < 400,
                         trans_depth=self._txns.depth))
        if code != 421:   # 421 may be sent unsolicited before closing (RFC 5321 3.8)
            self._anomaly(out, ts, A.UNABLE_TO_MATCH_REPLY_WITH_REQUEST, SERVER,
                          f"{code} '{A.excerpt(lines[0])}'")

    def _answer(self, p: Pending, reply: tuple, ts: float, out: list) -> None:
        code, enh, lines, multi = reply
        verb = p.verb
        out.append(Reply(ts, code, enh, lines, verb, p.command, multi, 300 <= code < 400,
                         trans_depth=p.trans_depth))
        # RFC 2920: without PIPELINING, each command waits for the previous reply.
        commands = self._pending.commands
        nxt = commands[0].command if commands else None
        if verb != ">" and nxt is not None and nxt.ts < ts and not self._pipelining:
            why = "which ends a group (RFC 2920)" if verb in ("HELO", "EHLO", "LHLO") else "without PIPELINING"
            self._once(out, ts, A.PIPELINING_NOT_OFFERED, CLIENT,
                       f"{_shown(nxt.verb)} sent before the reply to {_shown(verb)}, {why}")
        reports_to = p.reports_to
        if reports_to is not None:     # its last reply, before a handler ends it (STARTTLS)
            reports_to.last_reply = f"{code} {lines[-1]}" if lines[-1] else str(code)
        handler = _ON_REPLY.get(verb)
        if handler is not None:
            handler(self, p, code, lines, ts, out)
        ends_message = verb == "." or (verb == "BDAT" and p.last)
        if ends_message and p.carry is not None:
            self._txns.message_replied(p.carry)
        txn = p.txn
        if txn is not None and self._txns.answered(txn, p.step, code, enh, lines, ends_message, ts, out):
            self._stop()
        if reports_to is not None and self._txns.reported(reports_to, code, lines, ts, out):
            self._stop()

    # --- what each reply does (_ON_REPLY: verb answered -> method) ----------------

    def _greeting(self, p: Pending, code: int, lines: tuple, ts: float, out: list) -> None:
        if code != 220:
            self._anomaly(out, ts, A.INVALID_REPLY, SERVER, f"first reply is {code}, not 220")
        words = lines[0].split()
        out.append(Greeting(ts, code, code == 220, lines, words[0] if words else ""))
        if self._first_cmd_ts is not None and self._first_cmd_ts < ts:
            self._anomaly(out, ts, A.NO_SERVER_WELCOME_MESSAGE, CLIENT,
                          "a command was sent before the server's first reply")

    def _helo_reply(self, p: Pending, code: int, lines: tuple, ts: float, out: list) -> None:
        if 200 <= code < 300:
            # RFC 5321 4.1.4: an accepted HELO/EHLO resets the transaction under
            # way -- unless the client sent steps of it behind the HELO without
            # waiting (RFC 2920: HELO ends a pipelined group): they stay in it
            txn = p.reports_to
            if txn is not None and txn is self._txns.current and len(txn.steps) == p.carry[1]:
                self._close_txn(ts, out)
            if code == 250 and p.verb != "HELO":
                caps = ServerCapabilities(ts, **parse_ehlo_keywords(lines[1:], lines[0]))
                out.append(caps)
                self._pipelining = caps.pipelining
                self._max_size = caps.size or 0
            return
        # refused: its name does not count (nor for a transaction begun since)
        name = p.command.parameter.strip() if p.command is not None else ""
        if self.helo == name and p.carry[0] != name:
            self.helo = p.carry[0]
            current = self._txns.current
            if current is not None and current is not p.reports_to and current.helo == name:
                current.helo = p.carry[0]

    def _data_reply(self, p: Pending, code: int, lines: tuple, ts: float, out: list) -> None:
        if p.assumed:
            if code != 354:
                self._anomaly(out, ts, A.DATA_COMMAND_REJECTED, SERVER,
                              f"DATA got {code} after its content was read as a message "
                              "(354 had been assumed)")
            return
        if p is self._blocked:
            self._blocked = None
        # RFC 2920 3.1: DATA ends a pipelined group; what follows waits for its
        # reply (a server that offers PIPELINING may take content before the 354)
        if p.held_since is not None and p.held_since < ts and not self._pipelining:
            self._anomaly(out, ts, A.INVALID_PIPELINED_SEQUENCE, CLIENT,
                          "client octets sent behind DATA before its reply, without PIPELINING")
        if code == 354:
            self._start_data()
        else:
            self._anomaly(out, ts, A.DATA_COMMAND_REJECTED, SERVER,
                          f"DATA got {code}; the client's next lines are commands")

    def _auth_reply(self, p: Pending, code: int, lines: tuple, ts: float, out: list) -> None:
        if p is self._blocked:
            self._blocked = None
        if p.absorbs is not None:        # an exchange out of step: 334s, then its final reply
            if code == 334:
                self._pending.push_front(p)
            else:
                self._auth_end(p.absorbs, code, ts, out)
            return
        auth = self._auth
        if p.assumed:
            # the reply came after all: a final one ends the exchange, and its
            # absorbing AUTH_ANSWER (queued right behind) has nothing left to take
            if code != 334 and auth is not None:
                commands = self._pending.commands
                if commands and commands[0].absorbs is auth:
                    self._pending.pop_command()
                self._auth_end(auth, code, ts, out)
            return
        if code == 334:
            if auth is not None and auth.lost:
                self._out_of_step(auth, ts, out)
            elif self._mode == COMMAND:
                self._mode = AUTH_RESPONSE
            return
        if auth is not None:
            self._auth_end(auth, code, ts, out)
            if self._mode == COMMAND:
                self._mode = RESYNC if auth.lost else AFTER_AUTH

    def _starttls_reply(self, p: Pending, code: int, lines: tuple, ts: float, out: list) -> None:
        if p is self._blocked:
            self._blocked = None
        if p.held_since is not None and p.held_since < ts:
            self._anomaly(out, ts, A.INVALID_PIPELINED_SEQUENCE, CLIENT,
                          "client octets sent behind STARTTLS before its reply")
        if code != 220:
            self._anomaly(out, ts, A.TLS_REJECTED, SERVER, f"STARTTLS got {code}")
            return
        self._go_tls(ts, out, f"{code} {lines[-1]}" if lines[-1] else str(code))

    def _go_tls(self, ts: float, out: list, reply: str | None = None) -> None:
        held = bytes(self._cl.take_all())
        if not held:
            held = next((b for b in self._cq if isinstance(b, bytes) and b), b"")
        if held and held[:1] != b"\x16":
            # what was injected, by its first verb: the lines may hold credentials
            m = _VERB_START.match(held.split(b"\n", 1)[0].rstrip(b"\r"))
            verb = m.group(1).upper().decode() if m is not None else ""
            first = f"'{verb}'" if verb in KNOWN_VERBS else "not a command"
            self._anomaly(out, ts, A.STARTTLS_PLAINTEXT_INJECTION, CLIENT,
                          f"{len(held)} octets of plaintext after STARTTLS, not a TLS record; "
                          f"the first line's verb: {first}")
        self.tls = True
        if self._txns.current is None:
            self._new_txn(ts).last_reply = reply
        self._txns.current.tls = True
        self._close_txn(ts, out)
        if self._txns.flush(ts, out):
            self._stop()
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
        elif closing:   # AUTH, AUTH_ANSWER: what is held may be answers; never read
            self._anomaly(out, ts, A.REPLY_ASSUMED, SERVER,
                          f"no reply to {p.verb} before {why}; assumed final, what followed "
                          "is not read")
            if self._auth is not None:
                self._auth_end(self._auth, None, ts, out)
            self._cl.clear()
            self._cq = _NO_HELD
            self._cq_bytes = 0
        else:           # never risk reading an answer as a command
            self._anomaly(out, ts, A.REPLY_ASSUMED, SERVER,
                          f"no reply to {p.verb} before {why}; client lines are skipped until "
                          "one looks like a command")
            if self._auth is not None:
                self._out_of_step(self._auth, ts, out)
            else:
                self._mode = RESYNC

    def _pump_held(self) -> None:
        """Move held client octets into the line buffer (stopping at a gap)."""
        while self._cq and not isinstance(self._cq[0], int):
            item = self._cq.popleft()
            if not self._cq:
                self._cq = _NO_HELD
            self._cq_bytes -= len(item)
            self._cl.feed(item)

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
        if (self._mode == RESYNC or self._mode == AFTER_AUTH) and self._skipped:
            self._end_resync(ts, out)
        if self._cl.partial:
            self._anomaly(out, ts, A.INCOMPLETE_LINE, CLIENT, "connection ended inside a line")
        if self._server.in_reply:
            self._anomaly(out, ts, A.INCOMPLETE_LINE, SERVER, "connection ended inside a reply")
        pending = self._pending
        while pending.replies:
            self._unmatched(pending.pop_reply(), ts, out)
        lost = pending.take_commands()
        silent = len(lost) == 1 and lost[0].verb == ">" and self._first_cmd_ts is None
        if lost and not silent:
            verbs = [_shown(p.verb) for p in lost]
            self._anomaly(out, ts, A.REPLY_NOT_SEEN, SERVER,
                          f"{len(verbs)} command(s) never answered: " + A.excerpt(", ".join(verbs)))
        for p in lost:
            if p.txn is not None:
                p.txn.pending -= 1
            if p.reports_to is not None:
                p.reports_to.pending -= 1
            if p.absorbs is not None:
                self._auth_end(p.absorbs, None, ts, out)
        if self._auth is not None:   # the client never answered the last 334
            self._auth_end(self._auth, None, ts, out)


_ON_COMMAND = {
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

_ON_REPLY = {
    ">": SMTPConnection._greeting,
    "HELO": SMTPConnection._helo_reply,
    "EHLO": SMTPConnection._helo_reply,
    "LHLO": SMTPConnection._helo_reply,
    "DATA": SMTPConnection._data_reply,
    "AUTH": SMTPConnection._auth_reply,
    "AUTH_ANSWER": SMTPConnection._auth_reply,
    "STARTTLS": SMTPConnection._starttls_reply,
}
