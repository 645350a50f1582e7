"""Fencing survives a failover: a token the new primary never issued is rejected there.

Replication is asynchronous, so a promoted replica may have missed the last writes of the old
primary — among them fencing tokens it handed out. Tokens carry the epoch of the primary that
issued them (its run id and replication id), so the new primary never issues a token equal to
one it missed, and a stale worker's ack, retry, dead-letter, release or renewal cannot hit
another worker's live delivery. Tested with a real replica redis-server and ``REPLICAOF NO ONE``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from tests.support import engine as es
from tests.support.redis_servers import RedisServer
from worker_runtime.brokers.redis import stats


def _wait_replica_in_sync(primary: redis.Redis, replica: redis.Redis) -> None:
    """Bounded wait until the replica's link is up and it has every write the primary has."""
    deadline = time.monotonic() + 20
    while True:
        info = replica.info("replication")
        if info.get("master_link_status") == "up" and int(primary.wait(1, 1000)) >= 1:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the replica never caught up: {info}")
        time.sleep(0.05)


@pytest.fixture
def primary_and_replica(
    redis_factory: Callable[..., RedisServer],
) -> Iterator[tuple[RedisServer, RedisServer]]:
    primary = redis_factory()
    replica = redis_factory()
    p = redis.Redis(port=primary.port)
    r = redis.Redis(port=replica.port)
    try:
        r.replicaof("127.0.0.1", primary.port)
        _wait_replica_in_sync(p, r)
        yield primary, replica
    finally:
        p.close()
        r.close()


async def test_a_token_the_promoted_replica_never_saw_is_rejected_after_failover(
    primary_and_replica: tuple[RedisServer, RedisServer], queue_name: str
) -> None:
    primary, replica = primary_and_replica
    old = redis.asyncio.Redis(port=primary.port, decode_responses=True)
    new = redis.asyncio.Redis(port=replica.port, decode_responses=True)
    sync_old = redis.Redis(port=primary.port)
    sync_new = redis.Redis(port=replica.port)
    try:
        on_old = es.make_engine(old, queue_name)
        on_new = es.make_engine(new, queue_name)
        # Given two jobs, and worker A holding the first with a token the replica has seen
        await on_old.enqueue_many([es.request(payload={"n": 1})])
        [replicated] = await on_old.fetch("worker-a", 1)
        await on_old.enqueue_many([es.request(payload={"n": 2})])
        _wait_replica_in_sync(sync_old, sync_new)
        # When the replica is promoted while the old primary still serves worker A (a
        # partition): A's next delivery is a write the new primary never receives
        assert sync_new.replicaof("NO", "ONE")
        [stale] = await on_old.fetch("worker-a", 1)
        # and worker B gets the same job from the new primary
        [fresh] = await on_new.fetch("worker-b", 1)
        assert fresh.id == stale.id
        # Then A's ack with its stale token on the new primary is rejected (it would have
        # finished B's live delivery), as is everything else A tries with it
        assert await on_new.ack(stale) is False
        assert fresh.token != stale.token  # the counter alone repeated itself
        assert await on_new.retry(stale, es.failure(), delay_seconds=0) is False
        assert await on_new.release(stale) is False
        assert await on_new.dead_letter(stale, "non_retryable", failure=es.failure()) is False
        assert (await on_new.renew("worker-a", [stale])).lost == (stale.id,)
        # while B's live delivery, and A's delivery the replica had seen, both still count
        assert await on_new.ack(fresh) is True
        assert await on_new.ack(replicated) is True
        s = await stats.fetch_queue_stats(new, queue_name)
        assert (s.completed_total, s.retried_total, s.dead_letter, s.in_flight, s.backlog) == (
            2,
            0,
            0,
            0,
            0,
        )
    finally:
        for c in (old, new):
            await c.aclose()
        sync_old.close()
        sync_new.close()


async def test_tokens_issued_before_and_after_a_restart_differ(
    redis_factory: Callable[..., RedisServer], queue_name: str
) -> None:
    # Given a Redis that persisted a job with AOF, then handed it out in a write that never
    # reached the disk before the server went down
    server = redis_factory(appendonly="yes", appendfsync="always")
    client: Any = redis.asyncio.Redis(port=server.port, decode_responses=True)
    try:
        engine = es.make_engine(client, queue_name, lease_seconds=30.0)
        await engine.enqueue_many([es.request()])
        sync = redis.Redis(port=server.port)
        try:
            sync.config_set("appendonly", "no")  # the delivery below never reaches the disk
            [before] = await engine.fetch("worker-a", 1)
            sync.shutdown(nosave=True)
        finally:
            sync.close()
        server.proc.wait(10)  # type: ignore[union-attr]
        server.start()
        await client.aclose()
        client = redis.asyncio.Redis(port=server.port, decode_responses=True)
        engine = es.make_engine(client, queue_name, lease_seconds=30.0)
        # When the restarted server (same data as before the delivery) delivers the job again
        [after] = await engine.fetch("worker-b", 1)
        # Then its token differs from the one the lost write handed out, and A is fenced
        assert after.id == before.id
        assert after.token != before.token
        assert await engine.ack(before) is False
        assert await engine.ack(after) is True
    finally:
        await client.aclose()
