"""Python mirror of bpf/smtp_sensor.h: the layouts userland shares with the
kernel (event header, map keys and values, counters, reasons, configuration
bits), the packing of addresses into keys, and the decoding of one record of
the event ring into an Event.

CHANGE TOGETHER with bpf/smtp_sensor.h. tests/kernel/test_abi_mirror.py compiles the C
header with static assertions generated from this module (sizes, offsets,
constants), and checks that every constant of the header is mirrored here.

Read next: the events go to sensor/inputs/live.py (LiveFeed, into the
pipeline); verdicts come back through sensor/kernel/maps.py.
"""

from __future__ import annotations

import ctypes as ct
import enum
import ipaddress
import socket
import struct

from sensor import shard

ABI_VERSION = 2
SNAPLEN_MAX = 65000
FLOW_MAX = 65536
BAN_MAX = 16384
PORT_MAX = 65536

EVF_CUT = 0x1
EVF_HELD = 0x2
EVF_RELEASED = 0x4
EVF_HOLD_TIMEOUT = 0x8
EVF_FRAGMENT = 0x10
CFG_NO_PUSH = 0x1
CFG_NO_ENFORCE = 0x2
CFG_WAKE_BATCH = 0x4
CFG_HOLD = 0x8
VF_RESET = 0x1
VF_GUESSED = 0x2
VF_TORN = 0x4
WAKE_BATCH = 64
RING_PENDING = 0    # enum ss_ring_slot
RING_PRESSURE = 1
RING_SLOTS = 2      # with one worker; worker w's pressure slot is RING_PRESSURE + w
WORKERS_MAX = 64    # event rings (workers) at most
FNV_OFFSET, FNV_PRIME = shard.FNV_OFFSET, shard.FNV_PRIME   # the shard hash
HOLD_SCAN_MAX = 1536
HOLD_MAX_MS_DEFAULT = 400

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

AF_INET = 4
AF_INET6 = 6


class Direction(enum.IntEnum):
    INGRESS = 0
    EGRESS = 1


DIRECTION_COUNT = 2  # SS_DIR__MAX


class Counter(enum.IntEnum):
    """enum ss_counter: exclusive verdicts first, then extra marks."""

    NOT_IP = 0
    NOT_TCP = 1
    NOT_SMTP = 2
    FRAGMENT = 3
    PARSE_ERROR = 4
    PURE_ACK = 5
    PUSHED = 6
    PUSH_FAILED = 7
    BYPASSED = 8
    NO_PUSH = 9
    DROP_FLOW = 10
    DROP_BAN = 11
    HELD = 12
    DROP_FRAG = 13
    EXT_LIMIT = 14
    DROP_EXT_LIMIT = 15
    CUT = 16
    EXPIRED = 17
    RELEASED = 18
    HOLD_TIMEOUT = 19
    EHLO_REWRITTEN = 20
    RESET = 21
    DROP_ENDED = 22
    FRAG_PUSHED = 23
    SHED = 24


VERDICT_COUNTERS = 16  # SS_CNT_VERDICT__MAX: counters below this are exclusive
COUNTER_COUNT = 25  # SS_CNT__MAX


class Phase(enum.IntEnum):
    """enum ss_phase: what the client of a flow sends, by the server's last reply."""

    COMMAND = 0
    DATA = 1
    STARTTLS = 2
    TLS = 3


class Reason(enum.IntEnum):
    NONE = 0
    MANUAL = 1
    RULE = 2
    SPAM_STATS = 3
    STARTTLS = 4


REASON_COUNT = 5  # SS_REASON__MAX


class Config(ct.Structure):
    _fields_ = [("flags", ct.c_uint32), ("snaplen", ct.c_uint32), ("hold_max_ms", ct.c_uint32),
                ("_pad", ct.c_uint32)]


class EventHeader(ct.Structure):
    _fields_ = [
        ("version", ct.c_uint16),
        ("direction", ct.c_uint8),
        ("flags", ct.c_uint8),
        ("ifindex", ct.c_uint32),
        ("ts_ns", ct.c_uint64),
        ("wire_len", ct.c_uint32),
        ("cap_len", ct.c_uint32),
        ("saddr", ct.c_uint8 * 16),
        ("daddr", ct.c_uint8 * 16),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("seq", ct.c_uint32),
        ("ack", ct.c_uint32),
        ("payload_off", ct.c_uint16),
        ("l3_off", ct.c_uint16),
        ("payload_len", ct.c_uint32),
        ("family", ct.c_uint8),
        ("tcp_flags", ct.c_uint8),
        ("_pad", ct.c_uint8 * 2),
        ("lost", ct.c_uint32),
        ("_pad2", ct.c_uint32),
    ]


class FlowKey(ct.Structure):
    _fields_ = [
        ("saddr", ct.c_uint8 * 16),
        ("daddr", ct.c_uint8 * 16),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("family", ct.c_uint8),
        ("_pad", ct.c_uint8 * 3),
    ]


class Verdict(ct.Structure):
    _fields_ = [
        ("expires_ns", ct.c_uint64),
        ("packets", ct.c_uint64),
        ("bytes", ct.c_uint64),
        ("reason", ct.c_uint32),
        ("flags", ct.c_uint32),
    ]


class Release(ct.Structure):
    _fields_ = [("seq", ct.c_uint32), ("flags", ct.c_uint32), ("ts_ns", ct.c_uint64)]


REL_HOLD_ALL = 0x1
REL_AT_LINE = 0x2


class FlowState(ct.Structure):
    _fields_ = [("line_seq", ct.c_uint32), ("line_known", ct.c_uint8), ("phase", ct.c_uint8),
                ("_pad", ct.c_uint8 * 2)]


class Hold(ct.Structure):
    _fields_ = [("since_ns", ct.c_uint64), ("seq", ct.c_uint32), ("end", ct.c_uint32)]


class Loss(ct.Structure):
    _fields_ = [("events", ct.c_uint64), ("last_ns", ct.c_uint64), ("flags", ct.c_uint32),
                ("_pad", ct.c_uint32)]


LOSS_SYN = 0x1


class LpmV4(ct.Structure):
    _fields_ = [("prefixlen", ct.c_uint32), ("addr", ct.c_uint8 * 4)]


class LpmV6(ct.Structure):
    _fields_ = [("prefixlen", ct.c_uint32), ("addr", ct.c_uint8 * 16)]


#: interfaces with counters of their own (ss_if_counters)
IF_MAX = 64


class IfKey(ct.Structure):
    _fields_ = [("ifindex", ct.c_uint32), ("direction", ct.c_uint32)]


class IfCounters(ct.Structure):
    _fields_ = [("verdicts", ct.c_uint64 * VERDICT_COUNTERS)]


# Every struct of the header, by its C name, for the mirror test.
STRUCTS = {
    "ss_if_key": IfKey,
    "ss_if_counters": IfCounters,
    "ss_config": Config,
    "ss_event_hdr": EventHeader,
    "ss_flow_key": FlowKey,
    "ss_verdict": Verdict,
    "ss_release": Release,
    "ss_hold": Hold,
    "ss_flow_state": FlowState,
    "ss_loss": Loss,
    "ss_lpm_v4": LpmV4,
    "ss_lpm_v6": LpmV6,
}

# Every constant of the header, by its C name, for the mirror test.
CONSTANTS = {
    "SS_ABI_VERSION": ABI_VERSION,
    "SS_SNAPLEN_MAX": SNAPLEN_MAX,
    "SS_FLOW_MAX": FLOW_MAX,
    "SS_BAN_MAX": BAN_MAX,
    "SS_PORT_MAX": PORT_MAX,
    "SS_IF_MAX": IF_MAX,
    "SS_EVF_CUT": EVF_CUT,
    "SS_EVF_HELD": EVF_HELD,
    "SS_EVF_RELEASED": EVF_RELEASED,
    "SS_EVF_HOLD_TIMEOUT": EVF_HOLD_TIMEOUT,
    "SS_EVF_FRAGMENT": EVF_FRAGMENT,
    "SS_CFG_NO_PUSH": CFG_NO_PUSH,
    "SS_CFG_NO_ENFORCE": CFG_NO_ENFORCE,
    "SS_CFG_WAKE_BATCH": CFG_WAKE_BATCH,
    "SS_CFG_HOLD": CFG_HOLD,
    "SS_VF_RESET": VF_RESET,
    "SS_VF_GUESSED": VF_GUESSED,
    "SS_VF_TORN": VF_TORN,
    "SS_WAKE_BATCH": WAKE_BATCH,
    "SS_RING_PENDING": RING_PENDING,
    "SS_RING_PRESSURE": RING_PRESSURE,
    "SS_RING__MAX": RING_SLOTS,
    "SS_WORKERS_MAX": WORKERS_MAX,
    "SS_FNV_OFFSET": FNV_OFFSET,
    "SS_FNV_PRIME": FNV_PRIME,
    "SS_HOLD_SCAN_MAX": HOLD_SCAN_MAX,
    "SS_HOLD_MAX_MS_DEFAULT": HOLD_MAX_MS_DEFAULT,
    "SS_LOSS_SYN": LOSS_SYN,
    "SS_REL_HOLD_ALL": REL_HOLD_ALL,
    "SS_REL_AT_LINE": REL_AT_LINE,
    **{f"SS_PHASE_{p.name}": p.value for p in Phase},
    "SS_TCP_FIN": TCP_FIN,
    "SS_TCP_SYN": TCP_SYN,
    "SS_TCP_RST": TCP_RST,
    "SS_TCP_PSH": TCP_PSH,
    "SS_TCP_ACK": TCP_ACK,
    "SS_AF_INET": AF_INET,
    "SS_AF_INET6": AF_INET6,
    "SS_DIR__MAX": DIRECTION_COUNT,
    "SS_CNT_VERDICT__MAX": VERDICT_COUNTERS,
    "SS_CNT__MAX": COUNTER_COUNT,
    "SS_REASON__MAX": REASON_COUNT,
    **{f"SS_DIR_{d.name}": d.value for d in Direction},
    **{f"SS_CNT_{c.name}": c.value for c in Counter},
    **{f"SS_REASON_{r.name}": r.value for r in Reason},
}

EVENT_HEADER_SIZE = ct.sizeof(EventHeader)
_V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"


# ---------------------------------------------------------------- addresses

def packed_address(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, bytes]:
    """(family tag, 16 bytes) the way the kernel stores an address."""
    # text goes through inet_pton first, far cheaper than ipaddress: flow.drop()
    # packs four addresses per verdict, on the verdict-to-kernel path
    # (docs/benchmarks.md, section 4); anything inet_pton refuses goes to ipaddress
    if isinstance(address, str):
        try:
            return AF_INET, _V4_MAPPED_PREFIX + socket.inet_pton(socket.AF_INET, address)
        except OSError:
            try:
                return AF_INET6, socket.inet_pton(socket.AF_INET6, address)
            except OSError:
                pass
    ip = ipaddress.ip_address(address)
    if ip.version == 4:
        return AF_INET, _V4_MAPPED_PREFIX + ip.packed
    return AF_INET6, ip.packed


def address_text(family: int, raw16: bytes) -> str:
    if family == AF_INET:
        return str(ipaddress.IPv4Address(raw16[12:16]))
    return str(ipaddress.IPv6Address(raw16))


def flow_key(src: str, sport: int, dst: str, dport: int) -> FlowKey:
    """The kernel key of the direction src:sport -> dst:dport."""
    family, saddr = packed_address(src)
    family_d, daddr = packed_address(dst)
    if family != family_d:
        raise ValueError(f"mixed address families: {src} and {dst}")
    # one pack instead of field-by-field ctypes assignment: the same path as packed_address
    return FlowKey.from_buffer_copy(_FLOW_KEY_LAYOUT.pack(saddr, daddr, sport, dport, family))


def flow_key_packed(src: bytes, sport: int, dst: bytes, dport: int) -> FlowKey:
    """The kernel key of a direction from packed addresses (4 bytes IPv4,
    16 bytes IPv6), as sensor.stream.packet.Segment carries them."""
    if len(src) == 4:
        family, src, dst = AF_INET, _V4_MAPPED_PREFIX + src, _V4_MAPPED_PREFIX + dst
    else:
        family = AF_INET6
    return FlowKey.from_buffer_copy(_FLOW_KEY_LAYOUT.pack(src, dst, sport, dport, family))


_FLOW_KEY_LAYOUT = struct.Struct("=16s16sHHB3x")     # FlowKey, field by field
assert _FLOW_KEY_LAYOUT.size == ct.sizeof(FlowKey)


def lpm_key(network: str | ipaddress.IPv4Network | ipaddress.IPv6Network) -> LpmV4 | LpmV6:
    """The LPM trie key of a prefix such as 192.0.2.0/24 or 2001:db8::/48."""
    net = ipaddress.ip_network(network, strict=True)
    key = LpmV4() if net.version == 4 else LpmV6()
    key.prefixlen = net.prefixlen
    key.addr[:] = net.network_address.packed
    return key


def lpm_network(key: LpmV4 | LpmV6) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network((bytes(key.addr), key.prefixlen))


# ---------------------------------------------------------------- events

class Event:
    """One record of the event ring decoded: the metadata and the captured frame bytes."""

    __slots__ = ("header", "frame")

    def __init__(self, header: EventHeader, frame: bytes):
        self.header = header
        self.frame = frame

    @property
    def cut(self) -> bool:
        return bool(self.header.flags & EVF_CUT)

    @property
    def held(self) -> bool:
        """A commit candidate the kernel dropped until userland releases it."""
        return bool(self.header.flags & EVF_HELD)

    @property
    def lost(self) -> int:
        """Events of this direction the ring refused before this one."""
        return self.header.lost

    @property
    def payload(self) -> bytes:
        h = self.header
        return self.frame[h.payload_off:h.payload_off + h.payload_len]

    @property
    def src(self) -> str:
        return address_text(self.header.family, bytes(self.header.saddr))

    @property
    def dst(self) -> str:
        return address_text(self.header.family, bytes(self.header.daddr))


class EventFormatError(ValueError):
    """A record that cannot be one of our events (wrong version or length)."""


def decode_event(record: bytes) -> Event:
    """Decode one record of the event ring. The record is padded to its size
    class: the captured length in the header is what counts."""
    if len(record) < EVENT_HEADER_SIZE:
        raise EventFormatError(f"record of {len(record)} bytes is shorter than the event header")
    header = EventHeader.from_buffer_copy(record, 0)
    if header.version != ABI_VERSION:
        raise EventFormatError(f"event version {header.version}, expected {ABI_VERSION}")
    end = EVENT_HEADER_SIZE + header.cap_len
    if end > len(record):
        raise EventFormatError(f"event claims {header.cap_len} bytes, record holds {len(record) - EVENT_HEADER_SIZE}")
    return Event(header, record[EVENT_HEADER_SIZE:end])
