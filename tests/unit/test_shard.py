"""The worker of a packet: its client's address hashed, the same both ways."""

import ipaddress

import pytest

from sensor import shard

pytestmark = pytest.mark.unit

PORTS = frozenset({25, 587})


def packed(text):
    return ipaddress.ip_address(text).packed


def test_fnv1a32_matches_the_published_test_vectors():
    assert shard.fnv1a32(b"") == 0x811C9DC5
    assert shard.fnv1a32(b"a") == 0xE40C292C
    assert shard.fnv1a32(b"foobar") == 0xBF9CF968


@pytest.mark.parametrize("client,server", [("192.0.2.7", "198.51.100.1"), ("2001:db8::7", "2001:db8::1")])
def test_both_directions_of_a_flow_go_to_the_same_worker(client, server):
    c, s = packed(client), packed(server)
    for workers in (2, 3, 8):
        there = shard.worker_of(c, 40000, s, 25, PORTS, workers)
        back = shard.worker_of(s, 25, c, 40000, PORTS, workers)
        assert there == back == shard.worker_of_address(c, workers)


def test_all_connections_of_a_host_go_to_one_worker_whatever_the_server():
    c = packed("203.0.113.9")
    owners = {shard.worker_of(c, sport, packed(f"198.51.100.{n}"), 25, PORTS, 4)
              for n in range(1, 50) for sport in (1025, 40000, 65535)}
    assert len(owners) == 1


def test_flow_between_two_smtp_ports_agrees_both_ways():
    a, b = packed("192.0.2.1"), packed("192.0.2.2")
    assert shard.worker_of(a, 25, b, 25, PORTS, 5) == shard.worker_of(b, 25, a, 25, PORTS, 5)


def test_one_worker_owns_everything():
    assert shard.worker_of(packed("192.0.2.1"), 1, packed("192.0.2.2"), 25, PORTS, 1) == 0


def test_clients_spread_over_workers():
    counts = [0, 0]
    for n in range(256):
        counts[shard.worker_of_address(packed(f"192.0.2.{n}"), 2)] += 1
    assert min(counts) > 96


def test_a_fragment_goes_to_the_workers_of_both_its_addresses():
    src, dst = packed("192.0.2.7"), packed("198.51.100.1")
    assert shard.fragment_workers(src, dst, 4) == {shard.worker_of_address(src, 4), shard.worker_of_address(dst, 4)}
