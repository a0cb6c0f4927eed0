"""sensor.stream.flowid: Community ID v1 against the spec's published vectors; stable uids."""

import re

import pytest

from sensor.stream.flowid import FlowUids, community_id, pack_addr

# Vectors copied from corelight/community-id-spec, baseline/baseline_deflt.json
# (seed 0) and baseline/baseline_seed1.json (seed 1).  For ICMP/ICMPv6 the spec's
# "sport"/"dport" are the message type and code.  Fields: proto, saddr, daddr,
# sport, dport, seed, expected.
SPEC_VECTORS = [
    (6, "128.232.110.120", "66.35.250.204", 34855, 80, 0, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (6, "66.35.250.204", "128.232.110.120", 80, 34855, 0, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    (6, "2001:470:e5bf:dead:4957:2174:e82c:4887", "2607:f8b0:400c:c03::1a", 63943, 25, 0,
     "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="),
    (6, "2607:f8b0:400c:c03::1a", "2001:470:e5bf:dead:4957:2174:e82c:4887", 25, 63943, 0,
     "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4="),
    (17, "192.168.1.52", "8.8.8.8", 54585, 53, 0, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
    (132, "192.168.170.8", "192.168.170.56", 7, 7, 0, "1:MP2EtRCAUIZvTw6MxJHLV7N7JDs="),
    (46, "10.1.12.1", "10.1.12.2", None, None, 0, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw="),
    (46, "10.1.12.2", "10.1.12.1", None, None, 0, "1:KHlLkgoJW7ifUTyTSgyVfkFHzKw="),
    (1, "192.168.0.89", "192.168.0.1", 8, 0, 0, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
    (1, "192.168.0.1", "192.168.0.89", 0, 8, 0, "1:X0snYXpgwiv9TZtqg64sgzUn6Dk="),
    (1, "10.0.0.1", "10.0.0.2", 11, 0, 0, "1:YHxtAirCG//0OzkcVAukqKQN9xM="),
    (58, "fe80::200:86ff:fe05:80da", "fe80::260:97ff:fe07:69ea", 135, 136, 0,
     "1:dGHyGvjMfljg6Bppwm3bg0LO8TY="),
    (58, "fe80::260:97ff:fe07:69ea", "fe80::200:86ff:fe05:80da", 135, 136, 0,
     "1:zavyT/cezQr1fmImYCwYnMXbgck="),
    (58, "3ffe:501:1800:2345::2", "3ffe:507:0:1:200:86ff:fe05:80da", 3, 0, 0,
     "1:2ObVBgIn28oZvibYZhZMBgh7WdQ="),
    (58, "fe80::200:86ff:fe05:80da", "ff02::2", 133, 134, 0, "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0="),
    (6, "128.232.110.120", "66.35.250.204", 34855, 80, 1, "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
    (6, "2607:f8b0:400c:c03::1a", "2001:470:e5bf:dead:4957:2174:e82c:4887", 25, 63943, 1,
     "1:eJYTW6AOzFLlSUoESovMjnu7rMw="),
    (17, "8.8.8.8", "192.168.1.52", 53, 54585, 1, "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
    (1, "192.168.0.89", "192.168.0.1", 8, 0, 1, "1:03g6IloqVBdcZlPyX8r0hgoE7kA="),
    (46, "10.1.12.1", "10.1.12.2", None, None, 1, "1:rYir8gphR31noO9iDRQmF/BteEI="),
]


@pytest.mark.parametrize("proto,saddr,daddr,sport,dport,seed,expected", SPEC_VECTORS)
def test_community_id_matches_spec_baseline(proto, saddr, daddr, sport, dport, seed, expected):
    assert community_id(saddr, daddr, proto, sport, dport, seed=seed) == expected


def test_community_id_accepts_packed_addresses():
    assert community_id(pack_addr("66.35.250.204"), pack_addr("128.232.110.120"), 6, 80,
                        34855) == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="


def test_community_id_same_address_orders_by_port():
    a = community_id("127.0.0.1", "127.0.0.1", 6, 50328, 25)
    b = community_id("127.0.0.1", "127.0.0.1", 6, 25, 50328)
    assert a == b


def _uids_of(gen, n=100, ts=1000.0):
    return [gen.uid(pack_addr(f"192.0.2.{i % 250}"), 40000 + i, pack_addr("198.51.100.1"), 25, 7 * i, True, ts + i)
            for i in range(n)]


def test_uids_are_zeek_like_and_reproducible():
    ua = _uids_of(FlowUids(seed=42))
    assert ua == _uids_of(FlowUids(seed=42))
    assert len(set(ua)) == 100
    assert all(re.fullmatch(r"C[0-9A-Za-z]{10,17}", u) for u in ua)
    assert _uids_of(FlowUids(seed=43)) != ua


def test_uid_seed_may_be_bytes():
    assert _uids_of(FlowUids(b"\x01\x02")) == _uids_of(FlowUids(b"\x01\x02"))


def test_a_flows_uid_does_not_depend_on_the_flows_before_it_nor_on_the_clock():
    alone = FlowUids(7)
    after_others = FlowUids(7)
    _uids_of(after_others, 50, ts=10.0)
    flow = (pack_addr("203.0.113.9"), 51000, pack_addr("198.51.100.1"), 25, 123456789, True)
    assert alone.uid(*flow, ts=99.5) == after_others.uid(*flow, ts=99.9)


def test_a_reused_four_tuple_gets_another_uid():
    gen = FlowUids(0)
    ends = (pack_addr("2001:db8::1"), 51000, pack_addr("2001:db8::2"), 25)
    assert gen.uid(*ends, 1000) != gen.uid(*ends, 2000)          # a new SYN, a new ISN
    assert gen.uid(*ends, 1000, True) != FlowUids(0).uid(*ends, 1000, False)


def test_flows_with_the_same_endpoints_and_first_sequence_number_get_different_uids():
    gen = FlowUids(0)
    flow = (pack_addr("2001:db8::1"), 51000, pack_addr("2001:db8::2"), 25, 77)
    first, second = gen.uid(*flow, ts=5.0), gen.uid(*flow, ts=6.0)
    assert first != second
    assert FlowUids(0).uid(*flow, ts=9.0) == first


def test_the_collision_table_forgets_flows_older_than_its_window():
    gen = FlowUids(0)
    for i in range(1000):
        gen.uid(pack_addr("192.0.2.1"), 1024 + i, pack_addr("192.0.2.2"), 25, i, True, float(i))
    assert len(gen._seen) <= 2 * FlowUids.COLLISION_WINDOW + 1
