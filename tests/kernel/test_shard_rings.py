"""The kernel's choice of event ring (bpf/shard.h) is sensor.shard's worker:
IPv4 and IPv6, both directions of a flow, both ends on SMTP ports, and IP
fragments (a fragment without ports goes to both of its addresses' workers)."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from sensor import shard
from sensor.kernel import abi
from sensor.kernel.datapath import Datapath, DatapathConfig
from sensor.kernel.ring import EventReader
from support.testrun import prog_test_run

pytestmark = pytest.mark.kernel

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
PORTS = frozenset({25, 587})
SERVER4, SERVER6 = "192.0.2.25", "2001:db8:2::25"
CLIENTS4 = [f"198.51.100.{i}" for i in range(1, 25)] + [f"203.0.113.{i}" for i in range(200, 216)]
CLIENTS6 = [f"2001:db8:1::{i:x}" for i in range(1, 25)] + [f"2001:db8:{i:x}::7" for i in range(100, 116)]


@pytest.fixture(scope="module", params=[2, 3])
def rings(request, kernel_prereqs, test_pin_root):
    """A datapath of N workers and a reader on each of its rings."""
    workers = request.param
    dp = Datapath(DatapathConfig(pin_dir=test_pin_root / f"shard{workers}" / f"v{abi.ABI_VERSION}",
                                 workers=workers)).load()
    dp.maps.set_config(wake_batch=False)
    readers = [EventReader(dp.bpf, ring_fd=dp.ring_fd(w), worker=w) for w in range(workers)]
    yield dp, readers
    for reader in readers:
        reader.close()
    dp.close()


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def ip_layer(src: str, dst: str):
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)


def segment(src, sport, dst, dport) -> bytes:
    return bytes(ETH / ip_layer(src, dst) / TCP(sport=sport, dport=dport, flags="PA", seq=1, ack=1)
                 / Raw(b"NOOP\r\n"))


def where(rings, frame: bytes, egress: bool = False) -> list[int]:
    """The workers whose rings got the frame (each ring read empty)."""
    dp, readers = rings
    prog_test_run(dp.tc_fd if egress else dp.xdp_fd, frame)
    found = []
    for worker, reader in enumerate(readers):
        events = reader.poll(0)
        assert all(e.frame == frame for e in events)
        found += [worker] * len(events)
    return found


@pytest.mark.parametrize("clients,server", [(CLIENTS4, SERVER4), (CLIENTS6, SERVER6)], ids=["ipv4", "ipv6"])
def test_each_direction_of_a_flow_goes_to_the_ring_of_its_clients_worker(rings, clients, server):
    workers = len(rings[1])
    seen = set()
    for client in clients:
        expected = shard.worker_of(packed(client), 40000, packed(server), 25, PORTS, workers)
        assert expected == shard.worker_of_address(packed(client), workers)
        assert where(rings, segment(client, 40000, server, 25)) == [expected]               # XDP, client's
        assert where(rings, segment(server, 25, client, 40000), egress=True) == [expected]  # TC, server's
        seen.add(expected)
    assert seen == set(range(workers))     # the clients do spread over every ring


@pytest.mark.parametrize("clients,server", [(CLIENTS4, SERVER4), (CLIENTS6, SERVER6)], ids=["ipv4", "ipv6"])
def test_both_ends_on_smtp_ports_go_to_the_lower_ends_worker_both_ways(rings, clients, server):
    workers = len(rings[1])
    for client in clients[:12]:
        for a, b in ((client, server), (server, client)):
            expected = shard.worker_of(packed(a), 25, packed(b), 587, PORTS, workers)
            assert expected == shard.worker_of(packed(b), 587, packed(a), 25, PORTS, workers)
            assert where(rings, segment(a, 25, b, 587)) == [expected]
            assert where(rings, segment(b, 587, a, 25)) == [expected]


def fragments(src: str, dst: str, sport: int, dport: int) -> tuple[bytes, bytes]:
    """The first fragment (with the ports) and the later one of a TCP segment."""
    data = bytes(TCP(sport=sport, dport=dport, flags="PA", seq=1, ack=1) / Raw(b"MAIL FROM:<a@example.org>\r\n"))
    if ":" in src:
        def make(part, offset, more):
            return bytes(ETH / IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(id=7, offset=offset // 8, m=int(more),
                                                                           nh=6) / Raw(part))
    else:
        def make(part, offset, more):
            return bytes(ETH / IP(src=src, dst=dst, id=7, proto=6, flags="MF" if more else 0, frag=offset // 8)
                         / Raw(part))
    return make(data[:16], 0, True), make(data[16:], 16, False)


@pytest.mark.parametrize("clients,server", [(CLIENTS4, SERVER4), (CLIENTS6, SERVER6)], ids=["ipv4", "ipv6"])
def test_a_fragment_without_ports_goes_to_both_addresses_workers_a_first_one_to_its_flows(rings, clients, server):
    dp, readers = rings
    workers = len(readers)
    dp.maps.set_config(enforce=False, wake_batch=False)     # monitor only: fragments are pushed
    try:
        twice = 0
        for client in clients:
            for src, sport, dst, dport in ((client, 40000, server, 25), (server, 25, client, 40000)):
                first, later = fragments(src, dst, sport, dport)
                owner = shard.worker_of(packed(src), sport, packed(dst), dport, PORTS, workers)
                assert where(rings, first) == [owner]
                both = shard.fragment_workers(packed(src), packed(dst), workers)
                assert sorted(where(rings, later)) == sorted(both)
                twice += len(both) == 2
        assert twice    # some land in two rings: the second push is exercised
    finally:
        dp.maps.set_config(wake_batch=False)
