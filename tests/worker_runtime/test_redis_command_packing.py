"""build_client's connections pack commands with hiredis into the bytes redis-py's own makes.

redis-py's asyncio connections pack every command in Python (~22 us for a script call's ~28
arguments on the worker's hot path); build_client's use hiredis's packer, as redis-py's blocking
client does. These tests hold the two packers to the same bytes and the same errors, and each
URL scheme to its hiredis-packing class.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio
import redis.exceptions

from worker_runtime.brokers.redis import connection, scripts

KEYS = [f"{{wf:emails}}:k{i}".encode() for i in range(15)]

COMMANDS: list[tuple[Any, ...]] = [
    ("PING",),
    ("SET", "k", "v"),
    ("CONFIG GET", "maxmemory-policy"),  # a command name with a space: two arguments
    ("SET", "k", "é ☃ \x00"),
    ("SET", "k", 1.5),
    ("SET", "k", 0.1),
    ("SET", "k", 10**20),
    ("SET", "k", -7),
    ("SET", "k", b"\xff\xfe raw bytes"),
    ("SET", "k", bytearray(b"ba")),
    ("SET", "k", memoryview(b"mv")),
    ("SET", "k", b"x" * 100_000),  # past redis-py's buffer cutoff: sent in chunks there
    ("EVALSHA", scripts.FETCH.sha, len(KEYS), *KEYS, b"worker-1", 25, b"30000", b"\x1e" * 900),
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: str(a[0]))
def test_hiredis_packs_the_bytes_redis_py_packs(args: tuple[Any, ...]) -> None:
    ours = b"".join(connection.HiredisConnection().pack_command(*args))
    theirs = b"".join(bytes(c) for c in redis.asyncio.Connection().pack_command(*args))
    assert ours == theirs


@pytest.mark.parametrize("bad", [True, None, object(), [1, 2]])
def test_a_value_redis_cannot_carry_is_a_data_error_with_either_packer(bad: object) -> None:
    with pytest.raises(redis.exceptions.DataError):
        redis.asyncio.Connection().pack_command("SET", "k", bad)
    with pytest.raises(redis.exceptions.DataError):
        connection.HiredisConnection().pack_command("SET", "k", bad)


@pytest.mark.parametrize(
    ("url", "expected", "settings"),
    [
        ("redis://127.0.0.1:6379/0", connection.HiredisConnection, {"port": 6379, "db": 0}),
        (
            "rediss://127.0.0.1:6380/0?ssl_cert_reqs=none",
            connection.HiredisSSLConnection,
            {"port": 6380, "ssl_cert_reqs": "none"},
        ),
        (
            "unix:///run/redis.sock?db=2",
            connection.HiredisUnixConnection,
            {"path": "/run/redis.sock", "db": 2},
        ),
    ],
)
def test_each_scheme_gets_its_own_connection_class_packing_with_hiredis(
    url: str, expected: type[Any], settings: dict[str, Any]
) -> None:
    pool = connection.build_client(url).connection_pool
    assert pool.connection_class is expected
    # and the URL's settings still reach its connections (TLS, socket path, database)
    assert {k: pool.connection_kwargs.get(k) for k in settings} == settings
    assert pool.connection_kwargs["socket_timeout"] == 5.0
