#!/usr/bin/env python3
"""Micro-benchmark: pcap read, + packet decode, + TCP reassembly.

Generates a capture of synthetic SMTP sessions (Ethernet/IPv4/TCP, 1448-byte
segments for message bodies, a few IPv6 + VLAN sessions), then times three
passes over it and prints packets/s and MB/s of TCP payload for each.

    python bench/bench_decode.py [--sessions N] [--body BYTES] [--keep FILE]
"""

import argparse
import os
import random
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sensor.stream.packet import decode  # noqa: E402
from sensor.inputs.pcapfile import read_packets  # noqa: E402
from sensor.stream.reassembly import Data, Reassembler  # noqa: E402

MSS = 1448


def frame(v6, src, dst, sport, dport, seq, ack, flags, payload):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                      0x50, flags, 65535, 0, 0)
    if v6:
        ip = struct.pack("!IHBB", 0x60000000, 20 + len(payload), 6, 64) + src + dst
        return (b"\x02" * 6 + b"\x04" * 6 + b"\x81\x00" + struct.pack("!H", 10) + b"\x86\xdd"
                + ip + tcp + payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0, src, dst)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp + payload


def session(rnd, i, body_len):
    v6 = i % 10 == 9
    if v6:
        c = bytes.fromhex("20010db8000000000000000000000000")[:-2] + struct.pack("!H", i)
        s = bytes.fromhex("20010db8000100000000000000000025")
    else:
        c = bytes([192, 0, 2, 1 + i % 250])
        s = bytes([198, 51, 100, 25])
    cp = 10000 + i % 50000
    ci, si = rnd.getrandbits(32), rnd.getrandbits(32)
    out = []
    cseq, sseq = ci + 1, si + 1

    def cli(data, flags=0x18):
        nonlocal cseq
        out.append(frame(v6, c, s, cp, 25, cseq, sseq, flags, data))
        cseq += len(data)

    def srv(data, flags=0x18):
        nonlocal sseq
        out.append(frame(v6, s, c, 25, cp, sseq, cseq, flags, data))
        sseq += len(data)

    out.append(frame(v6, c, s, cp, 25, ci, 0, 0x02, b""))
    out.append(frame(v6, s, c, 25, cp, si, ci + 1, 0x12, b""))
    out.append(frame(v6, c, s, cp, 25, ci + 1, si + 1, 0x10, b""))
    srv(b"220 mx.example.net ESMTP ready\r\n")
    cli(b"EHLO client%d.example.org\r\n" % i)
    srv(b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n")
    cli(b"MAIL FROM:<alice%d@example.org>\r\n" % i)
    srv(b"250 2.1.0 Ok\r\n")
    cli(b"RCPT TO:<bob@example.net>\r\n")
    srv(b"250 2.1.5 Ok\r\n")
    cli(b"DATA\r\n")
    srv(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    body = (b"Subject: test %d\r\n\r\n" % i) + (b"x" * 70 + b"\r\n") * (body_len // 72) + b".\r\n"
    for off in range(0, len(body), MSS):
        cli(body[off:off + MSS], 0x10)
    srv(b"250 2.0.0 Ok: queued\r\n")
    cli(b"QUIT\r\n")
    srv(b"221 2.0.0 Bye\r\n", 0x19)
    cli(b"", 0x11)
    return out


def write_capture(path, sessions, body_len, seed=1):
    rnd = random.Random(seed)
    n = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        ts = 1_700_000_000.0
        live = [session(rnd, i, body_len) for i in range(min(8, sessions))]
        nxt = len(live)
        # interleave up to 8 concurrent sessions, packet by packet
        while live:
            k = rnd.randrange(len(live))
            fr = live[k].pop(0)
            if not live[k]:
                live.pop(k)
                if nxt < sessions:
                    live.append(session(rnd, nxt, body_len))
                    nxt += 1
            ts += 0.0001
            sec = int(ts)
            f.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(fr), len(fr)) + fr)
            n += 1
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=1500)
    ap.add_argument("--body", type=int, default=8000, help="message body bytes per session")
    ap.add_argument("--keep", help="write the generated capture here and keep it")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    args = ap.parse_args()

    path = args.keep or os.path.join(tempfile.mkdtemp(), "bench.pcap")
    npk = write_capture(path, args.sessions, args.body)
    size = os.path.getsize(path)
    payload = sum(len(s.payload) for s in (decode(lt, fr, wl) for _, lt, fr, wl in
                                           read_packets(path)) if s)
    print(f"capture: {path}  {size / 1e6:.1f} MB, {npk} packets, {args.sessions} sessions, "
          f"{payload / 1e6:.1f} MB TCP payload  (python {sys.version.split()[0]})")

    def read_only():
        n = 0
        for _ in read_packets(path):
            n += 1
        return n

    def read_decode():
        n = 0
        for _, lt, fr, wl in read_packets(path):
            if decode(lt, fr, wl) is not None:
                n += 1
        return n

    def decode_only(frames=[(lt, fr, wl) for _, lt, fr, wl in read_packets(path)]):
        for lt, fr, wl in frames:
            decode(lt, fr, wl)

    def full():
        r = Reassembler()
        nbytes = 0
        feed = r.feed
        for ts, lt, fr, wl in read_packets(path):
            s = decode(lt, fr, wl)
            if s is not None:
                for e in feed(s, ts):
                    if type(e) is Data:
                        nbytes += len(e.data)
        for e in r.flush_all():
            pass
        return nbytes

    for label, fn in (("read (pcap)", read_only), ("decode only (frames in memory)", decode_only),
                      ("read + decode", read_decode), ("read + decode + reassembly", full)):
        best = None
        for _ in range(args.repeat):
            t = time.perf_counter()
            res = fn()
            dt = time.perf_counter() - t
            best = dt if best is None or dt < best else best
        print(f"{label:<32} {npk / best:>10,.0f} packets/s  {payload / best / 1e6:>8.1f} "
              f"MB/s payload  ({best:.3f} s)")
        if fn is full:
            assert res == payload, (res, payload)

    try:
        import dpkt
    except ImportError:
        return
    t = time.perf_counter()
    with open(path, "rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(buf)
            getattr(eth.data, "data", None)
    dt = time.perf_counter() - t
    print(f"{'for comparison: dpkt read+decode':<32} {npk / dt:>10,.0f} packets/s")
    if not args.keep:
        os.unlink(path)


if __name__ == "__main__":
    main()
