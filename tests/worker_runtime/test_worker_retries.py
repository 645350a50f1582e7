"""Retry timing and job timeouts on real workers: RetryLater, Retry-After, async and sync."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis
import redis.asyncio

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import events, wait_until
from worker_runtime import dlq, producer, stats


def _stats(client: redis.Redis, queue: str) -> stats.QueueStats:
    return stats.fetch_queue_stats_sync(client, queue)


def _dead_letter(url: str, queue: str, job_id: str) -> dlq.DeadLetter | None:
    async def go() -> dlq.DeadLetter | None:
        client = redis.asyncio.Redis.from_url(url, decode_responses=True)
        try:
            return await dlq.fetch_dead_letter(client, queue, job_id)
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("payload", "at_least"),
    [
        ({"delay": 1.0}, 1.0),  # RetryLater(delay=1.0)
        ({"retry_after": "2"}, 2.0),  # RetryLater(retry_after="2"), HTTP Retry-After seconds
    ],
)
def test_retry_later_waits_in_redis_for_the_requested_delay(
    payload: dict[str, object],
    at_least: float,
    wf_spawn: Callable[..., workerproc.WorkerProc],
    wf_producer: producer.SyncProducer,
    wf_client: redis.Redis,
    wf_queue: str,
) -> None:
    # Given a worker and a task that asks to be retried later on its first attempt
    wf_spawn(concurrency=2)
    wf_producer.enqueue("later", {**payload, "marker": "m"})
    # When the first attempt asks for a delay
    wait_until(
        lambda: _stats(wf_client, wf_queue).future_delayed == 1,
        20,
        "the retry to wait in the delayed set",
    )
    wait_until(lambda: _stats(wf_client, wf_queue).completed_total == 1, 20, "the second run")
    # Then the second attempt started no earlier than the delay, and not much later
    starts = [e for e in events(wf_client, wf_queue) if e["event"] == "start"]
    assert [e["attempt"] for e in starts] == [1, 2]
    gap = float(starts[1]["t"]) - float(starts[0]["t"])
    assert at_least - 0.05 <= gap <= at_least + 2.0


def test_an_async_job_past_its_timeout_is_cancelled_and_counted_as_a_failed_attempt(
    wf_spawn: Callable[..., workerproc.WorkerProc],
    wf_producer: producer.SyncProducer,
    wf_client: redis.Redis,
    wf_redis: workerproc.RedisLike,
    wf_queue: str,
) -> None:
    # Given a task with a 0.5 s timeout and 2 attempts, whose handler would take 30 s
    wf_spawn(concurrency=2)
    job = wf_producer.enqueue("timeout-async", {"seconds": 30.0, "marker": "t"})
    # When it runs
    wait_until(lambda: _stats(wf_client, wf_queue).dead_letter == 1, 20, "the dead letter")
    # Then each attempt was cancelled at the timeout, and the job went to the DLQ after 2
    kinds = [e["event"] for e in events(wf_client, wf_queue)]
    assert kinds == ["start", "cancelled", "start", "cancelled"]
    d = _dead_letter(wf_redis.url, wf_queue, job.job_id)
    assert d is not None and d.reason == "max_attempts" and d.attempts == 2
    assert [h.error_type for h in d.history] == ["TimeoutError", "TimeoutError"]
    assert "timed out after 0.5s" in d.history[0].message


def test_a_sync_job_past_its_timeout_fails_its_attempt_and_keeps_its_slot_until_it_returns(
    wf_spawn: Callable[..., workerproc.WorkerProc],
    wf_producer: producer.SyncProducer,
    wf_client: redis.Redis,
    wf_redis: workerproc.RedisLike,
    wf_queue: str,
) -> None:
    # Given a one-slot worker and a sync task with a 0.5 s timeout that sleeps 1.5 s
    wf_spawn(concurrency=1)
    job = wf_producer.enqueue("timeout-sync", {"seconds": 1.5, "marker": "t"})
    # When it runs
    wait_until(lambda: _stats(wf_client, wf_queue).dead_letter == 1, 20, "the dead letter")
    wait_until(lambda: len(events(wf_client, wf_queue)) == 4, 10, "the late finish")
    # Then each attempt failed at the timeout (the thread could not be stopped) ...
    d = _dead_letter(wf_redis.url, wf_queue, job.job_id)
    assert d is not None and d.reason == "max_attempts" and d.attempts == 2
    assert [h.error_type for h in d.history] == ["TimeoutError", "TimeoutError"]
    # ... and the retry did not start before the timed-out thread returned: the slot stayed
    # taken, so the worker never ran more handlers than its concurrency
    recorded = events(wf_client, wf_queue)
    assert [e["event"] for e in recorded] == ["start", "done", "start", "done"]
    assert [e["attempt"] for e in recorded] == [1, 1, 2, 2]
