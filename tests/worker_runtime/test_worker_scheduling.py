"""Priorities, delays and the idempotency helper, as a real worker sees them."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import events, wait_until
from worker_runtime import producer, stats


def _completed(client: redis.Redis, queue: str) -> int:
    return stats.fetch_queue_stats_sync(client, queue).completed_total


def test_a_one_slot_worker_runs_high_before_normal_before_low(
    wf_spawn: Callable[..., workerproc.WorkerProc],
    wf_producer: producer.SyncProducer,
    wf_client: redis.Redis,
    wf_queue: str,
) -> None:
    # Given jobs enqueued low first, high last
    for priority, order_id in (("low", 1), ("normal", 2), ("high", 3), ("low", 4), ("high", 5)):
        wf_producer.enqueue("order", {"order_id": order_id, "amount": 1.0}, priority=priority)
    # When a one-slot worker drains the queue
    wf_spawn(concurrency=1)
    wait_until(lambda: _completed(wf_client, wf_queue) == 5, 20, "all jobs")
    # Then it ran them by priority, oldest first within a priority
    assert [e["order_id"] for e in events(wf_client, wf_queue)] == [3, 5, 2, 1, 4]


def test_a_delayed_job_does_not_start_before_its_time(
    wf_spawn: Callable[..., workerproc.WorkerProc],
    wf_producer: producer.SyncProducer,
    wf_client: redis.Redis,
    wf_queue: str,
) -> None:
    # Given an idle worker
    wf_spawn(concurrency=2)
    wait_until(lambda: stats.fetch_queue_stats_sync(wf_client, wf_queue).workers, 20, "worker")
    # When a job is enqueued with a 1.5 s delay
    enqueued = time.time()
    wf_producer.enqueue("order", {"order_id": 1, "amount": 1.0}, delay=1.5)
    # Then it waits in the delayed set and starts after the delay, promptly
    assert stats.fetch_queue_stats_sync(wf_client, wf_queue).future_delayed == 1
    wait_until(lambda: _completed(wf_client, wf_queue) == 1, 20, "the delayed job")
    started = float(events(wf_client, wf_queue)[0]["t"])
    assert 1.5 - 0.05 <= started - enqueued <= 1.5 + 1.5


@pytest.mark.parametrize("task", ["idempotent", "idempotent-sync"])
def test_a_job_whose_idempotency_key_was_recorded_done_skips_its_side_effects(
    task: str,
    wf_spawn: Callable[..., workerproc.WorkerProc],
    wf_producer: producer.SyncProducer,
    wf_client: redis.Redis,
    wf_queue: str,
) -> None:
    # Given a worker and a task that records its key as done with its ack
    wf_spawn(concurrency=2)
    wf_producer.enqueue(
        task, {"seconds": 0, "marker": "first"}, idempotency_key="k", idempotency_ttl=0.2
    )
    wait_until(lambda: _completed(wf_client, wf_queue) == 1, 20, "the first job")
    # When the same logical job is enqueued again after the enqueue dedup window
    time.sleep(0.3)  # let the 0.2 s enqueue-dedup key expire (the done marker stays)
    again = wf_producer.enqueue(task, {"seconds": 0, "marker": "second"}, idempotency_key="k")
    assert again.created
    wait_until(lambda: _completed(wf_client, wf_queue) == 2, 20, "the second job")
    # Then the second run saw the done marker and skipped its side effects
    kinds = [(e["event"], e["marker"]) for e in events(wf_client, wf_queue)]
    assert kinds == [("start", "first"), ("skipped", "second")]


def test_a_handler_enqueues_follow_up_jobs_onto_the_queue_its_worker_serves(
    wf_spawn: Callable[..., workerproc.WorkerProc],
    wf_producer: producer.SyncProducer,
    wf_client: redis.Redis,
    wf_queue: str,
) -> None:
    # Given a worker and a job whose handler enqueues two follow-ups
    wf_spawn(concurrency=2)
    wf_producer.enqueue("fanout", {"children": 2}, correlation_id="flow-1")
    # When it runs
    wait_until(lambda: _completed(wf_client, wf_queue) == 3, 20, "the job and its follow-ups")
    # Then the follow-ups ran on the same queue
    recorded = events(wf_client, wf_queue)
    assert sorted(e.get("order_id", 0) for e in recorded) == [0, 100, 101]
    assert stats.fetch_queue_stats_sync(wf_client, wf_queue).enqueued_total == 3
