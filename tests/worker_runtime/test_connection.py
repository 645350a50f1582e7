"""Redis URLs: TLS (rediss://), ACL users with no dangerous commands, Sentinel, reconnects."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from tests.support import engine as es
from tests.support.redis_servers import RedisServer, free_port
from worker_runtime import producer
from worker_runtime.brokers.redis import connection, stats

LOCAL = (("127.0.0.1", 6379),)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", ("single", False, LOCAL, None, None, 0)),
        ("rediss://app:pw@r.example/2", ("single", True, (("r.example", 6379),), "app", "pw", 2)),
        ("redis://:s%40cret@[::1]:7000", ("single", False, (("::1", 7000),), None, "s@cret", 0)),
        ("unix:///run/redis.sock?db=3", ("unix", False, (), None, None, 3)),
        (
            "redis+sentinel://app:s%40cret@h1:26379,h2:26380/mymaster/2",
            ("sentinel", False, (("h1", 26379), ("h2", 26380)), "app", "s@cret", 2),
        ),
        ("rediss+sentinel://h/m", ("sentinel", True, (("h", 26379),), None, None, 0)),
        ("redis+cluster://127.0.0.1", ("cluster", False, LOCAL, None, None, 0)),
    ],
)  # fmt: skip
def test_one_parser_reads_every_supported_redis_url_form(
    url: str, expected: tuple[Any, ...]
) -> None:
    parsed = connection.parse_redis_url(url)
    got = (parsed.kind, parsed.tls, parsed.hosts, parsed.username, parsed.password, parsed.db)
    assert got == expected
    if parsed.kind == "sentinel":
        assert parsed.service_name in ("mymaster", "m")


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sentinel://h1:26379/mymaster", "redis+sentinel://"),  # the name the docs once used
        ("http://user:s3cret@host:1/0", "scheme"),
        ("s3cret-not-a-url", "scheme"),
        ("redis://", "no host"),
        ("redis://user:s3cret@host:notaport/0", "port"),
        ("redis://user:s3cret@host:6379/x", "database"),
        ("redis+sentinel://user:s3cret@h1:1,h2:x/m", "port"),
        ("redis+sentinel://user:s3cret@h1:1,h2:2", "service name"),
        ("redis+sentinel://user:s3cret@h1:1,,h2:2/m", "host"),
        ("redis+cluster://user:s3cret@h1:1,h2:2", "one seed"),
        ("unix://", "socket path"),
    ],
)
def test_unusable_redis_urls_are_refused_with_a_reason_and_never_echoed(
    url: str, words: str
) -> None:
    with pytest.raises(connection.InvalidRedisURL) as caught:
        connection.parse_redis_url(url)
    assert words in str(caught.value)
    assert "s3cret" not in str(caught.value)
    # and the clients refuse them the same way
    with pytest.raises(connection.InvalidRedisURL):
        connection.build_client(url)


def test_an_unknown_url_scheme_is_refused() -> None:
    with pytest.raises(ValueError):
        connection.build_client("http://127.0.0.1:6379")


async def test_a_restricted_acl_user_runs_the_whole_engine_on_its_own_keys_only(
    redis_factory: Any, queue_name: str
) -> None:
    # Given an ACL user without dangerous commands (CONFIG, FLUSHALL, KEYS, ...) and with access
    # to its queue's keys only
    server = redis_factory()
    admin = redis.Redis(port=server.port, decode_responses=True)
    admin.execute_command(
        "ACL",
        "SETUSER",
        "app",
        "on",
        ">s3cret",
        "resetkeys",
        "~{wf:" + queue_name + "}:*",
        "+@all",
        "-@dangerous",
    )
    admin.close()
    client = connection.build_client(f"redis://app:s3cret@127.0.0.1:{server.port}/0")
    # When it enqueues, fetches, retries, dead-letters, acks and reads stats
    engine = es.make_engine(client, queue_name)
    await engine.enqueue_many([es.request(idempotency_key="k"), es.request(), es.request()])
    a, b, c = await engine.fetch("w", 3)
    assert await engine.ack(a, done_key="d")
    assert await engine.retry(b, es.failure(), delay_seconds=0)
    assert await engine.dead_letter(c, "non_retryable", failure=es.failure())
    s = await stats.fetch_queue_stats(client, queue_name)
    # Then everything worked, and other keys are out of its reach
    assert (s.completed_total, s.retried_total, s.dead_letter) == (1, 1, 1)
    with pytest.raises(redis.exceptions.NoPermissionError):
        await client.get("someone-else")
    with pytest.raises(redis.exceptions.NoPermissionError):
        await client.keys("*")
    await client.aclose()


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS-only redis-server with a self-signed certificate: (port, CA file)."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is needed to make a test certificate"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server is not installed (make deps)"
    proc = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
            "--save",
            "",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port, cert
    finally:
        proc.kill()
        proc.wait(10)


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.05)


async def test_rediss_urls_talk_tls(tls_server: tuple[int, Path], queue_name: str) -> None:
    # Given a TLS-only redis-server
    port, cert = tls_server
    client = connection.build_client(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}")
    # When a producer enqueues over TLS and stats are read over TLS
    await producer.Producer(client, queue_name).enqueue("t", {"x": 1})
    s = await stats.fetch_queue_stats(client, queue_name)
    # Then it worked end to end
    assert s.backlog == 1
    await client.aclose()


async def test_a_sentinel_url_finds_the_primary(
    redis_sentinel: tuple[int, RedisServer], queue_name: str
) -> None:
    # Given a Sentinel watching a primary
    sport, primary = redis_sentinel
    # When a client connects through the Sentinel URL and enqueues
    client = connection.build_client(f"redis+sentinel://127.0.0.1:{sport}/mymaster")
    await producer.Producer(client, queue_name).enqueue("t", {"x": 1})
    await client.aclose()
    # Then the job landed on the primary
    direct = redis.asyncio.Redis(port=primary.port, decode_responses=True)
    assert (await stats.fetch_queue_stats(direct, queue_name)).backlog == 1
    await direct.aclose()


async def test_a_sentinel_url_whose_first_sentinel_is_down_asks_the_next_one_at_once(
    redis_sentinel: tuple[int, RedisServer], queue_name: str
) -> None:
    # Given a multi-host Sentinel URL whose first Sentinel does not answer
    sport, _primary = redis_sentinel
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{sport}/mymaster"
    client = connection.build_client(url, socket_timeout=2.0)
    try:
        # When a caller with a 2 s deadline (the operator's stats read) enqueues and reads
        async with asyncio.timeout(2.0):
            await producer.Producer(client, queue_name).enqueue("t", {"x": 1})
            s = await stats.fetch_queue_stats(client, queue_name)
    finally:
        await client.aclose()
    # Then the second Sentinel named the primary in time (redis-py's default re-sends to the
    # dead one took ~7 s)
    assert s.backlog == 1


async def test_a_killed_connection_is_reestablished_by_the_next_call(
    redis_server: RedisServer, queue_name: str
) -> None:
    # Given a client built from a URL, in use
    client = connection.build_client(redis_server.url)
    engine = es.make_engine(client, queue_name)
    await engine.enqueue(es.request())
    # When the server kills every normal client connection
    admin = redis.Redis(port=redis_server.port)
    killed = admin.client_kill_filter(_type="normal", skipme=True)
    admin.close()
    # Then the next engine call reconnects and succeeds
    jobs = await engine.fetch("w", 1)
    assert killed >= 1 and len(jobs) == 1
    await client.aclose()
