"""A corrupt record in the middle of a capture (pcap and pcapng).

Without ``lenient`` the replay stops with its one-line error, but first the
flows open at that point end and their records are written: the records are
those of the capture cut just before the corrupt record.  With ``lenient``
the reader skips to the next plausible record and goes on; a corrupt pure
ACK costs nothing, so the records are those of the intact capture.
"""

from __future__ import annotations

import struct

import pytest

from sensor.assembly import Userland
from sensor.config import Config
from sensor.inputs.pcapfile import CaptureReader
from sensor.inputs.replay import ReplayError, replay
from sensor.records.sinks import ListSink
from support.smtp_pcap import session_frames, smtp_dialogue, write_pcap, write_pcapng

# session A ends before the damage, session B is open across it
FRAMES = (session_frames(smtp_dialogue(sender=b"alice@example.org"), sport=25, cport=40000)
          + session_frames(smtp_dialogue(sender=b"carol@example.org"), sport=25, cport=40001,
                           t0=1_700_000_010.0))
A_FRAMES = len(FRAMES) // 2
# in session B: handshake (3), greeting + ACK, EHLO + ACK, reply + ACK, MAIL + ACK:
# the ACK of the MAIL, a pure ACK
DAMAGED = A_FRAMES + 3 + 2 * 3 + 1


def records_of(path, *, strict=True):
    sink = ListSink()
    result = replay(path, Userland(Config(), sink, uid_seed=0), strict=strict)
    return sink, result


def pcap_offsets(data: bytes) -> list[int]:
    """Byte offset of each record header of a little-endian pcap."""
    offsets, pos = [], 24
    while pos < len(data):
        offsets.append(pos)
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    return offsets


def pcapng_offsets(data: bytes) -> list[int]:
    """Byte offset of each enhanced packet block of a little-endian pcapng."""
    offsets, pos = [], 0
    while pos < len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        if btype == 6:
            offsets.append(pos)
        pos += blen
    return offsets


@pytest.fixture(params=["pcap", "pcapng"])
def capture(request, tmp_path):
    """(format, intact path, bytes, offset of each packet's record)."""
    fmt = request.param
    path = tmp_path / f"intact.{fmt}"
    (write_pcap if fmt == "pcap" else write_pcapng)(path, FRAMES)
    data = path.read_bytes()
    offsets = (pcap_offsets if fmt == "pcap" else pcapng_offsets)(data)
    assert len(offsets) == len(FRAMES)
    return fmt, path, data, offsets


def damage(fmt, data, at):
    """The capture with the record at offset ``at`` made impossible: a pcap
    captured length past any snapshot length; a pcapng block's trailing
    length that differs from its leading one."""
    buf = bytearray(data)
    if fmt == "pcap":
        struct.pack_into("<I", buf, at + 8, 0x7FFFFF00)
    else:
        blen = struct.unpack_from("<I", buf, at + 4)[0]
        struct.pack_into("<I", buf, at + blen - 4, blen + 4)
    return bytes(buf)


def test_strict_replay_stops_at_the_corrupt_record_but_writes_what_was_read(capture, tmp_path):
    fmt, _path, data, offsets = capture
    bad = tmp_path / f"bad.{fmt}"
    bad.write_bytes(damage(fmt, data, offsets[DAMAGED]))
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[:offsets[DAMAGED]])          # the capture as if it ended there
    expected, _ = records_of(cut)

    sink = ListSink()
    with pytest.raises(ReplayError) as err:
        replay(bad, Userland(Config(), sink, uid_seed=0))
    msg = str(err.value)
    assert "\n" not in msg and "corrupt" in msg and f"after {DAMAGED} packets" in msg
    assert "--lenient" in msg
    assert list(sink) == list(expected)
    # session B was open at the damage: its transaction is written, with its sender
    smtp = sink.of("smtp")
    assert [r["mailfrom"] for r in smtp] == ["alice@example.org", "carol@example.org"]
    assert [r["delivered"] for r in smtp] == [True, False]


def test_lenient_replay_skips_the_corrupt_record_and_goes_on(capture, tmp_path):
    fmt, path, data, offsets = capture
    bad = tmp_path / f"bad.{fmt}"
    bad.write_bytes(damage(fmt, data, offsets[DAMAGED]))
    intact, _ = records_of(path)
    got, result = records_of(bad, strict=False)
    assert list(got) == list(intact)                  # only a pure ACK was lost
    assert result.packets == len(FRAMES) - 1
    (warning,) = result.warnings
    assert f"at byte offset {offsets[DAMAGED]}" in warning
    assert f"next plausible record at byte offset {offsets[DAMAGED + 1]}" in warning


def test_lenient_replay_of_a_capture_with_bytes_cut_out_in_the_middle(capture, tmp_path):
    fmt, path, data, offsets = capture
    # 30 bytes gone from the middle of session B's MAIL segment's record
    mail = offsets[DAMAGED - 1]
    at = mail + 40
    bad = tmp_path / f"cut.{fmt}"
    bad.write_bytes(data[:at] + data[at + 30:])
    with pytest.raises(ReplayError):
        records_of(bad)
    got, result = records_of(bad, strict=False)
    assert result.warnings and all("skipped" in w for w in result.warnings)
    intact, _ = records_of(path)
    smtp = got.of("smtp")
    assert smtp[0] == intact.of("smtp")[0]            # session A untouched
    # the damaged record and the one its lost bytes cut into are gone; session
    # B is read on after them (what its dissector makes of the lost MAIL is
    # its own business): its RCPT, sent after the damage, is in its record
    assert result.packets == len(FRAMES) - 1
    assert smtp[-1]["id.orig_p"] == 40001
    assert [s["parameter"] for s in smtp[-1]["steps"] if s["verb"] == "RCPT"] == ["TO:<bob@example.net>"]


def test_a_corrupt_record_with_nothing_plausible_after_it(capture, tmp_path):
    fmt, _path, data, offsets = capture
    last = offsets[-1]
    buf = bytearray(damage(fmt, data, last))
    bad = tmp_path / f"end.{fmt}"
    bad.write_bytes(bytes(buf))
    r = CaptureReader(bad, strict=False)
    assert len(list(r)) == len(FRAMES) - 1
    assert r.skipped == 1 and "the end of the file" in r.warnings[0]
