"""Snapshots of the reject statistics and the bans they made, across restarts.

A msgpack map: ``format``, ``version``, ``saved_at``, the statistics
(``window``, ``period``, ``next_check``, ``hosts``, ``suppressed``,
``counters``) and ``bans``, every time in wall-clock seconds (the statistics'
clock may be monotonic, with another origin after a restart).  Written
atomically, mode 0600 (``sensor.files.write_atomic``).  Read
back into new objects, checked field by field, and only then put in place: a
missing file is a fresh start; an unreadable, corrupt or foreign one is
reported in one line and set aside as ``<path>.corrupt-<timestamp>``, the
statistics left as they were.  A window that ended while the sensor was down
is evaluated at the first tick after the restart.

One host row: ``[addr, start, last_seen, total, rejects, buckets,
recipients, recipients_dropped, samples, samples_dropped, dirty]`` (a fixed
window's counts in ``total``/``rejects``, a sliding one's in ``buckets`` as
``[start, total, rejects]``; either restores into either window).  One ban
row: ``[network, note, since, expires, ttl]``.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack

from sensor.errors import SensorError
from sensor.files import write_atomic
from sensor.spamstats.hosts import RECIPIENT_OCTETS, Host, held_text, shown_text
from sensor.spamstats.stats import RejectStatsCounters, StatsState

__all__ = ["write_snapshot", "encode_snapshot", "read_snapshot", "Restored", "SnapshotError", "set_aside",
           "SNAPSHOT_FORMAT", "SNAPSHOT_VERSION"]

SNAPSHOT_FORMAT = "smtp-sensor/spam-stats"
SNAPSHOT_VERSION = 1
_HOST_ROW = 11


class SnapshotError(SensorError):
    """A snapshot could not be written (one line: the path and why)."""


@dataclass(frozen=True)
class Restored:
    """What ``read_snapshot`` did; ``message`` is one line for the log."""

    ok: bool
    message: str
    hosts: int = 0
    bans: int = 0
    set_aside: Path | None = None


class _Corrupt(Exception):
    pass


# ---------------------------------------------------------------- writing

def write_snapshot(path, stats, actor=None) -> None:
    """Write the statistics (and the actor's bans) to ``path`` atomically
    (``sensor.files.write_atomic``: a temporary file, fsync, rename, fsync of
    the folder, mode 0600).  A crash at any point leaves the previous snapshot whole."""
    path = Path(path)
    # the encoding makes a few small lists per host: without the collector
    # (which would walk the whole heap again and again) it is 4-5 times faster
    collecting = gc.isenabled()
    gc.disable()
    try:
        data = encode_snapshot(stats, actor)
    finally:
        if collecting:
            gc.enable()
    try:
        write_atomic(path, data)
    except OSError as exc:
        raise SnapshotError(f"cannot write the snapshot {path}: {exc.strerror or exc}") from None


def encode_snapshot(stats, actor=None) -> bytes:
    """The msgpack bytes ``write_snapshot`` writes."""
    off = stats.wall() - stats.clock()
    state = {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "saved_at": stats.wall()}
    state.update(_encode_stats(stats, off))
    state["bans"] = _encode_bans(actor.bans, off) if actor is not None else []
    return msgpack.packb(state, use_bin_type=True)


def _encode_stats(stats, off: float) -> dict:
    window = stats.window
    held = stats.state()
    dirty = set(held.dirty)
    hosts = []
    for h in held.hosts:
        total, rejects, buckets = window.export(h)
        samples = [[s.code, s.enhanced, shown_text(s.text), s.count, s.uid, s.ts + off] for s in h.samples]
        hosts.append([h.addr, h.start + off, h.last_seen + off, total, rejects,
                      [[start + off, tot, rej] for start, tot, rej in buckets],
                      h.recipient_texts(), h.recipients_dropped, samples, h.samples_dropped,
                      h.addr in dirty])
    return {
        "window": window.name,
        "period": window.period,
        "next_check": None if held.next_check is None else held.next_check + off,
        "hosts": hosts,
        "suppressed": [[note, addr, until + off] for (note, addr), until in held.suppressed.items()],
        "counters": held.counters,
    }


def _encode_bans(bans: dict, off: float) -> list:
    return [[b.network, b.note, b.since + off, b.expires + off, b.ttl] for b in bans.values()]


# ---------------------------------------------------------------- reading

def read_snapshot(path, stats, actor=None, *, reapply: bool = True) -> Restored:
    """Restore what ``write_snapshot`` wrote.  Never raises: a missing file is
    a fresh start; an unreadable or corrupt one is reported and renamed to
    ``<path>.corrupt-<timestamp>``, and the statistics are left as they were.
    With ``reapply``, the bans still running are written again through the
    actor's enforcer (their remaining TTL), for a datapath whose pins were lost."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Restored(True, f"{path}: no snapshot yet, starting empty")
    except OSError as exc:
        return _set_aside(path, f"unreadable ({exc.strerror or exc})", stats)
    off = stats.wall() - stats.clock()
    try:
        state = msgpack.unpackb(data, raw=False, strict_map_key=False)
        _check_shape(state)
        # everything is decoded before anything is replaced: a bad row leaves
        # the live statistics and bans untouched
        restored = _decode_stats(state, stats, off)
        bans = _decode_bans(state["bans"], off, stats.clock()) if actor is not None else []
    except Exception as exc:       # msgpack raises several types; any of them means corrupt
        return _set_aside(path, f"corrupt ({type(exc).__name__}: {_one_line(exc)})", stats)
    stats.load(restored)
    nbans = actor.restore_bans(bans, reapply) if actor is not None else 0
    age = stats.wall() - state["saved_at"]
    return Restored(True, f"{path}: restored {len(restored.hosts)} hosts and {nbans} bans, "
                    f"saved {age:.0f} s ago", len(restored.hosts), nbans)


def _check_shape(state) -> None:
    if not isinstance(state, dict):
        raise _Corrupt("not a map")
    if state.get("format") != SNAPSHOT_FORMAT:
        raise _Corrupt(f"format {state.get('format')!r}, expected {SNAPSHOT_FORMAT!r}")
    if state.get("version") != SNAPSHOT_VERSION:
        raise _Corrupt(f"version {state.get('version')!r}, expected {SNAPSHOT_VERSION}")
    for key, kind in (("saved_at", (int, float)), ("hosts", list), ("suppressed", list),
                      ("bans", list)):
        if not isinstance(state.get(key), kind):
            raise _Corrupt(f"{key} missing or of the wrong type")
    if not isinstance(state.get("counters", {}), dict):
        raise _Corrupt("counters is not a map")
    if not isinstance(state.get("next_check"), (int, float, type(None))):
        raise _Corrupt("next_check is not a number")
    for row in state["hosts"]:
        if not isinstance(row, list) or len(row) != _HOST_ROW:
            raise _Corrupt("a host row is not an 11-item array")
        if not all(_number(row[i]) for i in (1, 2, 3, 4, 7, 9)):
            raise _Corrupt("a host row holds a non-number where a number belongs")
        if not all(isinstance(row[i], list) for i in (5, 6, 8)):
            raise _Corrupt("a host row holds a non-array where an array belongs")
        if not all(isinstance(b, list) and len(b) == 3 and all(map(_number, b)) for b in row[5]):
            raise _Corrupt("a bucket is not [start, total, rejects]")
        if not all(isinstance(s, list) and len(s) == 6 and _number(s[5]) for s in row[8]):
            raise _Corrupt("a sample is not [code, enhanced, text, count, uid, ts]")
    for row in state["suppressed"]:
        if not (isinstance(row, list) and len(row) == 3 and _number(row[2])):
            raise _Corrupt("a suppression is not [note, host, until]")
    for row in state["bans"]:
        if not (isinstance(row, list) and len(row) == 5 and all(map(_number, row[2:]))):
            raise _Corrupt("a ban is not [network, note, since, expires, ttl]")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _decode_stats(state: dict, stats, off: float) -> StatsState:
    """The statistics of a shape-checked snapshot, in ``stats``' clock and window."""
    cfg, window = stats.config, stats.window
    hosts, dirty = [], []
    rows = sorted(state["hosts"], key=lambda r: r[2])      # least recently active first
    for (addr, start, last_seen, total, rejects, buckets, recipients, rdropped,
         samples, sdropped, is_dirty) in rows[-cfg.max_hosts:]:
        ipaddress.ip_address(addr)
        start, counts = window.restore(start - off, total, rejects,
                                       [[b[0] - off, b[1], b[2]] for b in buckets])
        h = Host(addr, 0, start, counts)          # its generation: given by RejectStats.load
        h.last_seen = last_seen - off
        for r in recipients[:cfg.max_recipients]:
            h.add_recipient(held_text(str(r), RECIPIENT_OCTETS), cfg.max_recipients)
        h.recipients_dropped = int(rdropped)
        for code, enh, text, count, uid, ts in samples[:cfg.max_samples]:
            h.add_sample(int(code), _text_or_none(enh), str(text), _text_or_none(uid), ts - off,
                         cfg.max_samples, count=int(count))
        h.samples_dropped = int(sdropped)
        hosts.append(h)
        if is_dirty:
            dirty.append(addr)
    suppressed = {(str(note), str(addr)): until - off
                  for note, addr, until in sorted(state["suppressed"], key=lambda r: r[2])}
    nc = state.get("next_check")
    counters = {name: int(value) for name, value in state.get("counters", {}).items()
                if name in RejectStatsCounters.FIELDS}
    return StatsState(hosts=hosts, dirty=dirty, suppressed=suppressed,
                      next_check=None if nc is None else nc - off, counters=counters)


def _text_or_none(value):
    return None if value is None else str(value)


def _decode_bans(rows, off: float, now: float) -> list[tuple]:
    """The bans of a shape-checked snapshot still running at ``now``, in the
    stats' clock: (network, note, since, expires, ttl) each."""
    bans = []
    for network, note, since, expires, ttl in rows:
        network = str(ipaddress.ip_network(network, strict=False))
        since, expires = float(since) - off, float(expires) - off
        if expires > now:
            bans.append((network, str(note), since, expires, float(ttl)))
    return bans


def _one_line(exc) -> str:
    text = " ".join(str(exc).split())
    return text[:160]


def _set_aside(path: Path, why: str, stats) -> Restored:
    return set_aside(path, why, stats.wall())


def set_aside(path: Path, why: str, wall: float, what: str = "snapshot") -> Restored:
    """Rename a snapshot that cannot be used to ``<path>.corrupt-<timestamp>``
    (``wall``: now) and say so in one line (``what``: which snapshot)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(wall))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    try:
        os.replace(path, target)
    except OSError as exc:
        return Restored(False, f"{path}: {what} {why}; starting empty; could not set it aside: "
                        f"{exc.strerror or exc}")
    return Restored(False, f"{path}: {what} {why}; set aside as {target.name}, starting empty",
                    set_aside=target)
