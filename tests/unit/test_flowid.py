"""sensor.stream.flowid: Community ID v1 against the spec's published vectors; stable uids."""

import re

import pytest

from sensor.stream.flowid import UidGenerator, community_id, pack_addr

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


def test_uids_are_zeek_like_and_reproducible():
    a = UidGenerator(seed=42)
    b = UidGenerator(seed=42)
    ua = [a.next() for _ in range(100)]
    assert ua == [b() for _ in range(100)]
    assert len(set(ua)) == 100
    assert all(re.fullmatch(r"C[0-9A-Za-z]{10,17}", u) for u in ua)
    assert UidGenerator(seed=43).next() != ua[0]


def test_uid_seed_may_be_bytes():
    assert UidGenerator(b"\x01\x02").next() == UidGenerator(b"\x01\x02").next()
