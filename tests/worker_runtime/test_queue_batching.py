"""The settle coalescer: concurrent calls share one script call, errors reach every caller."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import engine as es
from tests.support.redis_servers import RedisServer
from worker_runtime.brokers.redis import queue


async def test_concurrent_submissions_are_flushed_together_and_answered_individually() -> None:
    # Given a coalescer whose flush records each batch
    batches: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.01)
        return [i * 10 for i in items]

    c: queue._Coalescer[int, int] = queue._Coalescer(flush, max_batch=4)
    # When 10 callers submit at once
    results = await asyncio.gather(*(c.submit(i) for i in range(10)))
    # Then each gets its own answer, in batches no bigger than the limit
    assert results == [i * 10 for i in range(10)]
    assert [len(b) for b in batches] == [4, 4, 2]


async def test_a_failed_flush_raises_in_every_caller_of_that_batch_and_the_next_batch_runs() -> (
    None
):
    calls = 0

    async def flush(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("redis down")
        return items

    c: queue._Coalescer[int, int] = queue._Coalescer(flush, max_batch=2)
    results = await asyncio.gather(*(c.submit(i) for i in range(3)), return_exceptions=True)
    assert [type(r) for r in results[:2]] == [ConnectionError, ConnectionError]
    assert results[2] == 2


async def test_a_flush_that_answers_the_wrong_number_of_results_fails_loudly_not_hangs() -> None:
    async def flush(items: list[int]) -> list[int]:
        return items[:-1]

    c: queue._Coalescer[int, int] = queue._Coalescer(flush, max_batch=10)
    with pytest.raises(RuntimeError, match="results for a batch"):
        await asyncio.wait_for(asyncio.gather(c.submit(1), c.submit(2)), 2.0)


async def test_ack_and_fetch_is_one_command_on_the_wire(
    redis_server: RedisServer, queue_name: str
) -> None:
    # Given a worker holding one job, on a connection that counts commands
    client = es.build_counting_client(redis_server.port)
    engine = es.make_engine(client, queue_name)
    await engine.enqueue_many([es.request() for _ in range(3)])
    [job] = await engine.fetch("w", 1)
    warm, [held] = await engine.ack_and_fetch([job], "w", 1)
    es.CountingConnection.sent.clear()
    # When it acks the job and fetches the next
    acked, fresh = await engine.ack_and_fetch([held], "w", 1)
    # Then that was one EVALSHA
    assert es.CountingConnection.sent == ["EVALSHA"]
    assert warm == [True] and acked == [True] and len(fresh) == 1
    await client.aclose()
