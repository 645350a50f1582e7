"""Shared fixtures: real Redis, RabbitMQ and ElasticMQ servers on loopback, per session or test.

The servers themselves are helpers in tests/support/ (redis_servers.py, rabbitmq_server.py,
elasticmq.py); this file holds fixtures only.

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

import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster

from tests.support import elasticmq, redis_servers


@pytest.fixture(scope="session")
def redis_server() -> Iterator[redis_servers.RedisServer]:
    server = redis_servers.RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., redis_servers.RedisServer]]:
    """Start extra redis-servers, e.g. ``redis_factory(appendonly="yes", appendfsync="always")``."""
    started: list[redis_servers.RedisServer] = []

    def make(**config: str) -> redis_servers.RedisServer:
        server = redis_servers.RedisServer({k.replace("_", "-"): v for k, v in config.items()})
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
    redis_factory: Callable[..., redis_servers.RedisServer], tmp_path: Any
) -> Iterator[tuple[int, redis_servers.RedisServer]]:
    """A primary and a Sentinel watching it as "mymaster": (sentinel port, primary)."""
    primary = redis_factory()
    sport = redis_servers.free_port()
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
def redis_cluster() -> Iterator[redis_servers.RedisClusterProcesses]:
    cluster = redis_servers.RedisClusterProcesses()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def queue_name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client(
    redis_server: redis_servers.RedisServer,
) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis(port=redis_server.port, decode_responses=True, socket_timeout=10)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def cluster_client(
    redis_cluster: redis_servers.RedisClusterProcesses,
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
