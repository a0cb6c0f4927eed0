"""Which worker of a sharded replay a frame is for (sensor.inputs.split)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw, raw

from sensor import shard
from sensor.inputs.split import FrameOwners, ShardFilter
from sensor.stream import packet
from sensor.stream.flowid import pack_addr

pytestmark = pytest.mark.unit

PORTS = frozenset((25, 587))
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def _apart(candidates, workers):
    first = candidates[0]
    for other in candidates[1:]:
        if shard.worker_of_address(pack_addr(first), workers) != shard.worker_of_address(pack_addr(other), workers):
            return first, other
    raise AssertionError


CLIENT, SERVER = _apart([f"192.0.2.{n}" for n in range(1, 60)], 3)
CLIENT6, SERVER6 = _apart([f"2001:db8::{n:x}" for n in range(1, 60)], 3)


def _owners(owners, frame):
    return owners.owners(0.0, 1, frame, len(frame))


def _worker(addr, workers=3):
    return shard.worker_of_address(pack_addr(addr), workers)


@pytest.mark.parametrize("frame", [
    raw(ETH / IP(src=CLIENT, dst=SERVER) / TCP(sport=40000, dport=25, flags="S")),
    raw(ETH / IP(src=SERVER, dst=CLIENT) / TCP(sport=25, dport=40000, flags="SA")),
    raw(ETH / IP(src=CLIENT, dst=SERVER, options=b"\x01\x01\x01\x00") / TCP(sport=40000, dport=25)),
    raw(ETH / Dot1Q(vlan=7) / IP(src=SERVER, dst=CLIENT) / TCP(sport=25, dport=40000) / Raw(b"250 ok\r\n")),
], ids=["syn", "reply", "ip-options", "vlan"])
def test_a_segment_goes_to_its_clients_worker_whichever_way_it_goes(frame):
    assert _owners(FrameOwners(PORTS, 3), frame) == (_worker(CLIENT),)


def test_ipv6_and_raw_ip_segments_go_to_their_clients_worker():
    owners = FrameOwners(PORTS, 3)
    six = raw(IPv6(src=SERVER6, dst=CLIENT6) / TCP(sport=25, dport=40000))
    assert owners.owners(0.0, packet.LINKTYPE_RAW, six, len(six)) == (_worker(CLIENT6),)
    assert _owners(owners, raw(Ether() / IPv6(src=CLIENT6, dst=SERVER6) / TCP(sport=40000, dport=587))) \
        == (_worker(CLIENT6),)


@pytest.mark.parametrize("frame", [
    raw(Ether() / ARP()),
    raw(ETH / IP(src=CLIENT, dst=SERVER) / UDP(sport=53, dport=53)),
    raw(ETH)[:10],
], ids=["arp", "udp", "truncated"])
def test_what_is_not_tcp_goes_to_worker_0_alone_so_it_is_counted_once(frame):
    assert _owners(FrameOwners(PORTS, 3), frame) == (0,)


def _fragments4():
    pkt = IP(src=CLIENT, dst=SERVER, id=77) / TCP(sport=40000, dport=25, flags="PA") / Raw(b"M" * 64)
    return [raw(ETH / f) for f in fragment(pkt, fragsize=16)]


def test_fragments_after_their_first_go_to_its_datagrams_worker():
    owners = FrameOwners(PORTS, 3)
    assert {_owners(owners, f) for f in _fragments4()} == {(_worker(CLIENT),)}


class Fed(list):
    def __call__(self, linktype, frame, wirelen, ts):
        self.append((ts, frame))


def _worker_view(index, timeout=30.0):
    fed = Fed()
    return FrameOwners(PORTS, 3, index, timeout=timeout, feed=fed), fed


def test_fragments_before_their_first_are_held_then_fed_to_its_datagrams_worker_alone():
    frags = _fragments4()
    owner = _worker(CLIENT)
    for index in range(3):
        owners, fed = _worker_view(index)
        assert owners.owners(1.0, 1, frags[-1], len(frags[-1])) == ()      # nobody's yet
        assert owners.owners(2.0, 1, frags[0], len(frags[0])) == (owner,)
        # the held fragment, with its own time, before the first one
        assert fed == ([(1.0, frags[-1])] if index == owner else [])
        assert owners.owners(3.0, 1, frags[1], len(frags[1])) == (owner,)


def test_held_fragments_whose_first_never_comes_go_to_one_worker_at_the_timeout_or_the_end():
    frags = _fragments4()
    lower = min(_worker(CLIENT), _worker(SERVER))
    for index in range(3):
        owners, fed = _worker_view(index, timeout=30.0)
        owners.owners(1.0, 1, frags[-1], len(frags[-1]))
        owners.expire(30.5)
        assert fed == []
        owners.expire(31.0)
        assert fed == ([(1.0, frags[-1])] if index == lower else [])
        owners, fed = _worker_view(index)
        owners.owners(1.0, 1, frags[-2], len(frags[-2]))
        owners.flush()
        assert len(fed) == (index == lower)


def test_ipv6_fragments_are_told_apart_the_same_way():
    pkt = IPv6(src=SERVER6, dst=CLIENT6) / IPv6ExtHdrFragment(id=9) / TCP(sport=25, dport=40000) / Raw(b"2" * 200)
    frags = [raw(Ether() / f) for f in fragment6(pkt, 96)]
    owners, fed = _worker_view(_worker(CLIENT6))
    assert owners.owners(1.0, 1, frags[-1], len(frags[-1])) == ()
    assert owners.owners(2.0, 1, frags[0], len(frags[0])) == (_worker(CLIENT6),)
    assert fed == [(1.0, frags[-1])]


def test_a_first_fragment_without_readable_ports_goes_to_both_workers():
    """A destination-options header behind the fragment header: the ports are further than a peek reads."""
    first = raw(Ether() / IPv6(src=SERVER6, dst=CLIENT6) / IPv6ExtHdrFragment(id=10, m=1, nh=60)
                / Raw(b"\x06" + b"\x00" * 15))
    assert set(_owners(FrameOwners(PORTS, 3), first)) == {_worker(CLIENT6), _worker(SERVER6)}


def test_one_worker_owns_every_frame():
    owners = FrameOwners(PORTS, 1)
    assert {_owners(owners, f) for f in _fragments4()} == {(0,)}


def test_a_worker_keeps_the_datagrams_of_its_own_flows_only():
    seg = packet.decode(1, raw(ETH / IP(src=SERVER, dst=CLIENT) / TCP(sport=25, dport=40000)))
    mine = _worker(CLIENT)
    assert ShardFilter(PORTS, 3, mine).keeps(seg)
    assert not ShardFilter(PORTS, 3, _worker(SERVER)).keeps(seg)
