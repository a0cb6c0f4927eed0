"""Bans across reboots: a snapshot of every source ban the kernel holds
(by hand, by rules, by the reject statistics), restored at start.

The pinned ban tries outlive the control plane (``/sys/fs/bpf``), not a
reboot: bpffs is memory.  So the sensor writes what the tries hold to
``[sensor] ban_file`` when the bans changed, at most every
``snapshot_interval``, and at shutdown; at start, each ban of the snapshot
still running that the kernel does not hold already (its pins lost) is
written again through the enforcer, with the time it has left and the
operator's note.

A msgpack map: ``format``, ``version``, ``saved_at`` (wall clock), ``bans``:
rows ``[network, reason, note, expires]``, ``reason`` an ``abi.Reason`` name,
``expires`` wall-clock seconds or None (no expiry): the kernel's expiry is
CLOCK_MONOTONIC, which starts again at a boot.  Written atomically, mode 0600
(``sensor.files.write_atomic``).  Read back and checked row by row before
anything is written to the kernel: a missing file is a fresh start; an
unreadable, corrupt or foreign one is reported in one line and set aside as
``<path>.corrupt-<timestamp>``, as the statistics snapshot is
(``sensor.spamstats.snapshot``).
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from time import monotonic_ns

import msgpack

from sensor.files import write_atomic
from sensor.kernel import abi
from sensor.spamstats.snapshot import Restored, SnapshotError, set_aside

__all__ = ["write_bans", "read_bans", "BanSnapshots", "BAN_FORMAT", "BAN_VERSION"]

BAN_FORMAT = "smtp-sensor/bans"
BAN_VERSION = 1


def ban_rows(enforcer, wall: float) -> list[list]:
    """The snapshot's rows of the kernel's bans (``enforcer.bans()``) still running."""
    now_ns = monotonic_ns()
    rows = []
    for entry, note in enforcer.bans():
        if entry.expires_ns and entry.expires_ns <= now_ns:
            continue                      # expired, not yet swept
        expires = wall + (entry.expires_ns - now_ns) / 1e9 if entry.expires_ns else None
        rows.append([entry.target, entry.reason.name, note, expires])
    return rows


def write_bans(path, enforcer) -> int:
    """Write the kernel's bans to ``path`` atomically; returns how many."""
    wall = time.time()
    rows = ban_rows(enforcer, wall)
    data = msgpack.packb({"format": BAN_FORMAT, "version": BAN_VERSION, "saved_at": wall, "bans": rows},
                         use_bin_type=True)
    try:
        write_atomic(Path(path), data)
    except OSError as exc:
        raise SnapshotError(f"cannot write the ban snapshot {path}: {exc.strerror or exc}") from None
    return len(rows)


def read_bans(path, enforcer, wall: float | None = None) -> Restored:
    """Restore the bans of ``path`` the kernel does not hold (never raises)."""
    path = Path(path)
    wall = time.time() if wall is None else wall
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Restored(True, f"{path}: no ban snapshot yet")
    except OSError as exc:
        return set_aside(path, f"unreadable ({exc.strerror or exc})", wall, "ban snapshot")
    try:
        running = _decode(msgpack.unpackb(data, raw=False), wall)
    except Exception as exc:       # msgpack raises several types; any of them means corrupt
        text = " ".join(str(exc).split())[:160]
        return set_aside(path, f"corrupt ({type(exc).__name__}: {text})", wall, "ban snapshot")
    held = {entry.target for entry, _ in enforcer.bans()}
    restored = 0
    for network, reason, note, ttl in running:
        if network in held:
            continue                      # the pins survived: the kernel's entry is the truth
        enforcer.ban(network, ttl, wall, reason=reason, note=note)
        restored += 1
    return Restored(True, f"{path}: restored {restored} bans ({len(running) - restored} already held by the "
                    "kernel)", bans=restored)


def _decode(state, wall: float) -> list[tuple]:
    """(network, reason, note, ttl or None) of every ban still running; raises on any bad row."""
    if not isinstance(state, dict):
        raise ValueError("not a map")
    if state.get("format") != BAN_FORMAT:
        raise ValueError(f"format {state.get('format')!r}, expected {BAN_FORMAT!r}")
    if state.get("version") != BAN_VERSION:
        raise ValueError(f"version {state.get('version')!r}, expected {BAN_VERSION}")
    rows = state.get("bans")
    if not isinstance(rows, list):
        raise ValueError("bans missing or not an array")
    running = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 4):
            raise ValueError("a ban is not [network, reason, note, expires]")
        network, reason, note, expires = row
        network = str(ipaddress.ip_network(network, strict=False))
        reason = abi.Reason[reason]
        if note is not None and not isinstance(note, str):
            raise ValueError("a ban's note is not a string")
        if expires is not None and (not isinstance(expires, (int, float)) or isinstance(expires, bool)):
            raise ValueError("a ban's expiry is not a number")
        if expires is None:
            running.append((network, reason, note, None))
        elif expires > wall:
            running.append((network, reason, note, expires - wall))
    return running


class BanSnapshots:
    """The running sensor's ban snapshot: ``restore()`` at start, ``poll(now,
    interval)`` every turn of the loop (a write when bans were added or lifted
    since the last one, at most every ``interval`` seconds: the bans are few, two tries
    of SS_BAN_MAX at most, and change rarely, so the loop writes it itself),
    ``final()`` at shutdown (always: expiries swept are forgotten too).  A
    failure is logged; the sensor runs on."""

    def __init__(self, path, enforcer, log, now: float):
        self.path, self.enforcer, self.log = Path(path), enforcer, log
        self._last = now
        self._saved = None          # the enforcer's ban_changes at the last write

    def restore(self) -> Restored:
        restored = read_bans(self.path, self.enforcer)
        getattr(self.log, "info" if restored.ok else "error")("ban snapshot", message=restored.message)
        if restored.ok and not restored.bans:
            self._saved = self.enforcer.ban_changes      # nothing new to write
        return restored

    def poll(self, now: float, interval: float) -> None:
        if now - self._last >= interval:
            self._last = now
            if self.enforcer.ban_changes != self._saved:
                self.write()

    def final(self) -> None:
        self.write()

    def write(self) -> None:
        changes = self.enforcer.ban_changes
        try:
            write_bans(self.path, self.enforcer)
        except (SnapshotError, OSError) as exc:
            self.log.error("ban snapshot not written", error=str(exc))
            return
        self._saved = changes
