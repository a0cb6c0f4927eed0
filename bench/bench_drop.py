"""Drop efficiency: a flood from a banned source across the lab's veth, dropped
by the XDP ban vs by an nftables rule for the same source, in one run.

    .venv/bin/python bench/bench_drop.py [--seconds 4] [--json]

The client namespace floods the server's address from the lab's spammer
address (192.0.2.66, TEST-NET-1) with 64-byte TCP SYNs to port 25, flat out
(bench/pktsend.c: AF_PACKET, sendmmsg, qdisc bypassed; one process pinned to
CPU 0). The server's veth receives in a threaded NAPI (GRO on and TSO off on
the sending veth, so it polls with and without XDP; its kthread pinned to
CPU 1): everything the server
side does with a frame, XDP or the stack up to the nftables hook, runs in that
one thread, whose CPU time (/proc/PID/schedstat, ns) divided by the frames it
dropped is the CPU per dropped packet. Modes, each for --seconds:

* xdp: the datapath on the server's veth (native XDP), the source banned
  (ss_ban_v4); dropped = the drop_ban counter;
* xdp drop-all: an XDP program that only returns XDP_DROP: the cost of
  XDP on this veth itself (the veth copies every frame from its skb into a
  page of its own with XDP headroom before any program runs);
* nft input: no XDP; ``ip saddr 192.0.2.66 drop`` in an inet filter input
  chain in the server namespace (what a firewall user writes);
* nft ingress: the same rule in a netdev ingress chain on the server's veth
  (the earliest nftables hook).

When the receiving thread saturates its CPU, the veth drops what it cannot
take before any of this (not counted as dropped here): drops/s is then the
receiver's capacity. Also printed: the whole machine's kernel time
(/proc/stat system + irq + softirq) per dropped packet, the sender included.
The machine is shared: run it several times (bench/run_all.py takes medians).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from sensor.kernel import abi  # noqa: E402
from sensor.lab.network import SERVER_V4, SPAMMER_V4, Lab  # noqa: E402
from sensor.kernel.netns import iproute  # noqa: E402

USER_HZ = os.sysconf("SC_CLK_TCK")


def build_pktsend(workdir: Path) -> Path:
    """Compile bench/pktsend.c with the system's cc (installed by ./run setup)."""
    out = workdir / "pktsend"
    subprocess.run(["cc", "-O2", "-o", str(out), str(REPO / "bench" / "pktsend.c")], check=True)
    return out


def kernel_ticks() -> dict[str, int]:
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return dict(zip(names, map(int, fields)))


def mac_of(ns: str, ifname: str) -> str:
    with iproute(ns) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
        return link.get_attr("IFLA_ADDRESS")


def flood_frame(src_mac: str, dst_mac: str) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=SPAMMER_V4, dst=SERVER_V4)
                 / TCP(sport=40000, dport=25, flags="S", seq=1))


def napi_thread(lab: Lab) -> int:
    """pid of the server veth's NAPI kthread (made by 'threaded' below)."""
    out = subprocess.run(["ps", "-eo", "pid=,comm="], capture_output=True, text=True, check=True).stdout
    pids = [int(line.split()[0]) for line in out.splitlines() if line.split()[1].startswith(f"napi/{lab.server_if}-")]
    if not pids:
        raise RuntimeError(f"no NAPI thread for {lab.server_if}")
    return pids[0]


def on_cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def threaded_napi(lab: Lab) -> int:
    """GRO on (veth then receives through NAPI with or without XDP), NAPI in a
    kthread pinned to CPU 1; returns its pid."""
    subprocess.run(lab.exec_argv(lab.server_ns, "ethtool", "-K", lab.server_if, "gro", "on"),
                   check=True, capture_output=True)
    # a sender with TSO makes veth hand frames to the stack's backlog instead
    # of its NAPI when no XDP program is attached
    subprocess.run(lab.exec_argv(lab.client_ns, "ethtool", "-K", lab.client_if, "tso", "off"),
                   check=True, capture_output=True)
    subprocess.run(lab.exec_argv(lab.server_ns, "sh", "-c", f"echo 1 > /sys/class/net/{lab.server_if}/threaded"),
                   check=True)
    pid = napi_thread(lab)
    subprocess.run(["taskset", "-p", "-c", str(min(1, os.cpu_count() - 1)), str(pid)], check=True,
                   capture_output=True)
    return pid


def flood(lab: Lab, pktsend: Path, frame: bytes, seconds: float) -> dict:
    napi = napi_thread(lab)
    before, napi0 = kernel_ticks(), on_cpu_ns(napi)
    out = subprocess.run(lab.exec_argv(lab.client_ns, "taskset", "-c", "0", str(pktsend), lab.client_if,
                                       frame.hex(), str(seconds)),
                         capture_output=True, text=True, check=True).stdout
    after, napi1 = kernel_ticks(), on_cpu_ns(napi)
    result = json.loads(out)
    delta = {k: after[k] - before[k] for k in before}
    result["receiver_cpu_s"] = (napi1 - napi0) / 1e9
    result["kernel_cpu_s"] = (delta["system"] + delta["irq"] + delta["softirq"]) / USER_HZ
    return result


def nft(lab: Lab, script: str) -> None:
    subprocess.run(lab.exec_argv(lab.server_ns, "nft", "-f", "-"), input=script, text=True, check=True)


def nft_counter(lab: Lab, family_table: str) -> int:
    out = subprocess.run(lab.exec_argv(lab.server_ns, "nft", "-j", "list", "table", *family_table.split()),
                         capture_output=True, text=True, check=True).stdout
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule:
            for expr in rule["expr"]:
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
    return 0


def _drop_all(lab: Lab, pktsend: Path, frame: bytes, seconds: float) -> dict:
    """An XDP program that drops every frame at once: what XDP on this veth
    costs before any program logic (the floor under the 'xdp' mode)."""
    import bcc
    from sensor.kernel.netns import iproute

    prog = bcc.BPF(text=b"int drop_all(struct xdp_md *ctx) { return XDP_DROP; }")
    try:
        fd = prog.load_func(b"drop_all", bcc.BPF.XDP).fd
        with iproute(lab.server_ns) as ipr:
            index = ipr.link_lookup(ifname=lab.server_if)[0]
            ipr.link("set", index=index, xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", 1 << 2)]})
            try:
                r = flood(lab, pktsend, frame, seconds)
            finally:
                ipr.link("set", index=index, xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", 1 << 2)]})
        r["dropped"] = r["sent"]  # approximate: what the veth could not queue is not counted apart
        return r
    finally:
        prog.cleanup()


def run(seconds: float = 4.0, modes=("xdp", "xdp drop-all", "nft input", "nft ingress")) -> dict:
    from sensor.kernel.datapath import Datapath, DatapathConfig

    work = Path(tempfile.mkdtemp(prefix="ss-bench-drop-"))
    pin_root = Path(tempfile.mkdtemp(prefix="ss-bench-drop-", dir="/sys/fs/bpf"))
    pktsend = build_pktsend(work)
    results: dict = {}
    try:
        with Lab() as lab:
            frame = flood_frame(mac_of(lab.client_ns, lab.client_if), mac_of(lab.server_ns, lab.server_if))
            threaded_napi(lab)
            for mode in modes:
                if mode == "xdp":
                    config = DatapathConfig(pin_dir=pin_root / f"v{abi.ABI_VERSION}")
                    with Datapath(config) as dp:
                        dp.attach(lab.server_if, netns=lab.server_ns)
                        dp.maps.ban(f"{SPAMMER_V4}/32")
                        r = flood(lab, pktsend, frame, seconds)
                        r["dropped"] = dp.maps.counters()["ingress"]["drop_ban"]
                        r["xdp_mode"] = dp.attachments[0].xdp_mode
                elif mode == "xdp drop-all":
                    r = _drop_all(lab, pktsend, frame, seconds)
                elif mode == "nft input":
                    nft(lab, "table inet ssbench {\n chain input {\n  type filter hook input priority 0;\n"
                             f"  ip saddr {SPAMMER_V4} counter drop\n }}\n}}\n")
                    r = flood(lab, pktsend, frame, seconds)
                    r["dropped"] = nft_counter(lab, "inet ssbench")
                    nft(lab, "delete table inet ssbench\n")
                elif mode == "nft ingress":
                    nft(lab, "table netdev ssbench {\n chain ingress {\n"
                             f"  type filter hook ingress device {lab.server_if} priority 0;\n"
                             f"  ip saddr {SPAMMER_V4} counter drop\n }}\n}}\n")
                    r = flood(lab, pktsend, frame, seconds)
                    r["dropped"] = nft_counter(lab, "netdev ssbench")
                    nft(lab, "delete table netdev ssbench\n")
                else:
                    raise ValueError(mode)
                dropped = max(1, r["dropped"])
                r["drop_rate"] = round(r["dropped"] / r["seconds"])
                r["receiver_ns_per_packet"] = round(r["receiver_cpu_s"] * 1e9 / dropped, 1)
                r["kernel_ns_per_packet"] = round(r["kernel_cpu_s"] * 1e9 / dropped, 1)
                results[mode] = r
    finally:
        import shutil
        shutil.rmtree(pin_root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    if "xdp" in results:
        x = results["xdp"]
        for mode, r in results.items():
            if mode != "xdp":
                r["ratio_cpu_vs_xdp"] = round(r["receiver_ns_per_packet"] / x["receiver_ns_per_packet"], 2)
                r["ratio_rate_xdp_vs"] = round(x["drop_rate"] / max(1, r["drop_rate"]), 2)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_drop: needs root (BPF, namespaces, nft)", file=sys.stderr)
        return 2
    results = run(args.seconds)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'mode':<12} {'sent':>10} {'dropped':>10} {'drops/s':>10} {'receiver CPU s':>15} "
          f"{'ns/drop':>8} {'nft/XDP':>8} {'machine kernel ns/drop':>23}")
    for mode, r in results.items():
        print(f"{mode:<12} {r['sent']:>10} {r['dropped']:>10} {r['drop_rate']:>10} {r['receiver_cpu_s']:>15.2f} "
              f"{r['receiver_ns_per_packet']:>8} {r.get('ratio_cpu_vs_xdp', '-'):>8} {r['kernel_ns_per_packet']:>23}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
