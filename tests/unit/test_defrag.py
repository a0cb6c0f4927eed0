"""IP defragmentation (sensor/stream/defrag.py) through decode(): fragments built
with scapy, in and out of order, overlapping under each policy, timed out, over
the caps; IPv6 fragment headers behind other extension headers; tiny first
fragments."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw

from sensor.stream import defrag
from sensor.stream.packet import LINKTYPE_ETHERNET, LINKTYPE_RAW, decode

V4A, V4B = "198.51.100.7", "192.0.2.25"
V6A, V6B = "2001:db8:1::7", "2001:db8:2::25"
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
MAIL = b"MAIL FROM:<spammer@suspicious.org>\r\n"


def tcp4(payload=MAIL, ident=77, **ip):
    return IP(src=V4A, dst=V4B, id=ident, **ip) / TCP(sport=40000, dport=25, flags="PA", seq=5, ack=9) / Raw(payload)


def frag4(offset: int, data: bytes, more: bool, ident=77, proto=6) -> bytes:
    """A raw IPv4 fragment: ``data`` at byte ``offset`` of the datagram's payload."""
    assert offset % 8 == 0
    return raw(IP(src=V4A, dst=V4B, id=ident, proto=proto, flags="MF" if more else 0, frag=offset // 8) / Raw(data))


def tcp_bytes(payload=MAIL) -> bytes:
    """The TCP header and payload of tcp4() (what its fragments carry)."""
    return raw(tcp4(payload))[20:]


class Feed:
    """decode() with one defragmenter and its reasons, frames as raw IP unless told."""

    def __init__(self, policy="linux", **limits):
        self.d = defrag.Defragmenter(defrag.DefragLimits(**limits), policy)
        self.reasons: dict = {}

    def __call__(self, frame: bytes, ts: float = 1.0, linktype=LINKTYPE_RAW):
        return decode(linktype, frame, -1, self.reasons, self.d, ts)

    def all(self, frames, ts=1.0):
        """Every frame; the segments they gave."""
        return [s for s in (self(f, ts) for f in frames) if s is not None]

    @property
    def names(self):
        names = [a.name for a in self.d.pending]
        assert set(names) <= defrag.ANOMALIES
        return names


def scapy_frags(pkt, size):
    return [raw(f) for f in fragment(pkt, fragsize=size)]


# ------------------------------------------------------------------ order

@pytest.mark.parametrize("size", [8, 16, 32, 48])
def test_in_order_fragments_give_the_whole_segment(size):
    feed = Feed()
    frames = scapy_frags(tcp4(), size)
    assert len(frames) > 1
    [seg] = feed.all(frames)
    assert (seg.sport, seg.dport, seg.seq, seg.ack, seg.payload) == (40000, 25, 5, 9, MAIL)
    assert seg.wire_paylen == len(MAIL)
    assert feed.reasons == {"ip_fragment": len(frames) - 1}
    assert len(feed.d) == 0 and feed.d.held == 0
    assert feed.d.counters.reassembled == 1


@pytest.mark.parametrize("order", ["reversed", "last_first", "middle_first"])
def test_out_of_order_fragments_give_the_same_segment(order):
    frames = scapy_frags(tcp4(), 16)
    if order == "reversed":
        frames = frames[::-1]
    elif order == "last_first":
        frames = frames[-1:] + frames[:-1]
    else:
        frames = frames[2:3] + frames[:2] + frames[3:]
    [seg] = Feed().all(frames)
    assert seg.payload == MAIL


def test_fragments_in_ethernet_frames_with_padding():
    feed = Feed()
    frames = [raw(ETH / IP(f) / Raw(b"\0" * 20)) for f in scapy_frags(tcp4(), 8)]  # trailing padding
    segs = [s for s in (feed(f, linktype=LINKTYPE_ETHERNET) for f in frames) if s is not None]
    assert [s.payload for s in segs] == [MAIL]


def test_datagrams_are_told_apart_by_identification():
    feed = Feed()
    a = scapy_frags(tcp4(b"A" * 40, ident=1), 16)
    b = scapy_frags(tcp4(b"B" * 40, ident=2), 16)
    interleaved = [f for pair in zip(a, b) for f in pair]
    assert sorted(s.payload for s in feed.all(interleaved)) == [b"A" * 40, b"B" * 40]


def test_a_whole_packet_is_not_the_defragmenters():
    feed = Feed()
    [seg] = feed.all([raw(tcp4())])
    assert seg.payload == MAIL and feed.d.counters.fragments == 0


def test_fragments_of_other_protocols_are_not_tcp():
    feed = Feed()
    pkt = IP(src=V4A, dst=V4B, id=3) / UDP(sport=53, dport=53) / Raw(b"q" * 40)
    assert feed.all(scapy_frags(pkt, 16)) == []
    assert set(feed.reasons) == {"not_tcp"} and feed.d.counters.fragments == 0


# ------------------------------------------------------------------ tiny first fragments

@pytest.mark.parametrize("first", [8, 16, 32])
def test_a_first_fragment_short_of_the_tcp_header_is_reassembled_and_reported(first):
    # the 8-byte trick (RFC 1858): ports in the first fragment, the rest of the header later
    data = tcp_bytes()
    frames = [frag4(0, data[:first], True), frag4(first, data[first:], False)]
    feed = Feed()
    [seg] = feed.all(frames)
    assert seg.payload == MAIL
    if first < 20:
        [an] = feed.d.pending
        assert an.name == "IPV4_FRAG_TINY_FIRST" and (an.sport, an.dport) == (40000, 25)
        assert f"holds {first} of the 20 bytes" in an.detail
    else:
        assert feed.d.pending == []


def test_a_first_fragment_short_of_the_tcp_options_is_tiny():
    pkt = IP(src=V4A, dst=V4B, id=5) / TCP(sport=40000, dport=25, flags="PA", options=[("NOP", None)] * 12) / Raw(MAIL)
    data = raw(pkt)[20:]
    feed = Feed()
    [seg] = feed.all([frag4(0, data[:24], True, ident=5), frag4(24, data[24:], False, ident=5)])
    assert seg.payload == MAIL
    assert feed.names == ["IPV4_FRAG_TINY_FIRST"] and "of the 32 bytes" in feed.d.pending[0].detail


def test_ipv6_first_fragment_without_the_whole_tcp_header_is_dropped_as_linux_does():
    data = raw(TCP(sport=40000, dport=25, flags="PA") / Raw(MAIL))
    base = IPv6(src=V6A, dst=V6B)
    first = raw(base / IPv6ExtHdrFragment(id=4, offset=0, m=1, nh=6) / Raw(data[:8]))
    rest = raw(base / IPv6ExtHdrFragment(id=4, offset=1, m=0, nh=6) / Raw(data[8:]))
    feed = Feed()
    assert feed.all([first, rest]) == []
    assert feed.names == ["IPV6_FRAG_TINY_FIRST"] and feed.d.pending[0].dport == 25
    assert feed.d.counters.dropped == {"truncated_chain": 1}


# ------------------------------------------------------------------ IPv6

def v6_frags(ext_before=(), ext_after=(), payload=MAIL, size=16, ident=9):
    """Fragments of one IPv6 TCP datagram with ``ext_before`` (unfragmentable)
    and ``ext_after`` (fragmentable) extension headers."""
    upper = TCP(sport=40000, dport=25, flags="PA", seq=5) / Raw(payload)
    for header in reversed(ext_after):
        upper = header / upper
    body = raw(upper)
    nh = ext_after[0].overload_fields[IPv6]["nh"] if ext_after else 6
    frames = []
    for off in range(0, len(body), size):
        chunk = body[off:off + size]
        layer = IPv6(src=V6A, dst=V6B)
        for header in ext_before:
            layer = layer / header.copy()
        layer = layer / IPv6ExtHdrFragment(id=ident, offset=off // 8, m=int(off + size < len(body)), nh=nh)
        frames.append(raw(layer / Raw(chunk)))
    return frames


@pytest.mark.parametrize("ext_before", [
    (), (IPv6ExtHdrHopByHop(),), (IPv6ExtHdrHopByHop(), IPv6ExtHdrRouting(addresses=["2001:db8::99"])),
    (IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting()),
])
def test_ipv6_fragment_header_behind_other_extension_headers(ext_before):
    frames = v6_frags(ext_before, size=32)
    feed = Feed()
    [seg] = feed.all(frames[::-1])
    assert (seg.family, seg.sport, seg.dport, seg.seq, seg.payload) == (6, 40000, 25, 5, MAIL)


def test_ipv6_extension_headers_inside_the_fragmentable_part():
    frames = v6_frags(ext_after=(IPv6ExtHdrDestOpt(),), size=40)
    [seg] = Feed().all(frames)
    assert seg.payload == MAIL


def test_ipv6_middle_fragment_not_a_multiple_of_8_discards_the_datagram():
    frames = v6_frags(size=24)
    bad = raw(IPv6(src=V6A, dst=V6B) / IPv6ExtHdrFragment(id=9, offset=3, m=1, nh=6) / Raw(b"x" * 12))
    feed = Feed()
    assert feed.all([frames[0], bad] + frames[1:]) == []
    assert feed.names == ["IPV6_FRAG_INVALID"]
    assert feed.d.counters.discarded == {"invalid": 1}


# ------------------------------------------------------------------ overlaps

FAKE = b"MAIL FROM:<friend1@harmlessly.org>\r\n"


def overlapping(real_first: bool):
    """A datagram whose bytes from 24 on (the sender) come twice: the one the
    rules ban (suspicious.org) and a harmless one; then its first fragment."""
    real, fake = tcp_bytes(MAIL), tcp_bytes(FAKE)
    assert len(real) == len(fake)
    a, b = frag4(24, real[24:], False), frag4(24, fake[24:], False)
    head = frag4(0, real[:24], True)
    return [a, b, head] if real_first else [b, a, head]


def test_linux_keeps_the_first_copy_of_a_duplicate_and_reports_different_data():
    feed = Feed("linux")
    [seg] = feed.all(overlapping(real_first=True))
    assert seg.payload == MAIL
    assert feed.names == ["IPV4_FRAG_OVERLAP"] and "first copy kept" in feed.d.pending[0].detail
    assert feed.d.counters.duplicates == 1


def test_linux_ignores_an_identical_duplicate_silently():
    frames = scapy_frags(tcp4(), 24)
    feed = Feed("linux")
    [seg] = feed.all(frames[:2] + frames[1:2] + frames[2:])
    assert seg.payload == MAIL and feed.names == []


def test_linux_discards_the_datagram_on_a_partial_overlap():
    data = tcp_bytes()
    frames = [frag4(0, data[:24], True), frag4(16, data[16:40], True)]
    feed = Feed("linux")
    assert feed.all(frames) == []
    [an] = feed.d.pending
    assert an.name == "IPV4_FRAG_OVERLAP" and "discarded" in an.detail and (an.sport, an.dport) == (40000, 25)
    assert feed.d.counters.discarded == {"overlap": 1} and len(feed.d) == 0
    # what follows starts a new datagram, as in Linux (the queue was killed)
    assert feed.all([frag4(40, data[40:], False)]) == [] and len(feed.d) == 1


def test_linux_discards_ipv6_on_overlap_rfc5722():
    frames = v6_frags(size=24)
    over = raw(IPv6(src=V6A, dst=V6B) / IPv6ExtHdrFragment(id=9, offset=2, m=1, nh=6) / Raw(b"y" * 16))
    feed = Feed("linux")
    assert feed.all(frames[:1] + [over]) == []
    [an] = feed.d.pending
    assert an.name == "IPV6_FRAG_OVERLAP" and "discarded" in an.detail and an.dport == 25
    assert feed.all(frames[1:]) == []          # the rest begins a datagram that never completes


@pytest.mark.parametrize("policy,real_first,want", [
    ("first", True, MAIL), ("first", False, FAKE),
    ("last", True, FAKE), ("last", False, MAIL),
    # same offset: bsd, windows and solaris keep the older copy
    ("bsd", True, MAIL), ("bsd", False, FAKE),
    ("windows", True, MAIL), ("solaris", False, FAKE),
])
def test_policies_resolve_a_same_offset_overlap(policy, real_first, want):
    feed = Feed(policy)
    [seg] = feed.all(overlapping(real_first))
    assert seg.payload == want
    assert feed.names == ["IPV4_FRAG_OVERLAP"] and f"policy {policy}" in feed.d.pending[0].detail


@pytest.mark.parametrize("policy,wins", [
    ("first", "old"), ("last", "new"), ("bsd", "new"), ("windows", "new"), ("solaris", "new"),
])
def test_a_newer_fragment_starting_lower_and_covering_the_older(policy, wins):
    # old: bytes 16-23 "XXXXXXXX"; new: bytes 8-31 of the real data (starts lower, ends after)
    data = tcp_bytes()
    frames = [frag4(16, b"X" * 8, True), frag4(8, data[8:32], True), frag4(0, data[:8], True),
              frag4(32, data[32:], False)]
    [seg] = Feed(policy).all(frames)
    assert (seg.payload == MAIL) == (wins == "new")


@pytest.mark.parametrize("policy,wins", [
    ("first", "old"), ("last", "new"), ("bsd", "new"), ("windows", "old"), ("solaris", "new"),
])
def test_a_newer_fragment_starting_lower_and_ending_with_the_older(policy, wins):
    data = tcp_bytes()
    frames = [frag4(16, b"X" * 16, True), frag4(8, data[8:32], True), frag4(0, data[:8], True),
              frag4(32, data[32:], False)]
    [seg] = Feed(policy).all(frames)
    assert (seg.payload == MAIL) == (wins == "new")


@pytest.mark.parametrize("policy", ["first", "bsd", "windows", "solaris"])
def test_a_newer_fragment_starting_higher_loses_where_it_overlaps(policy):
    # real 0-23, then X at 16-31 (starts higher: loses 16-23, alone at 24-31),
    # then real 24-31 (same offset as X there, newer: loses)
    data = tcp_bytes()
    frames = [frag4(0, data[:24], True), frag4(16, b"X" * 16, True), frag4(24, data[24:32], True),
              frag4(32, data[32:], False)]
    [seg] = Feed(policy).all(frames)
    # datagram bytes 20-23 are payload 0-3, 24-31 payload 4-11
    assert seg.payload[:4] == MAIL[:4] and seg.payload[4:12] == b"X" * 8 and seg.payload[12:] == MAIL[12:]


def test_last_policy_lets_the_newest_bytes_win():
    data = tcp_bytes()
    frames = [frag4(0, data[:24], True), frag4(16, b"X" * 16, True), frag4(32, data[32:], False)]
    feed = Feed("last")
    [seg] = feed.all(frames[:2] + [frag4(16, data[16:32], True)] + frames[2:])
    assert seg.payload == MAIL


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="defrag policy 'novell'"):
        defrag.Defragmenter(policy="novell")


# ------------------------------------------------------------------ invalid fragments

def test_a_last_fragment_that_contradicts_the_known_end_is_dropped_alone():
    data = tcp_bytes()
    feed = Feed()
    feed.all([frag4(0, data[:16], True), frag4(32, data[32:], False)])
    assert feed.all([frag4(16, data[16:24], False)]) == []          # ends before bytes already seen
    assert feed.d.counters.dropped == {"invalid": 1}
    assert feed.names == []                 # reported once the datagram is done, with its ports
    [seg] = feed.all([frag4(16, data[16:32], True)])
    assert seg.payload == MAIL
    assert feed.names == ["IPV4_FRAG_INVALID", "IPV4_FRAG_TINY_FIRST"]
    assert (feed.d.pending[0].sport, feed.d.pending[0].dport) == (40000, 25)


def test_a_fragment_past_the_last_is_dropped_alone():
    data = tcp_bytes()
    feed = Feed()
    feed.all([frag4(16, data[16:], False)])
    assert feed.all([frag4(len(data) + 8 - len(data) % 8, b"z" * 8, True)]) == []
    assert feed.d.counters.dropped == {"invalid": 1}
    [seg] = feed.all([frag4(0, data[:16], True)])
    assert seg.payload == MAIL
    assert feed.names == ["IPV4_FRAG_INVALID", "IPV4_FRAG_TINY_FIRST"]


def test_an_overlap_before_the_first_fragment_is_reported_with_its_ports():
    data = tcp_bytes()
    feed = Feed("first")
    feed.all([frag4(24, data[24:], False), frag4(24, b"x" * (len(data) - 24), False)])
    assert feed.names == []
    [seg] = feed.all([frag4(0, data[:24], True)])
    assert seg.payload == MAIL
    [an] = feed.d.pending
    assert an.name == "IPV4_FRAG_OVERLAP" and (an.sport, an.dport) == (40000, 25)


def test_the_anomalies_kept_per_datagram_are_bounded():
    data = tcp_bytes()
    feed = Feed("linux")
    feed(frag4(24, data[24:], False))
    for i in range(50):                     # duplicates with other data: no fragment more each
        feed(frag4(24, bytes([i]) * (len(data) - 24), False))
    [seg] = feed.all([frag4(0, data[:24], True)])
    assert seg.payload == MAIL
    assert len(feed.names) == 8 and feed.d.counters.notes_dropped == 42


def test_a_datagram_past_65535_bytes_is_refused():
    feed = Feed()
    assert feed.all([frag4(65528, b"x" * 16, False)]) == []
    assert feed.names == ["IPV4_FRAG_PKT_TOO_LARGE"] and len(feed.d) == 0


# ------------------------------------------------------------------ time and caps

def test_a_datagram_with_holes_times_out_and_says_so():
    data = tcp_bytes()
    feed = Feed(timeout=30.0)
    feed(frag4(0, data[:16], True), ts=100.0)
    feed.d.expire(129.9)
    assert len(feed.d) == 1
    feed.d.expire(130.0)
    assert len(feed.d) == 0 and feed.d.held == 0
    [an] = feed.d.pending
    assert an.name == "FRAG_TIMEOUT" and (an.sport, an.dport) == (40000, 25)
    assert "16 bytes of unknown length" in an.detail
    assert feed.d.counters.discarded == {"timeout": 1}
    # the rest comes too late: a new datagram without a first fragment
    assert feed.all([frag4(16, data[16:], False)], ts=131.0) == []


def test_a_timeout_without_the_first_fragment_has_no_ports():
    feed = Feed()
    feed(frag4(16, b"x" * 16, False), ts=1.0)
    feed.d.expire(40.0)
    [an] = feed.d.pending
    assert an.name == "FRAG_TIMEOUT" and an.sport is None and "of 32" in an.detail


def test_too_many_fragments_discard_the_datagram():
    data = tcp_bytes(b"x" * 200)
    feed = Feed(max_fragments=4)
    frames = [frag4(o, data[o:o + 8], o + 8 < len(data)) for o in range(0, len(data), 8)]
    assert feed.all(frames) == []
    assert "FRAG_TOO_MANY" in feed.names and feed.d.counters.discarded["too_many"] >= 1


def test_the_per_source_cap_evicts_that_sources_oldest():
    feed = Feed(per_source=3)
    for ident in range(5):
        feed(frag4(0, tcp_bytes()[:16], True, ident=ident), ts=1.0 + ident)
    assert len(feed.d) == 3
    assert feed.names == ["FRAG_EVICTED", "FRAG_EVICTED"]
    assert feed.d.counters.discarded == {"source_full": 2}
    # the newest are kept: the last one completes
    [seg] = feed.all([frag4(16, tcp_bytes()[16:], False, ident=4)])
    assert seg.payload == MAIL


def test_the_table_cap_evicts_the_oldest():
    feed = Feed(max_datagrams=2)
    for ident in range(3):
        feed(frag4(0, b"x" * 16, True, ident=ident))
    assert len(feed.d) == 2 and feed.d.counters.discarded == {"table_full": 1}


def test_the_byte_cap_bounds_what_is_held():
    limit = 64 * 1024
    feed = Feed(max_bytes=limit)
    for ident in range(400):
        feed(frag4(0, b"x" * 1000, True, ident=ident))
        assert feed.d.held <= limit
    assert feed.d.counters.discarded["bytes_full"] > 300
    assert feed.d.held == sum(dg.held for dg in feed.d._table.values())


def test_flush_forgets_everything_counted():
    feed = Feed()
    feed(frag4(0, b"x" * 16, True))
    feed.d.flush()
    assert len(feed.d) == 0 and feed.d.held == 0 and feed.d.counters.discarded == {"flush": 1}


def test_a_datagram_discarded_before_its_first_fragment_is_reported_with_the_next_first():
    data = tcp_bytes()
    feed = Feed("linux")
    feed.all([frag4(24, data[24:], False), frag4(16, b"x" * (len(data) - 16), False)])  # overlap: discarded
    assert feed.names == [] and feed.d.counters.discarded == {"overlap": 1}
    feed(frag4(0, data[:24], True))       # the sender goes on: a new datagram, with the ports
    [an] = feed.d.pending
    assert an.name == "IPV4_FRAG_OVERLAP" and (an.sport, an.dport) == (40000, 25)


def test_a_discarded_datagram_whose_first_never_comes_is_reported_without_ports_at_the_timeout():
    data = tcp_bytes()
    feed = Feed("linux")
    feed.all([frag4(24, data[24:], False), frag4(16, b"x" * (len(data) - 16), False)], ts=1.0)
    feed.d.expire(20.0)
    assert feed.names == []
    feed.d.expire(31.0)
    [an] = feed.d.pending
    assert an.name == "IPV4_FRAG_OVERLAP" and an.sport is None


# ------------------------------------------------------------------ any cut, any order

@settings(max_examples=200, deadline=None)
@given(data=st.data(), family=st.sampled_from([4, 6]), policy=st.sampled_from(defrag.POLICIES))
def test_any_cut_in_any_order_with_exact_duplicates_gives_the_segment(data, family, policy):
    """Fragments cut at any multiple of 8 (the first holding the TCP header),
    sent in any order with copies of some sent again, give the segment whole
    under every policy; a copy is an exact overlap: Linux ignores it as a
    duplicate without an anomaly, the other policies report the overlap."""
    payload = data.draw(st.binary(min_size=1, max_size=300))
    body = raw(TCP(sport=40000, dport=25, flags="PA", seq=5) / Raw(payload))
    inner = 20                                  # the whole TCP header in the first fragment
    cuts = sorted(data.draw(st.sets(st.integers(1, (len(body) - 1) // 8), max_size=12)))
    cuts = [0] + [8 * c for c in cuts if 8 * c >= inner] + [len(body)]
    pieces = [(a, body[a:b], b < len(body)) for a, b in zip(cuts, cuts[1:])]
    order = data.draw(st.permutations(range(len(pieces))))
    # copies of fragments already sent (a copy of the missing one would complete it)
    again = data.draw(st.lists(st.sampled_from(order[:-1]), max_size=3)) if len(order) > 1 else []
    sent = [pieces[i] for i in order[:-1]] + [pieces[i] for i in again] + [pieces[order[-1]]]
    frames = []
    for off, chunk, more in sent:
        if family == 4:
            frames.append(frag4(off, chunk, more))
        else:
            frames.append(raw(IPv6(src=V6A, dst=V6B) / IPv6ExtHdrFragment(id=3, offset=off // 8, m=int(more), nh=6)
                              / Raw(chunk)))
    feed = Feed(policy)
    segs = feed.all(frames)
    assert segs and segs[0].payload == payload and segs[0].seq == 5
    assert len(feed.d) == 0 and len(segs) == 1
    names = set(feed.names)
    assert names <= {f"IPV{family}_FRAG_OVERLAP"}
    assert (policy == "linux") <= (not names)
