"""A real redis-server for the tests: on 127.0.0.1, a free port, a temporary
folder, no persistence; stopped on every exit path (a context manager, and
``stop`` is idempotent).  Missing redis-server: the test skips on a developer
machine and FAILS under CI=true (``support.prereqs.missing``).

    with RedisServer() as server:
        client = server.client()            # redis.Redis on it
        server.url                          # redis://127.0.0.1:PORT/0
        server.stop(); server.start()       # an outage and the return (same port)
    RedisServer(cluster=True)               # a Redis Cluster of one node (every slot)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from support.prereqs import missing

__all__ = ["RedisServer", "require_redis_server"]


def require_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        missing("redis-server (Debian's redis-server package, installed by ./run setup)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, password: str | None = None, cluster: bool = False):
        self.binary = require_redis_server()
        self.password = password
        #: a Redis Cluster of this one node, holding every slot (for redis.cluster.RedisCluster)
        self.cluster = cluster
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ss-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        argv = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
                "--logfile", str(self.dir / "redis.log")]
        if self.password:
            argv += ["--requirepass", self.password]
        if self.cluster:
            # the bus port: its own free one (the default, port + 10000, may not exist)
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.dir / "nodes.conf"),
                     "--cluster-port", str(_free_port())]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited ({self.proc.returncode}): {self.proc.stderr.read()!r} "
                                   f"{(self.dir / 'redis.log').read_text(errors='replace')[-2000:]}")
            try:
                client = self.client(timeout=0.5)
                if client.ping() and (not self.cluster or self._cluster_ok(client)):
                    return self
            except Exception:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout} s")

    @staticmethod
    def _cluster_ok(client) -> bool:
        if b"cluster_slots_assigned:0" in client.execute_command("CLUSTER", "INFO"):
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        return b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")

    def client(self, timeout: float = 2.0):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           socket_timeout=timeout, socket_connect_timeout=timeout)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); its folder stays until close()."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()
