"""Load the kernel programs of bpf/ with bcc and attach them with pyroute2.

    with Datapath(DatapathConfig(ports=(25, 587))) as dp:
        dp.attach("eth1")                 # XDP ingress + TC egress
        dp.maps.ban("192.0.2.0/24", ttl=600)
        reader = dp.event_reader()       # sensor.kernel.ring.EventReader (the event ring)

Everything attached is detached on every exit path (close(), the context
manager, and the signal handlers of the CLI call close()). Nothing belonging
to someone else is replaced or removed: an interface that already carries an
XDP program is refused, a clsact qdisc we did not create is left in place.
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
from sensor.kernel import abi, bpfsys
from sensor.kernel.maps import PINNED_MAPS, KernelMaps
from sensor.kernel.netns import iproute

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
TC_PRIO = 0xC5E  # our filter's priority: found again and removed by it alone

# Capabilities (bit numbers from linux/capability.h) that loading and
# attaching need when not plain root.
CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 12, 21, 38, 39


XDP_PROG_NAME = "ss_xdp_ingress"   # the kernel keeps 15 characters of a program's name
TC_PROG_NAME = "ss_tc_egress"


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


@dataclass
class Attachment:
    ifname: str
    ifindex: int
    netns: str | None
    xdp_mode: str  # "native" or "generic"
    created_clsact: bool


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
    try:
        with open("/proc/self/mounts") as mounts:
            return any(line.split()[1] == str(path) and line.split()[2] == "bpf" for line in mounts)
    except OSError:
        return False


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

    # ------------------------------------------------------------ loading

    def cflags(self) -> list[str]:
        """The flags bcc compiles source() with: the build parameters as -D
        (bpf/datapath.c says what each is), in this order."""
        pages = self.config.ring_pages
        if pages < 1 or pages & (pages - 1):
            raise SensorError(f"ring_pages must be a power of two, got {pages}")
        return [f'-DSS_PIN_DIR="{self.config.pin_dir}"', f"-DSS_RING_PAGES={pages}", "-w"]

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
        self.config.pin_dir.mkdir(parents=True, exist_ok=True)
        check_pins(self.config.pin_dir)
        try:
            self.bpf = bcc.BPF(text=self.source().encode(), cflags=self.cflags())
            self._xdp_fn = self.bpf.load_func(b"ss_xdp_ingress", bcc.BPF.XDP)
            self._tc_fn = self.bpf.load_func(b"ss_tc_egress", bcc.BPF.SCHED_CLS)
            self._inject_fn = self.bpf.load_func(b"ss_xdp_inject", bcc.BPF.XDP)
            ehlo = self.bpf.load_func(b"ss_tc_ehlo", bcc.BPF.SCHED_CLS)
            self.bpf[b"ss_tail"][ct.c_int(0)] = ct.c_int(ehlo.fd)
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

    def event_reader(self, wake_batch: bool = True):
        """The reader of the event ring. There is one ring: a new reader
        replaces (closes) the previous one.

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
        self._reader = EventReader(self.bpf)
        return self._reader

    # ------------------------------------------------------------ attaching

    def attach(self, ifname: str, netns: str | None = None, xdp_mode: str = "auto") -> Attachment:
        """XDP on ingress and TC on egress of one interface."""
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
            self._refuse_foreign_xdp(ipr, ifname, ifindex)
            mode = self._attach_xdp(ipr, ifname, ifindex, xdp_mode, NetlinkError)
            attachment = Attachment(ifname, ifindex, netns, mode, created_clsact=False)
            self.attachments.append(attachment)
            try:
                self._attach_tc(ipr, attachment, NetlinkError)
            except NetlinkError as exc:
                raise SensorError(f"cannot attach the TC egress filter to {ifname}: "
                                  f"{os.strerror(exc.code)}") from None
        log.info("attached", ifname=ifname, netns=netns, xdp_mode=mode,
                 xdp_prog_id=bpfsys.prog_id(self.xdp_fd), tc_prog_id=bpfsys.prog_id(self.tc_fd))
        return attachment

    @staticmethod
    def _refuse_foreign_xdp(ipr, ifname: str, ifindex: int) -> None:
        link = ipr.get_links(ifindex)[0]
        xdp = link.get_attr("IFLA_XDP")
        prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp else None
        if prog_id:
            try:
                name = bpfsys.prog_info_by_id(prog_id).name
            except OSError:
                name = "?"
            ours = name == XDP_PROG_NAME
            raise SensorError(
                f"interface {ifname} already has an XDP program (id {prog_id}, name {name!r}); "
                f"smtp-sensor will not replace it. "
                + (f"It is smtp-sensor's own: if no sensor runs any more (killed without cleanup), "
                   f"remove it with 'smtp-sensor unload -i {ifname}'" if ours else
                   f"Detach it first if it is not needed ('ip link set dev {ifname} xdp off'), "
                   "or stop what owns it"))

    def _attach_xdp(self, ipr, ifname: str, ifindex: int, xdp_mode: str, NetlinkError) -> str:
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

    def _attach_tc(self, ipr, attachment: Attachment, NetlinkError) -> None:
        try:
            ipr.tc("add", "clsact", attachment.ifindex)
            attachment.created_clsact = True
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            # someone else's clsact: keep it, and remove only our filter later
        ipr.tc("add-filter", "bpf", attachment.ifindex, ":1", fd=self.tc_fd, name="ss_tc_egress",
               parent=TC_EGRESS_PARENT, classid=1, direct_action=True, prio=TC_PRIO)

    @staticmethod
    def detach_stale(ifname: str, netns: str | None = None) -> list[str]:
        """Remove programs of a sensor that died without cleanup (SIGKILL, OOM)
        from ``ifname``: the XDP program only if it is named ours (removed
        with EXPECTED_FD, so a program attached meanwhile is left alone), and
        the TC egress filter at our priority only if it is named ours.
        Returns what was removed."""
        from pyroute2.netlink.exceptions import NetlinkError

        removed = []
        with iproute(netns) as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                where = f" in namespace {netns}" if netns else ""
                raise SensorError(f"interface {ifname!r} does not exist{where}")
            ifindex = found[0]
            link = ipr.get_links(ifindex)[0]
            xdp = link.get_attr("IFLA_XDP")
            prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") if xdp else None
            if prog_id:
                fd = bpfsys.prog_fd_by_id(prog_id)
                try:
                    name = bpfsys.prog_info_by_id(prog_id).name
                    attached = xdp.get_attr("IFLA_XDP_ATTACHED")
                    mode = "generic" if attached == 2 else "native"
                    if name == XDP_PROG_NAME:
                        ipr.link("set", index=ifindex, xdp={"attrs": [
                            ("IFLA_XDP_FD", -1), ("IFLA_XDP_EXPECTED_FD", fd),
                            ("IFLA_XDP_FLAGS", XDP_MODES[mode] | XDP_FLAGS_REPLACE)]})
                        removed.append(f"XDP program {prog_id} ({mode})")
                finally:
                    os.close(fd)
            try:
                filters = ipr.get_filters(ifindex, parent=TC_EGRESS_PARENT)
            except NetlinkError:
                filters = []
            for flt in filters:
                opts = flt.get_attr("TCA_OPTIONS")
                name = opts.get_attr("TCA_BPF_NAME") if opts else None
                if name and name.startswith(TC_PROG_NAME) and (flt["info"] >> 16) == TC_PRIO:
                    try:
                        ipr.tc("del-filter", "bpf", ifindex, ":1", parent=TC_EGRESS_PARENT, prio=TC_PRIO)
                        removed.append(f"TC egress filter {name}")
                    except NetlinkError as exc:
                        if exc.code not in (errno.ENOENT, errno.EINVAL):
                            raise
                    break
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

    def close(self) -> None:
        while self.attachments:
            self.detach(self.attachments.pop())
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self.bpf is not None:
            self.bpf.cleanup()
            self.bpf = None

    def __enter__(self) -> "Datapath":
        if self.bpf is None:
            self.load()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
