"""Consume the datapath's event ring (a BPF ring buffer, one for all CPUs).

How the kernel wakes the reader is chosen by Datapath.event_reader()
(wakeup_events, in the datapath's configuration): adaptively, a record
submitted after the reader has read everything wakes it (the lowest latency;
on a quiet link one wakeup per record, each costing the sending CPU an
irq_work, microseconds in a VM), or batched, every 64 records per CPU.
poll() waits at most `timeout_ms` for a wakeup, then reads everything in the
ring, woken or not.

(The module keeps its name from when the events went through a perf buffer:
bpf_perf_event_output() cost ~350 ns per event on the project's VM, a ring
record ~70 ns; see docs/benchmarks.md.)

The ctypes callback is kept tiny: copy the record, append it, never raise
(an exception inside a ctypes callback is printed and lost, not propagated).
Decoding happens outside, in batches.
"""

from __future__ import annotations

import ctypes as ct

from sensor.kernel import abi


class EventReader:
    """Reads the `map_name` ring buffer of a loaded bcc.BPF object.

    Records the kernel could not write (ring full) are counted by the
    datapath itself (counter push_failed); `lost` reads those counters."""

    def __init__(self, bpf, map_name: bytes = b"ss_events"):
        from bcc.libbcc import _RINGBUF_CB_TYPE, lib

        self._bpf = bpf
        self._lib = lib
        self._batch: list[bytes] = []
        self.callback_errors = 0
        self.bad_samples = 0  # records that are not our events
        self.received = 0
        self._lost_slots = [d * abi.COUNTER_COUNT + abi.Counter.PUSH_FAILED for d in abi.Direction]
        batch = self._batch
        string_at = ct.string_at

        def on_sample(_ctx, data, size):
            try:
                batch.append(string_at(data, size))
            except BaseException:  # never let anything escape into ctypes
                self.callback_errors += 1
            return 0

        self._on_sample = _RINGBUF_CB_TYPE(on_sample)  # keep the reference alive
        self._manager = lib.bpf_new_ringbuf(bpf[map_name].map_fd, self._on_sample, None)
        if not self._manager:
            raise OSError(f"cannot open the ring buffer {map_name.decode()}")

    @property
    def lost(self) -> int:
        """Events the kernel could not write (ring full), both directions,
        since the counters were last reset."""
        counters = self._bpf[b"ss_counters"]
        return sum(int(counters.sum(ct.c_int(slot)).value) for slot in self._lost_slots)

    def poll_raw(self, timeout_ms: int = 10) -> list[bytes]:
        """Wait up to timeout_ms for a wakeup, read the whole ring, return the
        raw records."""
        if self._manager is None:
            raise ValueError("EventReader is closed")
        self._lib.bpf_poll_ringbuf(self._manager, timeout_ms)
        self._lib.bpf_consume_ringbuf(self._manager)  # what came without a wakeup
        if not self._batch:
            return []
        samples = self._batch[:]
        self._batch.clear()
        self.received += len(samples)
        return samples

    def poll(self, timeout_ms: int = 10) -> list[abi.Event]:
        """Like poll_raw, decoded (the ring is shared by all CPUs, so records
        come in the order they were reserved; sorted by kernel timestamp all
        the same); records that are not our events are counted."""
        events = []
        for sample in self.poll_raw(timeout_ms):
            try:
                events.append(abi.decode_event(sample))
            except abi.EventFormatError:
                self.bad_samples += 1
        events.sort(key=_timestamp)
        return events

    def close(self) -> None:
        """Free the ring's mapping (before the map itself goes)."""
        if self._manager is not None:
            self._lib.bpf_free_ringbuf(self._manager)
            self._manager = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _timestamp(event: abi.Event) -> int:
    return event.header.ts_ns
