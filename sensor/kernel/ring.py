"""Read the datapath's event ring: the BPF ring buffer `ss_events`, one for
all CPUs, where bpf/datapath.c pushes one record per packet (a struct
ss_event_hdr, the frame bytes, padding to the record's size class).

How the kernel wakes the reader is chosen by Datapath.event_reader(): on every
record submitted after the reader has read everything (the lowest latency;
on a quiet link one wakeup per record, each costing the sending CPU an
irq_work), or batched, every abi.WAKE_BATCH records per CPU. poll() waits at
most `timeout_ms` for a wakeup, then reads everything in the ring, woken or
not.

The ctypes callback is kept tiny: copy the record, append it, never raise
(an exception inside a ctypes callback is printed and lost, not propagated).
Decoding happens outside, in batches of at most ``max_records``: the
callback stops the read there (libbpf consumes the record whose callback
fails, and stops). So a reader that falls behind frees the ring a batch at a
time, as it gets through them, instead of emptying it at once and leaving it
to fill up again, full, while it works through everything it took: under
pressure the kernel gives the room freed that way to connections'
beginnings and ends (bpf/datapath.c). ``drained`` says whether the last
read found the ring empty.

Read next: sensor/kernel/abi.py, the Python mirror of bpf/smtp_sensor.h that
decodes each record into an Event.
"""

from __future__ import annotations

import ctypes as ct
import mmap
import struct

from sensor.kernel import abi

EVENTS_MAP = b"ss_events"
#: records read at most at once (EventReader.max_records)
MAX_RECORDS = 1024
COUNTERS_MAP = b"ss_counters"


class EventReader:
    """Reads the event ring of a loaded bcc.BPF object.

    Records the kernel could not write (ring full, copy failed) are counted by
    the datapath itself (counter push_failed); `lost` reads those counters."""

    def __init__(self, bpf, max_records: int = MAX_RECORDS, ring_fd: int | None = None, worker: int = 0):
        """ring_fd: the ring to read (a worker's, Datapath.ring_fd); default ss_events."""
        from bcc.libbcc import _RINGBUF_CB_TYPE, lib

        self._bpf = bpf
        self._lib = lib
        self._batch: list[bytes] = []
        self.callback_errors = 0
        self.bad_records = 0  # records that are not our events
        self.max_records = max_records
        #: the last read found the ring empty (it stopped short of max_records)
        self.drained = True
        self._positions = None      # RingPositions, mapped at the first read of ``fill``
        self._lost_slots = [d * abi.COUNTER_COUNT + abi.Counter.PUSH_FAILED for d in abi.Direction]
        batch = self._batch
        string_at = ct.string_at

        def on_record(_ctx, data, size):
            try:
                batch.append(string_at(data, size))
                if len(batch) >= max_records:
                    return -1      # enough for one batch: this record is consumed, the read stops
            except BaseException:  # never let anything escape into ctypes
                self.callback_errors += 1
            return 0

        self._on_record = _RINGBUF_CB_TYPE(on_record)  # keep the reference alive
        self.worker = worker      # whose ring: its pressure slot is abi.RING_PRESSURE + worker
        fd = bpf[EVENTS_MAP].map_fd if ring_fd is None else ring_fd
        self._manager = lib.bpf_new_ringbuf(fd, self._on_record, None)
        if not self._manager:
            raise OSError(f"cannot open the event ring {EVENTS_MAP.decode()}")

    @property
    def lost(self) -> int:
        """Events the kernel could not write, both directions, since the
        counters were last reset."""
        counters = self._bpf[COUNTERS_MAP]
        return sum(int(counters.sum(ct.c_int(slot)).value) for slot in self._lost_slots)

    @property
    def fill(self) -> float:
        """The share of the ring holding records not yet read, 0..1."""
        if self._positions is None:
            self._positions = RingPositions(self._bpf[EVENTS_MAP].map_fd)
        return self._positions.fill()

    def poll_raw(self, timeout_ms: int = 10) -> list[bytes]:
        """Wait up to timeout_ms for a wakeup, read the whole ring, return the
        raw records."""
        if self._manager is None:
            raise ValueError("EventReader is closed")
        batch = self._batch
        self._lib.bpf_poll_ringbuf(self._manager, timeout_ms)
        if len(batch) < self.max_records:
            self._lib.bpf_consume_ringbuf(self._manager)  # what came without a wakeup
        self.drained = len(batch) < self.max_records
        if not batch:
            return []
        records = batch[:]
        batch.clear()
        return records

    def poll(self, timeout_ms: int = 10) -> list[abi.Event]:
        """Like poll_raw, decoded and sorted by kernel timestamp (records come
        in the order they were reserved, by all CPUs). Records that are not
        our events are counted in bad_records."""
        events = []
        for record in self.poll_raw(timeout_ms):
            try:
                events.append(abi.decode_event(record))
            except abi.EventFormatError:
                self.bad_records += 1
        events.sort(key=_timestamp)
        return events

    def close(self) -> None:
        """Free the ring's mapping (before the map itself goes)."""
        if self._manager is not None:
            self._lib.bpf_free_ringbuf(self._manager)
            self._manager = None
        if self._positions is not None:
            self._positions.close()
            self._positions = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class RingPositions:
    """The two positions of a BPF ring buffer, read from its own mapping of
    the map (the kernel's layout, include/uapi/linux/bpf.h and libbpf's
    ringbuf.c): the first page holds the consumer position (what the reader
    has read), the second the producer position (what the kernel has
    reserved), each an unsigned long that only grows; their distance is what
    waits to be read.  libbpf 1.3's ``ring__avail_data_size`` reads the same
    two, but the libbpf inside Debian 12's bcc predates it.  Mapped read
    only: nothing here moves the reader on."""

    def __init__(self, map_fd: int):
        from sensor.kernel.bpfsys import map_info

        self.size = map_info(map_fd).max_entries     # the data area's bytes, a power of two
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=0)
        try:
            self._producer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except BaseException:
            self._consumer.close()
            raise

    def positions(self) -> tuple[int, int]:
        """(consumer, producer) positions, in bytes since the ring was made."""
        consumer = struct.unpack_from("=Q", self._consumer)[0]
        producer = struct.unpack_from("=Q", self._producer)[0]
        return consumer, producer

    def fill(self) -> float:
        consumer, producer = self.positions()
        return min(1.0, max(0, producer - consumer) / self.size)

    def close(self) -> None:
        self._consumer.close()
        self._producer.close()


def _timestamp(event: abi.Event) -> int:
    return event.header.ts_ns
