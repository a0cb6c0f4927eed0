"""Commands waiting for their reply, and replies waiting for their command.

A server answers commands in the order it got them, and a client may send
several before the first reply (RFC 2920 pipelining): replies are matched to
commands first in, first out.  The greeting answers the pseudo-command ``">"``.
The two directions are fed independently, so a complete reply may also wait
for the command it answers (bounded by ``SmtpLimits.unmatched_replies``).

After a gap in the server's octets, replies were lost: the first reply after
it is matched by plausibility, and the commands in front of the first one it
could answer are the ones whose replies were lost (:meth:`PendingQueue.lost_before`).
Which reply is the first after the gap is kept by position, so it does not
depend on whether the replies received before the gap were matched yet.
"""

from __future__ import annotations

__all__ = ["Pending", "PendingQueue", "plausible"]

# commands and replies while they hold nothing: a list only while they hold
# something (an empty list is 56-72 bytes, one queue per open flow)
_NONE = ()


class Pending:
    """A command waiting for its reply."""

    __slots__ = ("verb", "command", "txn", "step", "blocking", "assumed", "last", "trans_depth",
                 "held_since", "absorbs", "reports_to", "carry")

    def __init__(self, verb, command=None, txn=None, step=None, blocking=False, last=False,
                 absorbs=None, reports_to=None):
        self.verb = verb
        self.command = command
        self.txn = txn
        self.step = step          # index in txn.steps
        #: a transaction that is not this command's (it is no step of it) but
        #: takes its reply as its last one, and waits for it: the one under way
        #: when the command came, or the one it ended (RSET, QUIT, HELO)
        self.reports_to = reports_to
        #: what the reply's handler needs: the HELO name a HELO replaced, the
        #: address of a MAIL sent inside a transaction
        self.carry = None
        self.blocking = blocking  # the client's next octets wait for this reply
        self.assumed = False      # the positive reply was assumed (REPLY_ASSUMED)
        self.last = last          # BDAT ... LAST
        self.trans_depth = 1      # what its reply carries (set when it is queued)
        self.held_since = None    # blocking: ts the client's octets began to wait for the reply
        #: "AUTH_ANSWER" of an AUTH exchange that lost its step: it takes every
        #: 334 and then the final reply, however many answers the client sent
        self.absorbs = absorbs


AUTH_VERBS = ("AUTH", "AUTH_ANSWER")


def _octets(reply: tuple) -> int:
    """Octets of a reply's lines (what holding it costs, give or take)."""
    lines = reply[2]
    return len(lines[0]) if len(lines) == 1 else sum(map(len, lines))


def plausible(verb: str, code: int) -> bool:
    """Could ``code`` answer ``verb``?  Used to resynchronise after a loss."""
    if code == 354:
        return verb == "DATA"
    if code in (334, 235):
        return verb in AUTH_VERBS
    if verb in AUTH_VERBS:   # RFC 4954: 334, 235, or a 4xx/5xx failure
        return code >= 400
    if code == 221:
        return verb == "QUIT"
    if code == 220:
        return verb in (">", "STARTTLS")
    if verb == ">":
        return code in (421, 554)
    if verb == "DATA":
        return code >= 400
    return True


class PendingQueue:
    """The commands without a reply yet and the replies without a command yet, in order.

    A reply is a tuple (code, enhanced, lines, multiline).
    """

    __slots__ = ("commands", "replies", "_gap_at", "reply_octets")

    def __init__(self) -> None:
        # the greeting's: before any transaction, its reply carries the first one's depth
        self.commands: list[Pending] | tuple = [Pending(">")]   # <= pending_commands + 1
        self.replies: list[tuple] | tuple = _NONE                # <= unmatched_replies + 1
        #: octets of the lines of the replies waiting (<= unmatched_reply_octets + one reply)
        self.reply_octets = 0
        # after a server gap: how many replies waiting were received before
        # it (the next one is the first after it); None: no gap to resync
        self._gap_at: int | None = None

    def server_gap(self) -> None:
        """Octets of the server were lost after the replies waiting now."""
        if self._gap_at is None:
            self._gap_at = len(self.replies)

    @property
    def after_gap(self) -> bool:
        """The oldest reply waiting is the first after a server gap."""
        return self._gap_at == 0 and bool(self.replies)

    def _popped(self) -> None:
        if self._gap_at is not None:
            self._gap_at = None if self._gap_at == 0 else self._gap_at - 1

    def push(self, p: Pending) -> int:
        """Queue a command; returns how many wait now."""
        commands = self.commands
        if commands:
            commands.append(p)
            return len(commands)
        self.commands = [p]
        return 1

    def push_front(self, p: Pending) -> None:
        """Make ``p`` the oldest command again (it waits for another reply)."""
        if self.commands:
            self.commands.insert(0, p)
        else:
            self.commands = [p]

    def pop_command(self) -> Pending:
        commands = self.commands
        p = commands.pop(0)
        if not commands:
            self.commands = _NONE
        return p

    def take(self) -> tuple[Pending, tuple]:
        """The oldest reply and the oldest command (both are there): it answers it."""
        replies = self.replies
        reply = replies.pop(0)
        if not replies:
            self.replies = _NONE
            self.reply_octets = 0
        else:
            self.reply_octets -= _octets(reply)
        self._popped()
        commands = self.commands
        p = commands.pop(0)
        if not commands:
            self.commands = _NONE
        return p, reply

    def take_commands(self) -> list[Pending]:
        """Every command still waiting, oldest first; the queue holds none after."""
        commands = list(self.commands)
        self.commands = _NONE
        return commands

    def push_reply(self, reply: tuple) -> None:
        if self.replies:
            self.replies.append(reply)
        else:
            self.replies = [reply]
        self.reply_octets += _octets(reply)

    def pop_reply(self) -> tuple:
        replies = self.replies
        reply = replies.pop(0)
        if not replies:
            self.replies = _NONE
            self.reply_octets = 0
        else:
            self.reply_octets -= _octets(reply)
        self._popped()
        return reply

    def put_back_reply(self, reply: tuple) -> None:
        """Make ``reply`` the next one to match again (not as the first after a gap)."""
        if self.replies:
            self.replies.insert(0, reply)
        else:
            self.replies = [reply]
        self.reply_octets += _octets(reply)
        if self._gap_at is not None:
            self._gap_at += 1

    def clear_replies(self) -> None:
        self.replies = _NONE
        self.reply_octets = 0
        self._gap_at = None

    def lost_before(self, code: int) -> list[Pending] | None:
        """The first reply after a gap has ``code``, and the oldest command could
        not get it: take off the commands in front of the first one that could
        (their replies were lost) and return them; None if no command could."""
        commands = self.commands
        k = next((i for i, p in enumerate(commands) if plausible(p.verb, code)), None)
        if k is None:
            return None
        lost = commands[:k]
        del commands[:k]
        return lost
