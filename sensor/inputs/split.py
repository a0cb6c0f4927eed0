"""Which worker of a sharded replay (``replay --workers N``) a captured frame is for.

``FrameOwners(ports, workers, index).owners(ts, linktype, frame, wirelen)``
peeks at the frame's headers, no more, and returns the workers that must be
given it:

* a TCP segment: the worker of its client's address (``sensor.shard.worker_of``);
* an IP fragment of TCP: its datagram's worker.  The first fragment holds the
  ports: the datagram's worker is then remembered (keyed as the
  defragmenter keys it) for the fragments after it.  A fragment that comes
  before its first is nobody's yet: it is held here (``()`` is returned)
  and fed, with its own time, to the datagram's worker when the first
  fragment comes, just before it (``feed``: the worker's
  ``Pipeline.feed_frame``).  Held for as long as the defragmenter keeps a
  datagram (``timeout``) without its first fragment, or still held at the
  end, or past ``HELD_FRAMES``, the fragments go to the lower of the
  workers of their two addresses (``sensor.shard.fragment_workers``), whose
  defragmenter then times them out as one process's would: so every
  fragment is counted once.  A first fragment whose ports cannot be read
  (IPv6 extension headers behind the fragment header) goes, with what was
  held and the fragments after it, to both workers, each of which keeps
  only the datagrams whose flow is its own (``ShardFilter``); the other
  counts them too;
* anything else (not IP, not TCP, undecodable): worker 0, so it is counted once.

The answer is a tuple of worker numbers.  It is computed alike in every
worker (each reads the whole capture and keeps its own frames), so they
agree without talking to each other.
"""

from __future__ import annotations

from struct import Struct

from sensor import shard
from sensor.stream import packet

try:
    import cython            # compiled (setup.py): the compiler's; else Cython's pure-Python shadow
except ImportError:          # pure Python without Cython installed
    from types import SimpleNamespace
    cython = SimpleNamespace(compiled=False)

__all__ = ["FrameOwners", "ShardFilter"]

_ip4 = Struct("!BxxxHHxB2x4s4s").unpack_from          # vihl, id, frag, proto, src, dst
_ip6 = Struct("!6xB").unpack_from                     # next header
_ip6_addrs = Struct("!16s16s").unpack_from
_frag6 = Struct("!BxHI").unpack_from                  # next header, offset and flags, id
_ports = Struct("!HH").unpack_from
_ext = Struct("!BB").unpack_from

_IP6_EXT = frozenset((0, 43, 60, 135, 139, 140))
_IP6_FRAG, _IP6_AH = 44, 51
#: datagrams whose owner is remembered; past it the memory starts again
_DATAGRAMS = 65536
#: client addresses whose worker is remembered (the hash is not recomputed per packet)
_ADDRESSES = 1 << 18
#: plain segments' address and port bytes whose owner is remembered (no header unpacked per packet)
_ENDPOINTS = 1 << 18
#: fragments held before their datagram's first; past it the oldest datagram's are let go
HELD_FRAMES = 4096

_ZERO = (0,)


class FrameOwners:
    def __init__(self, ports, workers: int, index: int = 0, timeout: float = 30.0, feed=None):
        self.ports = frozenset(ports)
        self.workers = workers
        self.index = index
        self.timeout = timeout
        #: ``feed(linktype, frame, wirelen, ts)``: the worker's pipeline (held fragments, let go)
        self.feed = feed
        self._by_client: dict[bytes, tuple] = {}
        self._by_endpoints: dict[bytes, tuple] = {}     # frame[26:38] of a plain segment -> owner
        self._datagrams: dict[tuple, tuple] = {}
        self._held: dict[tuple, list] = {}        # datagram key -> [(ts, linktype, frame, wirelen)], oldest first
        self._held_frames = 0
        self._singles = tuple((w,) for w in range(workers))

    def owners(self, ts: float, linktype: int, frame, wirelen: int) -> tuple:
        if linktype == 1 and _plain_ip4_tcp(frame):
            # most frames: the owner is a function of the addresses and ports alone
            endpoints = frame[26:38]
            found = self._by_endpoints.get(endpoints)
            if found is None:
                if len(self._by_endpoints) >= _ENDPOINTS:
                    self._by_endpoints.clear()
                found = self._by_endpoints[endpoints] = self._of(
                    endpoints[:4], (endpoints[8] << 8) | endpoints[9],
                    endpoints[4:8], (endpoints[10] << 8) | endpoints[11])
            return found
        self._frame = (ts, linktype, frame, wirelen)
        return self._general(linktype, frame)

    def expire(self, now: float) -> None:
        """Let go of the fragments held for the defragmenter's timeout (call before it expires)."""
        held = self._held
        while held:
            key, frames = next(iter(held.items()))
            if now - frames[0][0] < self.timeout:
                break
            self._let_go(key)

    def flush(self) -> None:
        """The end of the input: every fragment still held is let go."""
        while self._held:
            self._let_go(next(iter(self._held)))

    def _of(self, src: bytes, sport: int, dst: bytes, dport: int) -> tuple:
        client = shard.client_address(src, sport, dst, dport, self.ports)
        found = self._by_client.get(client)
        if found is None:
            if len(self._by_client) >= _ADDRESSES:
                self._by_client.clear()
            found = self._by_client[client] = self._singles[shard.worker_of_address(client, self.workers)]
        return found

    def _general(self, linktype: int, frame) -> tuple:
        n = len(frame)
        where = packet.link_layer(linktype, frame, n)
        if where.__class__ is str:
            return _ZERO
        ver, off = where
        if ver == 4:
            return self._ip4(frame, off, n)
        if ver == 6:
            return self._ip6(frame, off, n)
        return _ZERO

    def _ip4(self, frame, off: int, n: int) -> tuple:
        if n < off + 20:
            return _ZERO
        vihl, ident, frag, proto, src, dst = _ip4(frame, off)
        ihl = (vihl & 0x0F) << 2
        if vihl >> 4 != 4 or ihl < 20 or proto != 6:
            return _ZERO
        l4 = off + ihl
        if not frag & 0x3FFF:
            return self._tcp(src, dst, frame, l4, n)
        return self._fragment((4, src, dst, ident, proto), src, dst, frame, l4, n, frag & 0x1FFF)

    def _tcp(self, src, dst, frame, l4: int, n: int) -> tuple:
        if n < l4 + 4:
            return _ZERO
        sport, dport = _ports(frame, l4)
        return self._of(src, sport, dst, dport)

    def _ip6(self, frame, off: int, n: int) -> tuple:
        if n < off + 40:
            return _ZERO
        nxt = _ip6(frame, off)[0]
        src, dst = _ip6_addrs(frame, off + 8)
        l4 = off + 40
        for _ in range(8):
            if nxt == 6:
                return self._tcp(src, dst, frame, l4, n)
            if n < l4 + 8:
                return _ZERO
            if nxt == _IP6_FRAG:
                nxt2, offset_flags, ident = _frag6(frame, l4)
                if not offset_flags & 0xFFF9:          # an atomic fragment: a whole packet
                    nxt, l4 = nxt2, l4 + 8
                    continue
                if nxt2 != 6 and nxt2 not in _IP6_EXT and nxt2 != _IP6_AH:
                    return _ZERO
                start = l4 + 8 if nxt2 == 6 else -1     # ports readable only right behind it
                return self._fragment((6, src, dst, ident), src, dst, frame, start, n, offset_flags >> 3)
            if nxt in _IP6_EXT:
                nxt2, hlen = _ext(frame, l4)
                l4 += (hlen + 1) << 3
            elif nxt == _IP6_AH:
                nxt2, hlen = _ext(frame, l4)
                l4 += (hlen + 2) << 2
            else:
                return _ZERO
            nxt = nxt2
        return _ZERO

    def _fragment(self, key, src, dst, frame, l4: int, n: int, offset: int) -> tuple:
        known = self._datagrams.get(key)
        if known is not None:
            return known
        if len(self._datagrams) >= _DATAGRAMS:
            self._datagrams.clear()
        if offset == 0:
            if l4 >= 0 and n >= l4 + 4:
                sport, dport = _ports(frame, l4)
                owner = self._of(src, sport, dst, dport)
            else:
                owner = _both(src, dst, self.workers)
            self._datagrams[key] = owner
            self._give(key, owner)
            return owner
        if self.feed is None:
            return _both(src, dst, self.workers)
        self._held.setdefault(key, []).append(self._frame)
        self._held_frames += 1
        if self._held_frames > HELD_FRAMES:
            self._let_go(next(iter(self._held)))
        return ()

    def _let_go(self, key) -> None:
        """Held fragments whose first never came: to the lower of their addresses' workers."""
        self._give(key, _both(key[1], key[2], self.workers)[:1])

    def _give(self, key, owner: tuple) -> None:
        frames = self._held.pop(key, None)
        if frames is None:
            return
        self._held_frames -= len(frames)
        if self.index in owner:
            feed = self.feed
            for ts, linktype, frame, wirelen in frames:
                feed(linktype, frame, wirelen, ts)


def _plain_ip4_tcp_bytes(frame) -> bool:
    """Ethernet, IPv4 without options, TCP, not a fragment, the ports there:
    by byte, nothing unpacked."""
    return (len(frame) >= 38 and frame[12] == 0x08 and frame[13] == 0 and frame[14] == 0x45
            and frame[23] == 6 and not frame[20] & 0x3F and not frame[21])


def _plain_ip4_tcp_c(frame) -> bool:
    """``_plain_ip4_tcp_bytes`` on the frame's C bytes, when this module is compiled."""
    if type(frame) is not bytes:
        return _plain_ip4_tcp_bytes(frame)
    if len(frame) < 38:
        return False
    p = cython.declare(cython.p_uchar, frame)
    return (p[12] == 0x08 and p[13] == 0 and p[14] == 0x45 and p[23] == 6
            and not p[20] & 0x3F and not p[21])


_plain_ip4_tcp = _plain_ip4_tcp_c if cython.compiled else _plain_ip4_tcp_bytes


def _both(src: bytes, dst: bytes, workers: int) -> tuple:
    return tuple(sorted(shard.fragment_workers(src, dst, workers)))


class ShardFilter:
    """Keeps a worker's pipeline to its own flows: ``keeps(segment)`` is False
    for a datagram reassembled from fragments given to this worker and
    another one (their ports were not known) whose flow is the other's."""

    def __init__(self, ports, workers: int, index: int):
        self.ports = frozenset(ports)
        self.workers = workers
        self.index = index

    def keeps(self, seg) -> bool:
        return shard.worker_of(seg.src, seg.sport, seg.dst, seg.dport, self.ports, self.workers) == self.index
