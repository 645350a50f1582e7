"""The shared Redis fixtures themselves: a missing binary fails, servers restart in place."""

from __future__ import annotations

import pytest
import redis

from tests.support import redis_servers


def test_a_missing_redis_binary_fails_the_run_instead_of_skipping() -> None:
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        redis_servers._binary("redis-server-that-does-not-exist")


def test_a_killed_server_restarts_on_the_same_port_with_its_aof(redis_factory: object) -> None:
    server = redis_factory(appendonly="yes", appendfsync="always")  # type: ignore[operator]
    client = redis.Redis(port=server.port)
    client.set("k", "v")
    client.close()
    server.kill()
    server.start()
    client = redis.Redis(port=server.port)
    assert client.get("k") == b"v"
    client.close()


def test_the_cluster_has_three_masters_covering_every_slot(
    redis_cluster: redis_servers.RedisClusterProcesses,
) -> None:
    client = redis.Redis(port=redis_cluster.ports[0], decode_responses=True)
    info = client.cluster("info")
    masters = [n for n in client.cluster("nodes").values() if "master" in n["flags"]]
    client.close()
    assert info["cluster_state"] == "ok"
    assert int(info["cluster_slots_assigned"]) == 16384
    assert len(masters) == 3
