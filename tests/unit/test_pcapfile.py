"""sensor.inputs.pcapfile: pcap and pcapng in, (ts, linktype, frame, wirelen) out, or CaptureError."""

import gzip
import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import IP, TCP, Ether, raw, wrpcap
from scapy.utils import PcapNgWriter

from sensor.inputs import pcapfile
from sensor.inputs.pcapfile import CaptureError, CaptureReader, open_capture, read_packets
from sensor.stream.packet import decode
from support.captures import PCAPS_DIR as PCAPS

FRAME = raw(Ether() / IP(src="192.0.2.1", dst="198.51.100.2") / TCP(sport=4242, dport=25)
            / b"EHLO x\r\n")
RAWIP = raw(IP(src="192.0.2.1", dst="198.51.100.2") / TCP(sport=4242, dport=25) / b"QUIT\r\n")


# ---------------------------------------------------------------- writers
def pcap_bytes(records, endian="<", nano=False, linktype=1, snaplen=65535):
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for sec, frac, data, orig in records:
        out.append(struct.pack(endian + "IIII", sec, frac, len(data), orig) + data)
    return b"".join(out)


def block(e, btype, body):
    body += b"\x00" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def shb(e):
    return block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(e, linktype, tsresol=None, tsoffset=None, snaplen=0):
    opts = b""
    if tsresol is not None:
        opts += struct.pack(e + "HH", 9, 1) + bytes([tsresol]) + b"\x00" * 3
    if tsoffset is not None:
        opts += struct.pack(e + "HHq", 14, 8, tsoffset)
    if opts:
        opts += struct.pack(e + "HH", 0, 0)
    return block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + opts)


def epb(e, iface, ticks, data, orig=None):
    return block(e, 6, struct.pack(e + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF,
                                   len(data), orig or len(data)) + data)


def spb(e, data):
    return block(e, 3, struct.pack(e + "I", len(data)) + data)


def read_all(data, **kw):
    return list(CaptureReader(io.BytesIO(data), name="test.pcap", **kw))


# ---------------------------------------------------------------- pcap
@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcap_both_byte_orders(endian):
    data = pcap_bytes([(1700000000, 250000, FRAME, len(FRAME)),
                       (1700000001, 5, FRAME[:30], len(FRAME))], endian)
    pkts = read_all(data)
    assert [(lt, fr, wl) for _, lt, fr, wl in pkts] == [(1, FRAME, len(FRAME)),
                                                         (1, FRAME[:30], len(FRAME))]
    assert pkts[0][0] == pytest.approx(1700000000.25)
    assert pkts[1][0] == pytest.approx(1700000001.000005)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcap_nanosecond_magic(endian):
    (ts, *_), = read_all(pcap_bytes([(10, 123456789, FRAME, len(FRAME))], endian, nano=True))
    assert ts == pytest.approx(10.123456789, abs=1e-9)


def test_pcap_written_by_scapy(tmp_path):
    path = tmp_path / "s.pcap"
    wrpcap(str(path), [Ether(raw(Ether() / IP() / TCP() / (b"x" * i))) for i in range(5)])
    pkts = list(read_packets(path))
    assert len(pkts) == 5 and all(lt == 1 for _, lt, _, _ in pkts)
    assert [len(decode(lt, fr).payload) for _, lt, fr, _ in pkts] == [0, 1, 2, 3, 4]


def test_pcap_linktype_and_reader_attributes(tmp_path):
    path = tmp_path / "raw.pcap"
    path.write_bytes(pcap_bytes([(1, 0, RAWIP, len(RAWIP))], linktype=101))
    r = open_capture(path)
    pkts = list(r)
    assert r.format == "pcap" and r.linktypes == {0: 101} and r.packets == 1
    assert decode(pkts[0][1], pkts[0][2]).payload == b"QUIT\r\n"


def test_records_spanning_read_chunks(monkeypatch):
    records = [(i, i, FRAME + bytes([i]) * i, len(FRAME) + i) for i in range(200)]
    data = pcap_bytes(records)
    whole = read_all(data)
    monkeypatch.setattr(pcapfile, "CHUNK", 97)
    assert read_all(data) == whole and len(whole) == 200


def test_shared_captures_packet_counts():
    counts = {p.name: sum(1 for _ in read_packets(p)) for p in PCAPS.glob("*.pcap")}
    assert counts["haka__smtp.pcap"] == 48
    assert counts["ndpi__smtp-starttls.pcap"] == 69
    assert counts["ndpi__smtp.pcap"] == 95
    assert counts["arkime__smtp-html.pcap"] == 1


def test_haka_capture_first_packet():
    ts, lt, fr, wl = next(iter(read_packets(PCAPS / "haka__smtp.pcap")))
    assert lt == 1 and ts > 1.4e9 and wl == len(fr)


# ---------------------------------------------------------------- pcapng
@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_interfaces_resolutions_and_blocks(e):
    data = (shb(e)
            + idb(e, 1)                                      # microseconds (default)
            + idb(e, 101, tsresol=9, tsoffset=1000)          # nanoseconds, +1000 s
            + block(e, 0x00000BAD, b"custom block to skip")
            + epb(e, 0, 1_500_000, FRAME)
            + epb(e, 1, 2_000_000_001, RAWIP, orig=len(RAWIP) + 5)
            + block(e, 5, b"\x00" * 8)                      # interface statistics: skipped
            + idb(e, 276, tsresol=0x80 | 10))                # 2^-10 s
    data += epb(e, 2, 1024 * 7, FRAME)
    pkts = read_all(data)
    assert [lt for _, lt, _, _ in pkts] == [1, 101, 276]
    assert pkts[0][0] == pytest.approx(1.5)
    assert pkts[1][0] == pytest.approx(1002.000000001)
    assert pkts[1][3] == len(RAWIP) + 5
    assert pkts[2][0] == pytest.approx(7.0)
    assert pkts[0][2] == FRAME and pkts[1][2] == RAWIP


def test_pcapng_simple_packet_block_and_new_section_resets_interfaces():
    data = shb("<") + idb("<", 1, snaplen=20) + epb("<", 0, 3_000_000, FRAME) + spb("<", FRAME)
    data += shb(">") + idb(">", 101) + epb(">", 0, 5, RAWIP)
    pkts = read_all(data)
    assert pkts[1][1] == 1 and pkts[1][2] == FRAME[:20] and pkts[1][3] == len(FRAME)
    assert pkts[1][0] == pkts[0][0] == pytest.approx(3.0)   # an SPB has no time of its own
    assert pkts[2][1] == 101 and pkts[2][2] == RAWIP


def test_pcapng_written_by_scapy(tmp_path):
    path = tmp_path / "s.pcapng"
    w = PcapNgWriter(str(path))
    for i in range(3):
        p = Ether(FRAME)
        p.time = 1700000000 + i
        w.write(p)
    w.close()
    r = open_capture(path)
    pkts = list(r)
    assert r.format == "pcapng" and len(pkts) == 3
    assert [round(ts) for ts, *_ in pkts] == [1700000000, 1700000001, 1700000002]
    assert all(fr == FRAME for _, _, fr, _ in pkts)


def test_pcapng_packet_on_undeclared_interface():
    with pytest.raises(CaptureError, match="interface 3"):
        read_all(shb("<") + idb("<", 1) + epb("<", 3, 0, FRAME))


def test_pcapng_trailing_length_mismatch():
    good = shb("<") + idb("<", 1) + epb("<", 0, 0, FRAME)
    bad = good[:-4] + struct.pack("<I", 999)
    with pytest.raises(CaptureError, match="trailing length"):
        read_all(bad)


# ---------------------------------------------------------------- errors
def test_missing_file():
    with pytest.raises(CaptureError) as err:
        open_capture("/nonexistent/x.pcap")
    assert "/nonexistent/x.pcap" in str(err.value) and "no such file" in str(err.value)


def test_directory_empty_text_and_gzip(tmp_path):
    with pytest.raises(CaptureError, match="directory"):
        open_capture(tmp_path)
    (tmp_path / "empty.pcap").write_bytes(b"")
    with pytest.raises(CaptureError, match="empty"):
        open_capture(tmp_path / "empty.pcap")
    (tmp_path / "t.pcap").write_text("hello, this is not a capture\n")
    with pytest.raises(CaptureError, match="not a pcap or pcapng file.*byte offset 0"):
        open_capture(tmp_path / "t.pcap")
    (tmp_path / "z.pcap.gz").write_bytes(gzip.compress(pcap_bytes([])))
    with pytest.raises(CaptureError, match="gzip"):
        open_capture(tmp_path / "z.pcap.gz")


def test_truncated_last_record_is_an_error_naming_the_offset():
    data = pcap_bytes([(1, 0, FRAME, len(FRAME)), (2, 0, FRAME, len(FRAME))])
    cut = data[:-10]
    got = []
    with pytest.raises(CaptureError) as err:
        for p in CaptureReader(io.BytesIO(cut), name="cut.pcap"):
            got.append(p)
    assert len(got) == 1                           # everything before it was read
    msg = str(err.value)
    second = 24 + 16 + len(FRAME)
    assert msg.startswith("cut.pcap: capture is truncated") and f"byte offset {second}" in msg
    assert err.value.offset == second


def test_truncated_last_record_non_strict_counts_a_warning():
    data = pcap_bytes([(1, 0, FRAME, len(FRAME)), (2, 0, FRAME, len(FRAME))])[:-10]
    r = CaptureReader(io.BytesIO(data), strict=False)
    assert len(list(r)) == 1 and r.truncated == 1 and "truncated" in r.warnings[0]


def test_absurd_record_length_is_corruption():
    data = pcap_bytes([(1, 0, FRAME, len(FRAME))])
    bad = data[:24] + struct.pack("<IIII", 1, 0, 0x7FFFFFFF, 60) + data[40:]
    with pytest.raises(CaptureError, match="corrupt record.*byte offset 24"):
        read_all(bad)


def test_unsupported_pcap_version():
    data = bytearray(pcap_bytes([]))
    data[4:6] = struct.pack("<H", 3)
    with pytest.raises(CaptureError, match="version"):
        read_all(bytes(data))


SMALL_PCAP = pcap_bytes([(1, 0, FRAME, len(FRAME)), (2, 0, RAWIP, len(RAWIP))])
SMALL_PCAPNG = (shb("<") + idb("<", 1, tsresol=9) + epb("<", 0, 1, FRAME)
                + idb("<", 101) + epb("<", 1, 2, RAWIP))


@pytest.mark.parametrize("data", [SMALL_PCAP, SMALL_PCAPNG], ids=["pcap", "pcapng"])
def test_truncation_at_every_offset_gives_capture_error_or_whole_records(data):
    full = read_all(data)
    for n in range(len(data)):
        try:
            got = read_all(data[:n])
        except CaptureError as e:
            assert "test.pcap" in str(e)
            continue
        assert got == full[:len(got)]              # ended cleanly on a record boundary


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([SMALL_PCAP, SMALL_PCAPNG]), st.data())
def test_corrupted_bytes_give_capture_error_or_packets(data, draw):
    buf = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 6))):
        i = draw.draw(st.integers(0, len(buf) - 1))
        buf[i] = draw.draw(st.integers(0, 255))
    try:
        for ts, lt, fr, wl in read_all(bytes(buf)):
            assert isinstance(fr, bytes) and wl >= len(fr)
    except CaptureError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_capture_error_or_packets(data):
    for magic in (b"", b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00", b"\x0a\x0d\x0d\x0a"):
        try:
            read_all(magic + data)
        except CaptureError:
            pass


# ---------------------------------------------------------------- lenient: resync
T = 1_700_000_000


@pytest.mark.parametrize("endian", ["<", ">"])
def test_lenient_skips_a_corrupt_header_to_the_next_plausible_record(endian):
    good = pcap_bytes([(T, 0, FRAME, len(FRAME)), (T + 1, 0, FRAME, len(FRAME)),
                       (T + 2, 0, RAWIP, len(RAWIP))], endian=endian)
    second = 24 + 16 + len(FRAME)
    bad = bytearray(good)
    struct.pack_into(endian + "I", bad, second + 8, 0x7FFFFFF0)      # its captured length
    with pytest.raises(CaptureError, match=f"corrupt record.*byte offset {second}"):
        read_all(bytes(bad))
    r = CaptureReader(io.BytesIO(bytes(bad)), strict=False, name="test.pcap")
    got = list(r)
    assert [p[0] for p in got] == [T, T + 2] and got[1][2] == RAWIP
    assert r.skipped == 1 and r.skipped_bytes == 16 + len(FRAME)
    assert f"at byte offset {second}: skipped {16 + len(FRAME)} bytes" in r.warnings[0]


def test_lenient_does_not_land_on_a_header_whose_time_is_far_from_the_last():
    # a record whose payload holds what looks like a record header, a year off
    decoy = struct.pack("<IIII", T + 365 * 86400, 0, 4, 4) + b"abcd"
    decoy += struct.pack("<IIII", T + 365 * 86400, 0, 4, 4) + b"abcd"
    good = pcap_bytes([(T, 0, FRAME, len(FRAME)), (T, 5, decoy, len(decoy)), (T + 1, 0, RAWIP, len(RAWIP))])
    second = 24 + 16 + len(FRAME)
    bad = bytearray(good)
    struct.pack_into("<I", bad, second + 4, 2_000_000)               # a fraction of 2 s: impossible
    r = CaptureReader(io.BytesIO(bytes(bad)), strict=False, name="test.pcap")
    got = list(r)
    assert [p[0] for p in got] == [T, T + 1]                         # not the decoys
    # strict reading takes the fraction as it comes (some writers get it wrong)
    assert len(read_all(bytes(bad))) == 3


def test_lenient_pcapng_skips_a_block_with_a_bad_trailer():
    blocks = [shb("<"), idb("<", 1), epb("<", 0, T * 10**6, FRAME), epb("<", 0, (T + 1) * 10**6, FRAME),
              epb("<", 0, (T + 2) * 10**6, RAWIP)]
    data = bytearray(b"".join(blocks))
    third = sum(len(b) for b in blocks[:3])
    struct.pack_into("<I", data, third + len(blocks[3]) - 4, 12)
    with pytest.raises(CaptureError, match="trailing length"):
        read_all(bytes(data))
    r = CaptureReader(io.BytesIO(bytes(data)), strict=False, name="test.pcap")
    assert [round(p[0]) for p in r] == [T, T + 2] and r.skipped == 1


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([SMALL_PCAP, SMALL_PCAPNG]), st.data())
def test_lenient_reading_of_damaged_bytes_never_yields_a_frame_longer_than_its_wire_length(data, draw):
    buf = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 6))):
        i = draw.draw(st.integers(0, len(buf) - 1))
        buf[i] = draw.draw(st.integers(0, 255))
    try:
        r = CaptureReader(io.BytesIO(bytes(buf)), strict=False, name="test.pcap")
        for ts, lt, fr, wl in r:
            assert isinstance(fr, bytes) and wl >= len(fr)
        assert r.skipped == len([w for w in r.warnings if "skipped" in w])
    except CaptureError:
        pass


def test_lenient_reads_a_capture_whose_writer_got_every_fraction_wrong():
    data = pcap_bytes([(T, 2_000_000, FRAME, len(FRAME)), (T + 1, 3_000_000, FRAME, len(FRAME))])
    r = CaptureReader(io.BytesIO(data), strict=False, name="test.pcap")
    assert len(list(r)) == 2 and r.skipped == 0
