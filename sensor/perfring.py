"""Consume the datapath's perf ring without being woken once per event.

The kernel wakes the reader only every `wakeup_events` samples; poll() waits
at most `timeout_ms` for that, then drains every CPU's buffer whatever woke
it, so a quiet link still delivers its last events within one timeout.

The ctypes callback is kept tiny: copy the sample, append it, never raise
(an exception inside a ctypes callback is printed and lost, not propagated).
Decoding happens outside, in batches.
"""

from __future__ import annotations

import ctypes as ct

from . import abi


class EventReader:
    def __init__(self, bpf, page_cnt: int = 1024, wakeup_events: int = 64, map_name: bytes = b"ss_events"):
        self._bpf = bpf
        self._batch: list[bytes] = []
        self.lost = 0  # samples the kernel could not write (ring full)
        self.callback_errors = 0
        self.bad_samples = 0  # samples that are not our events
        self.received = 0
        batch = self._batch
        string_at = ct.string_at

        def on_sample(cpu, data, size):
            try:
                batch.append(string_at(data, size))
            except BaseException:  # never let anything escape into ctypes
                self.callback_errors += 1

        def on_lost(*args):
            try:
                self.lost += int(args[-1])
            except BaseException:
                self.callback_errors += 1

        self._on_sample, self._on_lost = on_sample, on_lost  # keep references alive
        bpf[map_name].open_perf_buffer(on_sample, page_cnt=page_cnt, lost_cb=on_lost,
                                       wakeup_events=wakeup_events)

    def poll_raw(self, timeout_ms: int = 10) -> list[bytes]:
        """Wait up to timeout_ms, drain all CPUs, return the raw samples."""
        self._bpf.perf_buffer_poll(timeout_ms)
        self._bpf.perf_buffer_consume()
        if not self._batch:
            return []
        samples = self._batch[:]
        self._batch.clear()
        self.received += len(samples)
        return samples

    def poll(self, timeout_ms: int = 10) -> list[abi.Event]:
        """Like poll_raw, decoded and in kernel time order (each CPU has its own
        buffer, drained one after the other); samples that are not our events
        are counted."""
        events = []
        for sample in self.poll_raw(timeout_ms):
            try:
                events.append(abi.decode_event(sample))
            except abi.EventFormatError:
                self.bad_samples += 1
        events.sort(key=_timestamp)
        return events


def _timestamp(event: abi.Event) -> int:
    return event.header.ts_ns
