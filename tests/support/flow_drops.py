"""Waiting on the kernel's flow-drop entries (support.lab_sensor.flow_drop_entry
reads one from a sensor process's pinned map), for lab tests that check
what XDP dropped."""

from __future__ import annotations

import time
from pathlib import Path

from support.lab_sensor import flow_drop_entry


def wait_dropped_packets(pin_dir: Path, src: str, sport: int, dst: str, dport: int,
                         at_least: int = 1, timeout: float = 5.0, pump=None) -> int:
    """Packets of the direction src:sport -> dst:dport dropped by XDP's
    flow-drop entry, once at least `at_least` (or `timeout` passed).
    ``pump(seconds)``: what to do while waiting (a raw client retransmits)."""
    deadline = time.monotonic() + timeout
    while True:
        entry = flow_drop_entry(pin_dir, src, sport, dst, dport)
        packets = entry.packets if entry is not None else 0
        if packets >= at_least or time.monotonic() > deadline:
            return packets
        if pump is not None:
            pump(0.05)
        else:
            time.sleep(0.05)
