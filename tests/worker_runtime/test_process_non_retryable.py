"""A process task's non-retryable error is dead-lettered at once even when it does not pickle.

The child sends the worker a stand-in (``processes.ChildError``) for an error that cannot be
rebuilt from a pickle; the worker checked the stand-in's own type against the task's
``non_retryable`` and retried the job to its last attempt, running the handler (a charge, an
email) again each time.
"""

from __future__ import annotations

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until

APP = "tests.worker_runtime.tasks_process_errors:app"


def test_a_non_retryable_error_that_does_not_pickle_back_dead_letters_the_job_at_once(
    wf: workerproc.Testbed,
) -> None:
    # Given a process task whose handler raises a subclass of a non-retryable error that
    # cannot be unpickled in the worker
    wf.spawn(concurrency=1, app=APP, extra_env={"WORKERFLEET_PROCESS_POOL_SIZE": "1"})
    # When a job of it runs
    job = wf.producer.enqueue("charge", {})
    wait_until(lambda: wf.stats().dead_letter == 1, 30, "the dead letter")
    # Then it ran once and went to the DLQ as non_retryable, naming the error's real type
    assert [e["attempt"] for e in wf.starts()] == [1]
    d = wf.dead_letter(job.job_id)
    assert d is not None and d.reason == "non_retryable" and d.attempts == 1
    assert "CardDeclined" in d.history[-1].error_type + d.history[-1].message
