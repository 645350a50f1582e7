"""Queue stats: the age of the oldest dead letter, read in the same one-round-trip script."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support import engine as es
from tests.support.redis_servers import RedisServer
from worker_runtime.brokers.redis import keys, stats


async def test_the_oldest_dead_letter_age_grows_from_its_dead_lettering_until_it_leaves(
    engine_client: Any, queue_name: str
) -> None:
    # Given an empty DLQ, then two jobs dead-lettered 0.3 s apart
    engine = es.make_engine(engine_client, queue_name)
    empty = await stats.fetch_queue_stats(engine_client, queue_name)
    await engine.enqueue_many([es.request(), es.request()])
    first, second = await engine.fetch("w", 2)
    assert await engine.dead_letter(first, "non_retryable", failure=es.failure())
    await asyncio.sleep(0.3)
    assert await engine.dead_letter(second, "non_retryable", failure=es.failure())
    await asyncio.sleep(0.2)
    both = await stats.fetch_queue_stats(engine_client, queue_name)
    # When the older one leaves the DLQ (purged), and then the other one
    await engine_client.zrem(keys.build_keys(queue_name).dlq, first.id)
    one = await stats.fetch_queue_stats(engine_client, queue_name)
    await engine_client.zrem(keys.build_keys(queue_name).dlq, second.id)
    none = await stats.fetch_queue_stats(engine_client, queue_name)
    # Then the age is the older entry's (≥ 0.5 s), then the younger one's (≥ 0.2 s, < the
    # first), and 0 once the DLQ is empty again
    assert empty.oldest_dead_letter_age_seconds == 0.0
    assert 0.45 <= both.oldest_dead_letter_age_seconds < 10.0
    assert 0.15 <= one.oldest_dead_letter_age_seconds < both.oldest_dead_letter_age_seconds
    assert (none.dead_letter, none.oldest_dead_letter_age_seconds) == (0, 0.0)


async def test_the_dead_letter_age_costs_no_extra_round_trip(
    redis_server: RedisServer, queue_name: str
) -> None:
    # Given a queue with a dead letter
    client = es.build_counting_client(redis_server.port)
    engine = es.make_engine(client, queue_name)
    await engine.enqueue(es.request())
    (job,) = await engine.fetch("w", 1)
    assert await engine.dead_letter(job, "non_retryable", failure=es.failure())
    await stats.fetch_queue_stats(client, queue_name)  # handshake, script load
    es.CountingConnection.sent.clear()
    # When stats are read
    s = await stats.fetch_queue_stats(client, queue_name)
    # Then one command brought the DLQ length and its oldest entry's age
    assert es.CountingConnection.sent == ["EVALSHA"]
    assert s.dead_letter == 1 and s.oldest_dead_letter_age_seconds >= 0.0
    await client.aclose()
