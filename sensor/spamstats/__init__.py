"""Reject statistics: the Bro spam-sender detector (seed 004), with notices and bans.

What it means (``shared/seeds/004_7a4976e4f34d1696.txt``)
---------------------------------------------------------
Per originating host (the client of an SMTP connection), within an inspection
window of ``period`` seconds (60 min):

* ``total``: connections that got a server reply of any code (the greeting
  counts, as Bro's ``smtp_reply`` fires for it);
* ``rejects``: connections that got at least one reply whose code is in
  ``reject_codes`` ({550, 551, 553, 554});
* the recipients (RCPT TO) of the rejected connections, before and after the
  reject (up to a cap).

A check finds the hosts with ``total >= threshold`` (300) and
``rejects*100 // total >= percent`` (30, integer arithmetic like the seed) and
raises one notice each: ``SMTP_StrangeRejectBehavior`` when the host is in
``local_mail`` (a known mail server), else ``SMTP_PossibleInternalSpam`` when
it is in ``local_networks``, else ``SMTP_PossibleSpam``.  The message is the
seed's: ``"%s - sent: %d rejected: %d percent"``, plus ``" mailto: %s"`` (the
recipients, comma-separated) for the internal case.  Like Zeek's SSH
brute-forcing notice, a few sampled reject replies (code, enhanced code,
text) go with it (``sub`` and ``samples``).  A connection is counted in the
window of its first reply there; a reject is counted where the connection was
counted, so ``rejects <= total`` everywhere; a connection alive across two
windows is counted in both, as in the seed.

The modules
-----------
* ``window``: the inspection window, fixed (the seed's) or sliding.
* ``hosts``: what is kept per host and per connection, bounded.
* ``stats``: ``RejectStats``, the counting and when a window is judged (every
  window is, once per change; one notice per evidence).
* ``listener``: ``RejectStatsListener``, SMTP events of the pipeline in.
* ``actor``: ``SpamStatsActor``, the notice records and the bans.
* ``snapshot``: the statistics and bans across a restart.

Using it
--------
::

    stats = RejectStats(config.spam_stats)                 # clock: time.time
    actor = SpamStatsActor(stats, sink, KernelEnforcer(maps))
    pipeline = Pipeline(sink, listeners=[RejectStatsListener(stats, actor)])
    actor.restore(state_file)                              # at start
    ... actor.tick(now) every second or so; actor.snapshot(state_file)
        every snapshot_interval and at shutdown.
"""

from __future__ import annotations

from sensor.config import NOTICE_TYPES, POSSIBLE_INTERNAL_SPAM, POSSIBLE_SPAM, STRANGE_REJECT_BEHAVIOR
from sensor.spamstats.actor import ActorCounters, Ban, SpamStatsActor
from sensor.spamstats.hosts import ConnState
from sensor.spamstats.listener import RejectStatsListener
from sensor.spamstats.snapshot import Restored, SnapshotError, read_snapshot, write_snapshot
from sensor.spamstats.stats import Notice, RejectStats, RejectStatsCounters, Sample

__all__ = [
    "RejectStats", "RejectStatsListener", "SpamStatsActor", "ConnState", "Notice", "Sample",
    "RejectStatsCounters", "ActorCounters", "Ban", "Restored", "SnapshotError", "write_snapshot", "read_snapshot",
    "NOTICE_TYPES", "POSSIBLE_SPAM", "POSSIBLE_INTERNAL_SPAM",
    "STRANGE_REJECT_BEHAVIOR",
]
