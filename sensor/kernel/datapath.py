"""Load the kernel programs of bpf/ with bcc and attach them with pyroute2.

    with Datapath(DatapathConfig(ports=(25, 587))) as dp:
        dp.attach("eth1")                 # XDP ingress + TC egress
        dp.maps.ban("192.0.2.0/24", ttl=600)
        reader = dp.event_reader()       # sensor.kernel.ring.EventReader (the event ring)

With ``workers`` > 1 the kernel pushes each packet into the ring of its
client's worker (bpf/shard.h, sensor/shard.py): ``event_reader(worker=w)``
reads ring w. Ring 0 is bcc's ``ss_events``; the others are made here, of
the same size, and put into the array of maps ``ss_rings`` at load, before
anything is attached.

Everything attached is detached on every exit path (close(), the context
manager, and the signal handlers of the CLI call close()). Nothing belonging
to someone else is replaced or removed: an interface that already carries an
XDP program is refused, a clsact qdisc we did not create is left in place.
The one exception is a sensor's own programs left by a SIGKILL or an OOM
kill (sensor.kernel.takeover says how they are told apart): they are
replaced atomically, the XDP program by netlink with the old one as the
expected fd (XDP_FLAGS_REPLACE: the kernel swaps only if it is still the one
judged), the TC filter by a replace at our priority and handle.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from sensor.errors import SensorError
from sensor.kernel import abi, bpfsys, takeover
from sensor.kernel.maps import PINNED_MAPS, KernelMaps
from sensor.kernel.netns import iproute
from sensor.kernel.ring import EVENTS_MAP

log = structlog.get_logger("sensor.kernel.datapath")

BPF_DIR = Path(os.environ.get("SMTP_SENSOR_BPF_DIR", Path(__file__).resolve().parents[2] / "bpf"))
BPF_FS = Path("/sys/fs/bpf")
PIN_ROOT = BPF_FS / "smtp-sensor"
BPF_FS_MAGIC = 0xCAFE4A11

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
XDP_MODES = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}

TC_EGRESS_PARENT = "ffff:fff3"
TC_INGRESS_PARENT = "ffff:fff2"
TC_PRIO = 0xC5E  # our filter's priority: found again and removed by it alone

# Capabilities (bit numbers from linux/capability.h) that loading and
# attaching need when not plain root.
CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 12, 21, 38, 39


XDP_PROG_NAME = "ss_xdp_ingress"   # the kernel keeps 15 characters of a program's name
TC_PROG_NAME = "ss_tc_egress"
# Every program of bpf/datapath.c, in the order load() loads them, with its
# bcc program type (bcc.BPF's attribute of that name).
PROGRAMS = ((XDP_PROG_NAME, "XDP"), (TC_PROG_NAME, "SCHED_CLS"), ("ss_xdp_inject", "XDP"),
            ("ss_tc_ehlo", "SCHED_CLS"), ("ss_tc_after_ehlo", "SCHED_CLS"))
# The egress path's tail calls: the program in each slot of ss_tail (bpf/datapath.c,
# enum ss_tail_slot).
TAIL_SLOTS = ("ss_tc_ehlo", "ss_tc_after_ehlo")


@dataclass
class DatapathConfig:
    ports: tuple[int, ...] = (25, 587)
    snaplen: int = 0  # 0 = abi.SNAPLEN_MAX
    push: bool = True  # push events to userland
    enforce: bool = True  # honour bans and flow drops
    hold: bool = False  # the commit hold (with enforce only)
    hold_max_ms: int = abi.HOLD_MAX_MS_DEFAULT
    pin_dir: Path = field(default_factory=lambda: PIN_ROOT / f"v{abi.ABI_VERSION}")
    # pages of the event ring (one BPF ring buffer for all CPUs), a power of
    # two: 8 MiB hold ~5000 1.4 KB events, 25 ms at 200 k/s
    ring_pages: int = 2048
    # worker processes, each reading its own event ring (bpf/shard.h)
    workers: int = 1


@dataclass
class Attachment:
    ifname: str
    ifindex: int
    netns: str | None
    xdp_mode: str  # "native" or "generic"
    created_clsact: bool
    took_over: tuple[int, ...] = ()   # ids of a killed sensor's programs this attachment replaced


@dataclass(frozen=True)
class Stale:
    """A killed sensor's programs on one interface, judged ours (takeover):
    the XDP program's id and mode, the TC filter's program id, and whether
    the clsact qdisc holds nothing else (then it is taken over as well)."""

    xdp_id: int | None = None
    xdp_mode: str | None = None
    tc_id: int | None = None
    clsact_ours: bool = False


def attached_xdp(link) -> tuple[int | None, str | None]:
    """(program id, "native" / "generic" / other) of the XDP program on a
    pyroute2 link message, (None, None) without one."""
    xdp = link.get_attr("IFLA_XDP")
    prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp else None
    if not prog_id:
        return None, None
    attached = xdp.get_attr("IFLA_XDP_ATTACHED")
    return prog_id, {"xdp": "native", 1: "native", "xdpgeneric": "generic", 2: "generic"}.get(
        attached, str(attached))


def effective_capabilities() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_privileges() -> None:
    caps = effective_capabilities()
    needed = {"CAP_BPF": CAP_BPF, "CAP_PERFMON": CAP_PERFMON, "CAP_NET_ADMIN": CAP_NET_ADMIN}
    if caps & (1 << CAP_SYS_ADMIN) and caps & (1 << CAP_NET_ADMIN):
        return
    missing = [name for name, bit in needed.items() if not caps & (1 << bit)]
    if missing:
        raise SensorError(
            f"missing capability {', '.join(missing)}: run smtp-sensor as root "
            "(sudo) or grant CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN")


def import_bcc():
    try:
        import bcc  # the distro's python3-bpfcc
    except ImportError:
        raise SensorError(
            "bcc is not importable: install the distro package python3-bpfcc (the PyPI "
            "package called 'bcc' is another project) and use a venv made with "
            "--system-site-packages; './run setup' does both") from None
    if not hasattr(bcc, "BPF"):
        raise SensorError(
            f"the 'bcc' module at {getattr(bcc, '__file__', '?')} is not iovisor bcc (the PyPI "
            "package 'bcc' is another project): pip uninstall bcc, then install python3-bpfcc")
    return bcc


def check_kernel_headers() -> None:
    build = Path("/lib/modules") / platform.release() / "build"
    if not (build / "include").is_dir() and not (build / "arch").is_dir():
        raise SensorError(
            f"no kernel headers at {build}: bcc needs them to compile bpf/. Run './run setup' "
            "(installs linux-headers for this kernel, or the distro's generic ones linked there)")


def ensure_bpffs() -> None:
    """Pinning needs bpffs on /sys/fs/bpf; mount it when it is missing, as
    bpftool and systemd do."""
    if _is_bpffs(BPF_FS):
        return
    BPF_FS.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "bpf", "bpf", str(BPF_FS)], capture_output=True, text=True)
    if result.returncode != 0 or not _is_bpffs(BPF_FS):
        raise SensorError(f"cannot mount bpffs on {BPF_FS} ({result.stderr.strip()}): "
                          f"mount it with 'mount -t bpf bpf {BPF_FS}'")
    log.info("bpffs mounted", path=str(BPF_FS))


def _is_bpffs(path: Path) -> bool:
    """Whether a bpffs is mounted at ``path`` itself."""
    return _mount_of(path) == (str(path.resolve()), "bpf")


def check_pin_dir(pin_dir: Path) -> None:
    """The pin folder must be on a bpffs (the kernel pins there only): one
    line before anything is created or compiled."""
    where = _mount_of(pin_dir)
    if where is not None and where[1] != "bpf":
        raise SensorError(f"--pin-dir {pin_dir} is on {where[0]} ({where[1]}), not on a bpffs: "
                          f"choose a folder under {BPF_FS}")


def _mount_of(path: Path) -> tuple[str, str] | None:
    """(mount point, file system type) of the mount that holds ``path`` (None: unknown)."""
    target = str(path.resolve())
    best = None
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                point = fields[1].replace("\\040", " ")
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and (best is None or len(point) >= len(best[0])):
                    best = (point, fields[2])
    except OSError:
        return None
    return best


def check_pins(pin_dir: Path) -> None:
    """Refuse pinned maps whose layout differs from ours: reusing them would
    make the kernel read keys and values of another shape."""
    for name, expected in PINNED_MAPS.items():
        path = pin_dir / name
        if not path.exists():
            continue
        try:
            fd = bpfsys.obj_get(str(path))
        except OSError as exc:
            raise SensorError(f"cannot open pinned map {path}: {exc.strerror}; remove it "
                              f"('smtp-sensor unload' or rm {path})") from None
        try:
            info = bpfsys.map_info(fd)
        finally:
            os.close(fd)
        found = (info.type, info.key_size, info.value_size, info.max_entries)
        if found != expected:
            raise SensorError(
                f"pinned map {path} has another layout (type, key, value, entries = {found}, "
                f"expected {expected}): it was left by another version of smtp-sensor. "
                f"Remove it to start (this forgets the bans and drops it holds): rm {path}")


_LOCAL_INCLUDE = re.compile(r'\s*#\s*include\s+"([^"]+)"')


def expand_includes(path: Path) -> str:
    """The text of the C file ``path`` with each quoted include (a header
    beside it, in bpf/) replaced by that header's text, expanded alike.

    Each header of bpf/ has an include guard, so its second inclusion adds
    nothing: it is expanded once, and a later include of it becomes a comment.
    #line markers keep the compiler's messages at the original file and line.
    Angle-bracket includes (the kernel's headers) are left to the compiler."""
    expanded: set[Path] = set()

    def expand(path: Path) -> list[str]:
        out = [f'#line 1 "{path}"\n']
        for number, line in enumerate(path.read_text().splitlines(keepends=True), 1):
            match = _LOCAL_INCLUDE.match(line)
            if match is None:
                out.append(line)
                continue
            header = path.parent / match.group(1)
            directive = f'#include "{match.group(1)}"'      # without a trailing comment, which would end ours
            if header in expanded:
                out.append(f"/* {directive}: expanded above */\n")
                continue
            if not header.is_file():
                raise SensorError(f"{path}:{number} includes {header}, which does not exist")
            expanded.add(header)
            out += [f"/* {directive} */\n", *expand(header), f'#line {number + 1} "{path}"\n']
        if out[-1][-1:] != "\n":
            out[-1] += "\n"
        return out

    return "".join(expand(path))


def define_line(flag: str) -> str:
    """The #define line of a -D compiler flag (-DNAME=value, or -DNAME: 1)."""
    name, _, value = flag[2:].partition("=")
    return f"#define {name} {value or 1}"


class Datapath:
    """The compiled programs, their maps, and where they are attached."""

    def __init__(self, config: DatapathConfig | None = None):
        self.config = config or DatapathConfig()
        self.bpf = None
        self.maps: KernelMaps | None = None
        self.attachments: list[Attachment] = []
        self._xdp_fn = self._tc_fn = self._inject_fn = None
        self._reader = None
        self._ring_fds: list[int] = []   # the rings of workers 1 ... workers-1 (ss_rings)

    # ------------------------------------------------------------ loading

    def cflags(self) -> list[str]:
        """The flags bcc compiles source() with: the build parameters as -D
        (bpf/datapath.c says what each is), in this order."""
        pages = self.config.ring_pages
        if pages < 1 or pages & (pages - 1):
            raise SensorError(f"ring_pages must be a power of two, got {pages}")
        workers = self.config.workers
        if not 1 <= workers <= abi.WORKERS_MAX:
            raise SensorError(f"workers must be between 1 and {abi.WORKERS_MAX}, got {workers}")
        return [f'-DSS_PIN_DIR="{self.config.pin_dir}"', f"-DSS_RING_PAGES={pages}",
                f"-DSS_WORKERS={workers}", "-w"]

    def source(self) -> str:
        """The C text bcc compiles: bpf/datapath.c with the headers of bpf/
        expanded where they are included."""
        return expand_includes(BPF_DIR / "datapath.c")

    def listing(self) -> str:
        """What bcc compiles, as one file (``smtp-sensor run --ebpf``): the
        cflags, their -D values as #define lines in the order bcc gets them,
        then source(). Compiled without the -D flags it gives the same
        programs."""
        flags = self.cflags()
        head = ["// smtp-sensor: the C that bcc compiles, as one file.",
                f"// cflags: {' '.join(flags)}",
                "// The -D values as #define lines, in the order bcc gets them; then",
                f"// {BPF_DIR / 'datapath.c'} with the headers of {BPF_DIR} expanded where it",
                "// includes them (#line markers name each file and line).",
                *(define_line(flag) for flag in flags if flag.startswith("-D"))]
        return "\n".join(head) + "\n" + self.source()

    def load(self) -> "Datapath":
        check_privileges()
        bcc = import_bcc()
        check_kernel_headers()
        ensure_bpffs()
        check_pin_dir(self.config.pin_dir)
        self.config.pin_dir.mkdir(parents=True, exist_ok=True)
        check_pins(self.config.pin_dir)
        try:
            self.bpf = bcc.BPF(text=self.source().encode(), cflags=self.cflags())
            fns = {name: self.bpf.load_func(name.encode(), getattr(bcc.BPF, kind)) for name, kind in PROGRAMS}
            self._xdp_fn, self._tc_fn = fns[XDP_PROG_NAME], fns[TC_PROG_NAME]
            self._inject_fn = fns["ss_xdp_inject"]
            for slot, name in enumerate(TAIL_SLOTS):
                self.bpf[b"ss_tail"][ct.c_int(slot)] = ct.c_int(fns[name].fd)
            self._fill_rings()
        except Exception as exc:  # bcc raises bare Exception; clang printed the details
            raise SensorError(f"the kernel programs in {BPF_DIR} failed to compile or load "
                              f"({exc}); the compiler or verifier output above says why") from None
        self.maps = KernelMaps(self.bpf)
        self.maps.set_ports(self.config.ports)
        self.maps.set_config(push=self.config.push, enforce=self.config.enforce,
                             snaplen=self.config.snaplen, hold=self.config.hold,
                             hold_max_ms=self.config.hold_max_ms)
        log.info("datapath loaded", pin_dir=str(self.config.pin_dir), ports=list(self.config.ports))
        return self

    def _fill_rings(self) -> None:
        """ss_rings[w] for every worker: ss_events for 0, new rings alike for the others."""
        if self.config.workers == 1:
            return
        rings = self.bpf[b"ss_rings"]
        rings[ct.c_int(0)] = ct.c_int(self.bpf[EVENTS_MAP].map_fd)
        size = self.config.ring_pages * os.sysconf("SC_PAGE_SIZE")
        for worker in range(1, self.config.workers):
            fd = bpfsys.ringbuf_create(size, f"ss_events_{worker}")
            self._ring_fds.append(fd)
            rings[ct.c_int(worker)] = ct.c_int(fd)

    def ring_fd(self, worker: int = 0) -> int:
        """The fd of worker ``worker``'s event ring."""
        if not 0 <= worker < self.config.workers:
            raise ValueError(f"no worker {worker} (workers: {self.config.workers})")
        return self.bpf[EVENTS_MAP].map_fd if worker == 0 else self._ring_fds[worker - 1]

    @property
    def xdp_fd(self) -> int:
        return self._xdp_fn.fd

    def injector(self, netns: str | None = None):
        """A sensor.kernel.inject.Injector into the stack of the interfaces
        attached in ``netns``."""
        from sensor.kernel.inject import Injector
        return Injector(self._inject_fn.fd, netns)

    @property
    def tc_fd(self) -> int:
        return self._tc_fn.fd

    def event_reader(self, wake_batch: bool = True, worker: int = 0):
        """The reader of worker ``worker``'s event ring. One reader per
        process: a new reader replaces (closes) the previous one.

        wake_batch False: the reader is woken for every record pushed after it
        has read everything (lowest latency: what rules need, so a verdict is
        not late). True: every abi.WAKE_BATCH records per CPU (each wakeup
        costs the sending CPU an irq_work); a quiet link's last records then
        wait for the reader's poll timeout."""
        from sensor.kernel.ring import EventReader
        if self._reader is not None:
            self._reader.close()
        cfg = self.config
        self.maps.set_config(push=cfg.push, enforce=cfg.enforce, snaplen=cfg.snaplen,
                             wake_batch=wake_batch, hold=cfg.hold, hold_max_ms=cfg.hold_max_ms)
        self._reader = EventReader(self.bpf, ring_fd=self.ring_fd(worker), worker=worker)
        return self._reader

    # ------------------------------------------------------------ attaching

    def attach(self, ifname: str, netns: str | None = None, xdp_mode: str = "auto") -> Attachment:
        """XDP on ingress and TC on egress of one interface; a killed sensor's
        programs found there are replaced (``judge_stale``), anything else
        already attached is refused."""
        from pyroute2.netlink.exceptions import NetlinkError

        if xdp_mode not in ("auto", *XDP_MODES):
            raise SensorError(f"unknown XDP mode {xdp_mode!r}: use auto, native or generic")
        where = f" in network namespace {netns}" if netns else ""
        with iproute(netns) as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise SensorError(f"interface {ifname!r} does not exist{where}: "
                                  "check the name with 'ip link'")
            ifindex = found[0]
            stale = self.judge_stale(ipr, ifname, ifindex, xdp_mode)
            mode = self._attach_xdp(ipr, ifname, ifindex, xdp_mode, NetlinkError, stale)
            attachment = Attachment(ifname, ifindex, netns, mode, created_clsact=stale.clsact_ours,
                                    took_over=tuple(i for i in (stale.xdp_id, stale.tc_id) if i))
            self.attachments.append(attachment)
            try:
                self.maps.count_interface(ifindex)
            except Exception as exc:    # bcc raises bare Exception when the map is full
                raise SensorError(f"cannot count the packets of {ifname}: {exc} (at most {abi.IF_MAX} "
                                  "interfaces)") from None
            try:
                self._attach_tc(ipr, attachment, NetlinkError, stale)
            except NetlinkError as exc:
                raise SensorError(f"cannot attach the TC egress filter to {ifname}: "
                                  f"{os.strerror(exc.code)}") from None
        ids = {"xdp_prog_id": bpfsys.prog_id(self.xdp_fd), "tc_prog_id": bpfsys.prog_id(self.tc_fd)}
        if attachment.took_over:
            log.warning("took over the programs of a sensor that was killed without cleanup",
                        ifname=ifname, netns=netns, replaced_xdp_prog_id=stale.xdp_id,
                        replaced_tc_prog_id=stale.tc_id, **ids)
        log.info("attached", ifname=ifname, netns=netns, xdp_mode=mode, **ids)
        return attachment

    def judge_stale(self, ipr, ifname: str, ifindex: int, xdp_mode: str = "auto") -> Stale:
        """What is attached to the interface already: nothing, or a killed
        sensor's programs of our pin folder (``Stale``, to replace).  Anything
        else raises SensorError (one line): a foreign XDP program, a running
        sensor's, another filter at our TC priority."""
        pin_dir = self.config.pin_dir
        xdp_id, old_mode = attached_xdp(ipr.get_links(ifindex)[0])
        if xdp_id:
            verdict = takeover.judge(xdp_id, XDP_PROG_NAME, pin_dir)
            if not verdict.ours:
                raise takeover.refusal(ifname, "an XDP program", verdict,
                                       f"ip link set dev {ifname} xdp off")
            if old_mode not in XDP_MODES:
                raise SensorError(f"interface {ifname} carries smtp-sensor's XDP program (id {xdp_id}) in "
                                  f"{old_mode} mode, which smtp-sensor does not use: remove it with "
                                  f"'smtp-sensor unload -i {ifname} --keep-maps'")
            if xdp_mode != "auto" and xdp_mode != old_mode:
                raise SensorError(f"interface {ifname} carries smtp-sensor's XDP program of a killed sensor "
                                  f"(id {xdp_id}) in {old_mode} mode, and {xdp_mode} mode is asked for: an "
                                  f"atomic replacement keeps the mode; remove it first with "
                                  f"'smtp-sensor unload -i {ifname} --keep-maps', or ask for {old_mode}")
        ours, others = _tc_filters(ipr, ifindex)
        tc_id = self._judge_stale_tc(ifname, ours, pin_dir) if ours is not None else None
        clsact = tc_id is not None and others == 0 and _has_clsact(ipr, ifindex)
        return Stale(xdp_id, old_mode if xdp_id else None, tc_id, clsact)

    @staticmethod
    def _judge_stale_tc(ifname: str, flt, pin_dir: Path) -> int:
        opts = flt.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME") or ""
        prog_id = takeover.tc_filter_prog_id(flt)
        if not name.startswith(TC_PROG_NAME) or prog_id is None:
            raise SensorError(f"interface {ifname} has a TC egress filter {name!r} at smtp-sensor's "
                              f"priority {TC_PRIO:#x}: smtp-sensor will not replace it; remove it if it "
                              f"is not needed (tc filter del dev {ifname} egress prio {TC_PRIO})")
        verdict = takeover.judge(prog_id, TC_PROG_NAME, pin_dir)
        if not verdict.ours:
            raise takeover.refusal(ifname, "a TC egress filter", verdict,
                                   f"tc filter del dev {ifname} egress prio {TC_PRIO}")
        return prog_id

    def _attach_xdp(self, ipr, ifname: str, ifindex: int, xdp_mode: str, NetlinkError, stale: Stale) -> str:
        if stale.xdp_id:
            return self._replace_xdp(ipr, ifname, ifindex, stale, NetlinkError)
        modes = ["native", "generic"] if xdp_mode == "auto" else [xdp_mode]
        last = None
        for mode in modes:
            flags = XDP_FLAGS_UPDATE_IF_NOEXIST | XDP_MODES[mode]
            try:
                ipr.link("set", index=ifindex,
                         xdp={"attrs": [("IFLA_XDP_FD", self.xdp_fd), ("IFLA_XDP_FLAGS", flags)]})
                return mode
            except NetlinkError as exc:
                last = exc
                if exc.code == errno.EBUSY or exc.code == errno.EEXIST:
                    raise SensorError(f"interface {ifname} got another XDP program while we "
                                      "attached; smtp-sensor will not replace it") from None
                if mode == "native" and xdp_mode == "auto":
                    log.warning("native XDP unavailable, falling back to generic XDP",
                                ifname=ifname, error=os.strerror(exc.code))
        raise SensorError(f"cannot attach XDP to {ifname} in {xdp_mode} mode: "
                          f"{os.strerror(last.code)}") from None

    def _replace_xdp(self, ipr, ifname: str, ifindex: int, stale: Stale, NetlinkError) -> str:
        """Swap the killed sensor's XDP program for ours in one netlink
        request, as libxdp does: REPLACE with the old program as EXPECTED_FD,
        so the kernel refuses (EEXIST) if another took its place meanwhile;
        the interface is never without a program."""
        try:
            old_fd = bpfsys.prog_fd_by_id(stale.xdp_id)
        except OSError:
            raise SensorError(f"the XDP program {stale.xdp_id} on {ifname} went away while we "
                              "replaced it: start again") from None
        try:
            ipr.link("set", index=ifindex, xdp={"attrs": [
                ("IFLA_XDP_FD", self.xdp_fd), ("IFLA_XDP_EXPECTED_FD", old_fd),
                ("IFLA_XDP_FLAGS", XDP_MODES[stale.xdp_mode] | XDP_FLAGS_REPLACE)]})
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise SensorError(f"interface {ifname} got another XDP program while we replaced the "
                                  f"killed sensor's (id {stale.xdp_id}); smtp-sensor will not replace it") from None
            raise SensorError(f"cannot replace the XDP program {stale.xdp_id} on {ifname}: "
                              f"{os.strerror(exc.code)}") from None
        finally:
            os.close(old_fd)
        return stale.xdp_mode

    def _attach_tc(self, ipr, attachment: Attachment, NetlinkError, stale: Stale) -> None:
        if stale.tc_id is None:
            try:
                ipr.tc("add", "clsact", attachment.ifindex)
                attachment.created_clsact = True
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
                # someone else's clsact: keep it, and remove only our filter later
        # "replace" at our priority and handle: a killed sensor's filter is
        # swapped in place (the egress path is never without it); none there: added
        ipr.tc("replace-filter" if stale.tc_id is not None else "add-filter", "bpf", attachment.ifindex,
               ":1", fd=self.tc_fd, name="ss_tc_egress", parent=TC_EGRESS_PARENT, classid=1,
               direct_action=True, prio=TC_PRIO)

    @staticmethod
    def detach_stale(ifname: str, netns: str | None = None) -> list[str]:
        """Remove programs of a sensor that died without cleanup (SIGKILL, OOM)
        from ``ifname``: the XDP program only if it is named ours (removed
        with EXPECTED_FD, so a program attached meanwhile is left alone), and
        the TC egress filter at our priority only if it is named ours, with
        the clsact qdisc when nothing else is attached to it.
        Returns what was removed."""
        from pyroute2.netlink.exceptions import NetlinkError

        removed = []
        with iproute(netns) as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                where = f" in namespace {netns}" if netns else ""
                raise SensorError(f"interface {ifname!r} does not exist{where}")
            ifindex = found[0]
            prog_id, mode = attached_xdp(ipr.get_links(ifindex)[0])
            if prog_id:
                fd = bpfsys.prog_fd_by_id(prog_id)
                try:
                    name = bpfsys.prog_info_by_id(prog_id).name
                    if name == XDP_PROG_NAME and mode in XDP_MODES:
                        ipr.link("set", index=ifindex, xdp={"attrs": [
                            ("IFLA_XDP_FD", -1), ("IFLA_XDP_EXPECTED_FD", fd),
                            ("IFLA_XDP_FLAGS", XDP_MODES[mode] | XDP_FLAGS_REPLACE)]})
                        removed.append(f"XDP program {prog_id} ({mode})")
                finally:
                    os.close(fd)
            flt, others = _tc_filters(ipr, ifindex)
            opts = flt.get_attr("TCA_OPTIONS") if flt is not None else None
            name = opts.get_attr("TCA_BPF_NAME") if opts else None
            if name and name.startswith(TC_PROG_NAME):
                try:
                    ipr.tc("del-filter", "bpf", ifindex, ":1", parent=TC_EGRESS_PARENT, prio=TC_PRIO)
                    removed.append(f"TC egress filter {name}")
                except NetlinkError as exc:
                    if exc.code not in (errno.ENOENT, errno.EINVAL):
                        raise
                # a clsact holding nothing else is the killed sensor's (as in judge_stale)
                if not others and _has_clsact(ipr, ifindex):
                    ipr.tc("del", "clsact", ifindex)
                    removed.append("its clsact qdisc")
        return removed

    def detach(self, attachment: Attachment) -> None:
        """Remove what we attached, and only that."""
        try:
            with iproute(attachment.netns) as ipr:
                self._detach_xdp(ipr, attachment)
                self._detach_tc(ipr, attachment)
        except SensorError as exc:
            log.warning("namespace gone, nothing to detach", netns=attachment.netns, error=str(exc))
            return
        log.info("detached", ifname=attachment.ifname, netns=attachment.netns)

    def _detach_xdp(self, ipr, attachment: Attachment) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        # EXPECTED_FD + REPLACE: the kernel removes the program only if it is ours
        flags = XDP_MODES[attachment.xdp_mode] | XDP_FLAGS_REPLACE
        try:
            ipr.link("set", index=attachment.ifindex, xdp={"attrs": [
                ("IFLA_XDP_FD", -1), ("IFLA_XDP_EXPECTED_FD", self.xdp_fd), ("IFLA_XDP_FLAGS", flags)]})
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                log.warning("XDP not detached (replaced by someone else?)",
                            ifname=attachment.ifname, error=os.strerror(exc.code))

    @staticmethod
    def _detach_tc(ipr, attachment: Attachment) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            if attachment.created_clsact:
                ipr.tc("del", "clsact", attachment.ifindex)
            else:
                ipr.tc("del-filter", "bpf", attachment.ifindex, ":1", parent=TC_EGRESS_PARENT, prio=TC_PRIO)
        except NetlinkError as exc:
            if exc.code not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                log.warning("TC filter not removed", ifname=attachment.ifname, error=os.strerror(exc.code))

    def detach_all(self) -> None:
        """Detach from every interface (the maps and the ring stay readable)."""
        while self.attachments:
            self.detach(self.attachments.pop())

    def close(self) -> None:
        self.detach_all()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        while self._ring_fds:
            os.close(self._ring_fds.pop())
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None

    def __enter__(self) -> "Datapath":
        if self.bpf is None:
            self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tc_filters(ipr, ifindex: int):
    """(the egress filter at our priority or None, how many other filters)
    on the interface's clsact, ingress and egress."""
    from pyroute2.netlink.exceptions import NetlinkError

    ours, others = None, 0
    for parent in (TC_EGRESS_PARENT, TC_INGRESS_PARENT):
        try:
            filters = ipr.get_filters(ifindex, parent=parent)
        except NetlinkError:
            filters = []
        for flt in filters:
            if not flt.get_attr("TCA_OPTIONS"):
                continue              # a chain's head, no filter of its own
            if parent == TC_EGRESS_PARENT and (flt["info"] >> 16) == TC_PRIO:
                ours = flt
            else:
                others += 1
    return ours, others


def _has_clsact(ipr, ifindex: int) -> bool:
    return any(q.get_attr("TCA_KIND") == "clsact" for q in ipr.get_qdiscs(ifindex))
