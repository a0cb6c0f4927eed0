"""The keys this product writes in Redis, and the checks of what it reads back.

Every key starts with ``[cluster] key_prefix``.  A host's keys carry the host
in a hash tag (``{192.0.2.66}``): in a Redis Cluster they live in one hash
slot, so one node holds a host's window and the reads of a flush go to the
node its writes went to.

* ``<prefix>rs:{<host>}:<slot>``: a hash ``t`` (connections) and ``r``
  (rejected connections) of one bucket of the shared window (``slot`` =
  floor(time / bucket width)); HINCRBY, EXPIRE a window and two buckets.
* ``<prefix>notice:<note>:{<host>}``: the claim of a notice (SET NX EX
  suppress_for, value: the sensor's name): one notice per host and type
  within ``suppress_for`` across the fleet.
* ``<prefix>bans``: a stream of the bans made by the sensors (XADD MAXLEN ~):
  ``sensor``, ``network``, ``note``, ``expires`` (Unix time), ``ttl``.

Anything read back is checked: a count is a decimal integer up to
``MAX_COUNT``, a ban's fields are short text, one host (a /32 or /128: the
statistics ban nothing wider, so a ``0.0.0.0/0`` in the stream bans
nothing), finite numbers.  A value that is not (a key of another type, a huge number, a
garbled ban) is counted by the caller and ignored.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass

__all__ = ["Keys", "RemoteBan", "parse_count", "parse_ban", "MAX_COUNT", "STREAM_MAXLEN"]

#: the largest count believed from Redis (a bucket's connections)
MAX_COUNT = 10**9
#: bans kept in the stream (approximately: XADD MAXLEN ~)
STREAM_MAXLEN = 10_000
#: the longest text field of a ban entry believed
MAX_FIELD = 200

_DIGITS = re.compile(rb"[0-9]{1,10}")


class Keys:
    """The key names under one prefix."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.bans = f"{prefix}bans"

    def bucket(self, host: str, slot: int) -> str:
        return f"{self.prefix}rs:{{{host}}}:{slot}"

    def notice(self, note: str, host: str) -> str:
        return f"{self.prefix}notice:{note}:{{{host}}}"


@dataclass(frozen=True, slots=True)
class RemoteBan:
    """A ban from the stream: who made it, what, until when (Unix time)."""

    sensor: str
    network: str
    note: str
    expires: float
    ttl: float


def parse_count(value) -> int | None:
    """A count read back (bytes, None for a missing field): its value, 0 when
    missing, None when it is not a count at all."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value <= MAX_COUNT else None
    if not isinstance(value, bytes) or not _DIGITS.fullmatch(value):
        return None
    n = int(value)
    return n if n <= MAX_COUNT else None


def parse_ban(fields) -> RemoteBan | None:
    """A stream entry's fields (a dict of bytes): the ban, or None when any is wrong."""
    if not isinstance(fields, dict):
        return None
    try:
        sensor, network, note, expires, ttl = (fields[k] for k in (b"sensor", b"network", b"note", b"expires", b"ttl"))
        if any(not isinstance(v, bytes) or len(v) > MAX_FIELD for v in (sensor, network, note, expires, ttl)):
            return None
        net = ipaddress.ip_network(network.decode("ascii"), strict=False)
        if net.prefixlen != net.max_prefixlen:
            return None         # the statistics ban hosts: a wider prefix is not theirs
        expires_f, ttl_f = float(expires), float(ttl)
        if not (math.isfinite(expires_f) and math.isfinite(ttl_f)) or ttl_f <= 0:
            return None
        return RemoteBan(sensor.decode("utf-8"), str(net), note.decode("utf-8"), expires_f, ttl_f)
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
