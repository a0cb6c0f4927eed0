"""The control socket: msgpack requests to a running sensor, over a Unix socket.

Wire format, both ways: a 4-byte big-endian length, then a msgpack map.
Request ``{"cmd": NAME, ...arguments}``; reply ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": "one line"}``.  The socket is created mode 0600
(root only).  The server is served from the sensor's own loop, never blocks
it: connections are non-blocking, read incrementally, and a request larger
than ``MAX_REQUEST`` bytes, malformed, naming an unknown command or giving
arguments of the wrong type gets an error reply and the connection is closed.
Replies are written without blocking (a client that does not read its reply
cannot stall the loop); a client that does not finish its request, or does
not take its reply, within ``IDLE_TIMEOUT`` seconds is dropped.  At most
``MAX_CLIENTS`` connections are served at once; the next ones wait in the
listen queue (``LISTEN_BACKLOG``), accepted as connections end, so a burst of
clients is answered, not reset.  A connection that has sent no whole request
for ``EVICT_AFTER`` seconds gives its place to one waiting in the queue (idle
connections cannot lock the operator out).  No request, however malformed,
and no command's failure can raise into the sensor's loop.

A long answer (``flows``: up to every open flow, 100 000 or more) is
streamed: the command returns a generator of row chunks, each made in its
own turn of the loop once the previous one is written, so the loop (and
every other client) goes on meanwhile.  On the wire: reply frames with
``"more": true`` whose ``result`` lists are concatenated, up to the last
frame, without ``more``.  A failure while streaming ends it with an error frame.

Commands: status, flows, stats, bans, ban_add, ban_del, reload, stop.  The
server is transport: bans and unbans go through the sensor's enforcer, their
``drop`` records through ``sensor.records.drop``.
"""

from __future__ import annotations

import errno
import inspect
import ipaddress
import math
import os
import selectors
import socket
import struct
import time

import msgpack

from sensor.counters import Counters, counter
from sensor.errors import SensorError
from sensor.kernel import abi
from sensor.records import drop

__all__ = ["ControlServer", "ControlCounters", "ControlClient", "DEFAULT_SOCKET", "MAX_REQUEST", "ControlError",
           "NotRunning", "ControlUsageError", "BadArgument", "check_prefix", "check_ttl"]

DEFAULT_SOCKET = "/run/smtp-sensor/control.sock"
MAX_REQUEST = 64 * 1024
MAX_CLIENTS = 16
IDLE_TIMEOUT = 5.0
#: seconds without a whole request after which a connection makes room for a waiting one
EVICT_AFTER = 0.5
#: rows of a streamed answer made in one turn of the loop
STREAM_CHUNK = 500
#: longest TTL a ban takes (the kernel's deadline is a u64 of nanoseconds)
MAX_TTL = 10 * 365 * 86400.0
_ACCEPT_BATCH = 64
LISTEN_BACKLOG = 128
_LEN = struct.Struct(">I")


class ControlError(SensorError):
    """The control socket cannot be reached or answered with an error."""

    exit_code = 1


class NotRunning(ControlError):
    """No sensor listens on the control socket."""

    exit_code = 2


class ControlUsageError(ControlError):
    """The request was refused as malformed (the caller's mistake)."""

    exit_code = 2


class BadArgument(SensorError):
    """An argument of a control request has the wrong type or value."""


def check_prefix(prefix) -> str:
    """The network of an address or prefix, as text; BadArgument otherwise."""
    if not isinstance(prefix, str):
        raise BadArgument(f"prefix must be a string such as 198.51.100.0/24, got {type(prefix).__name__}")
    try:
        return str(ipaddress.ip_network(prefix.strip(), strict=False))
    except ValueError:
        raise BadArgument(f"not an address or prefix: {prefix!r} (e.g. 198.51.100.7, 198.51.100.0/24, "
                          "2001:db8::/48)") from None


def check_ttl(ttl) -> float | None:
    """A ban's TTL: None (no expiry) or a finite number of seconds > 0."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise BadArgument(f"ttl must be a number of seconds, got {type(ttl).__name__}")
    if not math.isfinite(ttl) or not 0 < ttl <= MAX_TTL:
        raise BadArgument(f"ttl must be more than 0 and at most {MAX_TTL:.0f} seconds, got {ttl}")
    return float(ttl)


def _limit(limit) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise BadArgument(f"limit must be a whole number of at least 1, got {limit!r}")
    return limit


def _frame(obj) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True, default=str)
    return _LEN.pack(len(data)) + data


class _Conn:
    __slots__ = ("sock", "fd", "buf", "since", "out", "stream", "cmd")

    def __init__(self, sock):
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = bytearray()
        self.since = time.monotonic()
        self.out = None          # the reply being written (a memoryview), once there is one
        self.stream = None       # the chunks of a streamed answer still to come (a generator)
        self.cmd = None          # the command being answered


class ControlCounters(Counters):
    METRIC_PREFIX = "control_"
    requests = counter("control socket requests")
    refused = counter("control socket requests or connections refused")
    errors = counter("control commands that raised something unexpected (logged)")
    bans_added = counter("source bans asked for, by who asked", metric="bans", labels={"by": "manual"})


class ControlServer:
    #: the largest request body taken, in bytes
    max_request = MAX_REQUEST

    def __init__(self, path, sensor):
        self.path = str(path)
        self.sensor = sensor
        self.counters = ControlCounters()
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        if os.path.exists(self.path):
            if _alive(self.path):
                raise SensorError(f"another sensor answers on {self.path}: stop it first "
                                  "(smtp-sensor unload) or give --control-socket another path")
            os.unlink(self.path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.sock.listen(LISTEN_BACKLOG)
        self.sock.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        self._accepting = True      # False while MAX_CLIENTS are served: the rest wait in the queue
        self.conns: dict = {}

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._drop(conn)
        self.sel.close()
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------ serving
    def serve_pending(self, timeout: float = 0.0) -> None:
        """Handle whatever is ready now (called from the sensor's loop; never raises
        for anything a client did)."""
        more = []
        for key, events in self.sel.select(timeout):
            if key.data is None:
                self._accept()
            elif events & selectors.EVENT_WRITE:
                if self._write(key.data):
                    more.append(key.data)
            else:
                self._read(key.data)
        for conn in more:             # one chunk each per turn, whatever else waits
            if self.conns.get(conn.fd) is conn:
                self._next_chunk(conn)
        now = time.monotonic()
        for conn in list(self.conns.values()):
            if now - conn.since > IDLE_TIMEOUT:
                self.counters.refused += 1
                self._drop(conn)
        if not self._accepting and self._evict_stalled(now):
            self._accept()

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            if len(self.conns) >= MAX_CLIENTS and not self._evict_stalled(time.monotonic()):
                self._pause_accepting()      # the next clients wait in the listen queue
                return
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE/ENFILE (out of descriptors) or ECONNABORTED: try next turn
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED, errno.ENOBUFS, errno.ENOMEM):
                    self.counters.errors += 1
                return
            sock.setblocking(False)
            conn = _Conn(sock)
            self.conns[conn.fd] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _evict_stalled(self, now: float) -> bool:
        """Make room: drop the oldest connection that has waited EVICT_AFTER
        seconds without sending a whole request.  True if there is room now."""
        if len(self.conns) < MAX_CLIENTS:
            return True
        waiting = [c for c in self.conns.values() if c.out is None and c.stream is None
                   and now - c.since >= EVICT_AFTER]
        if not waiting:
            return False
        self.counters.refused += 1
        self._drop(min(waiting, key=lambda c: c.since))
        return True

    def _pause_accepting(self) -> None:
        if self._accepting:
            self.sel.unregister(self.sock)
            self._accepting = False

    def _resume_accepting(self) -> None:
        if not self._accepting:
            self.sel.register(self.sock, selectors.EVENT_READ, None)
            self._accepting = True

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            self._drop(conn)
            return
        conn.buf += data
        if len(conn.buf) >= 4:
            (size,) = _LEN.unpack_from(conn.buf)
            if size > self.max_request:
                self.counters.requests += 1
                self.counters.refused += 1
                self._reply(conn, {"ok": False,
                                   "error": f"request of {size} bytes is larger than {self.max_request}"})
                return
            if len(conn.buf) >= 4 + size:
                body = bytes(conn.buf[4:4 + size])
                conn.buf = bytearray()
                reply = self.handle_bytes(body)
                stream = reply.pop("stream", None)
                if stream is None:
                    self._reply(conn, reply)
                else:
                    conn.stream, conn.cmd = stream, reply.get("cmd")
                    self._next_chunk(conn)

    def handle_bytes(self, body: bytes) -> dict:
        """The reply to one request's msgpack body (never raises)."""
        self.counters.requests += 1
        try:
            request = msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception as exc:   # msgpack raises several types on garbage
            self.counters.refused += 1
            return {"ok": False, "error": f"malformed request: {type(exc).__name__}", "usage": True}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            self.counters.refused += 1
            return {"ok": False, "error": "a request is a map with a 'cmd' string", "usage": True}
        name = request["cmd"]
        handler = getattr(self, "cmd_" + name, None) if name.isidentifier() else None
        if handler is None:
            self.counters.refused += 1
            return {"ok": False, "error": f"unknown command {name[:64]!r}", "usage": True}
        args = {k: v for k, v in request.items() if k != "cmd"}
        if not all(isinstance(k, str) and k.isidentifier() for k in args):
            self.counters.refused += 1
            return {"ok": False, "error": f"bad arguments for {name}: names must be identifiers", "usage": True}
        try:
            inspect.signature(handler).bind(**args)
        except TypeError as exc:
            self.counters.refused += 1
            return {"ok": False, "error": f"bad arguments for {name}: {exc}", "usage": True}
        try:
            result = handler(**args)
            if inspect.isgenerator(result):
                return {"ok": True, "stream": result, "cmd": name}
            return {"ok": True, "result": result}
        except BadArgument as exc:
            self.counters.refused += 1
            return {"ok": False, "error": f"bad arguments for {name}: {exc}", "usage": True}
        except (SensorError, ValueError, OSError) as exc:
            return {"ok": False, "error": str(exc) or type(exc).__name__}
        except Exception as exc:  # noqa: BLE001 - a command's bug must not end the sensor
            self.counters.errors += 1
            _log().error("control command failed", cmd=name, error=f"{type(exc).__name__}: {exc}")
            return {"ok": False, "error": f"{name} failed: {type(exc).__name__}: {exc}"}

    def _next_chunk(self, conn: _Conn) -> None:
        """The next frame of a streamed answer (the last one without ``more``)."""
        try:
            chunk = next(conn.stream)
        except StopIteration:
            conn.stream = None
            self._reply(conn, {"ok": True, "result": []})
            return
        except Exception as exc:  # noqa: BLE001 - a command's bug must not end the sensor
            conn.stream = None
            self.counters.errors += 1
            _log().error("control command failed", cmd=conn.cmd, error=f"{type(exc).__name__}: {exc}")
            self._reply(conn, {"ok": False, "error": f"{conn.cmd} failed: {type(exc).__name__}: {exc}"})
            return
        self._reply(conn, {"ok": True, "result": chunk, "more": True})

    def _reply(self, conn: _Conn, reply: dict) -> None:
        """Start writing the reply; the rest goes out as the client reads it."""
        try:
            data = _frame(reply)
        except Exception as exc:  # noqa: BLE001 - e.g. an integer msgpack cannot hold
            self.counters.errors += 1
            data = _frame({"ok": False, "error": f"the reply could not be encoded: {type(exc).__name__}"})
        conn.out = memoryview(data)
        conn.since = time.monotonic()   # IDLE_TIMEOUT now bounds the reply's writing
        try:
            self.sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        except (KeyError, ValueError, OSError):
            self._drop(conn)
            return
        self._write(conn)

    def _write(self, conn: _Conn) -> bool:
        """Send what the client takes; True when a streamed answer's frame is
        all sent and the next chunk is due."""
        if conn.out is None:
            if conn.stream is not None:
                return True
            self._drop(conn)
            return False
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self._drop(conn)
            return False
        conn.out = conn.out[sent:]
        if conn.out:
            return False
        if conn.stream is not None:
            conn.out = None
            return True
        self._drop(conn)
        return False

    def _drop(self, conn: _Conn) -> None:
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        if conn.stream is not None:
            conn.stream.close()
            conn.stream = None
        if len(self.conns) < MAX_CLIENTS:
            self._resume_accepting()

    # ------------------------------------------------------------ commands
    def cmd_status(self) -> dict:
        return self.sensor.status()

    def cmd_flows(self, limit: int = 1000):
        """The open flows, oldest first, streamed in chunks of STREAM_CHUNK rows
        (each described when its chunk is made)."""
        sessions = self.sensor.pipeline.sessions[: _limit(limit)]
        return (list(map(_flow_row, sessions[i:i + STREAM_CHUNK])) for i in range(0, len(sessions), STREAM_CHUNK))

    def cmd_stats(self, limit: int = 100) -> dict:
        stats = self.sensor.reject_stats
        if stats is None:
            raise SensorError("reject statistics are disabled ([spam_stats] enabled = false)")
        return stats.report(limit=_limit(limit))

    def cmd_bans(self) -> list:
        out = []
        for e, note in self.sensor.enforcer.bans():
            row = {"target": e.target, "reason": e.reason.name.lower(), "ttl_left": e.ttl_left(),
                   "packets": e.packets, "bytes": e.bytes}
            if note:
                row["note"] = note
            out.append(row)
        return out

    def cmd_ban_add(self, prefix: str, ttl: float | None = None, reason: str | None = None) -> dict:
        """Ban a prefix in XDP; ``reason``: the operator's words, kept with the
        ban (``ban list``: note) and in the drop record."""
        network = check_prefix(prefix)
        ttl = check_ttl(ttl)
        if reason is not None and (not isinstance(reason, str) or len(reason) > 200):
            raise BadArgument("reason must be a string of at most 200 characters")
        enforcer, now = self.sensor.enforcer, time.time()
        enforcer.ban(network, ttl, now, abi.Reason.MANUAL, note=reason)
        self.counters.bans_added += 1
        self.sensor.sink(drop.drop_record(now, drop.BAN_SOURCE, network, drop.MANUAL, enforcer.mode,
                                          ttl=ttl, note=reason))
        return {"banned": network, "ttl": ttl, **({"note": reason} if reason else {})}

    def cmd_ban_del(self, prefix: str) -> dict:
        network = check_prefix(prefix)
        enforcer = self.sensor.enforcer
        if not enforcer.unban(network):
            raise SensorError(f"{network} is not banned")
        self.sensor.sink(drop.drop_record(time.time(), drop.UNBAN_SOURCE, network, drop.MANUAL,
                                          enforcer.mode))
        return {"unbanned": network}

    def cmd_reload(self) -> dict:
        """The configuration (what changed, applied live; a key that needs a
        restart refuses it, one line) and the rules, as SIGHUP does."""
        result = self.sensor.reload()
        if result["config_error"]:
            raise SensorError(result["config_error"])
        out = {"config_changed": result["config_changed"]}
        if self.sensor.engine is not None:
            rs = self.sensor.engine.ruleset
            out.update(changed=result["rules_changed"], rules=[r.id for r in rs.rules],
                       errors={str(k): v for k, v in rs.errors.items()})
        return out

    def cmd_stop(self) -> dict:
        self.sensor.request_stop()
        return {"stopping": True}


def _flow_row(sess) -> dict:
    f = sess.flow
    rf = sess.scratch.get("rules")
    return {"uid": f.uid, "orig": f"{f.orig_h}:{f.orig_p}", "resp": f"{f.resp_h}:{f.resp_p}",
            "community_id": f.community_id, "state": sess.conn.state, "helo": sess.conn.helo,
            "transactions": sess.transactions, "tls": sess.tls,
            "dropped": bool(rf is not None and rf.dropped),
            "age": round(f.last_ts - f.start_ts, 3)}


def _log():
    import structlog
    return structlog.get_logger("sensor.service.control")


def _alive(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class ControlClient:
    def __init__(self, path: str = DEFAULT_SOCKET, timeout: float = 10.0):
        self.path = str(path)
        self.timeout = timeout

    def call(self, cmd: str, **args):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            try:
                _connect(s, self.path, self.timeout)
            except (FileNotFoundError, ConnectionRefusedError):
                raise NotRunning(f"no sensor is running (no control socket at {self.path}): "
                                   "start one with smtp-sensor run") from None
            except PermissionError:
                raise ControlUsageError(f"cannot open {self.path}: the control socket is root's (run as root)") \
                    from None
            except OSError as exc:
                raise ControlError(f"cannot reach the sensor at {self.path}: {exc.strerror or exc}") from None
            s.sendall(_frame({"cmd": cmd, **{k: v for k, v in args.items() if v is not None}}))
            streamed = []
            while True:
                reply = self._reply(s)
                if not reply.get("more"):
                    break
                part = reply.get("result")
                if not isinstance(part, list):
                    raise ControlError(f"the sensor's reply on {self.path} streams something other than a list")
                streamed += part
        except ControlError:
            raise
        except socket.timeout:
            raise ControlError(f"the sensor did not answer within {self.timeout} s") from None
        except OSError as exc:
            raise ControlError(f"the control connection to {self.path} failed: {exc.strerror or exc}") from None
        finally:
            s.close()
        if not reply.get("ok"):
            error = ControlUsageError if reply.get("usage") else ControlError
            raise error(str(reply.get("error", "the sensor refused the request")))
        result = reply.get("result")
        return streamed + result if streamed and isinstance(result, list) else result

    def _reply(self, s) -> dict:
        """One reply frame, decoded (``timeout`` bounds each frame's wait)."""
        (size,) = _LEN.unpack(_recv_exact(s, 4))
        body = _recv_exact(s, size)
        try:
            reply = msgpack.unpackb(body, raw=False)
        except Exception:  # noqa: BLE001 - msgpack raises several types
            reply = None
        if not isinstance(reply, dict):
            raise ControlError(f"the sensor's reply on {self.path} is not a msgpack map")
        return reply


def _connect(s, path: str, timeout: float) -> None:
    """connect(), waiting while the listen queue is full (a Unix socket with
    a timeout fails at once with EAGAIN then, instead of waiting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            s.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise socket.timeout() from None
            time.sleep(0.01)


def _recv_exact(s, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ControlError("the sensor closed the control connection")
        buf += chunk
    return bytes(buf)
