"""The reject statistics' pipeline listener: SMTP events in, counts out."""

from __future__ import annotations

from sensor.smtp import events as sev
from sensor.spamstats.hosts import ConnState

__all__ = ["RejectStatsListener"]


class RejectStatsListener:
    """A pipeline listener: ``Pipeline(listeners=[RejectStatsListener(stats)])``.

    Counts each connection once at its first server reply, and once more as
    rejected at its first reject reply, with the flags in ``session.scratch``;
    hands RCPT TO addresses over.  With ``actor``, notices raised while
    counting (a window that ended) are acted on at once."""

    KEY = "spam_stats"

    def __init__(self, stats, actor=None):
        self.stats = stats
        self.actor = actor

    def __call__(self, session, event) -> None:
        kind = type(event)
        if kind is sev.Reply:
            conn = session.scratch.get(self.KEY)
            if conn is None:
                conn = session.scratch[self.KEY] = ConnState()
            flow = session.flow
            text = " ".join(event.lines)
            enhanced = event.enhanced
            if enhanced and text.startswith(enhanced):
                text = text[len(enhanced):].lstrip()
            self.stats.observe_reply(flow.orig_h, event.ts, event.code, conn, enhanced=enhanced,
                                     text=text, uid=flow.uid)
            if self.actor is not None and self.stats.pending:
                self.actor.act(self.stats.drain(), event.ts)
        elif kind is sev.RcptTo:
            conn = session.scratch.get(self.KEY)
            if conn is None:
                conn = session.scratch[self.KEY] = ConnState()
            address = event.address if event.address is not None else event.raw
            self.stats.observe_recipient(session.flow.orig_h, address, conn)
