"""A fetch whose script ran hands out its jobs even when a follow-up call to Redis fails.

After the fetch script leases a batch, the engine may still call Redis: to dead-letter an
unreadable envelope, or to release an expired lease the caller no longer holds. When one of
those calls failed (a refused connection, say), the fetch raised instead of returning the batch:
the worker never saw those jobs, and since the error said "never sent" it did not adopt them
either, so they waited out their lease and counted a lost delivery. On a real redis-server.
"""

from __future__ import annotations

import types
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions

from tests.support import engine as es
from worker_runtime.brokers.redis import keys


async def _make_unreadable(client: redis.asyncio.Redis, queue_name: str, job_id: str) -> None:
    # a producer in another language stored bytes that are not UTF-8 in the envelope
    env_key = keys.build_keys(queue_name).env
    raw = await client.hget(env_key, job_id)
    assert isinstance(raw, bytes) and b'"MARK"' in raw
    await client.hset(env_key, job_id, raw.replace(b'"MARK"', b'"caf\xe9 \xff"'))


async def _refused(*args: Any, **kwargs: Any) -> Any:
    raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1. Connection refused.")


@pytest.mark.parametrize("call", ["fetch", "ack_and_fetch"])
async def test_a_batch_is_handed_out_even_when_dead_lettering_its_unreadable_job_fails(
    redis_server: Any, queue_name: str, call: str
) -> None:
    # Given a queue whose next batch holds a readable job and one with an unreadable envelope
    client = redis.asyncio.Redis(port=redis_server.port)
    try:
        engine = es.make_engine(client, queue_name)
        first = await engine.enqueue(es.request(payload={"n": 0}))
        [good, bad] = await engine.enqueue_many(
            [es.request(payload={"n": 1}), es.request(payload={"s": "MARK"})]
        )
        await _make_unreadable(client, queue_name, bad.job_id)
        [held] = await engine.fetch("w", 1)
        assert held.id == first.job_id
        # When the worker fetches the batch and the follow-up dead-letter call is refused
        engine._deads = types.SimpleNamespace(submit=_refused)  # type: ignore[assignment]
        if call == "fetch":
            jobs = await engine.fetch("w", 2)
        else:
            acked, jobs = await engine.ack_and_fetch([held], "w", 2)
            assert acked == [True]
        # Then the readable job is handed out all the same, and the unreadable one stays leased
        # to the worker (dead-lettered on its next delivery), nothing lost
        assert [j.id for j in jobs] == [good.job_id]
        k = keys.build_keys(queue_name)
        assert await client.hexists(k.inflight, bad.job_id)
        assert await client.zscore(k.leases, bad.job_id) is not None
    finally:
        await client.aclose()
