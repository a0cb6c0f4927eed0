"""Several sensors sharing reject statistics and bans through Redis (``[cluster]``).

A spammer spreads his connections over every MX of a domain; the seed's
statistics (``sensor.spamstats``) only see him if they see them all.  With
``[cluster] enabled``, every sensor of a fleet writes its counts to one Redis
(or Valkey, or a Redis Cluster), judges each host on the fleet's counts, and
shares its bans:

* ``keys``: the key names, and the checks of every value read back;
* ``connection``: the redis-py client (TLS, password, cluster mode) and the
  link's health (outages counted and logged, back-off);
* ``shipper``: the writer thread: counts, claims and bans in batched
  pipelines, the fleet's counts read back;
* ``banfeed``: the reader thread: the ban stream;
* ``shared``: ``SharedStats``, the hook of ``RejectStats``;
* ``actor``: ``ClusterActor``: one notice across the fleet, bans published
  and applied;
* ``node``: ``Cluster``, the above wired together.

The event loop never waits for Redis: it hands counts, claims and bans to the
writer thread through bounded structures (counted when full) and takes the
answers at each turn.  When Redis is unreachable every sensor goes on with
its own statistics and bans, and catches up when Redis returns: the counts
summed meanwhile, its bans and its notices' keys are written then, and the
bans the others published meanwhile are read from the stream.
``docs/operations.md`` ("Several sensors") says what is shared and promised.
"""

from sensor.cluster.node import Cluster

__all__ = ["Cluster"]
