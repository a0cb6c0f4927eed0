"""smtp-sensor: an eBPF/XDP-accelerated SMTP security sensor.

The kernel half lives in bpf/; docs/architecture.md traces one packet from
there to an alert through this package.
"""

__version__ = "0.1.0"
