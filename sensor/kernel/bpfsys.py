"""The few bpf(2) commands bcc's Python API does not expose: get a pinned
object, read a map's or program's info (with the ids of the maps a program
uses), a program's fd by its id, load the
two-instruction XDP program that passes everything (no compiler). bpf() and
bpf_attr() make any other command (the kernel tests run the programs with
BPF_PROG_TEST_RUN through them: tests/support/testrun.py)."""

from __future__ import annotations

import ctypes as ct
import ctypes.util
import os
from dataclasses import dataclass

_NR_BY_MACHINE = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

BPF_MAP_CREATE = 0
BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_LOAD = 5
BPF_OBJ_GET = 7
BPF_PROG_TYPE_XDP = 6
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_TEST_RUN = 10
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1

_ATTR_SIZE = 128
_libc = ct.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.syscall.restype = ct.c_long


def _nr_bpf() -> int:
    machine = os.uname().machine
    try:
        return _NR_BY_MACHINE[machine]
    except KeyError:
        raise OSError(f"bpf(2) syscall number unknown for {machine}") from None


def bpf(cmd: int, attr: ct.Array) -> int:
    """bpf(2) with a bpf_attr() buffer, which the kernel may write back into."""
    ret = _libc.syscall(_nr_bpf(), cmd, ct.byref(attr), ct.sizeof(attr))
    if ret < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


class _MapCreateAttr(ct.Structure):
    _fields_ = [("map_type", ct.c_uint32), ("key_size", ct.c_uint32), ("value_size", ct.c_uint32),
                ("max_entries", ct.c_uint32), ("map_flags", ct.c_uint32), ("inner_map_fd", ct.c_uint32),
                ("numa_node", ct.c_uint32), ("map_name", ct.c_char * 16)]


class _ObjGetAttr(ct.Structure):
    _fields_ = [("pathname", ct.c_uint64), ("bpf_fd", ct.c_uint32), ("file_flags", ct.c_uint32)]


class _InfoAttr(ct.Structure):
    _fields_ = [("bpf_fd", ct.c_uint32), ("info_len", ct.c_uint32), ("info", ct.c_uint64)]


class _IdAttr(ct.Structure):
    _fields_ = [("id", ct.c_uint32), ("next_id", ct.c_uint32), ("open_flags", ct.c_uint32)]


class _MapInfo(ct.Structure):
    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
    ]


class _ProgInfo(ct.Structure):
    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("tag", ct.c_uint8 * 8),
        ("jited_prog_len", ct.c_uint32),
        ("xlated_prog_len", ct.c_uint32),
        ("jited_prog_insns", ct.c_uint64),
        ("xlated_prog_insns", ct.c_uint64),
        ("load_time", ct.c_uint64),
        ("created_by_uid", ct.c_uint32),
        ("nr_map_ids", ct.c_uint32),
        ("map_ids", ct.c_uint64),
        ("name", ct.c_char * 16),
    ]


class _ProgLoadAttr(ct.Structure):
    _fields_ = [
        ("prog_type", ct.c_uint32),
        ("insn_cnt", ct.c_uint32),
        ("insns", ct.c_uint64),
        ("license", ct.c_uint64),
        ("log_level", ct.c_uint32),
        ("log_size", ct.c_uint32),
        ("log_buf", ct.c_uint64),
        ("kern_version", ct.c_uint32),
        ("prog_flags", ct.c_uint32),
        ("prog_name", ct.c_char * 16),
    ]


# r0 = XDP_PASS (2); exit
_XDP_PASS_INSNS = bytes.fromhex("b700000002000000" "9500000000000000")


def bpf_attr(struct: ct.Structure) -> ct.Array:
    """The union bpf_attr holding ``struct``, zero-padded."""
    buf = (ct.c_uint8 * _ATTR_SIZE)()
    ct.memmove(buf, ct.byref(struct), ct.sizeof(struct))
    return buf


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str


@dataclass(frozen=True)
class ProgInfo:
    type: int
    id: int
    name: str
    map_ids: tuple[int, ...] = ()


def ringbuf_create(size: int, name: str) -> int:
    """fd of a new BPF ring buffer of ``size`` bytes (a power of two of pages)."""
    return bpf(BPF_MAP_CREATE, bpf_attr(_MapCreateAttr(map_type=BPF_MAP_TYPE_RINGBUF, max_entries=size,
                                                       map_name=name.encode()[:15])))


def obj_get(path: str) -> int:
    """fd of the object pinned at path (OSError if none)."""
    raw = ct.create_string_buffer(os.fsencode(path))
    return bpf(BPF_OBJ_GET, bpf_attr(_ObjGetAttr(pathname=ct.addressof(raw))))


def _info(fd: int, info: ct.Structure) -> None:
    attr = bpf_attr(_InfoAttr(bpf_fd=fd, info_len=ct.sizeof(info), info=ct.addressof(info)))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    _info(fd, info)
    return MapInfo(info.type, info.id, info.key_size, info.value_size, info.max_entries,
                   info.map_flags, info.name.decode(errors="replace"))


def prog_fd_by_id(prog_id: int) -> int:
    """A new fd of the program with this id (the caller closes it)."""
    return bpf(BPF_PROG_GET_FD_BY_ID, bpf_attr(_IdAttr(id=prog_id)))


def prog_info(fd: int) -> ProgInfo:
    """The program's type, id, name and the ids of the maps it uses."""
    info = _ProgInfo()
    _info(fd, info)
    count = info.nr_map_ids
    if count:
        # the second call fills the ids the first one counted (the kernel
        # writes at most nr_map_ids of them)
        ids = (ct.c_uint32 * count)()
        info = _ProgInfo(nr_map_ids=count, map_ids=ct.addressof(ids))
        _info(fd, info)
        count = min(count, info.nr_map_ids)
    return ProgInfo(info.type, info.id, info.name.decode(errors="replace"),
                    tuple(ids[:count]) if count else ())


def prog_info_by_id(prog_id: int) -> ProgInfo:
    fd = prog_fd_by_id(prog_id)
    try:
        return prog_info(fd)
    finally:
        os.close(fd)


def prog_id(fd: int) -> int:
    info = _ProgInfo()
    _info(fd, info)
    return info.id


# struct bpf_prog_info up to verified_insns (Linux 5.16+): where it lies
_VERIFIED_INSNS_AT = 216
_PROG_INFO_LONG = 232


def verified_insns(fd: int) -> tuple[int, int]:
    """(instructions the verifier processed to accept the program, its limit
    being 1 000 000 (0 on a kernel that does not say); instructions of the
    program as translated)."""
    buf = (ct.c_uint8 * _PROG_INFO_LONG)()
    attr = bpf_attr(_InfoAttr(bpf_fd=fd, info_len=_PROG_INFO_LONG, info=ct.addressof(buf)))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    info = _ProgInfo.from_buffer_copy(bytes(buf[:ct.sizeof(_ProgInfo)]))
    return (int.from_bytes(bytes(buf[_VERIFIED_INSNS_AT:_VERIFIED_INSNS_AT + 4]), "little"),
            info.xlated_prog_len // 8)


class TestRunAttr(ct.Structure):
    """union bpf_attr for BPF_PROG_TEST_RUN."""

    __test__ = False  # not a test class, whatever pytest thinks of the name
    _fields_ = [
        ("prog_fd", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("data_in", ct.c_uint64),
        ("data_out", ct.c_uint64),
        ("repeat", ct.c_uint32),
        ("duration", ct.c_uint32),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("ctx_in", ct.c_uint64),
        ("ctx_out", ct.c_uint64),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
    ]


class XdpMd(ct.Structure):
    """struct xdp_md, the context of an XDP program (BPF_PROG_TEST_RUN's ctx_in)."""

    _fields_ = [("data", ct.c_uint32), ("data_end", ct.c_uint32), ("data_meta", ct.c_uint32),
                ("ingress_ifindex", ct.c_uint32), ("rx_queue_index", ct.c_uint32),
                ("egress_ifindex", ct.c_uint32)]


def load_xdp_pass(name: str = "xdp_pass") -> int:
    """fd of a new XDP program that passes every frame (the caller closes it).
    What it is for: a veth only takes the frames its peer's XDP sends back
    (XDP_TX) when it runs an XDP program itself (its receive NAPI)."""
    insns = ct.create_string_buffer(_XDP_PASS_INSNS, len(_XDP_PASS_INSNS))
    license = ct.create_string_buffer(b"GPL")
    return bpf(BPF_PROG_LOAD, bpf_attr(_ProgLoadAttr(
        prog_type=BPF_PROG_TYPE_XDP, insn_cnt=len(_XDP_PASS_INSNS) // 8, insns=ct.addressof(insns),
        license=ct.addressof(license), prog_name=name.encode()[:15])))
