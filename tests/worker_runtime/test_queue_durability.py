"""Redis crashes: with appendfsync always, `kill -9` and a restart lose no accepted job."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio

from tests.worker_runtime import engine_support as es
from worker_runtime import dlq, stats


async def test_redis_kill_9_and_restart_with_appendfsync_always_loses_nothing(
    redis_factory: Any, queue_name: str
) -> None:
    # Given a Redis with AOF fsync on every write, and a queue in every state
    server = redis_factory(appendonly="yes", appendfsync="always")
    client = redis.asyncio.Redis(port=server.port, decode_responses=True)
    engine = es.make_engine(client, queue_name, lease_seconds=0.5)
    accepted = [
        r.job_id for r in await engine.enqueue_many([es.request("t", {"i": i}) for i in range(300)])
    ]
    for i in range(20):
        accepted.append((await engine.enqueue(es.request("t", {"single": i}))).job_id)
    accepted.append((await engine.enqueue(es.request("t", {"late": 1}, delay=0.5))).job_id)
    held = await engine.fetch("w1", 60)
    acked = held[:30]
    assert all(await asyncio.gather(*(engine.ack(j) for j in acked)))
    assert await engine.retry(held[30], es.failure(), delay_seconds=0.2)
    assert await engine.dead_letter(held[31], "non_retryable", failure=es.failure())
    before = await stats.fetch_queue_stats(client, queue_name)
    await client.aclose()
    # When Redis is killed with SIGKILL (no shutdown, no final save) and started again
    server.kill()
    server.start()
    client = redis.asyncio.Redis(port=server.port, decode_responses=True)
    engine = es.make_engine(client, queue_name, lease_seconds=0.5)
    after = await stats.fetch_queue_stats(client, queue_name)
    # Then every counter and every job state survived
    assert (after.backlog, after.in_flight, after.dead_letter) == (
        before.backlog,
        before.in_flight,
        before.dead_letter,
    )
    assert (after.enqueued_total, after.completed_total) == (321, 30)
    # And every accepted job not yet finished is delivered again (in-flight ones after the lease)
    await asyncio.sleep(0.6)
    remaining = await es.fetch_all(engine, "w2", want=321 - 30 - 1, within=10.0)
    ids = [j.id for j in remaining]
    dead = [d.job_id for d in await dlq.fetch_dead_letters(client, queue_name)]
    assert len(ids) == len(set(ids))
    assert sorted(ids + dead + [j.id for j in acked]) == sorted(accepted)
    await client.aclose()
