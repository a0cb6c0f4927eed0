"""Tell a killed sensor's programs, left attached, from everyone else's.

A sensor ended by SIGKILL or the OOM killer cannot detach: its XDP program
and its TC egress filter stay attached (the attachment holds a reference),
running on with the maps pinned in its pin folder.  So that systemd's
``Restart=on-failure`` recovers, the next start replaces them atomically
(sensor.kernel.datapath) instead of refusing the interface.  A program is
taken over only when all three hold:

1. its name is ours (``ss_xdp_ingress``, ``ss_tc_egress``): anyone can pick
   a name, so this alone proves nothing;
2. it uses a map pinned in this sensor's pin folder (the same kernel object:
   the map ids of the program's info against the ids of the pins).  Only a
   sensor started with this pin folder, hence this ABI version (the folder
   is versioned), can have loaded it.  A BTF or ELF tag would prove the
   same as the name: bcc compiles at run time, so any program can carry it;
3. no live process holds a file descriptor of it (``prog_id`` in
   ``/proc/PID/fdinfo``): a running sensor keeps its programs' fds open, so a
   second sensor on the same interface is still refused, whatever its pins.

Anything else is refused with one line saying what it is and what to do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sensor.errors import SensorError
from sensor.kernel import bpfsys
from sensor.kernel.maps import PINNED_MAPS

__all__ = ["Verdict", "judge", "refusal", "pinned_map_ids", "holders", "tc_filter_prog_id"]

TCA_BPF_ID = 11     # linux/pkt_cls.h: the id of a cls_bpf filter's program (pyroute2 does not decode it)


@dataclass(frozen=True)
class Verdict:
    """What a program found attached is: ``ours`` to take over, or why not."""

    prog_id: int
    name: str
    ours: bool
    why: str = ""               # for a refusal: what the program is
    holders: tuple[int, ...] = ()


def pinned_map_ids(pin_dir: Path) -> set[int]:
    """The ids of the maps pinned in ``pin_dir`` (those of PINNED_MAPS that exist)."""
    ids = set()
    for name in PINNED_MAPS:
        try:
            fd = bpfsys.obj_get(str(Path(pin_dir) / name))
        except OSError:
            continue
        try:
            ids.add(bpfsys.map_info(fd).id)
        finally:
            os.close(fd)
    return ids


def holders(prog_id: int) -> tuple[int, ...]:
    """The processes holding a file descriptor of the program ``prog_id``,
    read from /proc/PID/fdinfo: this one too (another Datapath of this
    process is a running sensor as much as another process is)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _holds(entry.path, prog_id):
            found.append(int(entry.name))
    return tuple(found)


def _holds(proc: str, prog_id: int) -> bool:
    try:
        fds = os.listdir(f"{proc}/fd")
    except OSError:               # gone, or a kernel thread
        return False
    wanted = f"prog_id:\t{prog_id}\n"
    for fd in fds:
        try:
            if os.readlink(f"{proc}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"{proc}/fdinfo/{fd}") as info:
                if wanted in info.read():
                    return True
        except OSError:           # closed meanwhile
            continue
    return False


def judge(prog_id: int, expected_name: str, pin_dir: Path) -> Verdict:
    """Whether the attached program ``prog_id`` is a killed sensor's of this
    pin folder (the module's three conditions)."""
    try:
        info = bpfsys.prog_info_by_id(prog_id)
    except OSError as exc:
        return Verdict(prog_id, "?", False, f"its info cannot be read ({exc.strerror})")
    if info.name != expected_name:
        return Verdict(prog_id, info.name, False, "not smtp-sensor's")
    if not set(info.map_ids) & pinned_map_ids(pin_dir):
        return Verdict(prog_id, info.name, False,
                       f"named like smtp-sensor's but using no map pinned in {pin_dir} (another "
                       "installation or version of smtp-sensor)")
    pids = holders(prog_id)
    if pids:
        return Verdict(prog_id, info.name, False,
                       f"smtp-sensor's, in use by the running process {_describe(pids)}", pids)
    return Verdict(prog_id, info.name, True)


def refusal(ifname: str, what: str, verdict: Verdict, detach: str) -> SensorError:
    """The one line that refuses an interface carrying a program not to take
    over; ``detach``: the command that removes it by hand."""
    if verdict.holders:
        advice = "stop that sensor first (smtp-sensor unload), or give this one another interface"
    elif verdict.name.startswith("ss_"):
        advice = (f"if no sensor of that installation runs any more, remove it with "
                  f"'smtp-sensor unload -i {ifname} --keep-maps' or '{detach}'")
    else:
        advice = f"detach it first if it is not needed ('{detach}'), or stop what owns it"
    return SensorError(f"interface {ifname} already has {what} (id {verdict.prog_id}, name "
                       f"{verdict.name!r}), {verdict.why}: smtp-sensor will not replace it; {advice}")


def tc_filter_prog_id(flt) -> int | None:
    """The program id of a cls_bpf filter message from pyroute2 (TCA_BPF_ID,
    which it leaves undecoded), or None."""
    opts = flt.get_attr("TCA_OPTIONS")
    if not opts:
        return None
    offset = getattr(opts, "offset", 0) + 4          # past the nested attribute's own header
    end = getattr(opts, "offset", 0) + getattr(opts, "length", 0)
    data = getattr(opts, "data", None)
    if data is None:
        return None
    while offset + 4 <= end:
        length = int.from_bytes(data[offset:offset + 2], "little")
        kind = int.from_bytes(data[offset + 2:offset + 4], "little") & 0x3FFF
        if length < 4:
            return None
        if kind == TCA_BPF_ID and length >= 8:
            return int.from_bytes(data[offset + 4:offset + 8], "little")
        offset += (length + 3) & ~3
    return None


def _describe(pids: tuple[int, ...]) -> str:
    parts = []
    for pid in pids[:3]:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            comm = "?"
        parts.append(f"{pid} ({comm})")
    return ", ".join(parts) + (f" and {len(pids) - 3} more" if len(pids) > 3 else "")
