"""The settle coalescer: concurrent calls share one script call, errors reach every caller."""

from __future__ import annotations

import asyncio

import pytest

from worker_runtime import queue


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
