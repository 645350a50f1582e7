"""Real redis-server processes on loopback for the tests: one server, or a 3-master Cluster.

Used by the fixtures of tests/conftest.py (``redis_server``, ``redis_factory``, ``redis_cluster``,
``redis_sentinel``) and by tests that start or kill servers themselves. A missing
``redis-server``/``redis-cli`` FAILS (``make deps`` installs them), never skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import redis

STARTUP_SECONDS = 15.0


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make deps` (the tests need a real Redis)")
    return path


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, cluster_bus: bool = False) -> int:
    """A free loopback port; with ``cluster_bus`` also port+10000 (the cluster bus) is free."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not cluster_bus:
            return port
        if port + 10000 < 65536 and _port_free(port + 10000):
            return port
    raise RuntimeError("no free loopback port found")


class RedisServer:
    """A redis-server of our own; ``kill()`` is SIGKILL, ``restart()`` reuses port and data dir."""

    def __init__(self, config: dict[str, str] | None = None, *, cluster_bus: bool = False) -> None:
        self.binary = _binary("redis-server")
        self.cluster_bus = cluster_bus
        self.port = free_port(cluster_bus=cluster_bus)
        self.dir = tempfile.mkdtemp(prefix="wf-redis-")
        self.config = {"save": "", "appendonly": "no", **(config or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        """Start (or restart) the server; the first start moves to another port when its port
        was taken after it was picked (by another test process's server, say)."""
        first = self.proc is None
        for _ in range(5):
            if self._start_on_port():
                return
            if not first:
                break
            self.port = free_port(cluster_bus=self.cluster_bus)
        raise RuntimeError(f"redis-server could not get port {self.port}: {self.log()}")

    def _start_on_port(self) -> bool:
        # False when the port is someone else's: our server exited on it, or another server
        # answered there (a ping alone would have taken that server for ours).
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir]
        for key, value in self.config.items():
            args += [f"--{key}", value]
        log = open(os.path.join(self.dir, "redis.log"), "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + STARTUP_SECONDS
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, socket_timeout=1.0)
        try:
            while True:
                if self.proc.poll() is not None:
                    if "Address already in use" in self.log():
                        return False
                    raise RuntimeError(
                        f"redis-server exited with {self.proc.returncode}: {self.log()}"
                    )
                try:
                    # a restarted server answers LOADING while it replays its AOF
                    if client.ping():
                        if int(client.info("server")["process_id"]) == self.proc.pid:
                            return True
                        self.proc.wait(10)  # ours exits: the port was taken
                        return False
                except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {self.port} did not start: {self.log()}")
                time.sleep(0.02)
        finally:
            client.close()

    def log(self) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.dir, "redis.log")) as f:
            return f.read()[-2000:]
        return ""

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync — what a crash looks like."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterProcesses:
    """Three cluster-enabled redis-servers joined into one cluster with ``redis-cli``."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            RedisServer(
                {
                    "cluster-enabled": "yes",
                    "cluster-config-file": "nodes.conf",
                    "cluster-node-timeout": "5000",
                },
                cluster_bus=True,
            )
            for _ in range(masters)
        ]

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = _binary("redis-cli")
        addrs = [f"127.0.0.1:{p}" for p in self.ports]
        subprocess.run(
            [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        for port in self.ports:
            client = redis.Redis(port=port, decode_responses=True)
            try:
                while client.cluster("info").get("cluster_state") != "ok":
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cluster node {port} never reached cluster_state:ok")
                    time.sleep(0.1)
            finally:
                client.close()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
