"""The named token buckets handlers can use (the queue-wide limit is tested with fetch)."""

from __future__ import annotations

import time
from typing import Any

from tests.support import engine as es
from worker_runtime.brokers.redis import queue, ratelimit


async def test_a_bucket_grants_its_burst_then_refills_at_its_rate(
    engine_client: Any, queue_name: str
) -> None:
    # Given a bucket of 3 per 0.3 s
    limit = queue.RateLimit(jobs=3, per_seconds=0.3)
    # When 5 tokens are asked for at once
    started = time.monotonic()
    granted, wait = await ratelimit.apply_acquire(engine_client, queue_name, limit, 5, name="api")
    # Then 3 are granted and the next comes in about 0.1 s
    assert granted == 3
    assert 0 < wait <= 0.11
    # And waiting for a token succeeds after the refill, not before (timed from before the
    # burst, so a stall of this process can only lengthen what is measured)
    assert await ratelimit.apply_wait(engine_client, queue_name, limit, name="api")
    assert time.monotonic() - started >= 0.08


async def test_a_rate_limited_fetch_sleeps_until_its_next_token_instead_of_polling_redis(
    redis_server: Any, queue_name: str
) -> None:
    # Given a queue limited to 2 jobs a second with a backlog of 10, and both tokens spent
    client = es.build_counting_client(redis_server.port)
    engine = es.make_engine(client, queue_name, rate_limit=queue.RateLimit(jobs=2, per_seconds=1))
    await engine.enqueue_many([es.request() for _ in range(10)])
    assert len(await engine.fetch("w1", 10)) == 2
    es.CountingConnection.sent.clear()
    # When a worker waits up to a second for more
    started = time.monotonic()
    got = await engine.fetch("w1", 10, block=1.0)
    waited = time.monotonic() - started
    # Then it gets the next job when its token comes (~0.5 s), after a few calls: it slept in
    # between (it woke on the backlog at once, again and again: ~1,900 calls in 0.4 s)
    assert len(got) == 1
    assert waited >= 0.3
    assert len(es.CountingConnection.sent) <= 6, es.CountingConnection.sent
    await client.aclose()


async def test_named_buckets_are_independent(engine_client: Any, queue_name: str) -> None:
    limit = queue.RateLimit(jobs=1, per_seconds=60)
    a, _ = await ratelimit.apply_acquire(engine_client, queue_name, limit, 1, name="a")
    b, _ = await ratelimit.apply_acquire(engine_client, queue_name, limit, 1, name="b")
    a2, wait = await ratelimit.apply_acquire(engine_client, queue_name, limit, 1, name="a")
    assert (a, b, a2) == (1, 1, 0)
    assert wait > 50
    assert not await ratelimit.apply_wait(
        engine_client, queue_name, limit, name="a", within_seconds=0.1
    )
