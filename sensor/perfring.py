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

On x86-64 the records are read straight from the ring's memory, mapped
into this process as libbpf maps it (the consumer position page read-write,
the producer position page and the data, mapped twice so that a record is
contiguous across the wrap, read-only): one bytes copy per record, no call
from C into Python per record (~0.5 us a record instead of ~2 us through
libbpf's callback). x86's ordering makes the plain loads and the store of the
consumer position correct; elsewhere libbpf's ring_buffer__poll is used, with
a tiny ctypes callback that copies the record, appends it and never raises.
Decoding happens outside, in batches.
"""

from __future__ import annotations

import ctypes as ct
import mmap
import platform
import select
import struct

from . import abi

_BUSY, _DISCARD = 1 << 31, 1 << 30   # BPF_RINGBUF_BUSY_BIT, BPF_RINGBUF_DISCARD_BIT
_HDR = 8                             # BPF_RINGBUF_HDR_SZ
_DIRECT = platform.machine() in ("x86_64", "AMD64")


class EventReader:
    """Reads the `map_name` ring buffer of a loaded bcc.BPF object.

    Records the kernel could not write (ring full) are counted by the
    datapath itself (counter push_failed); `lost` reads those counters."""

    def __init__(self, bpf, map_name: bytes = b"ss_events", direct: bool | None = None):
        self._bpf = bpf
        self._batch: list[bytes] = []
        self.callback_errors = 0
        self.bad_samples = 0  # records that are not our events
        self.received = 0
        self._lost_slots = [d * abi.COUNTER_COUNT + abi.Counter.PUSH_FAILED for d in abi.Direction]
        self._manager = self._epoll = None
        fd = bpf[map_name].map_fd
        if _DIRECT if direct is None else direct:
            self._open_direct(fd)
        else:
            self._open_libbpf(fd, map_name)

    def _open_direct(self, fd: int) -> None:
        from . import bpfsys

        size = bpfsys.map_info(fd).max_entries       # data bytes, a power of two
        page = mmap.PAGESIZE
        self._cons_map = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod_map = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._data = memoryview(self._prod_map)[page:]
        self._mask = size - 1
        self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLIN)

    def _read_direct(self) -> None:
        """Every committed record from the consumer position on, then the new
        position (a record still being written ends the read)."""
        unpack = struct.unpack_from
        cons = unpack("<Q", self._cons_map, 0)[0]
        prod = unpack("<Q", self._prod_map, 0)[0]
        if cons >= prod:
            return
        data, mask, append = self._data, self._mask, self._batch.append
        start = cons
        while cons < prod:
            off = cons & mask
            length = unpack("<I", data, off)[0]
            if length & _BUSY:
                break
            if not length & _DISCARD:
                append(bytes(data[off + _HDR:off + _HDR + length]))
            else:
                length &= ~_DISCARD
            cons += (length + _HDR + 7) & ~7
        if cons != start:
            struct.pack_into("<Q", self._cons_map, 0, cons)

    def _open_libbpf(self, fd: int, map_name: bytes) -> None:
        from bcc.libbcc import _RINGBUF_CB_TYPE, lib

        self._lib = lib
        batch = self._batch
        string_at = ct.string_at

        def on_sample(_ctx, data, size):
            try:
                batch.append(string_at(data, size))
            except BaseException:  # never let anything escape into ctypes
                self.callback_errors += 1
            return 0

        self._on_sample = _RINGBUF_CB_TYPE(on_sample)  # keep the reference alive
        self._manager = lib.bpf_new_ringbuf(fd, self._on_sample, None)
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
        if self._epoll is not None:
            self._read_direct()
            if not self._batch and timeout_ms:
                self._epoll.poll(timeout_ms / 1000)
                self._read_direct()
        elif self._manager is not None:
            self._lib.bpf_poll_ringbuf(self._manager, timeout_ms)
            self._lib.bpf_consume_ringbuf(self._manager)  # what came without a wakeup
        else:
            raise ValueError("EventReader is closed")
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
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
            self._data.release()
            self._prod_map.close()
            self._cons_map.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _timestamp(event: abi.Event) -> int:
    return event.header.ts_ns
