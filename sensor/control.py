"""The control socket: msgpack requests to a running sensor, over a Unix socket.

Wire format, both ways: a 4-byte big-endian length, then a msgpack map.
Request ``{"cmd": NAME, ...arguments}``; reply ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": "one line"}``.  The socket is created mode 0600
(root only).  The server is served from the sensor's own loop, never blocks
it: connections are non-blocking, read incrementally, and a request larger
than ``MAX_REQUEST`` bytes, malformed, or naming an unknown command gets an
error reply and the connection is closed.  A client that stays silent is
dropped after ``IDLE_TIMEOUT`` seconds.

Commands: status, flows, stats, bans, ban_add, ban_del, reload, stop.
"""

from __future__ import annotations

import ipaddress
import os
import selectors
import socket
import struct
import time

import msgpack

from .errors import SensorError

__all__ = ["ControlServer", "ControlClient", "DEFAULT_SOCKET", "MAX_REQUEST", "ControlError", "NotRunning"]

DEFAULT_SOCKET = "/run/smtp-sensor/control.sock"
MAX_REQUEST = 64 * 1024
MAX_CLIENTS = 16
IDLE_TIMEOUT = 5.0
_LEN = struct.Struct(">I")


class ControlError(SensorError):
    """The control socket cannot be reached or answered with an error."""


class NotRunning(ControlError):
    """No sensor listens on the control socket."""


def _frame(obj) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True, default=str)
    return _LEN.pack(len(data)) + data


class _Conn:
    __slots__ = ("sock", "buf", "since", "out")

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.since = time.monotonic()
        self.out = b""


class ControlServer:
    def __init__(self, path, sensor):
        self.path = str(path)
        self.sensor = sensor
        self.requests = 0
        self.refused = 0
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
        self.sock.listen(MAX_CLIENTS)
        self.sock.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)
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
        """Handle whatever is ready now (called from the sensor's loop)."""
        for key, _ in self.sel.select(timeout):
            if key.data is None:
                self._accept()
            else:
                self._read(key.data)
        now = time.monotonic()
        for conn in list(self.conns.values()):
            if now - conn.since > IDLE_TIMEOUT:
                self.refused += 1
                self._drop(conn)

    def _accept(self) -> None:
        try:
            sock, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(self.conns) >= MAX_CLIENTS:
            self.refused += 1
            sock.close()
            return
        sock.setblocking(False)
        conn = _Conn(sock)
        self.conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, conn)

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
            if size > MAX_REQUEST:
                self._reply(conn, {"ok": False, "error": f"request of {size} bytes is larger than {MAX_REQUEST}"})
                return
            if len(conn.buf) >= 4 + size:
                body = bytes(conn.buf[4:4 + size])
                self._reply(conn, self.handle_bytes(body))

    def handle_bytes(self, body: bytes) -> dict:
        self.requests += 1
        try:
            request = msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception as exc:   # msgpack raises several types on garbage
            self.refused += 1
            return {"ok": False, "error": f"malformed request: {type(exc).__name__}"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            self.refused += 1
            return {"ok": False, "error": "a request is a map with a 'cmd' string"}
        handler = getattr(self, "cmd_" + request["cmd"], None)
        if handler is None:
            self.refused += 1
            return {"ok": False, "error": f"unknown command {request['cmd']!r}"}
        args = {k: v for k, v in request.items() if k != "cmd"}
        try:
            return {"ok": True, "result": handler(**args)}
        except TypeError as exc:
            self.refused += 1
            return {"ok": False, "error": f"bad arguments for {request['cmd']}: {exc}"}
        except (SensorError, ValueError, OSError) as exc:
            return {"ok": False, "error": str(exc)}

    def _reply(self, conn: _Conn, reply: dict) -> None:
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(1.0)
            conn.sock.sendall(_frame(reply))
        except OSError:
            pass
        self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        self.conns.pop(conn.sock.fileno(), None)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    # ------------------------------------------------------------ commands
    def cmd_status(self) -> dict:
        return self.sensor.status()

    def cmd_flows(self, limit: int = 1000) -> list:
        out = []
        for sess in self.sensor.pipeline.sessions[: int(limit)]:
            f = sess.flow
            rf = sess.scratch.get("rules")
            out.append({"uid": f.uid, "orig": f"{f.orig_h}:{f.orig_p}", "resp": f"{f.resp_h}:{f.resp_p}",
                        "community_id": f.community_id, "state": sess.conn.state, "helo": sess.conn.helo,
                        "transactions": sess.transactions, "tls": sess.tls,
                        "dropped": bool(rf is not None and rf.dropped),
                        "age": round(f.last_ts - f.start_ts, 3)})
        return out

    def cmd_stats(self, limit: int = 100) -> dict:
        stats = self.sensor.stats
        if stats is None:
            raise SensorError("reject statistics are disabled ([spam_stats] enabled = false)")
        return stats.report(limit=int(limit))

    def cmd_bans(self) -> list:
        return [{"target": e.target, "reason": e.reason.name.lower(), "ttl_left": e.ttl_left(),
                 "packets": e.packets, "bytes": e.bytes} for e in self.sensor.datapath.maps.bans()]

    def cmd_ban_add(self, prefix: str, ttl: float | None = None, reason: str = "manual") -> dict:
        from . import abi
        network = str(ipaddress.ip_network(prefix, strict=False))
        if ttl is not None and float(ttl) <= 0:
            raise SensorError(f"ttl must be positive, got {ttl}")
        self.sensor.datapath.maps.ban(network, ttl=ttl, reason=abi.Reason.MANUAL)
        self.sensor.enforcer.verdicts.add_ban(network, None if not ttl else time.time() + float(ttl))
        rec = {"ts": time.time(), "event_type": "drop", "action": "ban_source", "target": network,
               "reason": "manual", "enforced_by": "kernel"}
        if ttl:
            rec["ttl"] = float(ttl)
        self.sensor.sink(rec)
        return {"banned": network, "ttl": ttl}

    def cmd_ban_del(self, prefix: str) -> dict:
        network = str(ipaddress.ip_network(prefix, strict=False))
        removed = self.sensor.datapath.maps.unban(network)
        self.sensor.enforcer.verdicts.bans.pop(ipaddress.ip_network(network), None)
        if not removed:
            raise SensorError(f"{network} is not banned")
        return {"unbanned": network}

    def cmd_reload(self) -> dict:
        if self.sensor.engine is None:
            raise SensorError("this sensor runs without rules (start it with --rules DIR)")
        changed = self.sensor.reload_rules(force=True)
        rs = self.sensor.engine.ruleset
        return {"changed": changed, "rules": [r.id for r in rs.rules],
                "errors": {str(k): v for k, v in rs.errors.items()}}

    def cmd_stop(self) -> dict:
        self.sensor.stop_requested = True
        return {"stopping": True}


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
                s.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError):
                raise NotRunning(f"no sensor is running (no control socket at {self.path}): "
                                   "start one with smtp-sensor run") from None
            except PermissionError:
                raise ControlError(f"cannot open {self.path}: the control socket is root's (run as root)") from None
            except OSError as exc:
                raise ControlError(f"cannot reach the sensor at {self.path}: {exc.strerror or exc}") from None
            s.sendall(_frame({"cmd": cmd, **{k: v for k, v in args.items() if v is not None}}))
            head = _recv_exact(s, 4)
            (size,) = _LEN.unpack(head)
            reply = msgpack.unpackb(_recv_exact(s, size), raw=False)
        except socket.timeout:
            raise ControlError(f"the sensor did not answer within {self.timeout} s") from None
        finally:
            s.close()
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "the sensor refused the request"))
        return reply.get("result")


def _recv_exact(s, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ControlError("the sensor closed the control connection")
        buf += chunk
    return bytes(buf)
