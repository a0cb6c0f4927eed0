"""The control socket fed garbage: random bytes, a huge length prefix, a
truncated frame, msgpack that is not a map, unknown commands, arguments of
the wrong type or value, many idle connections, a client that never sends,
a client that never reads its reply.  After all of it the server still
answers ``status`` correctly and its socket is mode 0600.

Unit level: a ``ControlServer`` over a fake sensor (no BPF), served by a
thread that plays the sensor's loop.  Lab level (last test): the same
garbage at a real ``smtp-sensor run``, then ``smtp-sensor status``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import msgpack
import pytest

from sensor.rules.enforce import KernelEnforcer
from sensor.service import control
from sensor.service.control import MAX_CLIENTS, MAX_REQUEST, ControlClient, ControlError, ControlServer

REPO = Path(__file__).resolve().parents[2]
LEN = struct.Struct(">I")


# ---------------------------------------------------------------- a fake sensor

class FakeMaps:
    def __init__(self):
        self.banned: dict[str, float | None] = {}

    def ban(self, network, ttl=None, reason=None):
        self.banned[network] = ttl

    def unban(self, network):
        return self.banned.pop(network, "absent") != "absent"

    def bans(self):
        from sensor.kernel import abi
        from sensor.kernel.maps import Entry
        return [Entry(n, abi.Reason.MANUAL, 0, 0, 0) for n in self.banned]


class FakeSensor:
    """What ControlServer reads of a Sensor, without BPF."""

    def __init__(self):
        self.maps = FakeMaps()
        self.datapath = SimpleNamespace(maps=self.maps)
        self.enforcer = KernelEnforcer(self.maps)
        self.pipeline = SimpleNamespace(sessions=[])
        self.reject_stats = None
        self.engine = None
        self.records: list[dict] = []
        self.stop_requested = False
        self.big_status = 0
        self.status_raises = None

    def sink(self, record):
        self.records.append(record)

    def request_stop(self):
        self.stop_requested = True

    def reload(self):
        return {"config_changed": [], "config_error": "configuration not reloaded: [sensor] interfaces needs "
                "a restart (systemctl restart smtp-sensor); the running configuration stays"}

    def status(self):
        if self.status_raises is not None:
            raise self.status_raises
        out = {"pid": os.getpid(), "interfaces": [{"interface": "fake0", "xdp_mode": "generic"}],
               "active_flows": 0, "counters": {"ingress": {"pushed": 7}}}
        if self.big_status:
            out["padding"] = "x" * self.big_status
        return out


class Served:
    """A ControlServer served by a thread, as the sensor's loop would."""

    def __init__(self, path: Path, sensor=None):
        self.sensor = sensor or FakeSensor()
        self.server = ControlServer(path, self.sensor)
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                self.server.serve_pending(0.01)
            except BaseException as exc:  # noqa: BLE001 - the test asserts there is none
                self.errors.append(exc)
                return

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.server.close()


@pytest.fixture
def served(tmp_path):
    s = Served(tmp_path / "run" / "control.sock")
    try:
        yield s
    finally:
        s.close()
    assert not s.errors, f"the serving loop raised: {s.errors!r}"


def connect(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    control._connect(s, str(path), 10)
    return s


def read_reply(s: socket.socket) -> dict | None:
    """The next reply frame on s (and not a byte of the one after it: a
    streamed answer is several), or None if the server closed without one."""
    buf = b""
    while True:
        want = 4 - len(buf) if len(buf) < 4 else 4 + LEN.unpack_from(buf)[0] - len(buf)
        if want <= 0:
            break
        try:
            chunk = s.recv(min(want, 65536))
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            break
        buf += chunk
    if not buf:
        return None
    (size,) = LEN.unpack_from(buf)
    assert len(buf) == 4 + size, f"a truncated reply: {len(buf) - 4} of {size} bytes"
    reply = msgpack.unpackb(buf[4:], raw=False)
    assert isinstance(reply, dict) and "ok" in reply, reply
    return reply


def send_raw(path, data: bytes, shut: bool = True) -> dict | None:
    with contextlib.closing(connect(path)) as s:
        try:
            s.sendall(data)
            if shut:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_reply(s)


def frame(obj) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return LEN.pack(len(body)) + body


def request(path, obj) -> dict | None:
    return send_raw(path, frame(obj))


def assert_healthy(served: Served) -> None:
    result = ControlClient(served.server.path).call("status")
    assert result["interfaces"][0]["interface"] == "fake0"
    assert result["counters"]["ingress"]["pushed"] == 7
    mode = os.stat(served.server.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
    assert not served.errors, served.errors


# ---------------------------------------------------------------- unit tests

def test_status_and_socket_mode(served):
    assert_healthy(served)
    assert stat.S_IMODE(os.stat(os.path.dirname(served.server.path)).st_mode) == 0o700


def test_random_bytes(served):
    rng = random.Random(6)
    for i in range(150):
        size = rng.choice([1, 2, 3, 4, 5, 17, 100, 4096, 70000])
        data = rng.randbytes(size)
        if i % 3 == 0 and size > 8:      # a small, plausible length prefix: the body is garbage
            data = LEN.pack(size - 4) + data[4:]
        reply = send_raw(served.server.path, data)
        assert reply is None or reply["ok"] is False, reply
    assert_healthy(served)


def test_huge_length_prefix(served):
    for size in (MAX_REQUEST + 1, 0x7FFFFFFF, 0xFFFFFFFF):
        reply = send_raw(served.server.path, LEN.pack(size) + b"\x80" * 100, shut=False)
        assert reply == {"ok": False, "error": f"request of {size} bytes is larger than {MAX_REQUEST}"}
    assert_healthy(served)


def test_truncated_frames(served, monkeypatch):
    body = msgpack.packb({"cmd": "status"})
    # cut anywhere, then the client closes: dropped without a reply
    for cut in (1, 3, 4, 5, len(body) + 3):
        assert send_raw(served.server.path, (LEN.pack(len(body)) + body)[:cut]) is None
    # a zero-length body is not a request
    assert "malformed" in send_raw(served.server.path, LEN.pack(0))["error"]
    # cut, and the client stays: dropped after IDLE_TIMEOUT
    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.3)
    with contextlib.closing(connect(served.server.path)) as s:
        s.sendall(LEN.pack(len(body)) + body[:2])
        assert read_reply(s) is None
    assert_healthy(served)


def test_a_request_in_single_bytes(served):
    data = frame({"cmd": "status"})
    with contextlib.closing(connect(served.server.path)) as s:
        for i in range(len(data)):
            s.sendall(data[i:i + 1])
        reply = read_reply(s)
    assert reply["ok"] is True and reply["result"]["interfaces"][0]["interface"] == "fake0"


@pytest.mark.parametrize("obj", [[1, 2], "status", 5, None, 1.5, b"status", True,
                                 {"command": "status"}, {"cmd": 5}, {"cmd": None}, {"cmd": ["status"]}])
def test_msgpack_that_is_not_a_request(served, obj):
    reply = request(served.server.path, obj)
    assert reply["ok"] is False and reply["error"] == "a request is a map with a 'cmd' string"
    assert_healthy(served)


@pytest.mark.parametrize("body", [
    b"\xc1",                                     # never used
    b"\x81\x01\x02",                             # a map with an integer key (strict_map_key)
    b"\x81\xa3cmd\xa6status\x00",                # extra data after the map
    b"\x91" * 60000,                             # nesting deeper than the unpacker's stack
    b"\xdd\xff\xff\xff\xff",                     # an array of 4 G elements, none there
    b"\xdb\x7f\xff\xff\xff",                     # a 2 GB string, not there
])
def test_malformed_msgpack(served, body):
    reply = send_raw(served.server.path, LEN.pack(len(body)) + body)
    assert reply["ok"] is False and reply["error"].startswith("malformed request"), reply
    assert_healthy(served)


@pytest.mark.parametrize("cmd", ["nope", "", "__init__", "_drop", "status ", "STATUS", "../status", "x" * 5000,
                                 "close", "handle_bytes", "serve_pending"])
def test_unknown_commands(served, cmd):
    reply = request(served.server.path, {"cmd": cmd})
    assert reply["ok"] is False and reply["error"].startswith("unknown command"), reply
    assert len(reply["error"]) < 200
    assert_healthy(served)


BAD_ARGUMENTS = [
    {"cmd": "status", "verbose": True},                       # unknown argument
    {"cmd": "flows", "limit": "10"},
    {"cmd": "flows", "limit": -1},
    {"cmd": "flows", "limit": 0},
    {"cmd": "flows", "limit": math.inf},
    {"cmd": "flows", "limit": math.nan},
    {"cmd": "flows", "limit": True},
    {"cmd": "flows", "limit": [1]},
    {"cmd": "ban_add"},                                        # prefix missing
    {"cmd": "ban_add", "prefix": 3221225985},                  # an int is an address to ipaddress
    {"cmd": "ban_add", "prefix": b"\xc0\x00\x02\x01"},         # and so are 4 bytes
    {"cmd": "ban_add", "prefix": "192.0.2.0/33"},
    {"cmd": "ban_add", "prefix": "not an address"},
    {"cmd": "ban_add", "prefix": ["192.0.2.1"]},
    {"cmd": "ban_add", "prefix": "192.0.2.1", "ttl": "60"},
    {"cmd": "ban_add", "prefix": "192.0.2.1", "ttl": math.inf},
    {"cmd": "ban_add", "prefix": "192.0.2.1", "ttl": math.nan},
    {"cmd": "ban_add", "prefix": "192.0.2.1", "ttl": -5},
    {"cmd": "ban_add", "prefix": "192.0.2.1", "ttl": 0},
    {"cmd": "ban_add", "prefix": "192.0.2.1", "ttl": 1e300},
    {"cmd": "ban_add", "prefix": "192.0.2.1", "ttl": True},
    {"cmd": "ban_add", "prefix": "192.0.2.1", "reason": 5},
    {"cmd": "ban_add", "prefix": "192.0.2.1", "reason": "r" * 1000},
    {"cmd": "ban_del", "prefix": None},
    {"cmd": "bans", "prefix": "192.0.2.1"},
    {"cmd": "stop", "now": True},
]


@pytest.mark.parametrize("req", BAD_ARGUMENTS, ids=lambda r: json.dumps(r, default=repr)[:60])
def test_bad_arguments(served, req):
    reply = request(served.server.path, req)
    assert reply["ok"] is False and reply["error"].startswith(f"bad arguments for {req['cmd']}"), reply
    assert reply.get("usage") is True
    assert served.sensor.maps.banned == {} and served.sensor.records == []
    assert served.sensor.stop_requested is False
    assert_healthy(served)


def test_byte_argument_names(served):
    body = b"\x82\xa3cmd\xa6status" + b"\xc4\x01x\x01"      # {"cmd": "status", b"x": 1}
    reply = send_raw(served.server.path, LEN.pack(len(body)) + body)
    assert reply["ok"] is False, reply
    assert_healthy(served)


def test_a_failing_command_is_an_error_reply(served):
    served.sensor.status_raises = KeyError("boom")
    reply = request(served.server.path, {"cmd": "status"})
    assert reply == {"ok": False, "error": "status failed: KeyError: 'boom'"}
    served.sensor.status_raises = OverflowError("cannot convert float infinity to integer")
    assert request(served.server.path, {"cmd": "status"})["ok"] is False
    served.sensor.status_raises = None
    assert served.server.counters.errors == 2
    assert_healthy(served)


class Unprintable:
    def __str__(self):
        raise RuntimeError("no text")


def test_a_reply_msgpack_cannot_hold(served, monkeypatch):
    monkeypatch.setattr(served.sensor, "status", lambda: {"big": Unprintable()})
    reply = request(served.server.path, {"cmd": "status"})
    assert reply["ok"] is False and "could not be encoded" in reply["error"]


def test_good_commands_still_work(served):
    client = ControlClient(served.server.path)
    assert client.call("ban_add", prefix="192.0.2.7", ttl=60, reason="test") == \
        {"banned": "192.0.2.7/32", "ttl": 60.0, "note": "test"}
    assert client.call("bans")[0]["note"] == "test"
    assert client.call("ban_del", prefix="192.0.2.7") == {"unbanned": "192.0.2.7/32"}
    assert served.sensor.maps.banned == {}
    with pytest.raises(ControlError, match="is not banned") as err:
        client.call("ban_del", prefix="192.0.2.7")
    assert err.value.exit_code == 1
    with pytest.raises(ControlError, match=r"^configuration not reloaded: \[sensor\] interfaces needs a restart"):
        client.call("reload")
    with pytest.raises(ControlError, match="disabled"):
        client.call("stats")
    assert client.call("flows", limit=5) == []
    with pytest.raises(control.ControlUsageError) as err:
        client.call("flows", limit="five")
    assert err.value.exit_code == 2


def test_ban_and_unban_go_through_the_enforcer_and_write_drop_records(served):
    from support.record_schemas import check as check_schema

    client = ControlClient(served.server.path)
    client.call("ban_add", prefix="198.51.100.0/24", ttl=600, reason="scanner")
    client.call("ban_add", prefix="2001:db8::/48")
    enforcer = served.sensor.enforcer
    assert enforcer.verdicts.banned("198.51.100.9") and enforcer.verdicts.banned("2001:db8::1")
    assert served.sensor.maps.banned == {"198.51.100.0/24": 600.0, "2001:db8::/48": None}
    assert client.call("ban_del", prefix="198.51.100.0/24") == {"unbanned": "198.51.100.0/24"}
    assert not enforcer.verdicts.banned("198.51.100.9") and "198.51.100.0/24" not in enforcer.notes
    shapes = [{k: v for k, v in r.items() if k != "ts"} for r in served.sensor.records]
    assert shapes == [
        {"event_type": "drop", "action": "ban_source", "target": "198.51.100.0/24", "reason": "manual",
         "enforced_by": "kernel", "ttl": 600.0, "note": "scanner"},
        {"event_type": "drop", "action": "ban_source", "target": "2001:db8::/48", "reason": "manual",
         "enforced_by": "kernel"},
        {"event_type": "drop", "action": "unban_source", "target": "198.51.100.0/24", "reason": "manual",
         "enforced_by": "kernel"},
    ]
    for rec in served.sensor.records:
        check_schema(rec)
    with pytest.raises(ControlError, match="is not banned"):
        client.call("ban_del", prefix="198.51.100.0/24")
    assert len(served.sensor.records) == 3          # no record for a ban that was not there


def test_many_idle_connections_do_not_lock_the_operator_out(served):
    idle = []
    try:
        for _ in range(MAX_CLIENTS * 3):
            idle.append(connect(served.server.path))
        # at once (no waiting for IDLE_TIMEOUT): the oldest idle ones make room
        for _ in range(3):
            assert_healthy(served)
        assert len(served.server.conns) <= MAX_CLIENTS
    finally:
        for s in idle:
            s.close()
    assert_healthy(served)


def test_64_concurrent_clients_are_all_answered(served):
    """More clients at once than are served at once: the rest wait in the
    listen queue and are answered in turn, none reset."""
    results, errors = [], []
    start = threading.Barrier(64)

    def one():
        try:
            start.wait()
            results.append(ControlClient(served.server.path).call("status")["pid"])
        except Exception as exc:  # noqa: BLE001 - the test asserts there is none
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert results == [os.getpid()] * 64
    assert served.server.counters.refused == 0 and served.server.counters.requests == 64
    assert_healthy(served)


class CountedFlow:
    """A flow whose rows are counted as the server describes them."""

    described = 0

    def __init__(self, i: int):
        self.i = i
        self.orig_h, self.orig_p, self.resp_h, self.resp_p = "192.0.2.10", 1024 + i % 60000, "192.0.2.25", 25
        self.community_id, self.start_ts, self.last_ts = f"1:{i}", 0.0, 1.0

    @property
    def uid(self):
        CountedFlow.described += 1
        return f"C{self.i}"


def fake_sessions(n: int) -> list:
    conn = SimpleNamespace(state="COMMAND", helo="flood.example")
    return [SimpleNamespace(flow=CountedFlow(i), conn=conn, scratch={}, transactions=0, tls=False)
            for i in range(n)]


def test_flows_of_100000_flows_streams_while_status_is_answered(served):
    served.sensor.pipeline.sessions = fake_sessions(100_000)
    CountedFlow.described = 0
    slow = connect(served.server.path)
    try:
        slow.sendall(frame({"cmd": "flows", "limit": 100_000}))
        first = read_reply(slow)          # the first chunk; the rest waits for this client to read
        assert first["ok"] and first["more"] and len(first["result"]) == control.STREAM_CHUNK
        assert ControlClient(served.server.path).call("status")["pid"] == os.getpid()
        # status was answered while most of the flows were not described yet
        assert CountedFlow.described < 100_000
    finally:
        slow.close()
    rows = ControlClient(served.server.path, timeout=60).call("flows", limit=100_000)
    assert len(rows) == 100_000 and rows[0]["uid"] == "C0" and rows[-1]["uid"] == "C99999"
    assert rows[7] == {"uid": "C7", "orig": "192.0.2.10:1031", "resp": "192.0.2.25:25", "community_id": "1:7",
                       "state": "COMMAND", "helo": "flood.example", "transactions": 0, "tls": False,
                       "dropped": False, "age": 1.0}
    assert ControlClient(served.server.path).call("flows", limit=3) == rows[:3]
    assert_healthy(served)


def test_a_stream_that_fails_midway_ends_with_one_error(served):
    sessions = fake_sessions(2 * control.STREAM_CHUNK)
    sessions[control.STREAM_CHUNK + 5] = SimpleNamespace(flow=None)      # a bug in the middle
    served.sensor.pipeline.sessions = sessions
    with pytest.raises(ControlError, match="flows failed: AttributeError"):
        ControlClient(served.server.path).call("flows", limit=10_000)
    assert served.server.counters.errors == 1
    assert_healthy(served)


def test_a_client_that_never_sends_is_dropped(served, monkeypatch):
    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.3)
    with contextlib.closing(connect(served.server.path)) as s:
        assert s.recv(10) == b""          # closed by the server, no reply
    assert_healthy(served)


def test_a_client_that_never_reads_its_reply_does_not_stall_the_loop(tmp_path):
    """Served by hand here: each serve_pending() must return without waiting
    for a client to read (a blocking send would stall the loop, and a timeout
    would cut the reply short)."""
    sensor = FakeSensor()
    sensor.big_status = 4 << 20          # far more than a socket buffer
    server = ControlServer(tmp_path / "control.sock", sensor)
    try:
        slow = connect(server.path)
        slow.sendall(frame({"cmd": "status"}))
        for _ in range(20):
            server.serve_pending(0.01)
        assert any(c.out for c in server.conns.values()), "the reply should be waiting to be written"
        sensor.big_status = 0
        quick = connect(server.path)
        quick.sendall(frame({"cmd": "status"}))
        quick.setblocking(False)
        buf = b""
        for _ in range(500):
            server.serve_pending(0.01)
            with contextlib.suppress(BlockingIOError):
                buf += quick.recv(65536)
            if len(buf) >= 4 and len(buf) == 4 + LEN.unpack_from(buf)[0]:
                break
        quick.close()
        assert msgpack.unpackb(buf[4:])["result"]["interfaces"][0]["interface"] == "fake0"
        # the slow client reads at last: its whole reply is there
        done = threading.Event()
        got: dict = {}

        def read_slow():
            got["reply"] = read_reply(slow)
            done.set()

        reader = threading.Thread(target=read_slow, daemon=True)
        reader.start()
        while not done.is_set():
            server.serve_pending(0.01)
        reader.join()
        assert len(got["reply"]["result"]["padding"]) == 4 << 20
        slow.close()
    finally:
        server.close()
    assert not os.path.exists(tmp_path / "control.sock")


def test_a_second_server_on_a_live_socket_is_refused(served, tmp_path):
    from sensor.errors import SensorError
    with pytest.raises(SensorError, match="another sensor answers"):
        ControlServer(served.server.path, FakeSensor())
    assert_healthy(served)


def test_everything_at_once_then_status(served, monkeypatch):
    """Every kind of garbage, interleaved with idle connections; then status."""
    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.5)
    rng = random.Random(66)
    idle = [connect(served.server.path) for _ in range(MAX_CLIENTS // 2)]
    try:
        kinds = [
            lambda: send_raw(served.server.path, rng.randbytes(rng.randrange(1, 300))),
            lambda: send_raw(served.server.path, LEN.pack(0xFFFFFFF0), shut=False),
            lambda: send_raw(served.server.path, frame({"cmd": "status"})[:7]),
            lambda: request(served.server.path, [1, "x", None]),
            lambda: request(served.server.path, {"cmd": rng.choice(["nope", "", "x" * 100])}),
            lambda: request(served.server.path, rng.choice(BAD_ARGUMENTS)),
        ]
        for _ in range(120):
            reply = rng.choice(kinds)()
            assert reply is None or reply["ok"] is False, reply
    finally:
        for s in idle:
            s.close()
    assert served.sensor.maps.banned == {} and served.sensor.stop_requested is False
    assert_healthy(served)


# ---------------------------------------------------------------- lab level

@pytest.mark.lab
def test_a_real_sensor_survives_the_garbage(lab_prereqs, test_pin_root, tmp_path):
    from sensor.kernel import abi
    from sensor.lab.network import Lab

    sock = tmp_path / "control.sock"
    pin_dir = test_pin_root / "control" / f"v{abi.ABI_VERSION}"
    with Lab() as lab:
        argv = [sys.executable, "-m", "sensor.cli", "run", "-i", lab.server_if, "--netns", lab.server_ns,
                "--pin-dir", str(pin_dir), "--control-socket", str(sock), "-o", str(tmp_path / "records.json")]
        log = open(tmp_path / "sensor.log", "w")
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while not sock.exists():
                assert proc.poll() is None, (tmp_path / "sensor.log").read_text()
                assert time.monotonic() < deadline, "no control socket within 90 s"
                time.sleep(0.05)
            rng = random.Random(7)
            idle = [connect(sock) for _ in range(MAX_CLIENTS * 2)]
            try:
                for _ in range(40):
                    reply = send_raw(sock, rng.randbytes(rng.randrange(1, 200)))
                    assert reply is None or reply["ok"] is False, reply
                assert send_raw(sock, LEN.pack(0xFFFFFFFF), shut=False)["ok"] is False
                assert send_raw(sock, frame({"cmd": "status"})[:6]) is None
                assert request(sock, ["status"])["ok"] is False
                assert request(sock, {"cmd": "no_such_command"})["ok"] is False
                for req in BAD_ARGUMENTS:
                    reply = request(sock, req)
                    assert reply["ok"] is False and reply["error"].startswith("bad arguments"), (req, reply)
                silent = connect(sock)
                status = subprocess.run([sys.executable, "-m", "sensor.cli", "status", "--control-socket",
                                         str(sock)], cwd=REPO, capture_output=True, text=True, timeout=30)
                silent.close()
            finally:
                for s in idle:
                    s.close()
            assert status.returncode == 0, status.stderr
            result = json.loads(status.stdout)
            assert result["pid"] == proc.pid
            assert [i["interface"] for i in result["interfaces"]] == [lab.server_if]
            assert result["counters"]["ingress"]["drop_ban"] == 0     # no garbage became a ban
            mode = os.stat(sock).st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
            assert proc.poll() is None
            proc.terminate()
            assert proc.wait(timeout=20) == 0
            assert not sock.exists()
            text = (tmp_path / "sensor.log").read_text()
            assert "Traceback" not in text, text[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
