"""Overload: legitimate sessions under a flood that overflows the event ring.
Does every session leave a record, does a record built from incomplete data
say so, and does the sensor's memory come back after the flood?

    .venv/bin/python bench/bench_flood.py [--rate 120000] [--ports 50000] [--sessions 400] [--json]

In the netns lab (aiosmtpd in the server namespace, the datapath on the
server's veth, the sensor's userland in this process: sensor.assembly with
the shipped rules, LiveFeed.step(50), as `run` does), two things at once
from the client namespace:

* a flood (bench/pktsend.c, paced at --rate frames/s, for --seconds) of
  1 400-byte segments of pipelined `RCPT TO` lines from the spammer's address
  to port 25, its source port running through --ports values (as many
  flows, each picked up mid-stream by the sensor; the server answers each
  with an RST, which TC egress pushes too);
* --sessions SMTP sessions (EHLO, MAIL, RCPT, DATA with a Subject naming the
  session, QUIT; 4 at a time), started once the flood runs; each client
  notes its port and whether the server took the message (250 after the
  dot).

Then the flood stops, the sensor goes on reading until its flows end: the
sessions' by their FINs (or, where the ring lost those, by idle timeout;
the bench sets `limits.reassembly.idle_timeout` to --idle seconds so that
this happens within the run; the default is 300 s) and the flood's by idle
timeout; a sensor that fell behind first reads what the ring still holds
(reported: how long after the flood's end the last event came), and the
losses left in the kernel's map are swept at the end (the live feed does
that every 5 s). Reported per delivered session: whether any record names its
client port (smtp or anomaly), whether its smtp record holds what was sent
(sender, recipient, subject), and whether a record that does not says so
(`lost_events`/`gap_bytes`/`partial` in it, or an EVENT_LOSS anomaly of its
flow).
The sensor's RSS (this process) before the flood, at its highest during it,
and after the flood's flows ended; the kernel's and the pipeline's loss
counters.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from sensor.kernel import abi  # noqa: E402
from sensor.lab.network import CLIENT_V4, SERVER_V4, SPAMMER_V4, Lab  # noqa: E402
from sensor.service import log as sensor_log  # noqa: E402
from bench_memory import rss_bytes  # noqa: E402

CLIENT = r"""
import json, socket, sys, threading
server, sessions, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lock, results, todo = threading.Lock(), [], list(range(sessions))

def reply(f):
    while True:
        line = f.readline()
        if not line:
            raise OSError("closed")
        if line[3:4] != b"-":
            return line[:3]

def session(i):
    s = socket.create_connection((server, 25), timeout=30)
    port = s.getsockname()[1]
    f = s.makefile("rb")
    delivered = False
    try:
        body = (b"From: <user%d@example.org>\r\nTo: <bob@lab.example>\r\nSubject: session %d\r\n\r\n" % (port, port)
                + b"x" * 76 * 12 + b"\r\n")
        steps = [(None, b"220"), (b"EHLO c%d.example.org\r\n" % port, b"250"),
                 (b"MAIL FROM:<user%d@example.org>\r\n" % port, b"250"), (b"RCPT TO:<bob@lab.example>\r\n", b"250"),
                 (b"DATA\r\n", b"354"), (body + b".\r\n", b"250"), (b"QUIT\r\n", b"221")]
        for send, want in steps:
            if send:
                s.sendall(send)
            if reply(f) != want:
                raise OSError(f"expected {want}")
            if send and send.endswith(b".\r\n"):
                delivered = True
    except OSError:
        pass
    finally:
        f.close()
        s.close()
    return port, delivered

def worker():
    while True:
        with lock:
            if not todo:
                return
            i = todo.pop()
        port, delivered = session(i)
        with lock:
            results.append((port, delivered))

threads = [threading.Thread(target=worker) for _ in range(concurrency)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
"""




class Sink:
    """Records of the lab client's flows, by client port; the rest counted."""

    def __init__(self):
        self.by_port: dict[int, list[dict]] = {}
        self.others = 0
        self.counts: dict[str, int] = {}

    def __call__(self, record):
        key = record["event_type"] if record["event_type"] != "anomaly" else record["name"]
        self.counts[key] = self.counts.get(key, 0) + 1
        if record.get("id.orig_h") == CLIENT_V4:
            self.by_port.setdefault(record["id.orig_p"], []).append(record)
        else:
            self.others += 1


def flood_frame(src_mac: str, dst_mac: str) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    payload = (b"RCPT TO:<victim@lab.example>\r\n" * 47)[:1400]
    return bytes(Ether(src=src_mac, dst=dst_mac) / IP(src=SPAMMER_V4, dst=SERVER_V4)
                 / TCP(sport=20000, dport=25, flags="PA", seq=1, ack=1) / payload)


def judge(results, sink) -> dict:
    """Per delivered session: a record at all; a right smtp record; a wrong
    one that says it may be incomplete."""
    delivered = [port for port, ok in results if ok]
    out = {"delivered": len(delivered), "with_a_record": 0, "without_any_record": 0, "smtp_right": 0,
           "smtp_wrong_said": 0, "smtp_wrong_unsaid": 0, "no_smtp_but_event_loss": 0, "flows_with_loss": 0}
    unsaid = []
    for port in delivered:
        recs = sink.by_port.get(port, [])
        if not recs:
            out["without_any_record"] += 1
            continue
        out["with_a_record"] += 1
        lossy = any(r.get("name") == "EVENT_LOSS" for r in recs)
        out["flows_with_loss"] += lossy
        smtp = [r for r in recs if r["event_type"] == "smtp" and r.get("mailfrom")]
        says = lossy or any(r.get("lost_events") or r.get("gap_bytes") or r.get("partial") for r in recs)
        if not smtp:
            out["no_smtp_but_event_loss" if says else "smtp_wrong_unsaid"] += 1
            if not says:
                unsaid.append(recs)
            continue
        r = smtp[0]
        right = (r.get("mailfrom") == f"user{port}@example.org" and r.get("rcptto") == ["bob@lab.example"]
                 and r.get("subject") == f"session {port}" and r.get("delivered") is True)
        if right:
            out["smtp_right"] += 1
        elif says:
            out["smtp_wrong_said"] += 1
        else:
            out["smtp_wrong_unsaid"] += 1
            unsaid.append(recs)
    out["examples_unsaid"] = unsaid[:2]
    return out


def run(rate: int, ports: int, sessions: int, seconds: float, idle: float, concurrency: int = 4) -> dict:
    from bench_drop import build_pktsend, mac_of

    from sensor.assembly import Userland
    from sensor.config import Config, LimitsConfig, SensorConfig, SpamStatsConfig
    from sensor.inputs.live import LiveFeed
    from sensor.kernel.datapath import Datapath, DatapathConfig
    from sensor.rules.enforce import KernelEnforcer
    from sensor.stream.reassembly import ReassemblyLimits

    work = Path(tempfile.mkdtemp(prefix="ss-bench-flood-"))
    pin_root = Path(tempfile.mkdtemp(prefix="ss-bench-flood-", dir="/sys/fs/bpf"))
    pktsend = build_pktsend(work)
    report: dict = {"rate": rate, "ports": ports, "sessions": sessions, "seconds": seconds, "idle_timeout": idle}
    try:
        with Lab() as lab:
            lab.start_server()
            frame = flood_frame(mac_of(lab.client_ns, lab.client_if), mac_of(lab.server_ns, lab.server_if))
            with Datapath(DatapathConfig(pin_dir=pin_root / f"v{abi.ABI_VERSION}")) as dp:
                dp.attach(lab.server_if, netns=lab.server_ns)
                sink = Sink()
                config = Config(sensor=SensorConfig(rules=REPO / "rules"), spam_stats=SpamStatsConfig(enabled=False),
                                limits=LimitsConfig(reassembly=ReassemblyLimits(idle_timeout=idle)))
                userland = Userland(config, sink, KernelEnforcer(dp.maps), uid_seed=os.urandom(12))
                pipeline = userland.pipeline
                feed = LiveFeed(dp.event_reader(wake_batch=False), pipeline, dp.maps)
                for _ in range(10):
                    feed.step(20)
                gc.collect()
                rss_before = rss_bytes()
                flooder = subprocess.Popen(lab.exec_argv(lab.client_ns, "taskset", "-c", "0", str(pktsend),
                                                         lab.client_if, frame.hex(), str(seconds), str(rate),
                                                         str(ports)),
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                t0 = time.monotonic()
                while time.monotonic() - t0 < 1.0:
                    feed.step(50)
                client = subprocess.Popen(lab.exec_argv(lab.client_ns, sys.executable, "-c", CLIENT, SERVER_V4,
                                                        str(sessions), str(concurrency)),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                rss_peak, flows_peak = rss_before, 0
                while flooder.poll() is None or client.poll() is None:
                    feed.step(50)
                    rss_peak = max(rss_peak, rss_bytes())
                    flows_peak = max(flows_peak, len(pipeline.reassembler._flows))
                flood_out, flood_err = flooder.communicate()
                client_out, client_err = client.communicate()
                report["flood_end_s"] = round(time.monotonic() - t0, 1)
                # after the flood: on until the ring is read empty and quiet
                # (userland may be far behind), every flow has ended (FINs,
                # idle timeout) and the losses left in the kernel's map are swept
                t1 = last_event = time.monotonic()
                while time.monotonic() - t1 < 600:
                    now = time.monotonic()
                    if feed.step(50):
                        last_event = now
                        rss_peak = max(rss_peak, rss_bytes())
                    elif now - last_event > 2.0 and not pipeline.reassembler._flows:
                        break
                report["ring_empty_after_s"] = round(last_event - t1, 1)
                if hasattr(feed, "sweep_losses"):
                    feed.sweep_losses(time.monotonic() + 60)   # every loss left is old now
                report["flows_left_open"] = len(pipeline.reassembler._flows)
                report["drain_s"] = round(time.monotonic() - t1, 1)
                gc.collect()
                rss_after = rss_bytes()
                results = json.loads(client_out.strip().splitlines()[-1]) if client_out.strip() else []
                report["judged_before_finish"] = judge(results, sink)
                userland.finish()
                report["judged"] = judge(results, sink)
                flood = json.loads(flood_out) if flood_out.strip() else {"error": flood_err.strip()[-300:]}
                kernel = dp.maps.counters()
                c = pipeline.counters
                report.update({
                    "flood": flood, "flood_rate": round(flood.get("sent", 0) / max(flood.get("seconds", 1), 1e-9)),
                    "client_sessions": len(results), "client_stderr": client_err.strip()[-300:],
                    "kernel_pushed": kernel["ingress"]["pushed"] + kernel["egress"]["pushed"],
                    "kernel_push_failed": kernel["ingress"]["push_failed"] + kernel["egress"]["push_failed"],
                    # getattr: the same bench runs against a tree without them (an A/B)
                    "pipeline_lost_events": getattr(c, "lost_events", None),
                    "lost_unattributed": getattr(c, "lost_unattributed", None),
                    "flows_with_loss": getattr(c, "flows_with_loss", None),
                    "kernel_shed": kernel["ingress"].get("shed", 0) + kernel["egress"].get("shed", 0),
                    "flows": c.flows, "flows_peak": flows_peak,
                    "flows_evicted": pipeline.reassembler.counters.flows_evicted,
                    "anomalies_suppressed": getattr(c, "anomalies_suppressed", None),
                    "records": sink.counts, "records_of_flood_flows": sink.others,
                    "rss_before": rss_before, "rss_peak": rss_peak, "rss_after": rss_after,
                })
    finally:
        import shutil
        shutil.rmtree(pin_root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=120_000, help="flood frames per second")
    parser.add_argument("--ports", type=int, default=50_000, help="flood flows (source ports)")
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the flood lasts")
    parser.add_argument("--idle", type=float, default=20.0, help="limits.reassembly.idle_timeout for the run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_flood: needs root (BPF, namespaces)", file=sys.stderr)
        return 2
    sensor_log.configure("warning", json=False, stream=sys.stderr)
    r = run(args.rate, args.ports, args.sessions, args.seconds, args.idle)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    j, jb = r["judged"], r["judged_before_finish"]
    mib = 2 ** 20
    print(f"flood: {r['flood_rate']} frames/s for {r['seconds']} s over {r['ports']} ports; "
          f"kernel pushed {r['kernel_pushed']}, ring refused {r['kernel_push_failed']}; "
          f"pipeline counted {r['pipeline_lost_events']} lost in {r['flows_with_loss']} flows "
          f"({r['lost_unattributed']} unattributed)")
    print(f"sessions: {r['client_sessions']} run, {j['delivered']} delivered; with a record: {j['with_a_record']} "
          f"(before the final flush: {jb['with_a_record']}); none: {j['without_any_record']}")
    print(f"  smtp record right: {j['smtp_right']}; wrong and saying so: {j['smtp_wrong_said']}; "
          f"no smtp record, EVENT_LOSS: {j['no_smtp_but_event_loss']}; wrong without saying so: "
          f"{j['smtp_wrong_unsaid']}")
    print(f"flows: {r['flows']} ({r['flows_peak']} open at most, {r['flows_evicted']} evicted, "
          f"{r['flows_left_open']} open after {r['drain_s']} s); anomaly records suppressed: "
          f"{r['anomalies_suppressed']}")
    print(f"RSS: {r['rss_before'] / mib:.0f} MiB before, {r['rss_peak'] / mib:.0f} MiB at most, "
          f"{r['rss_after'] / mib:.0f} MiB after the flood's flows ended")
    return 0


if __name__ == "__main__":
    sys.exit(main())
