"""The mail transactions of one connection, and their Transaction events.

A transaction (Zeek's smtp.log meaning) is begun by a MAIL, RCPT, DATA or
BDAT outside one (or by STARTTLS, or at close for a session with commands but
no transaction: commands other than RSET, NOOP and QUIT, which say nothing of
the client) and ends at RSET, an accepted HELO/EHLO (RFC 5321 4.1.4: a
refused one changes nothing), a MAIL inside one that the server accepted,
STARTTLS, QUIT, the end of its message or the end of the connection.
Once ended it waits until each of its steps (MAIL, RCPT, DATA, BDAT and the
end of a DATA message) and each command it reports (the others sent while it
was under way, and the one that ended it) has had its reply, or is known
never to get one; then it becomes a :class:`~sensor.smtp.events.Transaction`
event, whose ``last_reply`` is the last of those replies.  Transactions are
emitted in the order they began.

``depth`` numbers the transactions of the connection one by one (the events
of one carry it as ``trans_depth``).  ``messages_before`` is Zeek's count:
of the messages the client ended before the transaction began, those whose
end had its reply (whatever it said); Zeek's smtp.log ``trans_depth`` is that
plus one, so a transaction that never reached a message shares it with the
next, and a capture of the client alone numbers every message 1.  Counted
when the transaction is emitted (after the replies to what came before it),
it does not depend on how the two directions' octets interleaved.

A transaction with a protocol error (``TransactionState.invalid``) counts
against ``SmtpLimits.invalid_transactions``; past it the connection is no
longer parsed (TOO_MANY_INVALID_TRANSACTIONS), which the methods that emit
tell their caller by returning True.
"""

from __future__ import annotations

from sensor.smtp import anomalies as A
from sensor.smtp.events import CLIENT, SmtpAnomaly, Step, Transaction
from sensor.smtp.limits import SmtpLimits

__all__ = ["TransactionState", "Transactions"]

# waiting while it holds nothing: a list only while it holds something
_NONE = ()


class TransactionState:
    """One mail transaction being built (becomes a Transaction event)."""

    __slots__ = ("depth", "ends_before", "first_ts", "helo", "mailfrom", "has_mail", "rcptto", "steps",
                 "headers", "size", "last_reply", "tls", "delivered", "pending",
                 "invalid", "too_many", "steps_omitted", "rcptto_omitted")

    def __init__(self, depth: int, ts: float, helo: str | None, ends_before: int = 0) -> None:
        self.depth = depth
        #: message ends the client sent before this transaction began
        self.ends_before = ends_before
        self.first_ts = ts
        self.helo = helo
        self.mailfrom = None
        self.has_mail = False         # a MAIL was seen (its address may be None: unparsable)
        self.rcptto: list[str] = []
        self.steps: list[list] = []   # [verb, parameter, code, enhanced, text]
        self.headers = None
        self.size = None
        self.last_reply = None
        self.tls = False
        self.delivered = False
        self.pending = 0              # steps (and commands it reports) still waiting for their reply
        self.invalid = False
        self.too_many = False         # TOO_MANY_RECIPIENTS was raised
        # past SmtpLimits.transaction_steps: steps and addresses counted, not kept
        self.steps_omitted = 0
        self.rcptto_omitted = 0


class Transactions:
    """The transaction under way (``current``), the ended ones waiting for
    replies, and the numbering: ``depth`` is the depth of the transaction
    under way, or if none of the next one to begin (what an event that
    happens now carries as its ``trans_depth``)."""

    __slots__ = ("limits", "current", "waiting", "depth", "_replied", "_ends", "_counted", "_counted_replied",
                 "invalid", "counting")

    def __init__(self, limits: SmtpLimits) -> None:
        self.limits = limits
        self.current: TransactionState | None = None
        self.waiting: list[TransactionState] | tuple = _NONE
        self.depth = 1
        # Each message end the client sent (the final dot, BDAT ... LAST), in
        # order, and whether its reply came (whatever it said: Zeek's
        # messages_transferred counts those): ``_replied`` holds the flags of
        # those not yet counted for an emitted transaction, from end number
        # ``_counted`` on; ``_counted_replied`` of the ends before it came.
        self._replied: list[bool] | tuple = _NONE
        self._ends = 0
        self._counted = 0
        self._counted_replied = 0
        self.invalid = 0         # invalid transactions emitted
        #: invalid transactions are counted (False once the connection is no longer parsed)
        self.counting = True

    @property
    def begun(self) -> int:
        """Transactions begun so far."""
        return self.depth if self.current is not None else self.depth - 1

    def begin(self, ts: float, helo: str | None) -> TransactionState:
        """Begin a transaction (none is under way)."""
        txn = self.current = TransactionState(self.depth, ts, helo, self._ends)
        return txn

    def message_ended(self) -> int:
        """The client ended a message: its number (for ``message_replied``)."""
        if not self._replied:
            self._replied = []
        self._replied.append(False)
        self._ends += 1
        return self._ends - 1

    def message_replied(self, number: int) -> None:
        """The end of message ``number`` had its reply."""
        i = number - self._counted
        if 0 <= i < len(self._replied):
            self._replied[i] = True

    def _messages_before(self, txn: TransactionState) -> int:
        """Of the message ends before ``txn`` began, those that had their reply.
        Transactions are emitted in the order they began, each after the replies
        to what came before it, so these are known for good when it is emitted."""
        take = txn.ends_before - self._counted
        if take > 0:
            done = self._replied[:take]
            self._counted_replied += sum(done)
            self._counted += len(done)
            del self._replied[:take]
        return self._counted_replied

    def add_step(self, txn: TransactionState, verb: str, param: str) -> int | None:
        """A step of ``txn``; its index in ``txn.steps``, or None past
        ``SmtpLimits.transaction_steps`` (counted, not kept: its reply still
        counts for the transaction)."""
        steps = txn.steps
        if len(steps) >= self.limits.transaction_steps:
            txn.steps_omitted += 1
            return None
        steps.append([verb, param, None, None, None])
        return len(steps) - 1

    def end(self, ts: float, out: list) -> bool:
        """End the transaction under way (there is one); emit what is ready."""
        txn = self.current
        self.current = None
        self.depth += 1
        if self.waiting:
            self.waiting.append(txn)
        else:
            self.waiting = [txn]
        return self._emit_ready(ts, out)

    def answered(self, txn: TransactionState, step: int, code: int, enhanced, lines: tuple,
                 delivers: bool, ts: float, out: list) -> bool:
        """The reply to ``txn.steps[step]``; ``delivers``: it is the final reply to the message."""
        if step is not None:
            s = txn.steps[step]
            s[2], s[3], s[4] = code, enhanced, "\n".join(lines)
        txn.last_reply = f"{code} {lines[-1]}" if lines[-1] else str(code)
        if 500 <= code <= 504:
            txn.invalid = True
        if delivers:
            txn.delivered = 200 <= code < 300
        txn.pending -= 1
        return self._emit_ready(ts, out) if self.waiting else False

    def reported(self, txn: TransactionState, code: int, lines: tuple, ts: float, out: list) -> bool:
        """The reply to a command ``txn`` reports (no step of it): its last reply now."""
        txn.last_reply = f"{code} {lines[-1]}" if lines[-1] else str(code)
        txn.pending -= 1
        return self._emit_ready(ts, out) if self.waiting else False

    def unanswered(self, txn: TransactionState, ts: float, out: list) -> bool:
        """A step of ``txn`` will never get its reply."""
        txn.pending -= 1
        return self._emit_ready(ts, out)

    def flush(self, ts: float, out: list) -> bool:
        """Emit every ended transaction, replies or not (STARTTLS, close)."""
        over = False
        while self.waiting:
            over |= self._emit(self.waiting.pop(0), ts, out)
        self.waiting = _NONE
        return over

    def _emit_ready(self, ts: float, out: list) -> bool:
        over = False
        waiting = self.waiting
        while waiting and waiting[0].pending <= 0:
            over |= self._emit(waiting.pop(0), ts, out)
        if not waiting:
            self.waiting = _NONE
        return over

    def _emit(self, txn: TransactionState, ts: float, out: list) -> bool:
        out.append(Transaction(
            ts=ts, trans_depth=txn.depth, helo=txn.helo, mailfrom=txn.mailfrom,
            rcptto=tuple(txn.rcptto), headers=txn.headers, message_size=txn.size,
            last_reply=txn.last_reply, tls=txn.tls,
            steps=tuple(Step(*s) for s in txn.steps), delivered=txn.delivered,
            first_ts=txn.first_ts, messages_before=self._messages_before(txn),
            steps_omitted=txn.steps_omitted, rcptto_omitted=txn.rcptto_omitted))
        if txn.invalid and self.counting:
            self.invalid += 1
            limit = self.limits.invalid_transactions
            if self.invalid > limit:
                out.append(SmtpAnomaly(ts, A.TOO_MANY_INVALID_TRANSACTIONS, CLIENT,
                                       f"more than {limit} invalid transactions; "
                                       "connection no longer parsed"))
                self.counting = False
                return True
        return False
