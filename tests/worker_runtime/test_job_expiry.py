"""Job time-to-live: a job past its deadline is never started; it lands where its task says.

Real redis-server, real worker subprocesses (``tests.worker_runtime.tasks_expiry``). What ran is
read from the handlers' own event list, where jobs went from the queue, the DLQ and /metrics.
"""

from __future__ import annotations

import time
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until
from worker_runtime import producer

APP = "tests.worker_runtime.tasks_expiry:app"


def _expired_series(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
            body = resp.read().decode()
    except OSError:  # the worker is not serving yet
        return {}
    out = {}
    for line in body.splitlines():
        if line.startswith("workerfleet_jobs_expired_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels] = float(value)
    return out


def test_a_job_past_its_ttl_never_runs_and_is_dead_lettered_as_expired(
    wf: workerproc.Testbed,
) -> None:
    # Given a job with a 0.5 s TTL and one without, enqueued while no worker runs
    late = wf.producer.enqueue("run", {}, ttl=0.5)
    fresh = wf.producer.enqueue("run", {})
    time.sleep(1.0)
    # When a worker starts after the deadline
    port = workerproc.free_port()
    wf.spawn(concurrency=2, app=APP, metrics_port=port)
    wait_until(lambda: wf.stats().completed_total == 1, 20, "the fresh job")
    wait_until(lambda: wf.stats().dead_letter == 1, 20, "the expired job's dead letter")
    # Then only the fresh job ran; the late one is in the DLQ as expired, no attempt spent
    assert [e["job"] for e in wf.starts()] == [fresh.job_id]
    d = wf.dead_letter(late.job_id)
    assert d is not None and d.reason == "expired" and d.attempts == 0
    assert [h.error_type for h in d.history] == ["Expired"]
    assert "deadline passed" in d.history[0].message
    labels = (
        f'workerfleet_jobs_expired_total{{action="dead_lettered",queue="{wf.queue}",task="run"}}'
    )
    wait_until(lambda: _expired_series(port).get(labels) == 1.0, 10, "the expired metric")


def test_a_task_that_drops_expired_jobs_drops_them_without_running_them(
    wf: workerproc.Testbed,
) -> None:
    # Given jobs of a task with a 2 s default TTL and on_expire="drop", enqueued with no worker
    ids = [wf.producer.enqueue("drop-when-late", {}).job_id for _ in range(3)]
    time.sleep(2.5)
    # When a worker takes them after the task's deadline
    port = workerproc.free_port()
    wf.spawn(concurrency=2, app=APP, metrics_port=port)
    labels = (
        "workerfleet_jobs_expired_total"
        f'{{action="dropped",queue="{wf.queue}",task="drop-when-late"}}'
    )
    wait_until(lambda: _expired_series(port).get(labels) == 3.0, 20, "three dropped jobs")
    # Then none ran, none is in the DLQ, and none is left in the queue
    assert wf.starts() == []
    s = wf.stats()
    assert (s.backlog, s.in_flight, s.future_delayed, s.dead_letter) == (0, 0, 0, 0)
    assert all(wf.dead_letter(i) is None for i in ids)


def test_a_job_within_its_task_ttl_runs(wf: workerproc.Testbed) -> None:
    # Given a worker already running and a job of the dropping task, within its 2 s TTL
    wf.spawn(concurrency=2, app=APP)
    wait_until(lambda: len(wf.stats().workers) == 1, 20, "the worker's first heartbeat")
    job = wf.producer.enqueue("drop-when-late", {})
    # Then it runs
    wait_until(lambda: [e["job"] for e in wf.starts()] == [job.job_id], 20, "the job to run")


def test_a_retry_that_becomes_due_after_the_deadline_is_not_started_again(
    wf: workerproc.Testbed,
) -> None:
    # Given a job with a 1.5 s TTL whose first attempt asks to be retried in 2.5 s (a worker
    # whose backoff maximum allows that wait)
    wf.spawn(concurrency=2, app=APP, extra_env={"WORKERFLEET_RETRY_BACKOFF_MAX_SECONDS": "10"})
    wait_until(lambda: len(wf.stats().workers) == 1, 20, "the worker's first heartbeat")
    job = wf.producer.enqueue("late-retry", {}, ttl=1.5)
    # When the retry comes due after the deadline
    wait_until(lambda: wf.stats().dead_letter == 1, 20, "the dead letter")
    # Then the job ran once; its dead letter keeps the first failure and says why it stopped
    assert [e["attempt"] for e in wf.starts()] == [1]
    d = wf.dead_letter(job.job_id)
    assert d is not None and d.reason == "expired" and d.attempts == 1
    assert [h.error_type for h in d.history] == ["RetryLater", "Expired"]


# ---- the producer side (pure) --------------------------------------------------------------


def test_ttl_is_stored_as_an_absolute_deadline_from_enqueue_time() -> None:
    req = producer.build_request(producer.JobSpec("t", {}, ttl=60.0), now=1000.0)
    assert req.envelope.expires_at == 1060.0


def test_expires_at_takes_a_datetime_or_epoch_seconds() -> None:
    at = datetime(2030, 1, 1, tzinfo=UTC)
    req = producer.build_request(producer.JobSpec("t", {}, expires_at=at), now=1000.0)
    assert req.envelope.expires_at == at.timestamp()
    assert (
        producer.build_request(
            producer.JobSpec("t", {}, expires_at=2000.0), now=1000.0
        ).envelope.expires_at
        == 2000.0
    )


@pytest.mark.parametrize(
    "spec",
    [
        producer.JobSpec("t", {}, ttl=1.0, expires_at=5000.0),  # both
        producer.JobSpec("t", {}, ttl=0.0),  # not positive
        producer.JobSpec("t", {}, ttl=float("inf")),
        producer.JobSpec("t", {}, ttl=5.0, delay=10.0),  # expires before it is due
        producer.JobSpec("t", {}, expires_at=999.0),  # already past
        producer.JobSpec(
            "t", {}, expires_at=datetime.fromtimestamp(1000, UTC) + timedelta(seconds=5), delay=9
        ),
    ],
    ids=["both", "zero", "inf", "before-due", "past", "before-eta"],
)
def test_a_deadline_the_job_could_never_meet_is_refused_at_enqueue(
    spec: producer.JobSpec,
) -> None:
    with pytest.raises(ValueError):
        producer.build_request(spec, now=1000.0)


def test_a_job_without_a_deadline_stores_none() -> None:
    assert producer.build_request(producer.JobSpec("t", {}), now=1.0).envelope.expires_at is None
