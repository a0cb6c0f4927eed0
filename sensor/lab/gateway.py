"""The lab with a gateway: the client and the mail server on two TEST-NET
links, a router namespace between them that forwards (IPv4), so the sensor
can run where a gateway's would, on the router's client-facing interface
(``router_if``: XDP sees the client's segments on their way in, TC the
server's replies on their way out to the client).

    with GatewayLab() as lab:
        lab.start_server(journal=path, addresses=(GATEWAY_SERVER_V4,))
        dp.attach(lab.router_if, netns=lab.router_ns)

Everything else is the Lab's (processes, Postfix, clients; ``server`` is
GATEWAY_SERVER_V4 for them); close() removes the three namespaces and with
them the two veth pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sensor.kernel.netns import enter_netns, iproute
from sensor.lab.network import CLIENT_V4, PREFIX_V4, Lab, _ethtool, _ip

#: the router's address on each link, and the server's on its own
ROUTER_CLIENT_V4, ROUTER_SERVER_V4, GATEWAY_SERVER_V4 = "192.0.2.1", "198.51.100.1", "198.51.100.25"


@dataclass
class GatewayLab(Lab):
    client_addrs: tuple[str, ...] = (CLIENT_V4,)

    def __post_init__(self):
        super().__post_init__()
        self.router_ns = f"ss{self.tag}-gw"
        self.router_if = f"ss{self.tag}gc"      # the router's side of the client's link
        self.router_server_if = f"ss{self.tag}gs"

    def up(self) -> "GatewayLab":
        from pyroute2 import IPRoute

        try:
            for name in (self.client_ns, self.router_ns, self.server_ns):
                _ip("netns", "add", name)
                self._created.append(name)
            with IPRoute() as ipr:
                for inner, outer, ns_in, ns_out in ((self.client_if, self.router_if, self.client_ns, self.router_ns),
                                                    (self.router_server_if, self.server_if, self.router_ns,
                                                     self.server_ns)):
                    ipr.link("add", ifname=inner, kind="veth", peer=outer)
                    ipr.link("set", index=ipr.link_lookup(ifname=inner)[0], net_ns_fd=ns_in)
                    ipr.link("set", index=ipr.link_lookup(ifname=outer)[0], net_ns_fd=ns_out)
            self._configure(self.client_ns, self.client_if, [(a, PREFIX_V4) for a in self.client_addrs])
            # as Lab.up: the client's veth takes what the sensor's XDP sends
            # back, and its frames carry full checksums, as a NIC's do
            self._pass_xdp(self.client_ns, self.client_if)
            _ethtool(self.client_ns, "-K", self.client_if, "tx", "off")
            self._configure(self.router_ns, self.router_if, [(ROUTER_CLIENT_V4, PREFIX_V4)])
            self._configure(self.router_ns, self.router_server_if, [(ROUTER_SERVER_V4, PREFIX_V4)])
            self._configure(self.server_ns, self.server_if, [(GATEWAY_SERVER_V4, PREFIX_V4)])
            for ns, gateway in ((self.client_ns, ROUTER_CLIENT_V4), (self.server_ns, ROUTER_SERVER_V4)):
                with iproute(ns) as ipr:
                    ipr.route("add", dst="0.0.0.0/0", gateway=gateway)
            # the router forwards (no sysctl binary needed: a minimal host may lack procps)
            with enter_netns(self.router_ns):
                Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> "GatewayLab":
        return self.up()
