"""Poison jobs on real workers: repeated failures, crashing handlers, unknown tasks, bad input."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until
from worker_runtime.brokers.redis import keys


def test_a_job_that_keeps_failing_reaches_the_dlq_after_exactly_max_attempts_with_its_history(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker and a task allowing 3 attempts whose handler always fails
    wf.spawn(concurrency=2)
    job = wf.producer.enqueue("flaky", {"fail_times": 99, "marker": "p"}, correlation_id="corr-42")
    # When it runs
    wait_until(lambda: wf.stats().dead_letter == 1, 30, "the dead letter")
    # Then it ran exactly 3 times and sits in the DLQ with reason and full history
    starts = [e for e in wf.events() if e["event"] == "start"]
    assert [e["attempt"] for e in starts] == [1, 2, 3]
    d = wf.dead_letter(job.job_id)
    assert d is not None
    assert d.reason == "max_attempts"
    assert d.attempts == 3
    assert d.task == "flaky"
    assert d.correlation_id == "corr-42"
    assert d.payload == {"fail_times": 99, "marker": "p"}
    assert [h.error_type for h in d.history] == ["RuntimeError"] * 3
    assert [h.message for h in d.history] == [f"transient failure {i} of 99" for i in (1, 2, 3)]
    assert all("raise RuntimeError" in h.traceback for h in d.history)
    assert all(h.worker_id for h in d.history)
    s = wf.stats()
    assert s.failed_total == 3 and s.retried_total == 2 and s.dead_lettered_total == 1


def test_a_transient_failure_is_retried_and_then_completes(
    wf: workerproc.Testbed,
) -> None:
    # Given a task failing twice then succeeding (3 attempts allowed)
    wf.spawn(concurrency=2)
    wf.producer.enqueue("flaky", {"fail_times": 2, "marker": "t"})
    # When it runs
    wait_until(lambda: wf.stats().completed_total == 1, 30, "completion")
    # Then it took exactly 3 attempts and never reached the DLQ
    starts = [e for e in wf.events() if e["event"] == "start"]
    assert [e["attempt"] for e in starts] == [1, 2, 3]
    assert wf.stats().dead_letter == 0


@pytest.mark.parametrize("mode", ["exit", "segv"])
def test_a_job_that_kills_its_worker_reaches_the_dlq_after_exactly_max_deliveries(
    mode: str,
    wf: workerproc.Testbed,
) -> None:
    # Given workers allowing 3 deliveries with a 1.5 s lease, restarted when they die
    max_deliveries = 3
    env = {"WORKERFLEET_RETRY_MAX_DELIVERIES": str(max_deliveries)}
    job = wf.producer.enqueue("crash", {"mode": mode})

    def start() -> workerproc.WorkerProc:
        port = workerproc.free_port()
        return wf.spawn(concurrency=1, lease_seconds=1.5, extra_env=env, metrics_port=port)

    worker = start()
    restarts = 0
    deadline = time.monotonic() + 60
    # When the job crashes its worker each time (the test plays the supervisor)
    while wf.stats().dead_letter == 0:
        assert time.monotonic() < deadline, "the poison job never reached the DLQ"
        if not worker.alive():
            assert worker.proc.returncode != 0
            assert restarts < 10, "restarts must stay bounded"
            restarts += 1
            worker = start()
        time.sleep(0.05)
    # Then it ran exactly max_deliveries times, the worker restarted that often, and the DLQ
    # says why; the last worker survives
    starts = [e for e in wf.events() if e["event"] == "start"]
    assert [e["deliveries"] for e in starts] == [1, 2, 3]
    assert restarts == max_deliveries
    d = wf.dead_letter(job.job_id)
    assert d is not None and d.reason == "max_deliveries"
    assert d.deliveries == max_deliveries
    assert d.attempts == 0  # crashes are deliveries, not handler failures
    wait_until(lambda: wf.stats().workers, 10, "the survivor's heartbeat")
    assert worker.alive()
    # And the survivor, whose fetch dead-lettered it, counts it in its metrics
    line = f'workerfleet_dead_lettered_total{{queue="{wf.queue}",reason="max_deliveries"}} 1.0'
    wait_until(lambda: line in str(worker.http("/metrics")[1]), 5, "the dead-letter metric")
    worker.send(signal.SIGTERM)
    assert worker.wait(10) == 0


def test_a_message_naming_an_unregistered_task_is_dead_lettered_without_any_import(
    wf: workerproc.Testbed,
    tmp_path: Path,
) -> None:
    # Given an importable module that leaves a mark when imported, and a marker path a shell
    # command would create
    canary = f"wfcanary_{uuid.uuid4().hex[:8]}"
    imported = tmp_path / "imported"
    (tmp_path / f"{canary}.py").write_text(
        f"open({str(imported)!r}, 'w').write('imported')\ndef run(*a): pass\n"
    )
    touched = tmp_path / "touched"
    pythonpath = os.pathsep.join([str(workerproc.REPO), str(workerproc.REPO / "operator")])
    worker = wf.spawn(
        concurrency=2, extra_env={"PYTHONPATH": pythonpath + os.pathsep + str(tmp_path)}
    )
    # When jobs name `os.system` and the canary module as their task
    names = ["os.system", f"{canary}:run", f"{canary}.run", "subprocess.run"]
    ids = [
        wf.producer.enqueue(name, {"command": f"touch {touched}", "args": [str(touched)]}).job_id
        for name in names
    ]
    wait_until(lambda: wf.stats().dead_letter == len(ids), 20, "dead letters")
    # Then each is dead-lettered as unknown_task, nothing was imported or executed, and the
    # worker is still running
    for job_id, name in zip(ids, names, strict=True):
        d = wf.dead_letter(job_id)
        assert d is not None and d.reason == "unknown_task"
        assert d.task == name
        assert "no task named" in d.history[-1].message
        assert d.attempts == 0  # not a handler failure: no attempt spent
    assert wf.stats().failed_total == 0
    assert not imported.exists()
    assert not touched.exists()
    assert worker.alive()
    assert wf.events() == []


def test_an_invalid_payload_is_dead_lettered_with_the_validation_error_and_never_runs(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker whose "order" task takes {order_id: int, amount: float}
    worker = wf.spawn(concurrency=2)
    # When a job carries a payload that does not validate, next to a valid one
    bad = wf.producer.enqueue("order", {"order_id": "not-a-number"})
    good = wf.producer.enqueue("order", {"order_id": 7, "amount": 9.5})
    wait_until(lambda: wf.stats().completed_total == 1, 20, "the good job")
    wait_until(lambda: wf.stats().dead_letter == 1, 20, "the bad job")
    # Then the bad one is dead-lettered with the validation error and its handler never ran
    d = wf.dead_letter(bad.job_id)
    assert d is not None and d.reason == "invalid_payload"
    assert d.history[-1].error_type == "ValidationError"
    assert "order_id" in d.history[-1].message
    # And it spent no attempt (the handler never ran)
    assert d.attempts == 0
    assert wf.stats().failed_total == 0
    assert [e["job"] for e in wf.events()] == [good.job_id]
    assert worker.alive()


def test_an_envelope_that_is_not_json_is_dead_lettered_and_the_worker_keeps_going(
    wf: workerproc.Testbed,
) -> None:
    # Given a queued job whose stored envelope was corrupted, followed by a good job
    bad = wf.producer.enqueue("noop", {})
    wf.client.hset(keys.build_keys(wf.queue).env, bad.job_id, "{not json")
    wf.producer.enqueue("order", {"order_id": 1, "amount": 1.0})
    # When a worker fetches them
    worker = wf.spawn(concurrency=2)
    wait_until(lambda: wf.stats().completed_total == 1, 20, "the good job")
    wait_until(lambda: wf.stats().dead_letter == 1, 20, "the bad envelope")
    # Then the corrupt one is in the DLQ with its reason and the worker still runs
    d = wf.dead_letter(bad.job_id)
    assert d is not None and d.reason == "unparseable_json"
    assert worker.alive()
    worker.send(signal.SIGTERM)
    assert worker.wait(10) == 0


def test_reject_and_configured_non_retryable_errors_go_straight_to_the_dlq(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker; one task raises Reject, another a type listed as non_retryable
    wf.spawn(concurrency=2)
    rejected = wf.producer.enqueue("reject", {})
    nonretry = wf.producer.enqueue("non-retryable", {})
    # When they run
    wait_until(lambda: wf.stats().dead_letter == 2, 20, "both dead letters")
    # Then each ran once and was dead-lettered as non_retryable after a single attempt
    assert len(wf.events()) == 2
    for job_id, error_type in ((rejected.job_id, "Reject"), (nonretry.job_id, "KeyError")):
        d = wf.dead_letter(job_id)
        assert d is not None and d.reason == "non_retryable"
        assert d.attempts == 1
        assert d.history[-1].error_type == error_type
    assert wf.stats().retried_total == 0


def test_a_cancellation_escaping_a_handler_is_a_failure_not_a_lost_job(
    wf: workerproc.Testbed,
) -> None:
    # Given a handler that awaits an inner task which gets cancelled (2 attempts allowed)
    wf.spawn(concurrency=2, lease_seconds=30.0)
    job = wf.producer.enqueue("inner-cancel", {})
    # When it runs
    wait_until(lambda: wf.stats().dead_letter == 1, 20, "the dead letter")
    # Then each run counted as a failed attempt (no waiting for a 30 s lease to expire)
    d = wf.dead_letter(job.job_id)
    assert d is not None and d.reason == "max_attempts" and d.attempts == 2
    assert [h.error_type for h in d.history] == ["CancelledError", "CancelledError"]
    assert d.lost == 0
