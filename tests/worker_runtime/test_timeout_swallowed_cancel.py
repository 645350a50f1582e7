"""An async handler that swallows its timeout's cancellation and keeps running still fails its
attempt at the timeout, and keeps its slot until it ends (real worker processes).

The watchdog cancelled such a handler once; the attempt was settled only when the handler
returned by itself. One that kept going held its job (its lease renewed all along) for as long
as it ran: a handler looping forever kept its job from ever being retried or dead-lettered.
"""

from __future__ import annotations

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until
from worker_runtime.worker import running

STUCK_APP = "tests.worker_runtime.tasks_stuck_handlers:app"


def test_a_handler_that_ignores_its_timeout_fails_each_attempt_and_ends_in_the_dlq(
    wf: workerproc.Testbed,
) -> None:
    # Given a task with a 0.5 s timeout and 3 attempts whose handler swallows every
    # cancellation and would run for 60 s
    worker = wf.spawn(app=STUCK_APP, concurrency=4)
    job = wf.producer.enqueue("swallows-cancel-timeout", {"seconds": 60.0, "marker": "s"})
    # When it runs
    wait_until(lambda: wf.stats().dead_letter == 1, 60, "the dead letter")
    # Then each attempt failed as timed out a moment after its timeout, not when the handler
    # ended, and the job went to the DLQ after its 3 attempts
    d = wf.dead_letter(job.job_id)
    assert d is not None and d.reason == "max_attempts" and d.attempts == 3
    assert [h.error_type for h in d.history] == ["TimeoutError"] * 3
    assert "ignored its cancellation" in d.history[0].message
    starts = wf.starts()
    assert [e["attempt"] for e in starts] == [1, 2, 3]
    assert all(e["job"] == job.job_id for e in starts)
    # (timed by the worker's own records, from each attempt's start to its failure: the
    # worker's start, seconds on a loaded machine, is no part of it)
    took = [failed.at - started["t"] for started, failed in zip(starts, d.history, strict=True)]
    assert all(0.5 <= t < 0.5 + running.UNWIND_SECONDS + 2.0 for t in took), took
    assert not [e for e in wf.events() if e["event"] == "done"]
    # And the worker goes on with other jobs beside the three handlers left running
    wf.producer.enqueue("swallows-cancel", {"seconds": 0.1, "marker": "next"})
    wait_until(lambda: wf.stats().completed_total == 1, 20, "the next job to complete")
    s = wf.stats()
    assert s.in_flight == 0 and s.backlog == 0
    wait_until(
        lambda: [w.in_flight for w in wf.stats().workers] == [0], 10, "a heartbeat holding none"
    )
    assert worker.alive()
