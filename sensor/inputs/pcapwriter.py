"""Write packets to a classic pcap file (``--write-passed``: what would have passed)."""

from __future__ import annotations

import struct

from sensor.files import open_private

__all__ = ["PcapWriter"]

_HEADER = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")


class PcapWriter:
    """``PcapWriter(path, linktype)``; ``write(ts, frame, wirelen)``; ``close()``.

    Microsecond timestamps, little-endian, the link type of the source capture;
    a new file is created 0600 (sensor.files).
    """

    def __init__(self, path, linktype: int, snaplen: int = 262144):
        self.path = path
        self.linktype = linktype
        self.packets = 0
        self._f = open_private(path, "wb")
        self._f.write(_HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype))

    def write(self, ts: float, frame, wirelen: int | None = None) -> None:
        usec_total = round(ts * 1_000_000)
        sec, usec = divmod(usec_total, 1_000_000)
        n = len(frame)
        self._f.write(_RECORD.pack(sec, usec, n, n if wirelen is None or wirelen < n else wirelen))
        self._f.write(frame)
        self.packets += 1

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
