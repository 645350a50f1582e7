"""Retry timing and job timeouts on real workers: RetryLater, Retry-After, async and sync."""

from __future__ import annotations

import pytest

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until


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
    wf: workerproc.Testbed,
) -> None:
    # Given a worker and a task that asks to be retried later on its first attempt
    wf.spawn(concurrency=2)
    wf.producer.enqueue("later", {**payload, "marker": "m"})
    # When the first attempt asks for a delay
    wait_until(
        lambda: wf.stats().future_delayed == 1,
        20,
        "the retry to wait in the delayed set",
    )
    wait_until(lambda: wf.stats().completed_total == 1, 20, "the second run")
    # Then the second attempt started no earlier than the delay, and not much later
    starts = [e for e in wf.events() if e["event"] == "start"]
    assert [e["attempt"] for e in starts] == [1, 2]
    gap = float(starts[1]["t"]) - float(starts[0]["t"])
    assert at_least - 0.05 <= gap <= at_least + 2.0


def test_an_async_job_past_its_timeout_is_cancelled_and_counted_as_a_failed_attempt(
    wf: workerproc.Testbed,
) -> None:
    # Given a task with a 0.5 s timeout and 2 attempts, whose handler would take 30 s
    wf.spawn(concurrency=2)
    job = wf.producer.enqueue("timeout-async", {"seconds": 30.0, "marker": "t"})
    # When it runs
    wait_until(lambda: wf.stats().dead_letter == 1, 20, "the dead letter")
    # Then each attempt was cancelled at the timeout, and the job went to the DLQ after 2
    kinds = [e["event"] for e in wf.events()]
    assert kinds == ["start", "cancelled", "start", "cancelled"]
    d = wf.dead_letter(job.job_id)
    assert d is not None and d.reason == "max_attempts" and d.attempts == 2
    assert [h.error_type for h in d.history] == ["TimeoutError", "TimeoutError"]
    assert "timed out after 0.5s" in d.history[0].message


def test_an_async_job_that_blocks_the_event_loop_past_its_timeout_fails_its_attempt(
    wf: workerproc.Testbed,
) -> None:
    # Given a task with a 0.5 s timeout whose async handler blocks its loop for 1 s (the
    # watchdog, on the same loop, cannot cancel it) and returns
    wf.spawn(concurrency=1)
    job = wf.producer.enqueue("timeout-blocking", {"seconds": 1.0, "marker": "b"})
    # When it runs
    wait_until(lambda: wf.stats().dead_letter == 1, 20, "the dead letter")
    # Then each attempt counts as timed out, not as a success, and the job went to the DLQ
    assert [e["event"] for e in wf.events()] == ["start", "done", "start", "done"]
    d = wf.dead_letter(job.job_id)
    assert d is not None and d.reason == "max_attempts" and d.attempts == 2
    assert [h.error_type for h in d.history] == ["TimeoutError", "TimeoutError"]
    assert "blocked its event loop" in d.history[0].message
    assert wf.stats().completed_total == 0


def test_a_sync_job_past_its_timeout_fails_its_attempt_and_keeps_its_slot_until_it_returns(
    wf: workerproc.Testbed,
) -> None:
    # Given a one-slot worker and a sync task with a 0.5 s timeout that sleeps 1.5 s
    wf.spawn(concurrency=1)
    job = wf.producer.enqueue("timeout-sync", {"seconds": 1.5, "marker": "t"})
    # When it runs
    wait_until(lambda: wf.stats().dead_letter == 1, 20, "the dead letter")
    wait_until(lambda: len(wf.events()) == 4, 10, "the late finish")
    # Then each attempt failed at the timeout (the thread could not be stopped) ...
    d = wf.dead_letter(job.job_id)
    assert d is not None and d.reason == "max_attempts" and d.attempts == 2
    assert [h.error_type for h in d.history] == ["TimeoutError", "TimeoutError"]
    # ... and the retry did not start before the timed-out thread returned: the slot stayed
    # taken, so the worker never ran more handlers than its concurrency
    recorded = wf.events()
    assert [e["event"] for e in recorded] == ["start", "done", "start", "done"]
    assert [e["attempt"] for e in recorded] == [1, 1, 2, 2]
