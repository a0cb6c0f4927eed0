"""Ask every worker the same control request at once, over their own
control sockets (sensor.service.control's wire format), without blocking
the supervisor: while the answers come, ``pump`` keeps the workers' record
pipes read (a worker blocked writing its records would not answer).
"""

from __future__ import annotations

import selectors
import socket
import struct
import time

import msgpack

__all__ = ["ask_all", "WorkerUnanswered"]

_LEN = struct.Struct(">I")


class WorkerUnanswered(Exception):
    """A worker did not answer (dead, restarting, too slow)."""


class _Pending:
    __slots__ = ("sock", "buf", "parts", "reply")

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.parts: list = []
        self.reply = None

    def feed(self, data: bytes) -> bool:
        """True once the last frame is in."""
        self.buf += data
        while len(self.buf) >= 4:
            (size,) = _LEN.unpack_from(self.buf)
            if len(self.buf) < 4 + size:
                return False
            frame = msgpack.unpackb(bytes(self.buf[4:4 + size]), raw=False)
            del self.buf[:4 + size]
            if isinstance(frame, dict) and frame.get("more"):
                self.parts += frame.get("result") or []
                continue
            if isinstance(frame, dict) and self.parts and isinstance(frame.get("result"), list):
                frame["result"] = self.parts + frame["result"]
            self.reply = frame
            return True
        return False


def ask_all(paths: dict[int, str], requests: dict[int, dict], pump=None, timeout: float = 5.0) -> dict:
    """{worker: reply} for {worker: request} (each reply the worker's
    ``{"ok": ..., "result"/"error": ...}``; a WorkerUnanswered for a worker
    that did not answer within ``timeout``)."""
    out: dict = {}
    sel = selectors.DefaultSelector()
    pending: dict[int, _Pending] = {}
    try:
        for worker, request in requests.items():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(0.5)
            try:
                sock.connect(paths[worker])
                data = msgpack.packb(request, use_bin_type=True)
                sock.sendall(_LEN.pack(len(data)) + data)
            except (OSError, KeyError) as exc:
                sock.close()
                out[worker] = WorkerUnanswered(f"worker {worker}: {exc}")
                continue
            sock.setblocking(False)
            pending[worker] = _Pending(sock)
            sel.register(sock, selectors.EVENT_READ, worker)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(0.01):
                worker = key.data
                state = pending[worker]
                try:
                    data = state.sock.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    data, out[worker] = b"", WorkerUnanswered(f"worker {worker}: {exc}")
                try:
                    done = bool(data) and state.feed(data)
                except Exception as exc:  # noqa: BLE001 - msgpack raises several types
                    done, out[worker] = False, WorkerUnanswered(f"worker {worker}: bad reply ({exc})")
                if done or not data or worker in out:
                    if done:
                        out[worker] = state.reply
                    out.setdefault(worker, WorkerUnanswered(f"worker {worker} closed the connection"))
                    sel.unregister(state.sock)
                    state.sock.close()
                    del pending[worker]
            if pump is not None:
                pump()
        for worker, state in pending.items():
            out[worker] = WorkerUnanswered(f"worker {worker} did not answer within {timeout} s")
            state.sock.close()
    finally:
        sel.close()
    return out
