"""The TCP checksum's sum (sensor/stream/packet.py): the loop the compiled
module runs gives what the big-integer form of the pure-Python module gives,
for any bytes, offsets and odd lengths, and checksum_ok agrees with scapy's."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, Ether, IPv6, raw

from sensor import compiled
from sensor.stream import packet

pytestmark = pytest.mark.unit


@st.composite
def spans(draw):
    data = draw(st.binary(max_size=3000))
    start = draw(st.integers(0, len(data)))
    end = draw(st.integers(start, len(data)))
    return data, start, end


@settings(max_examples=300, deadline=None)
@given(spans())
def test_the_word_loop_and_the_big_integer_give_the_same_sum(span):
    data, start, end = span
    want = packet._ones_sum_int(data, start, end)
    if compiled.status()["sensor.stream.packet"] != "compiled":   # the loop is C only
        assert packet._ones_sum is packet._ones_sum_int
        return
    assert packet._ones_sum is packet._ones_sum_loop
    assert packet._ones_sum_loop(data, start, end) == want
    assert packet._ones_sum_loop(bytearray(data), start, end) == want    # not bytes: the big integer


@pytest.mark.parametrize("ip", [IP(src="192.0.2.1", dst="198.51.100.2"),
                                IPv6(src="2001:db8::1", dst="2001:db8::2")])
@pytest.mark.parametrize("payload", [b"", b"x", b"MAIL FROM:<a@example.org>\r\n", bytes(range(256)) * 5 + b"z"])
def test_checksum_ok_accepts_scapy_checksums_and_rejects_a_flipped_bit(ip, payload):
    frame = raw(Ether() / ip / TCP(sport=40000, dport=25, flags="PA") / payload)
    seg = packet.decode(packet.LINKTYPE_ETHERNET, frame)
    assert packet.checksum_ok(seg) is True
    bad = bytearray(frame)
    bad[-1 if payload else seg.l4 + 4] ^= 0x10
    assert packet.checksum_ok(packet.decode(packet.LINKTYPE_ETHERNET, bytes(bad))) is False
