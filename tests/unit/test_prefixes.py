"""The prefix set behind the userland gate's bans and the statistics' network
lists answers as a list of ``ipaddress`` networks would, for any prefixes."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.prefixes import PrefixSet

V4 = st.builds(lambda n, length: ipaddress.ip_network((n, length), strict=False),
               st.integers(0, 2**32 - 1), st.integers(0, 32))
V6 = st.builds(lambda n, length: ipaddress.ip_network((n, length), strict=False),
               st.integers(0, 2**128 - 1), st.integers(0, 128))
ADDR = st.one_of(st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)),
                 st.builds(ipaddress.IPv6Address, st.integers(0, 2**128 - 1)))


def longest(networks, ip):
    held = [n for n in networks if n.version == ip.version and ip in n]
    return max(held, key=lambda n: n.prefixlen, default=None)


@settings(max_examples=300, deadline=None)
@given(networks=st.lists(st.one_of(V4, V6), max_size=20), probes=st.lists(ADDR, max_size=10),
       removed=st.lists(st.integers(0, 19), max_size=5))
def test_lookup_gives_the_longest_prefix_holding_the_address_as_a_list_would(networks, probes, removed):
    table = PrefixSet()
    for net in networks:
        table.add(net, str(net))
    held = list(dict.fromkeys(networks))
    for i in dict.fromkeys(removed):
        if i < len(held):
            assert table.remove(held[i])
            assert not table.remove(held[i])
    held = [n for i, n in enumerate(held) if i not in removed]
    assert len(table) == len(held)
    # the addresses probed: random ones and the first and last of every prefix
    probes = probes + [n.network_address for n in networks] + [n.broadcast_address for n in networks]
    for ip in probes:
        want = longest(held, ip)
        assert table.lookup(ip) == (str(want) if want is not None else None)
        assert table.lookup(ip.packed) == table.lookup(str(ip))
        assert (ip in table) == (want is not None)
    assert sorted(map(str, (n for n, _ in table.items()))) == sorted(map(str, held))


def test_prefixes_are_taken_as_text_with_host_bits_ignored():
    table = PrefixSet(["192.0.2.77/24", "2001:db8::1/32"])
    assert "192.0.2.1" in table and "192.0.3.1" not in table
    assert b"\x20\x01\x0d\xb8" + b"\0" * 12 in table
    assert "198.51.100.1" not in table and len(table) == 2
