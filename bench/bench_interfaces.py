"""What counting per interface costs the XDP program (ss_if_counters, one
per-CPU hash lookup for each packet on the SMTP ports), and what reading
the ring's fill costs userland.

    .venv/bin/python bench/bench_interfaces.py [--against main] [--json]

BPF_PROG_TEST_RUN runs the program on the loopback device (ingress_ifindex
1): without an entry for it the lookup misses, with one it counts.
``--against REV``: the same paths of the programs of bpf/ at git revision
REV (before the per-interface counters), compiled alike, for the cost of
the lookup itself. The rows are medians of bench_datapath.ns_per_packet (5
rounds; pushes: 25 rounds of 400, the ring drained between rounds).
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_datapath import frame, ns_per_packet  # noqa: E402

from sensor.kernel import abi  # noqa: E402
from sensor.kernel.datapath import Datapath, DatapathConfig, expand_includes  # noqa: E402
from sensor.kernel.ring import EventReader  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

LOOPBACK_IFINDEX = 1


def measure(dp: Datapath) -> dict:
    maps = dp.maps
    reader = dp.event_reader(wake_batch=False)
    drain = lambda: reader.poll_raw(0)  # noqa: E731
    rows = {}
    for counted in (False, True):
        if counted:
            maps.count_interface(LOOPBACK_IFINDEX)
        tag = "counted" if counted else "not counted"
        rows[f"not SMTP (port 80), {tag}"] = ns_per_packet(dp.xdp_fd, frame(64, dport=80))
        rows[f"SMTP pushed, 64 B, {tag}"] = ns_per_packet(dp.xdp_fd, frame(64), 400, 25, drain)
        maps.ban("198.51.100.0/24")
        rows[f"banned source (/24), dropped, {tag}"] = ns_per_packet(dp.xdp_fd, frame(64))
        maps.unban("198.51.100.0/24")
    counts = maps.interface_counters(LOOPBACK_IFINDEX)["ingress"]
    rows["(counted on the interface: pushed, drop_ban)"] = [counts["pushed"], counts["drop_ban"]]
    t0 = time.perf_counter()
    for _ in range(10_000):
        reader.fill
    rows["ring fill read (us)"] = round((time.perf_counter() - t0) / 10_000 * 1e6, 3)
    t0 = time.perf_counter()
    for _ in range(1_000):
        maps.interface_counters(LOOPBACK_IFINDEX)
    rows["one interface's counters read (us)"] = round((time.perf_counter() - t0) / 1_000 * 1e6, 1)
    return rows


def measure_revision(rev: str, pin_dir: Path) -> dict:
    """The same paths with the programs of bpf/ at ``rev``, loaded by bcc
    directly (that revision's maps are not this KernelMaps')."""
    import bcc

    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "bpf"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        text = expand_includes(Path(tmp) / "bpf" / "datapath.c")
    bpf = bcc.BPF(text=text.encode(), cflags=[f'-DSS_PIN_DIR="{pin_dir}"', "-DSS_RING_PAGES=2048", "-w"])
    try:
        fd = bpf.load_func(b"ss_xdp_ingress", bcc.BPF.XDP).fd
        bpf[b"ss_ports"][ct.c_int(25)] = ct.c_uint8(1)
        bpf[b"ss_config"][ct.c_int(0)] = abi.Config(flags=0, snaplen=0, hold_max_ms=abi.HOLD_MAX_MS_DEFAULT)
        reader = EventReader(bpf)
        drain = lambda: reader.poll_raw(0)  # noqa: E731
        rows = {f"not SMTP (port 80), at {rev}": ns_per_packet(fd, frame(64, dport=80)),
                f"SMTP pushed, 64 B, at {rev}": ns_per_packet(fd, frame(64), 400, 25, drain)}
        key = abi.lpm_key(__import__("ipaddress").ip_network("198.51.100.0/24"))
        bpf[b"ss_ban_v4"][key] = abi.Verdict(expires_ns=0, reason=abi.Reason.MANUAL)
        rows[f"banned source (/24), dropped, at {rev}"] = ns_per_packet(fd, frame(64))
        del bpf[b"ss_ban_v4"][key]
        reader.close()
    finally:
        bpf.cleanup()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="REV", help="also measure the programs of bpf/ at this git revision")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/sys/fs/bpf", prefix="ss-bench-if-") as pins:
        pin_dir = Path(pins) / f"v{abi.ABI_VERSION}"
        dp = Datapath(DatapathConfig(pin_dir=pin_dir)).load()
        try:
            rows = measure(dp)
        finally:
            dp.close()
        if args.against:
            rows.update(measure_revision(args.against, pin_dir))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for name, value in rows.items():
            print(f"{name:50} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
