"""Priorities, delays and the idempotency helper, as a real worker sees them."""

from __future__ import annotations

import time

import pytest

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until


def test_a_one_slot_worker_runs_high_before_normal_before_low(
    wf: workerproc.Testbed,
) -> None:
    # Given jobs enqueued low first, high last
    for priority, order_id in (("low", 1), ("normal", 2), ("high", 3), ("low", 4), ("high", 5)):
        wf.producer.enqueue("order", {"order_id": order_id, "amount": 1.0}, priority=priority)
    # When a one-slot worker drains the queue
    wf.spawn(concurrency=1)
    wait_until(lambda: wf.stats().completed_total == 5, 20, "all jobs")
    # Then it ran them by priority, oldest first within a priority
    assert [e["order_id"] for e in wf.events()] == [3, 5, 2, 1, 4]


def test_a_delayed_job_does_not_start_before_its_time(
    wf: workerproc.Testbed,
) -> None:
    # Given an idle worker
    wf.spawn(concurrency=2)
    wait_until(lambda: wf.stats().workers, 20, "worker")
    # When a job is enqueued with a 1.5 s delay
    enqueued = time.time()
    wf.producer.enqueue("order", {"order_id": 1, "amount": 1.0}, delay=1.5)
    # Then it waits in the delayed set and starts after the delay, promptly
    assert wf.stats().future_delayed == 1
    wait_until(lambda: wf.stats().completed_total == 1, 20, "the delayed job")
    started = float(wf.events()[0]["t"])
    assert 1.5 - 0.05 <= started - enqueued <= 1.5 + 1.5


@pytest.mark.parametrize("task", ["idempotent", "idempotent-sync"])
def test_a_job_whose_idempotency_key_was_recorded_done_skips_its_side_effects(
    task: str,
    wf: workerproc.Testbed,
) -> None:
    # Given a worker and a task that records its key as done with its ack
    wf.spawn(concurrency=2)
    wf.producer.enqueue(
        task, {"seconds": 0, "marker": "first"}, idempotency_key="k", idempotency_ttl=0.2
    )
    wait_until(lambda: wf.stats().completed_total == 1, 20, "the first job")
    # When the same logical job is enqueued again after the enqueue dedup window
    time.sleep(0.3)  # let the 0.2 s enqueue-dedup key expire (the done marker stays)
    again = wf.producer.enqueue(task, {"seconds": 0, "marker": "second"}, idempotency_key="k")
    assert again.created
    wait_until(lambda: wf.stats().completed_total == 2, 20, "the second job")
    # Then the second run saw the done marker and skipped its side effects
    kinds = [(e["event"], e["marker"]) for e in wf.events()]
    assert kinds == [("start", "first"), ("skipped", "second")]


def test_a_handler_enqueues_follow_up_jobs_onto_the_queue_its_worker_serves(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker and a job whose handler enqueues two follow-ups
    wf.spawn(concurrency=2)
    wf.producer.enqueue("fanout", {"children": 2}, correlation_id="flow-1")
    # When it runs
    wait_until(lambda: wf.stats().completed_total == 3, 20, "the job and its follow-ups")
    # Then the follow-ups ran on the same queue
    recorded = wf.events()
    assert sorted(e.get("order_id", 0) for e in recorded) == [0, 100, 101]
    assert wf.stats().enqueued_total == 3
