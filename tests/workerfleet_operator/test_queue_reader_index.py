"""The queue reader finds a rotated Secret's old clients without scanning every pool's.

Found by profiling the operator while 2,000 pools converged on the real API server (py-spy):
each pool's first read looked for rotated versions of its Secret by comparing the key of every
client and probe the reader held, so the work grew with the square of the pools (7% of the
operator's CPU at 2,000; 10,000 pools on one Secret: some 50 million comparisons). The reader
now keeps the versions per Secret and the queues per version.
"""

from __future__ import annotations

import asyncio

import pytest
from workerfleet_operator.shell import kube, queue

from tests.support import redis_servers


def _version(url: str, secret: str, version: str) -> tuple[queue.ClientKey, kube.SecretValue]:
    """Version ``version`` of Secret ``secret`` (namespace "ns", key "url"), holding ``url``."""
    value = kube.SecretValue(resource_version=version, value=url, uid=f"uid-{secret}")
    return queue.ClientKey("ns", secret, "url", version), value


def _count_key_comparisons(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    compare = queue.ClientKey.__eq__

    def counting(self: queue.ClientKey, other: object) -> bool:
        calls[0] += 1
        return compare(self, other)  # type: ignore[no-any-return]

    monkeypatch.setattr(queue.ClientKey, "__eq__", counting)
    return calls


async def test_first_reads_of_many_pools_on_one_secret_compare_keys_linearly(
    redis_server: redis_servers.RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 400 pools whose queues live behind one Secret version, and a count of the
    # comparisons of client keys the reader makes
    key, secret = _version(redis_server.url, "redis", "1")
    calls = _count_key_comparisons(monkeypatch)
    reader = queue.QueueReader(socket_timeout=10.0)
    try:
        # When each pool reads its queue for the first time, one after another
        for i in range(400):
            got = await reader.fetch_observation(key, secret, f"index-{i}", deadline_seconds=30.0)
            assert got.error is None
    finally:
        await reader.close()
    # Then the comparisons grow with the reads, not with their square (a scan of every
    # client and probe per first read made 80,000 here)
    assert calls[0] <= 4 * 400


async def test_a_rotated_secret_closes_the_old_versions_clients_and_keeps_other_secrets(
    redis_server: redis_servers.RedisServer,
) -> None:
    # Given pools reading through version 1 of Secret "a" and version 1 of Secret "b"
    (a1, a1_value), (b1, b1_value) = (_version(redis_server.url, s, "1") for s in ("a", "b"))
    a2, a2_value = _version(redis_server.url, "a", "2")
    reader = queue.QueueReader(socket_timeout=10.0)
    try:
        for key, value in ((a1, a1_value), (b1, b1_value)):
            for name in ("q1", "q2"):
                got = await reader.fetch_observation(key, value, name, deadline_seconds=30.0)
                assert got.error is None
        assert reader.open_client_count() == 2
        # When Secret "a" is rotated and a pool reads through its version 2
        got = await reader.fetch_observation(a2, a2_value, "q1", deadline_seconds=30.0)
        assert got.error is None
        await asyncio.sleep(0.05)  # the old client closes in the background
        # Then version 1 of "a" is closed (two clients: "a" version 2 and "b"), and "b" still
        # reads through its own client
        assert reader.open_client_count() == 2
        again = await reader.fetch_observation(b1, b1_value, "q2", deadline_seconds=30.0)
        assert again.error is None
        assert reader.open_client_count() == 2
        # And once no pool uses "b" any more, only "a" version 2 stays
        await reader.close_unused({(a2, "q1")})
        assert reader.open_client_count() == 1
    finally:
        await reader.close()
    assert reader.open_client_count() == 0
