"""Shared Redis fixtures: real redis-server processes on loopback, started and stopped by the tests.

- ``redis_server``: one session-wide redis-server (free 127.0.0.1 port, temp dir, no persistence).
- ``redis_factory``: start extra servers with any config (e.g. ``appendfsync="always"``); each can
  be killed with SIGKILL and restarted in place on the same port and data directory.
- ``redis_cluster``: a session-wide Redis Cluster of 3 masters on loopback ports, joined with
  ``redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes``.
- ``redis_sentinel``: a primary and a Sentinel watching it as ``mymaster`` (sentinel port, primary).
- ``rabbitmq_server`` / ``rabbitmq_factory``: private rabbitmq-servers on loopback (own node name,
  ports and directories; tests/support/rabbitmq_server.py), stopped by the broker's PID.
- ``queue_name``: a unique queue per test, so tests never see each other's keys.
- ``redis_client`` / ``cluster_client``: per-test asyncio clients; ``engine_client`` is
  parametrized over both, so a contract test runs on a single Redis and on the cluster.

A missing ``redis-server``/``redis-cli`` FAILS the run (``make deps`` installs them), never skips.

- ``elasticmq_server``: one session-wide ElasticMQ (SQS-compatible, tests/support/elasticmq.py) on
  free 127.0.0.1 ports, in memory; ``elasticmq_factory`` starts more, optionally persistent, that
  can be killed and restarted on the same ports and data. A missing ElasticMQ FAILS the run.
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
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster

from tests.support import elasticmq

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
                    raise RuntimeError(
                        f"redis-server exited with {self.proc.returncode}: {self.log()}"
                    )
                try:
                    # a restarted server answers LOADING while it replays its AOF
                    if client.ping():
                        return
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


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start extra redis-servers, e.g. ``redis_factory(appendonly="yes", appendfsync="always")``."""
    started: list[RedisServer] = []

    def make(**config: str) -> RedisServer:
        server = RedisServer({k.replace("_", "-"): v for k, v in config.items()})
        started.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in started:
            server.close()


@pytest.fixture
def redis_sentinel(
    redis_factory: Callable[..., RedisServer], tmp_path: Any
) -> Iterator[tuple[int, RedisServer]]:
    """A primary and a Sentinel watching it as "mymaster": (sentinel port, primary)."""
    primary = redis_factory()
    sport = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sport}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {primary.port} 1\n"
    )
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed (make deps)"
    proc = subprocess.Popen(
        [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        probe = redis.Redis(port=sport, decode_responses=True, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if probe.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"):
                    break
            except redis.exceptions.ConnectionError:
                pass
            assert time.monotonic() < deadline, "sentinel did not come up"
            time.sleep(0.05)
        probe.close()
        yield sport, primary
    finally:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcesses]:
    cluster = RedisClusterProcesses()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def queue_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis(port=redis_server.port, decode_responses=True, socket_timeout=10)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def cluster_client(
    redis_cluster: RedisClusterProcesses,
) -> AsyncIterator[redis.asyncio.cluster.RedisCluster]:
    client = redis.asyncio.cluster.RedisCluster(
        host="127.0.0.1", port=redis_cluster.ports[0], decode_responses=True, socket_timeout=10
    )
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(params=["redis", "cluster"])
def engine_client(request: pytest.FixtureRequest) -> Any:
    """The same test on a single Redis and on a 3-master Redis Cluster."""
    name = "redis_client" if request.param == "redis" else "cluster_client"
    return request.getfixturevalue(name)


@pytest.fixture(scope="session")
def elasticmq_server() -> Iterator[elasticmq.ElasticMQServer]:
    """One in-memory ElasticMQ for the session (each test uses its own queue names)."""
    server = elasticmq.ElasticMQServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def elasticmq_factory() -> Iterator[Callable[..., elasticmq.ElasticMQServer]]:
    """Start extra ElasticMQ servers (``persistent=True`` keeps queues across a restart)."""
    servers: list[elasticmq.ElasticMQServer] = []

    def start(*, persistent: bool = False) -> elasticmq.ElasticMQServer:
        server = elasticmq.ElasticMQServer(persistent=persistent)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.close()


# -- RabbitMQ: private brokers on loopback (tests/support/rabbitmq_server.py) --------------------


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[Any]:
    """One session-wide private rabbitmq-server (own node name, ports, dirs); FAILS if missing."""
    from tests.support import rabbitmq_server as rabbitmq_support

    server = rabbitmq_support.RabbitMQServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def rabbitmq_factory() -> Iterator[Callable[[], Any]]:
    """Start extra private rabbitmq-servers (each may be killed and restarted in place)."""
    from tests.support import rabbitmq_server as rabbitmq_support

    servers: list[rabbitmq_support.RabbitMQServer] = []

    def start() -> rabbitmq_support.RabbitMQServer:
        server = rabbitmq_support.RabbitMQServer()
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.close()
