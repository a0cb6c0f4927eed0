"""smtp-sensor: an eBPF/XDP-accelerated SMTP security sensor.

The kernel half lives in bpf/; docs/architecture.md traces one packet from
there to an alert.  This package, in the order a packet meets it:

    kernel/     the datapath's userland side: ABI mirror, compile and attach, maps, event ring
    inputs/     frames in: the live event ring (live.py) or a capture (replay.py, pcapfile.py)
    pipeline.py frames -> segments -> streams -> SMTP events -> records, one path for both
    stream/     packet decoding, TCP reassembly as the receiver sees it, flow ids
    smtp/       the sans-IO SMTP dissector
    rules/      the rule writers' API, the engine, enforcement of verdicts
    spamstats/  reject statistics per client host: notices and bans
    records/    one builder per record type, beside its JSON Schema; sinks
    assembly.py the userland built from a Config (live, replay, demo, tests, benchmarks)
    service/    the running sensor: loop, control socket, metrics, logs
    cli.py, config.py, counters.py, errors.py, files.py (what the sensor writes, created 0600)
    lab/        test and demo infrastructure (network namespaces, servers, clients)
"""

__version__ = "0.1.0"

# Before any submodule: which per-packet modules run compiled (sensor/compiled.py).
from sensor import compiled as _compiled  # noqa: E402

_compiled.install()
