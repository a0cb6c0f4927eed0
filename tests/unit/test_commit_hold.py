"""The commit hold's userland half (sensor.inputs.hold.CommitHold) against
the real userland (Pipeline, the shipped rules, the gate of a replay
enforcer), a fake of the kernel's maps that records every release point
written, and a fake injector that records the frames put into the stack.
Segments are fed as the live feed does: dissected one by one, ``held()``
(with the frame) for those the kernel flagged held, ``answer()`` after each
batch."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from sensor.assembly import Userland
from sensor.config import Config, SensorConfig, SpamStatsConfig
from sensor.inputs import hold as holdmod
from sensor.inputs.hold import CommitHold
from sensor.kernel import abi
from sensor.records.sinks import ListSink
from sensor.stream.flowid import pack_addr
from sensor.stream.packet import ACK, FIN, LINKTYPE_ETHERNET, PSH, RST, SYN, Segment

RULES = Path(__file__).resolve().parents[2] / "rules"
CLIENT, SERVER = "192.0.2.10", "198.51.100.25"
MASK = 0xFFFFFFFF
IFINDEX = 7


class FakeMaps:
    """What CommitHold writes: (flow text of the key, seq) per release, and
    the release's flags (hold_all, at_line) beside it."""

    def __init__(self):
        self.releases: list[tuple[str, int]] = []
        self.flags: list[tuple[bool, bool]] = []
        self.refuse = 0                     # this many release() calls raise OSError first

    def release(self, key: abi.FlowKey, seq: int, hold_all: bool = False, at_line: bool = False) -> None:
        if self.refuse:
            self.refuse -= 1
            raise OSError(7, "E2BIG")
        self.releases.append((f"{bytes(key.saddr)[12:].hex()}:{key.sport}>{bytes(key.daddr)[12:].hex()}:"
                              f"{key.dport}", seq))
        self.flags.append((hold_all, at_line))


class FakeInjector:
    """The frames put into the stack (frame, ifindex); ``refuse``: say no."""

    supported = True

    def __init__(self):
        self.frames: list[tuple[bytes, int]] = []
        self.refuse = False

    def inject(self, frame: bytes, ifindex: int) -> bool:
        if self.refuse:
            return False
        self.frames.append((frame, ifindex))
        return True


class Conn:
    """One client's TCP connection, segment by segment, through the live feed's steps."""

    def __init__(self, bench, cport: int, cisn: int = 1000, sisn: int = 7000):
        self.bench, self.cport = bench, cport
        self.cseq, self.sseq = cisn, sisn
        self.cli, self.srv = pack_addr(CLIENT), pack_addr(SERVER)

    def client(self, data: bytes = b"", flags: int = PSH | ACK, held: bool = False, skip: bool = False,
               held_since_ms: float = 0.0) -> Segment:
        """The client's next bytes: fed (and marked held), or lost on the way (skip)."""
        seg = Segment(4, self.cli, self.srv, self.cport, 25, self.cseq & MASK, self.sseq & MASK, flags, data,
                      len(data), 0)
        self.cseq += len(data) + (1 if flags & (SYN | FIN) else 0)
        if not skip:
            self.bench.feed(seg, held, held_since_ms)
        return seg

    def server(self, data: bytes = b"", flags: int = PSH | ACK) -> None:
        seg = Segment(4, self.srv, self.cli, 25, self.cport, self.sseq & MASK, self.cseq & MASK, flags, data,
                      len(data), 0)
        self.sseq += len(data) + (1 if flags & (SYN | FIN) else 0)
        self.bench.feed(seg)

    def open(self, sender: str = "alice@example.org") -> "Conn":
        """Handshake to the server's 354 (nothing held)."""
        self.client(flags=SYN)
        self.server(flags=SYN | ACK)
        self.client(flags=ACK)
        self.server(b"220 mx.example ESMTP\r\n")
        self.client(b"EHLO client.example\r\n")
        self.server(b"250-mx.example\r\n250 PIPELINING\r\n")
        self.client(f"MAIL FROM:<{sender}>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n".encode())
        self.server(b"250 ok\r\n250 ok\r\n354 go ahead\r\n")
        self.bench.answer()
        return self

    @property
    def key(self) -> str:
        return f"{bytes(self.cli).hex()}:{self.cport}>{bytes(self.srv).hex()}:25"


class Bench:
    """The userland with the shipped rules, a CommitHold on fake maps."""

    def __init__(self, hold_max_ms: int = abi.HOLD_MAX_MS_DEFAULT):
        config = Config(sensor=SensorConfig(rules=RULES), spam_stats=SpamStatsConfig(enabled=False))
        self.sink = ListSink()
        self.userland = Userland(config, self.sink)       # a replay enforcer: the gate is its verdicts
        self.maps = FakeMaps()
        self.injector = FakeInjector()
        self.hold = CommitHold(self.userland.pipeline, self.maps, hold_max_ms, injector=self.injector)
        self.ts = 1000.0

    def feed(self, seg: Segment, held: bool = False, held_since_ms: float = 0.0) -> None:
        """As LiveFeed.step: the frame through the pipeline (and its gate), then held()."""
        self.ts += 0.001
        frame = frame_of(seg)
        pipeline = self.userland.pipeline
        gated = pipeline.counters.gated
        got = pipeline.feed_frame(LINKTYPE_ETHERNET, frame, len(frame), self.ts)
        assert got is not None
        if held:
            self.hold.held(got, header_of(got, holdmod.monotonic_ns() - int(held_since_ms * 1e6)), frame,
                           gated=pipeline.counters.gated != gated)

    def answer(self) -> None:
        self.hold.answer()

    @property
    def counters(self) -> dict:
        return self.hold.counters.as_dict()


def frame_of(seg: Segment) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src=str(_ip(seg.src)), dst=str(_ip(seg.dst)))
                 / TCP(sport=seg.sport, dport=seg.dport, seq=seg.seq, ack=seg.ack, flags=seg.flags, window=65535)
                 / seg.payload)


def header_of(seg: Segment, ts_ns: int) -> abi.EventHeader:
    """The event header the kernel writes for a segment it held."""
    key = abi.flow_key(str(_ip(seg.src)), seg.sport, str(_ip(seg.dst)), seg.dport)
    h = abi.EventHeader(version=abi.ABI_VERSION, flags=abi.EVF_HELD, ts_ns=ts_ns, ifindex=IFINDEX, sport=seg.sport,
                        dport=seg.dport, seq=seg.seq, family=key.family, payload_len=seg.wire_paylen)
    h.saddr[:] = key.saddr
    h.daddr[:] = key.daddr
    return h


def _ip(packed: bytes):
    return ipaddress.ip_address(packed)


@pytest.fixture
def bench() -> Bench:
    return Bench()


# ---------------------------------------------------------------- release

def test_the_release_is_written_once_the_stream_is_delivered_past_the_held_end(bench):
    conn = Conn(bench, 40000).open()
    assert bench.maps.releases == []                   # nothing held: nothing to release
    end = conn.client(b"Subject: hi\r\n\r\nbody\r\n.\r\n", held=True)
    bench.answer()
    assert bench.maps.releases == [(conn.key, conn.cseq)]      # every byte before it judged
    assert bench.maps.flags == [(False, True)]         # the next command starts there (the last byte was LF)
    assert end.seq + len(end.payload) == conn.cseq
    # the held frame went into the stack at once, on the interface it came in on
    assert bench.injector.frames == [(frame_of(end), IFINDEX)]
    assert bench.hold.recent[-1].outcome == "released" and bench.hold.recent[-1].injected
    c = bench.counters
    assert c["releases"] == 1 and c["held_events"] == 1 and c["pending"] == 0
    assert c["dropped_at_commit"] == c["gone"] == c["late"] == 0
    bench.answer()                                     # answered: not written again
    conn.client(b"QUIT\r\n")
    bench.answer()
    assert len(bench.maps.releases) == 1


def test_the_release_of_a_later_held_segment_moves_the_point_on(bench):
    conn = Conn(bench, 40001).open()
    conn.client(b"Subject: one\r\n\r\nbody\r\n", held=True)       # a false hold: a line starts with CR
    bench.answer()
    first = conn.cseq
    conn.client(b"more\r\n.\r\n", held=True)
    bench.answer()
    assert bench.maps.releases == [(conn.key, first), (conn.key, conn.cseq)]


def test_a_retransmission_held_again_before_the_release_is_answered_with_the_same_point(bench):
    """The kernel pushes every held copy: a retransmission that came before
    the release is a duplicate to the reassembly and gets the same point."""
    conn = Conn(bench, 40002).open()
    seg = conn.client(b"body\r\n.\r\n", held=True)
    bench.feed(seg, held=True)                         # the copy the client's TLP sent
    bench.answer()
    assert bench.maps.releases == [(conn.key, conn.cseq)]
    assert bench.counters["held_events"] == 2 and bench.counters["releases"] == 1
    assert len(bench.injector.frames) == 1 and bench.counters["injected"] == 1    # one copy, not two


def test_a_held_segment_beyond_a_hole_waits_until_the_hole_is_filled(bench):
    conn = Conn(bench, 40003).open()
    hole_start = conn.cseq
    lost = conn.client(b"Subject: late\r\n\r\nfirst part of the body\r\n", skip=True)
    conn.client(b"second part\r\n.\r\n", held=True)    # arrives first: out of order
    bench.answer()
    # only what was delivered is released: not past the hole, so not the held segment
    assert bench.maps.releases == [(conn.key, hole_start)]
    assert bench.maps.flags == [(False, True)]
    assert bench.counters["pending"] == 1 and bench.injector.frames == []    # not covered: not injected
    bench.answer()                                     # nothing new delivered: nothing written
    assert len(bench.maps.releases) == 1
    bench.feed(lost)                                   # the hole is filled
    bench.answer()
    assert bench.maps.releases[-1] == (conn.key, conn.cseq)
    assert bench.counters["pending"] == 0 and bench.counters["releases"] == 2
    assert len(bench.injector.frames) == 1


# ---------------------------------------------------------------- no release

def test_a_flow_dropped_by_a_verdict_gets_no_release(bench):
    """The banned MAIL FROM and the end of data in one held segment: the rule
    drops the flow while it is dissected; the release never comes."""
    conn = Conn(bench, 40004)
    conn.client(flags=SYN)
    conn.server(flags=SYN | ACK)
    conn.client(flags=ACK)
    conn.server(b"220 mx.example ESMTP\r\n")
    seg = conn.client(b"EHLO spammer.example\r\nMAIL FROM:<x@spam.example>\r\nRCPT TO:<bob@example.net>\r\n"
                      b"DATA\r\nSubject: buy\r\n\r\nnow\r\n.\r\nQUIT\r\n", held=True)
    bench.answer()
    assert bench.maps.releases == []
    c = bench.counters
    assert c["dropped_at_commit"] == 1 and c["pending"] == 0 and c["releases"] == 0
    assert [r["rule_id"] for r in bench.sink.of("drop")] == ["spam_filter.mail_from"]
    assert bench.injector.frames == []                 # the held frame never goes into the stack
    assert bench.hold.recent[-1].outcome == "dropped"
    # a held copy still in the ring after the drop: gated, no release, and the
    # flow's drop at commit is not counted twice
    bench.feed(seg, held=True)
    bench.answer()
    assert bench.maps.releases == [] and bench.counters["dropped_at_commit"] == 1
    assert bench.counters["pending"] == 0 and bench.counters["held_events"] == 2
    assert bench.userland.pipeline.counters.gated == 1


def test_a_drop_between_the_hold_and_the_answer_wins(bench):
    conn = Conn(bench, 40005).open()
    conn.client(b"body\r\n.\r\n", held=True)
    flow = bench.userland.pipeline.sessions[0].flow
    bench.userland.enforcer.drop_flow(flow, None, bench.ts)     # e.g. the operator, or the statistics
    bench.answer()
    assert bench.maps.releases == [] and bench.counters["dropped_at_commit"] == 1
    assert bench.injector.frames == []


def test_a_flow_that_ended_before_its_release_counts_gone(bench):
    conn = Conn(bench, 40006).open()
    conn.client(b"body\r\n.\r\n", held=True)
    conn.server(flags=RST | ACK)                       # the flow ends before the answer
    bench.answer()
    assert bench.maps.releases == []
    c = bench.counters
    assert c["gone"] == 1 and c["pending"] == 0 and c["dropped_at_commit"] == 0


def test_a_release_the_map_refuses_is_counted_and_tried_again(bench):
    conn = Conn(bench, 40007).open()
    conn.client(b"body\r\n.\r\n", held=True)
    bench.maps.refuse = 1
    bench.answer()
    assert bench.maps.releases == [] and bench.counters["release_errors"] == 1
    assert bench.counters["pending"] == 1
    bench.answer()
    assert bench.maps.releases == [(conn.key, conn.cseq)] and bench.counters["pending"] == 0


def test_a_release_mid_line_does_not_say_a_line_starts_there(bench):
    conn = Conn(bench, 40012).open()
    conn.client(b"Subject: hi\r\n\r\nbody\r\n.", held=True)     # CRLF. : the end marker not complete
    bench.answer()
    assert bench.maps.releases == [(conn.key, conn.cseq)] and bench.maps.flags == [(False, False)]


def test_inside_a_bdat_chunk_the_release_holds_all_beyond_it(bench):
    """The chunk's last octet can be in any segment: while the dissector is
    inside a chunk, the release tells the kernel to hold everything past it."""
    conn = Conn(bench, 40013)
    conn.client(flags=SYN)
    conn.server(flags=SYN | ACK)
    conn.client(flags=ACK)
    conn.server(b"220 mx.example ESMTP\r\n")
    conn.client(b"EHLO client.example\r\n")
    conn.server(b"250-mx.example\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    conn.client(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.net>\r\n")
    conn.server(b"250 ok\r\n250 ok\r\n")
    chunk = b"Subject: chunk\r\n\r\nfirst half, then the second half\r\n"
    conn.client(b"BDAT %d LAST\r\n" % len(chunk) + chunk[:20], held=True)
    bench.answer()
    assert bench.maps.flags == [(True, False)]         # inside the chunk: hold all beyond
    conn.client(chunk[20:] + b"QUIT\r\n", held=True)  # the chunk's end, then a command
    bench.answer()
    assert bench.maps.flags[-1] == (False, True)
    assert bench.counters["pending"] == 0


def test_a_frame_the_kernel_refuses_waits_for_its_retransmission(bench):
    conn = Conn(bench, 40014).open()
    bench.injector.refuse = True
    conn.client(b"body\r\n.\r\n", held=True)
    bench.answer()
    c = bench.counters
    assert c["releases"] == 1 and c["injected"] == 0 and c["inject_errors"] == 1
    assert not bench.hold.recent[-1].injected


# ---------------------------------------------------------------- sequence space and time

def test_the_release_point_wraps_with_the_sequence_space(bench):
    conn = Conn(bench, 40008, cisn=MASK - 60).open()
    assert conn.cseq > MASK                # the handshake and commands crossed 2**32 (Conn does not wrap)
    conn.client(b"body\r\n.\r\n", held=True)
    bench.answer()
    assert bench.maps.releases == [(conn.key, conn.cseq & MASK)]


@pytest.mark.parametrize(("since_ms", "bucket", "late"), [
    (0.0, "1", 0), (3.0, "5", 0), (150.0, "200", 0), (700.0, "1000", 1), (5000.0, "+Inf", 1)])
def test_the_hold_time_goes_into_its_bucket(bench, since_ms, bucket, late, monkeypatch):
    """From the kernel's time of the first held copy to the release; past
    hold_max_ms (400) the answer is late: the kernel had let the segment pass.
    The clock stands still (the time the test takes is not the hold's)."""
    monkeypatch.setattr(holdmod, "monotonic_ns", lambda: 10**12)
    conn = Conn(bench, 40010).open()
    conn.client(b"body\r\n.\r\n", held=True, held_since_ms=since_ms)
    bench.answer()
    c = bench.counters
    assert c["hold_time"] == {bucket: 1}
    assert c["late"] == late


def test_the_first_held_copy_sets_the_hold_time(bench, monkeypatch):
    monkeypatch.setattr(holdmod, "monotonic_ns", lambda: 10**12)
    conn = Conn(bench, 40011).open()
    seg = conn.client(b"body\r\n.\r\n", held=True, held_since_ms=150.0)
    bench.feed(seg, held=True, held_since_ms=0.0)      # its retransmission, held just now
    bench.answer()
    assert bench.counters["hold_time"] == {"200": 1}


def test_bucket_bounds_are_upper_bounds():
    assert [holdmod._bucket(ms) for ms in (0.2, 1.0, 1.01, 500.0, 1000.0, 1000.5)] == \
        ["1", "1", "2", "500", "1000", "+Inf"]


def test_seq_ge_reads_sequence_numbers_across_the_wrap():
    assert holdmod.seq_ge(5, 5) and holdmod.seq_ge(6, 5) and not holdmod.seq_ge(5, 6)
    assert holdmod.seq_ge(3, MASK - 3) and not holdmod.seq_ge(MASK - 3, 3)


# ---------------------------------------------------------------- content sent before the 354

ONE_WRITE = (b"EHLO smuggler.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"
             b"outer\n.\nMAIL FROM:<b@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"
             b"hidden\r\n.\r\nQUIT\r\n")
FIRST_DATA = ONE_WRITE.index(b"outer")          # octets up to and including the first DATA line


def greeted(bench, port: int) -> Conn:
    conn = Conn(bench, port)
    conn.client(flags=SYN)
    conn.server(flags=SYN | ACK)
    conn.client(flags=ACK)
    conn.server(b"220 mx.example ESMTP\r\n")
    return conn


def payload_of(frame: bytes) -> bytes:
    return bytes(Ether(frame)[TCP].payload)


def test_content_waiting_for_the_354_is_released_only_up_to_the_data_line(bench):
    """One write holds a whole session: the dissector reads the commands, the
    content after DATA waits for the 354; the release stops after the DATA line
    and the MTA gets a cut copy of the held frame up to there."""
    conn = greeted(bench, 40020)
    held = conn.client(ONE_WRITE, held=True)
    bench.answer()
    assert bench.maps.releases == [(conn.key, held.seq + FIRST_DATA)]
    assert bench.maps.flags == [(False, True)]          # a line starts at the release point
    [(cut, ifindex)] = bench.injector.frames
    assert ifindex == IFINDEX and payload_of(cut) == ONE_WRITE[:FIRST_DATA]
    assert bench.counters["injected_cut"] == 1 and bench.counters["pending"] == 1
    assert not bench.sink.of("drop")


def test_the_mtas_354_lets_the_rules_judge_the_content_and_the_smuggled_message_never_goes_in(bench):
    conn = greeted(bench, 40021)
    conn.client(ONE_WRITE, held=True)
    bench.answer()
    conn.server(b"250-mx.example\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n354 go ahead\r\n")
    bench.answer()
    [drop] = bench.sink.of("drop")
    assert drop["rule_id"] == "smuggling.terminator"
    assert len(bench.maps.releases) == 1                # nothing after the DATA line was released
    assert len(bench.injector.frames) == 1
    assert bench.counters["dropped_at_commit"] == 1 and bench.counters["pending"] == 0


def test_a_legitimate_one_write_session_is_released_whole_after_the_354(bench):
    stream = (b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"
              b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    conn = greeted(bench, 40022)
    held = conn.client(stream, held=True)
    bench.answer()
    conn.server(b"250-mx.example\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n354 go ahead\r\n")
    bench.answer()
    cut_at = held.seq + stream.index(b"Subject")
    assert bench.maps.releases == [(conn.key, cut_at), (conn.key, conn.cseq)]
    assert [payload_of(f) for f, _ in bench.injector.frames] == [stream[:cut_at - held.seq], stream]
    assert bench.hold.recent[-1].outcome == "released"
    assert not bench.sink.of("drop")


def test_without_an_injector_content_waiting_for_a_reply_is_released_and_counted():
    bench = Bench()
    bench.injector.supported = False
    conn = greeted(bench, 40023)
    conn.client(ONE_WRITE, held=True)
    bench.answer()
    assert bench.maps.releases == [(conn.key, conn.cseq)]
    assert bench.counters["released_unread"] == 1


def test_the_judged_frame_goes_into_the_stack_before_the_release_is_written(bench):
    """Once the release is written, any copy of the held range passes XDP,
    whatever its bytes: the judged one must be in the MTA's TCP first."""
    order = []
    release, inject = bench.maps.release, bench.injector.inject
    bench.maps.release = lambda *a, **kw: (order.append("release"), release(*a, **kw))[1]
    bench.injector.inject = lambda *a: (order.append("inject"), inject(*a))[1]
    conn = Conn(bench, 40030).open()
    conn.client(b"Subject: hi\r\n\r\nbody\r\n.\r\n", held=True)
    bench.answer()
    assert order == ["inject", "release"]
