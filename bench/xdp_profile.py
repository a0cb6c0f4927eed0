"""What the pieces of the XDP program cost: tiny XDP programs, each doing one
thing the datapath does, timed by BPF_PROG_TEST_RUN next to an empty program
(the floor of the test-run harness) on this machine.

    .venv/bin/python bench/xdp_profile.py [--rounds 5] [--json]

Read a row as "floor + what this piece costs"; the difference to the floor
is the piece. The datapath's paths are sums of these: not SMTP = parse + two
port-array lookups + a per-CPU counter; banned source = that + LPM lookup;
pushed = that + LPM miss + two LRU misses + ktime + one ring record (or, as
before, one bpf_perf_event_output), and now and then a wakeup of the reader
(an irq_work). Root and bcc needed.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))  # support.testrun

from bench_datapath import frame  # noqa: E402
from sensor.kernel import abi  # noqa: E402
from support.testrun import prog_test_run  # noqa: E402

HEADER = r"""
#include <uapi/linux/bpf.h>
#include "smtp_sensor.h"
#include "parsing.h"
BPF_PERF_OUTPUT(perf_ev);
BPF_RINGBUF_OUTPUT(ring_ev, 2048);
BPF_PERCPU_ARRAY(cnt, __u64, 32);
BPF_ARRAY(ports, __u8, 65536);
BPF_F_TABLE("lpm_trie", struct ss_lpm_v4, struct ss_verdict, ban4, 16384, BPF_F_NO_PREALLOC);
BPF_TABLE("lru_hash", struct ss_flow_key, struct ss_verdict, flows, 65536);

static __always_inline __u64 clamp2k(__u64 n)
{
	asm volatile("if %[v] <= 2047 goto +1\n\t%[v] = 2047\n\tif %[v] != 0 goto +1\n\t%[v] = 1" : [v] "+r"(n));
	return n;
}
"""

PARSE = r"""void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct hdr_cursor nh = {.pos = data}; struct ss_pkt pkt = {};
    int proto = parse_ethhdr(&nh, end);
    if (proto != bpf_htons(ETH_P_IP)) return XDP_ABORTED;
    if (parse_ipv4(&nh, data, end, end - data, &pkt) != IPPROTO_TCP) return XDP_ABORTED;
    if (parse_tcphdr(&nh, data, end, &pkt) < 0) return XDP_ABORTED;"""

# name -> (program body, frame payload bytes, pushes: needs a drained ring)
PIECES = {
    "empty program (the floor)": ("return XDP_PASS;", 64, False),
    "parse Ethernet/IPv4/TCP": (PARSE + " return pkt.key.dport == 1 ? XDP_DROP : XDP_PASS;", 64, False),
    "port-array lookup": ("u32 p = 80; u8 *m = ports.lookup(&p); return m && *m ? XDP_DROP : XDP_PASS;", 64, False),
    "per-CPU counter += 1": ("u32 i = 3; u64 *v = cnt.lookup(&i); if (v) *v += 1; return XDP_PASS;", 64, False),
    "bpf_ktime_get_ns()": ("return bpf_ktime_get_ns() ? XDP_PASS : XDP_DROP;", 64, False),
    "LPM trie lookup, miss": ("struct ss_lpm_v4 k = {.prefixlen = 32, .addr = {203, 0, 113, 9}};"
                              " return ban4.lookup(&k) ? XDP_DROP : XDP_PASS;", 64, False),
    "LPM trie lookup, hit (/24)": ("struct ss_lpm_v4 k = {.prefixlen = 32, .addr = {198, 51, 100, 7}};"
                                   " return ban4.lookup(&k) ? XDP_DROP : XDP_PASS;", 64, False),
    "LRU hash lookup (flow key), miss": ("struct ss_flow_key k = {}; k.sport = 1;"
                                         " return flows.lookup(&k) ? XDP_DROP : XDP_PASS;", 64, False),
    "LRU hash lookup (flow key), hit": ("struct ss_flow_key k = {}; k.sport = 7;"
                                        " return flows.lookup(&k) ? XDP_DROP : XDP_PASS;", 64, False),
    "perf_event_output, 8 B": ("u64 e = 1; perf_ev.perf_submit(ctx, &e, sizeof(e)); return XDP_PASS;", 64, True),
    "perf_event_output, 80 B header + 118 B frame": (
        "struct ss_event_hdr e = {}; e.version = 1; u32 n = ctx->data_end - ctx->data;"
        " perf_ev.perf_submit_skb(ctx, n, &e, sizeof(e)); return XDP_PASS;", 64, True),
    "perf_event_output, 80 B header + 1454 B frame": (
        "struct ss_event_hdr e = {}; e.version = 1; u32 n = ctx->data_end - ctx->data;"
        " perf_ev.perf_submit_skb(ctx, n, &e, sizeof(e)); return XDP_PASS;", 1400, True),
    "ring reserve + submit, 80 B": (
        "struct ss_event_hdr *e = ring_ev.ringbuf_reserve(sizeof(*e)); if (!e) return XDP_ABORTED;"
        " e->version = 1; ring_ev.ringbuf_submit(e, 0); return XDP_PASS;", 64, True),
    "ring reserve + submit, 80 B, forced wakeup": (
        "struct ss_event_hdr *e = ring_ev.ringbuf_reserve(sizeof(*e)); if (!e) return XDP_ABORTED;"
        " e->version = 1; ring_ev.ringbuf_submit(e, BPF_RB_FORCE_WAKEUP); return XDP_PASS;", 64, True),
    "ring reserve 2 KB + xdp_load_bytes 1454 B + submit": (
        "struct rec { struct ss_event_hdr h; u8 d[2048]; } *e = ring_ev.ringbuf_reserve(sizeof(*e));"
        " if (!e) return XDP_ABORTED; e->h.version = 1;"
        " if (bpf_xdp_load_bytes(ctx, 0, e->d, clamp2k(ctx->data_end - ctx->data)) < 0)"
        " { ring_ev.ringbuf_discard(e, 0); return XDP_ABORTED; }"
        " ring_ev.ringbuf_submit(e, 0); return XDP_PASS;", 1400, True),
}


def measure(rounds: int = 5) -> dict[str, float]:
    """Median ns/packet of each piece (interleaved rounds)."""
    import bcc

    src = HEADER + "".join(f"int piece{i}(struct xdp_md *ctx) {{ {body} }}\n"
                           for i, (body, _, _) in enumerate(PIECES.values()))
    bpf = bcc.BPF(text=src.encode(), cflags=[f"-I{REPO / 'bpf'}", "-w"])
    try:
        bpf[b"ban4"][abi.LpmV4(prefixlen=24, addr=(ct.c_uint8 * 4)(198, 51, 100, 0))] = abi.Verdict()
        key = abi.FlowKey()
        key.sport = 7
        bpf[b"flows"][key] = abi.Verdict()
        fds = [bpf.load_func(f"piece{i}".encode(), bcc.BPF.XDP).fd for i in range(len(PIECES))]
        bpf[b"perf_ev"].open_perf_buffer(lambda *a: None, page_cnt=1024, wakeup_events=1 << 20)
        bpf[b"ring_ev"].open_ring_buffer(lambda *a: 0)

        def drain():
            bpf.perf_buffer_consume()
            bpf.ring_buffer_consume()

        frames = {n: frame(n, dport=80) for n in (64, 1400)}
        runs: dict[str, list[int]] = {name: [] for name in PIECES}
        for _ in range(rounds):
            for fd, (name, (_, size, pushes)) in zip(fds, PIECES.items()):
                if pushes:  # 400 records fit either buffer: every push succeeds
                    for _ in range(5):
                        runs[name].append(prog_test_run(fd, frames[size], repeat=400).duration_ns)
                        drain()
                else:
                    runs[name].append(prog_test_run(fd, frames[size], repeat=100_000).duration_ns)
        return {name: float(statistics.median(v)) for name, v in runs.items()}
    finally:
        bpf.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("xdp_profile: needs root (BPF)", file=sys.stderr)
        return 2
    result = measure(args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    floor = result["empty program (the floor)"]
    print(f"{'piece':<55} {'ns/packet':>10} {'above floor':>12}")
    for name, ns in result.items():
        print(f"{name:<55} {ns:>10.0f} {ns - floor:>12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
