"""The counters of each attached interface (``run -i A -i B``), read from the
kernel's ``ss_if_counters`` (``KernelMaps.interface_counters``): one group
per interface and direction, labelled with the interface's name, for the
metrics (``smtp_sensor_interface_packets_total{interface,direction,verdict}``);
``status`` shows the same values under each interface."""

from __future__ import annotations

from sensor.counters import Counters, Group, counter
from sensor.kernel import abi

__all__ = ["InterfaceCounters", "interface_groups"]


def _field(c: abi.Counter):
    return counter("packets on the SMTP ports by interface and the kernel's verdict (exclusive), read from the map",
                   metric="interface_packets", labels={"verdict": c.name.lower()})


#: one interface and direction of the kernel's counters
InterfaceCounters = type(Counters)("InterfaceCounters", (Counters,), {
    **{c.name.lower(): _field(c) for c in abi.Counter if abi.Counter.NOT_SMTP < c < abi.VERDICT_COUNTERS},
    "seen": counter("packets on the SMTP ports an interface's programs saw (the verdicts' sum)",
                    metric="interface_seen_packets"),
})


def interface_groups(datapath):
    """The counters of every interface ``datapath`` is attached to, per direction."""
    for a in datapath.attachments:
        for direction, values in datapath.maps.interface_counters(a.ifindex).items():
            yield Group(None, InterfaceCounters().update(values), (("interface", a.ifname), ("direction", direction)))
