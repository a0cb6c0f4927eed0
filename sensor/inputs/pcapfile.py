"""Read pcap and pcapng capture files.

``open_capture(path)`` (or ``CaptureReader(path)``) yields one
``(ts, linktype, frame, wirelen)`` tuple per packet: ``ts`` a float in seconds
since the epoch, ``linktype`` the pcap LINKTYPE_* number of the packet's
interface, ``frame`` the captured bytes, ``wirelen`` the original length.

Formats: pcap (both byte orders, microsecond and nanosecond magic) and pcapng
(sections of either byte order, several interfaces with their own link types and
``if_tsresol`` / ``if_tsoffset``, EPB, SPB and the obsolete PB; other blocks are
skipped).  The file is read in large chunks, never one read per packet.

Every problem with the file (missing, unreadable, not a capture, corrupt,
truncated) raises ``CaptureError`` whose message names the file, says what is
wrong and at which byte offset; everything before it has been yielded.

With ``strict=False`` (``replay --lenient``) the reader goes on where it can:
a truncated last record is counted in ``reader.truncated``, and a corrupt
record in the middle (a pcap record header with an impossible captured
length or fraction of a second, a pcapng block with a bad length, trailer
or body) is skipped to the next plausible record, counted in
``reader.skipped`` (regions) and ``reader.skipped_bytes``.  Plausible: a pcap
record header with a captured length within the snapshot length, a
fraction below one second (unless the file's first record has one that is
not: a writer that gets them all wrong) and a timestamp within ``RESYNC_WINDOW`` seconds
of the last good record's, followed by another such header or the end of the
file; a pcapng block of a known type whose leading and trailing lengths
agree (an enhanced packet block: on a described interface, its timestamp
within the window).  ``reader.warnings`` says what was skipped, from where to
where.  libpcap, Wireshark and Zeek stop at the first corrupt record;
pcapfix-like scanning is what ``strict=False`` adds, so one damaged record
does not cost the rest of a long capture.
"""

from __future__ import annotations

import os
import re
from struct import Struct

__all__ = ["CaptureError", "CaptureReader", "open_capture", "read_packets"]

CHUNK = 4 << 20                   # bytes per read
MAX_RECORD = 256 << 20            # no frame is larger; bigger means corruption
_PCAP_MAGICS = {
    0xA1B2C3D4: ("<", 1e-6, 1_000_000),   # as read little-endian
    0xA1B23C4D: ("<", 1e-9, 1_000_000_000),
    0xD4C3B2A1: (">", 1e-6, 1_000_000),
    0x4D3CB2A1: (">", 1e-9, 1_000_000_000),
}
#: a resynchronised record's timestamp is at most this far (s) from the last good one's
RESYNC_WINDOW = 86400.0
_PCAPNG_SHB = 0x0A0D0D0A
#: pcapng block types a resync may land on (SHB, IDB, PB, SPB, NRB, ISB, EPB, DSB, custom)
_PCAPNG_BLOCKS = frozenset((_PCAPNG_SHB, 1, 2, 3, 4, 5, 6, 10, 0x00000BAD, 0x40000BAD))
_BOM = 0x1A2B3C4D
_u32le = Struct("<I").unpack_from


class CaptureError(Exception):
    """A capture file cannot be read (missing, not a capture, corrupt, truncated).

    ``str(err)`` is a complete sentence for the user; ``path`` and ``offset``
    (byte offset in the file, or None) are there for programs.
    """

    def __init__(self, path, what, offset=None):
        self.path = str(path)
        self.what = what
        self.offset = offset
        where = f" at byte offset {offset}" if offset is not None else ""
        super().__init__(f"{self.path}: {what}{where}")


class _Corrupt(CaptureError):
    """A corrupt record: fatal when strict, skipped over when not."""


def _near(ts, last) -> bool:
    return last is None or abs(ts - last) <= RESYNC_WINDOW


class _Buf:
    """A sliding window over the file: ``need(n)`` makes n bytes available at ``pos``."""

    __slots__ = ("f", "buf", "pos", "base", "eof")

    def __init__(self, f, first=b""):
        self.f = f
        self.buf = first
        self.pos = 0
        self.base = 0          # file offset of buf[0]
        self.eof = False

    def need(self, n):
        """True if buf[pos:pos+n] is complete (refilling as needed)."""
        while len(self.buf) - self.pos < n:
            if self.eof:
                return False
            more = self.f.read(max(CHUNK, n))
            if not more:
                self.eof = True
                return False
            self.base += self.pos
            self.buf = self.buf[self.pos:] + more
            self.pos = 0
        return True

    def offset(self):
        return self.base + self.pos


class CaptureReader:
    """Iterate over the packets of a pcap or pcapng file.

    ``path`` may be a file name or a binary file object (then ``name`` names it
    in error messages).  Attributes after or during iteration: ``format``
    ('pcap' or 'pcapng'), ``linktypes`` (interface id -> link type),
    ``packets`` (count yielded), ``truncated`` (0 or 1), ``warnings`` (list of str),
    ``offset`` and ``size`` (bytes read so far, of how many: for progress).
    """

    def __init__(self, path, strict: bool = True, name: str | None = None):
        self.strict = strict
        self.packets = 0
        self.truncated = 0
        self.skipped = 0            # corrupt regions skipped (strict=False)
        self.skipped_bytes = 0
        self.warnings: list[str] = []
        self.linktypes: dict[int, int] = {}
        self.format = None
        self._size = False      # not looked at yet
        if hasattr(path, "read"):
            self._f = path
            self._own = False
            self.path = name or getattr(path, "name", "<stream>")
        else:
            self.path = os.fspath(path)
            try:
                self._f = open(self.path, "rb", buffering=0)
            except FileNotFoundError:
                raise CaptureError(self.path, "no such file") from None
            except IsADirectoryError:
                raise CaptureError(self.path, "is a directory, not a capture file") from None
            except OSError as e:
                raise CaptureError(self.path, f"cannot open: {e.strerror or e}") from None
            self._own = True
        try:
            head = self._f.read(CHUNK)
        except OSError as e:
            self.close()
            raise CaptureError(self.path, f"cannot read: {e.strerror or e}") from None
        self._b = _Buf(self._f, head)
        if len(head) < 4:
            self.close()
            raise CaptureError(self.path, "file is empty" if not head else
                               f"too short to be a capture file ({len(head)} bytes)", 0)
        magic = _u32le(head, 0)[0]
        if magic in _PCAP_MAGICS:
            self.format = "pcap"
        elif magic == _PCAPNG_SHB:
            self.format = "pcapng"
        else:
            self.close()
            hint = ""
            if head[:2] == b"\x1f\x8b":
                hint = " (it is gzip-compressed: decompress it first)"
            raise CaptureError(self.path, "not a pcap or pcapng file: unknown magic "
                               f"0x{head[:4].hex()}{hint}", 0)

    # -- progress (read only when asked: never in the packet loop)
    @property
    def offset(self) -> int | None:
        """Bytes of the file read so far (the file position: it runs up to one
        read chunk ahead of the packet being yielded); None when unknown."""
        f = self._f
        if f is None:
            return self.size
        try:
            return f.tell()
        except (OSError, ValueError, AttributeError):
            return None

    @property
    def size(self) -> int | None:
        """The file's size in bytes, when it is a regular file."""
        if self._size is False:
            self._size = None
            try:
                st = os.fstat(self._f.fileno())
                if st.st_size > 0:
                    self._size = st.st_size
            except (OSError, ValueError, AttributeError):
                pass
        return self._size

    # -- life cycle
    def close(self):
        if self._own and self._f is not None:
            self._f.close()
        self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        try:
            if self.format == "pcap":
                yield from self._pcap()
            else:
                yield from self._pcapng()
        except OSError as e:
            raise CaptureError(self.path, f"read error: {e.strerror or e}") from None
        finally:
            self.close()

    def _truncated(self, what, offset):
        if self.strict:
            raise CaptureError(self.path, f"capture is truncated: {what}", offset)
        self.truncated += 1
        self.warnings.append(f"{self.path}: capture is truncated: {what} at byte offset {offset}")

    # -- pcap
    def _pcap(self):
        b = self._b
        if not b.need(24):
            self._truncated(f"file header needs 24 bytes, file has {len(b.buf)}", 0)
            return
        e, scale, div = _PCAP_MAGICS[_u32le(b.buf, 0)[0]]
        vmaj, vmin, _tz, _sig, snaplen, linktype = Struct(e + "HHiIII").unpack_from(b.buf, 4)
        if vmaj != 2:
            raise CaptureError(self.path, f"unsupported pcap version {vmaj}.{vmin}", 4)
        linktype &= 0x0FFFFFFF                       # upper bits: FCS length flags
        self.linktypes[0] = linktype
        limit = max(snaplen, 262144) if snaplen else MAX_RECORD
        limit = min(limit, MAX_RECORD)
        rec = Struct(e + "IIII").unpack_from
        # strict: only an impossible length is corruption (some writers get the
        # fraction wrong); lenient: a fraction of a second or more too, so a
        # misaligned header is caught before it yields garbage
        fdiv = 1 << 32 if self.strict else div
        if fdiv == div and b.need(40) and rec(b.buf, 24)[1] >= div:
            fdiv = 1 << 32          # a writer whose fractions are all wrong: not a sign of damage here
        packets = 0
        last = None             # seconds of the last good record
        try:
            buf, pos = b.buf, 24
            while True:
                # every record wholly in the buffer, with no bookkeeping in b
                n = len(buf)
                while n - pos >= 16:
                    sec, frac, incl, orig = rec(buf, pos)
                    start = pos + 16
                    end = start + incl
                    if incl > limit or end > n or frac >= fdiv:
                        break
                    packets += 1
                    pos = end
                    last = sec
                    yield sec + frac * scale, linktype, buf[start:end], orig if orig > incl else incl
                b.pos = pos
                if n - pos < 16:
                    if not b.need(16):
                        left = len(b.buf) - b.pos
                        if left:
                            self._truncated(f"record header has {left} of 16 bytes", b.offset())
                        return
                else:
                    _sec, frac, incl, _orig = rec(buf, pos)
                    if incl > limit or frac >= fdiv:
                        what = (f"corrupt record: captured length {incl} exceeds the snapshot length "
                                f"{snaplen}" if incl > limit else
                                f"corrupt record: fraction of a second {frac} is not below {div}")
                        if self.strict:
                            raise CaptureError(self.path, what, b.offset())
                        if not self._resync_pcap(b, rec, limit, fdiv, last, what, e):
                            return
                    elif not b.need(16 + incl):
                        self._truncated(f"record of {incl} bytes has only "
                                        f"{len(b.buf) - b.pos - 16} bytes", b.offset())
                        return
                buf, pos = b.buf, b.pos
        finally:
            self.packets += packets

    def _skipped(self, what, start, end, found: bool) -> None:
        self.skipped += 1
        self.skipped_bytes += end - start
        where = (f"the next plausible record at byte offset {end}" if found
                 else "the end of the file (no plausible record after it)")
        self.warnings.append(f"{self.path}: {what} at byte offset {start}: skipped "
                             f"{end - start} bytes to {where}")

    def _resync_pcap(self, b, rec, limit, div, last, what, e) -> bool:
        """Skip from the corrupt record header at ``b.pos`` to the next
        plausible one (see the module); False at the end of the file.  With
        a last good timestamp, only the places whose seconds have its high
        16 bits (or a neighbour's within the window) are tried: a regular
        expression finds them, not a Python loop over every byte."""
        start = b.offset()
        b.pos += 1
        hi_at = 2 if e == "<" else 0          # where the seconds' high 16 bits are
        candidates = None
        if last is not None:
            w = int(RESYNC_WINDOW)
            highs = {(v >> 16) & 0xFFFF for v in (*range(last - w, last + w, 1 << 15), last + w) if v >= 0}
            candidates = re.compile(b"|".join(re.escape(Struct(e + "H").pack(h)) for h in sorted(highs)))
        while b.need(16):
            sec, frac, incl, _orig = rec(b.buf, b.pos)
            if incl <= limit and frac < div and _near(sec, last):
                # the record after it must be plausible too, or the file end there
                if b.need(32 + incl):
                    sec2, frac2, incl2, _ = rec(b.buf, b.pos + 16 + incl)
                    ok = incl2 <= limit and frac2 < div and _near(sec2, sec)
                else:
                    ok = len(b.buf) - b.pos == 16 + incl
                if ok:
                    self._skipped(what, start, b.offset(), True)
                    return True
            if candidates is None:
                b.pos += 1
                continue
            m = candidates.search(b.buf, b.pos + 1 + hi_at)
            if m is None:                     # none in this window: read on, keeping a header's worth
                b.pos = max(b.pos + 1, len(b.buf) - 15)
            else:
                b.pos = m.start() - hi_at
        b.pos = len(b.buf)
        self._skipped(what, start, b.offset(), False)
        return False

    def _resync_pcapng(self, b, start, e, ifaces, last, what) -> bool:
        """Skip from the corrupt block at file offset ``start`` to the next
        plausible block (see the module); False at the end.  Byte by byte, not
        by 4: bytes cut out of the file break its alignment."""
        blk = Struct(e + "II").unpack_from
        u32 = Struct(e + "I").unpack_from
        b.pos = max(0, start + 4 - b.base)
        while b.need(12):
            buf, pos = b.buf, b.pos
            btype, blen = blk(buf, pos)
            trailer = u32
            if btype == _PCAPNG_SHB:       # its own byte order
                order = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}.get(bytes(buf[pos + 8:pos + 12]))
                if order is None:
                    b.pos += 1
                    continue
                trailer = Struct(order + "I").unpack_from
                blen = trailer(buf, pos + 4)[0]
            if (btype in _PCAPNG_BLOCKS and 12 <= blen <= MAX_RECORD and not blen % 4
                    and b.need(blen) and trailer(b.buf, b.pos + blen - 4)[0] == blen):
                buf, pos = b.buf, b.pos
                ok = True
                if btype == 6:
                    if blen < 32:
                        ok = False
                    else:
                        iid, hi, lo, incl, _orig = Struct(e + "IIIII").unpack_from(buf, pos + 8)
                        ok = iid < len(ifaces) and 28 + incl <= blen
                        if ok:
                            _lt, scale, tsoff, _snap = ifaces[iid]
                            ok = _near(((hi << 32) | lo) * scale + tsoff, last)
                if ok:
                    self._skipped(what, start, b.offset(), True)
                    return True
            b.pos += 1
        b.pos = len(b.buf)
        self._skipped(what, start, b.offset(), False)
        return False

    # -- pcapng
    def _pcapng(self):
        b = self._b
        e = None                # byte order of the current section
        blk = u32 = None        # unpackers for (type, total length) and one u32
        ifaces: list = []       # (linktype, scale, offset, snaplen) per interface id
        last_ts = 0.0
        while True:
            try:
                if not b.need(8):
                    left = len(b.buf) - b.pos
                    if left:
                        self._truncated(f"block header has {left} of 8 bytes", b.offset())
                    return
                start = b.offset()
                btype = _u32le(b.buf, b.pos)[0]
                if btype == _PCAPNG_SHB:
                    if not b.need(12):
                        self._truncated("section header block is cut short", start)
                        return
                    bom = b.buf[b.pos + 8:b.pos + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        e = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        e = ">"
                    else:
                        raise _Corrupt(self.path, "corrupt pcapng section header: bad "
                                       f"byte-order magic 0x{bom.hex()}", start + 8)
                    blk = Struct(e + "II").unpack_from
                    u32 = Struct(e + "I").unpack_from
                    ifaces = []
                elif blk is None:
                    raise _Corrupt(self.path, "corrupt pcapng: block before the first "
                                   "section header", start)
                btype, blen = blk(b.buf, b.pos)
                if blen < 12 or blen % 4 or blen > MAX_RECORD:
                    raise _Corrupt(self.path, f"corrupt pcapng block: total length {blen} "
                                   f"(type 0x{btype:08x})", start + 4)
                if not b.need(blen):
                    self._truncated(f"block of {blen} bytes (type 0x{btype:08x}) has only "
                                    f"{len(b.buf) - b.pos} bytes", start)
                    return
                buf, pos = b.buf, b.pos
                trail = u32(buf, pos + blen - 4)[0]
                if trail != blen:
                    raise _Corrupt(self.path, "corrupt pcapng block: trailing length "
                                   f"{trail} differs from leading "
                                   f"length {blen}", start + blen - 4)
                body = pos + 8
                bend = pos + blen - 4
                b.pos = pos + blen
                if btype == 6:                                   # Enhanced Packet Block
                    if bend - body < 20:
                        raise _Corrupt(self.path, "corrupt enhanced packet block: too short", start)
                    iid, hi, lo, incl, orig = Struct(e + "IIIII").unpack_from(buf, body)
                    if iid >= len(ifaces):
                        raise _Corrupt(self.path, f"packet on interface {iid}, but only "
                                       f"{len(ifaces)} interface(s) described", start + 8)
                    if body + 20 + incl > bend:
                        raise _Corrupt(self.path, f"corrupt enhanced packet block: captured "
                                       f"length {incl} exceeds the block", start + 20)
                    lt, scale, tsoff, _snap = ifaces[iid]
                    self.packets += 1
                    last_ts = ((hi << 32) | lo) * scale + tsoff
                    yield last_ts, lt, buf[body + 20:body + 20 + incl], orig if orig > incl else incl
                elif btype == 3:                                 # Simple Packet Block
                    if not ifaces:
                        raise _Corrupt(self.path, "simple packet block without an "
                                       "interface description", start)
                    if bend - body < 4:
                        raise _Corrupt(self.path, "corrupt simple packet block: too short", start)
                    orig = Struct(e + "I").unpack_from(buf, body)[0]
                    lt, scale, tsoff, snap = ifaces[0]
                    incl = min(orig, bend - body - 4, snap or orig)
                    self.packets += 1
                    # no timestamp in an SPB: repeat the last one, so time never goes back
                    yield last_ts, lt, buf[body + 4:body + 4 + incl], orig
                elif btype == 1:                                 # Interface Description Block
                    if bend - body < 8:
                        raise _Corrupt(self.path, "corrupt interface description block", start)
                    lt, _res, snap = Struct(e + "HHI").unpack_from(buf, body)
                    scale, tsoff = self._idb_options(buf, body + 8, bend, e, start)
                    self.linktypes[len(ifaces)] = lt
                    ifaces.append((lt, scale, tsoff, snap))
                elif btype == 2:                                 # Packet Block (obsolete)
                    if bend - body < 20:
                        raise _Corrupt(self.path, "corrupt packet block: too short", start)
                    iid, _drops, hi, lo, incl, orig = Struct(e + "HHIIII").unpack_from(buf, body)
                    if iid >= len(ifaces) or body + 20 + incl > bend:
                        raise _Corrupt(self.path, "corrupt packet block", start)
                    lt, scale, tsoff, _snap = ifaces[iid]
                    self.packets += 1
                    last_ts = ((hi << 32) | lo) * scale + tsoff
                    yield last_ts, lt, buf[body + 20:body + 20 + incl], orig if orig > incl else incl
                # anything else (SHB handled above, NRB, ISB, DSB, custom): skipped
            except _Corrupt as exc:
                if self.strict or blk is None:
                    raise CaptureError(self.path, exc.what, exc.offset) from None
                if not self._resync_pcapng(b, start, e, ifaces, last_ts if self.packets else None,
                                           exc.what):
                    return

    def _idb_options(self, buf, p, end, e, start):
        """Parse if_tsresol (9) and if_tsoffset (14); return (scale, offset seconds)."""
        scale, tsoff = 1e-6, 0
        opt = Struct(e + "HH").unpack_from
        while p + 4 <= end:
            code, ln = opt(buf, p)
            p += 4
            if code == 0:
                break
            if p + ln > end:
                raise _Corrupt(self.path, "corrupt interface description block: option "
                               "runs past the block", start)
            if code == 9 and ln >= 1:
                r = buf[p]
                scale = 2.0 ** -(r & 0x7F) if r & 0x80 else 10.0 ** -r
            elif code == 14 and ln >= 8:
                tsoff = Struct(e + "q").unpack_from(buf, p)[0]
            p += (ln + 3) & ~3
        return scale, tsoff


def open_capture(path, strict: bool = True) -> CaptureReader:
    """Open a pcap or pcapng file; raises ``CaptureError`` if it is not readable."""
    return CaptureReader(path, strict=strict)


def read_packets(path, strict: bool = True):
    """Yield ``(ts, linktype, frame, wirelen)`` for every packet of a capture file."""
    yield from CaptureReader(path, strict=strict)
