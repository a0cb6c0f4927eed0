"""Offline input: a pcap or pcapng file through the same userland as live traffic
(``sensor.assembly.Userland``, built from the same config)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sensor.assembly import Userland
from sensor.errors import SensorError
from sensor.inputs.pcapfile import CaptureError, CaptureReader

__all__ = ["replay", "ReplayResult", "ReplayError", "TtyProgress", "PROGRESS_EVERY"]

#: packets between two calls of the progress callback (the loop tests n & 0xFFF)
PROGRESS_EVERY = 4096


def _open_writer(path, linktype):
    from sensor.inputs.pcapwriter import PcapWriter
    try:
        return PcapWriter(path, linktype)
    except OSError as exc:
        raise ReplayError(f"cannot write {path}: {exc.strerror or exc}") from None


class ReplayError(SensorError):
    """The capture cannot be read (missing, not a capture, corrupt, truncated)."""


@dataclass
class ReplayResult:
    path: str
    packets: int = 0
    seconds: float = 0.0
    counters: dict = field(default_factory=dict)     # the pipeline's (PipelineCounters.as_dict())
    warnings: list = field(default_factory=list)

    def summary(self) -> str:
        c = self.counters
        skipped = sum(c["not_segments"].values())
        mb = c["payload_bytes"] / 1e6
        rate = mb / self.seconds if self.seconds > 0 else 0.0
        found = sum(c.get("by_content", {}).values())
        by_content = f" ({found} found by content on other ports)" if found else ""
        return (f"{self.path}: {self.packets} packets ({skipped} not TCP on our ports or "
                f"undecodable), {c['flows']} SMTP flows{by_content}, {c['transactions']} transactions, "
                f"{c['anomalies']} anomalies, {c['starttls']} STARTTLS, "
                f"{mb:.2f} MB payload in {self.seconds:.2f} s ({rate:.1f} MB/s)")


def replay(path, userland: Userland, *, strict: bool = True, progress=None,
           write_passed=None, shard=None) -> ReplayResult:
    """Feed every packet of ``path`` to the userland's pipeline, then ``userland.finish()``.

    ``strict``: a truncated or corrupt capture is an error, raised once the
    flows open at that point have ended (their records written: nothing read
    is lost); ``strict=False``: a warning, and a corrupt record in the middle
    is skipped to the next plausible one (``sensor.inputs.pcapfile``).  ``progress(packets, reader)`` is called every
    ``PROGRESS_EVERY`` packets (the reader's ``offset`` and ``size`` say how
    far into the file it is; see ``TtyProgress``).
    ``write_passed``: a path; the packets that the pipeline's gate (the
    verdicts) lets pass are written there as a pcap, the packet that
    triggered a verdict included in what is dropped (inline).  Monitor only
    (no gate): every packet.
    The capture's clock: each time capture time passes a whole second since
    the last time, the userland's ``tickers`` run (before that packet: the
    reject statistics' clock is the capture's) and the pipeline's idle flows
    are expired (after it); both at every packet read, whoever it is for.
    ``shard``: a ``sensor.inputs.split.FrameOwners``: this process is its
    worker ``index`` of a sharded replay (``sensor.inputs.workers``): it
    reads every packet, keeps the clock, and feeds those that are its own
    (the fragments held there, too, once their worker is known).
    """
    started = time.perf_counter()
    try:
        reader = CaptureReader(path, strict=strict)
    except CaptureError as exc:
        raise ReplayError(str(exc)) from None
    pipeline = userland.pipeline
    pipeline.expire_by_caller()
    feed = pipeline.feed_frame
    expire = pipeline.expire
    gate = pipeline.gate
    tickers = userland.tickers
    owners, me = None, 0
    if shard is not None:
        owners, me = shard.owners, shard.index
        shard.feed = feed
    last_ts = None
    n = 0
    writer = None
    next_tick = None
    try:
        for ts, linktype, frame, wirelen in reader:
            due = False
            if next_tick is None:
                next_tick = ts + 1.0
            elif ts >= next_tick:
                next_tick = ts + 1.0
                due = True
                for tick in tickers:
                    tick(ts)
            if owners is None or me in owners(ts, linktype, frame, wirelen):
                seg = feed(linktype, frame, wirelen, ts)
                if write_passed is not None:
                    if writer is None:
                        writer = _open_writer(write_passed, linktype)
                    elif linktype != writer.linktype:
                        raise ReplayError(f"{path}: packets of link types {writer.linktype} and {linktype}: "
                                          "--write-passed writes one pcap of one link type")
                    if gate is None or gate(seg, ts):
                        writer.write(ts, frame, wirelen)
            if due:
                if shard is not None:
                    shard.expire(ts)
                expire(ts)
            last_ts = ts
            n += 1
            if progress is not None and not n & 0xFFF:      # PROGRESS_EVERY - 1
                progress(n, reader)
    except CaptureError as exc:
        failed = exc
    else:
        failed = None
    finally:
        reader.close()
        if writer is not None:
            writer.close()
    # what was read is not lost: the open flows end (their records are
    # written) before a corrupt capture's error is raised
    if shard is not None:
        shard.flush()
    userland.finish(last_ts)
    if failed is not None:
        raise ReplayError(f"{failed} (after {n} packets; the records of what was read are written; "
                          "--lenient skips to the next plausible record)") from None
    return ReplayResult(path=str(path), packets=n, seconds=time.perf_counter() - started,
                        counters=pipeline.counters.as_dict(), warnings=list(reader.warnings))


class TtyProgress:
    """A replay's progress on one terminal line (stderr), for ``replay(progress=...)``:

        capture.pcap: 1200000 packets, 512.0 of 2048.0 MB (25.0%), 180.3 MB/s

    redrawn at most every ``interval`` seconds (whatever the packet rate),
    cut to the terminal's width (a wrapped line could not be redrawn), and
    erased by ``close()``.  The file position is read here, at each redraw,
    never in the packet loop."""

    def __init__(self, stream, name: str = "", interval: float = 0.25, clock=time.monotonic):
        self.stream = stream
        self.name = name
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self.last = None
        self.shown = False
        self.redraws = 0

    def __call__(self, packets: int, reader) -> None:
        now = self.clock()
        if self.last is not None and now - self.last < self.interval:
            return
        self.last = now
        self.draw(self.line(packets, reader.offset, reader.size, now - self.started))

    @staticmethod
    def line(packets: int, offset: int | None, size: int | None, elapsed: float) -> str:
        mb = (offset or 0) / 1e6
        rate = f", {mb / elapsed:.1f} MB/s" if elapsed > 0 and offset else ""
        if offset is not None and size:
            where = f"{mb:.1f} of {size / 1e6:.1f} MB ({min(100.0, 100.0 * offset / size):.1f}%)"
        else:
            where = f"{mb:.1f} MB"
        return f"{packets} packets, {where}{rate}"

    def draw(self, text: str) -> None:
        import shutil
        width = shutil.get_terminal_size((80, 24)).columns
        if self.name:
            text = f"{self.name}: {text}"
        self.stream.write("\r" + text[:max(1, width - 1)] + "\x1b[K")
        self.stream.flush()
        self.shown = True
        self.redraws += 1

    def close(self) -> None:
        """Erase the line (nothing is left of it on the terminal)."""
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False
