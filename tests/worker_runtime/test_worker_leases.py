"""Leases of real worker processes: kill -9, long jobs, SIGSTOP, stale acks, blocked loops."""

from __future__ import annotations

import signal
import time

import pytest

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until


def test_a_job_held_by_a_killed_worker_is_redelivered_within_the_lease(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker with a 2 s lease running a job, and a second idle worker
    lease = 2.0
    victim = wf.spawn(concurrency=1, lease_seconds=lease)
    job = wf.producer.enqueue("sleep", {"seconds": 30.0, "later_seconds": 0.2, "marker": "j"})
    wait_until(lambda: wf.starts(), 20, "the job to start on the victim")
    rescuer = wf.spawn(concurrency=1, lease_seconds=lease)
    wait_until(
        lambda: len(wf.stats().workers) == 2,
        20,
        "both workers to heartbeat",
    )
    # When the victim is killed with SIGKILL
    killed_at = time.time()
    victim.send(signal.SIGKILL)
    victim.wait(10)
    # Then the job starts again on the other worker within the lease (plus fetch slack)
    wait_until(lambda: len(wf.starts()) == 2, lease + 5, "the redelivery")
    second = wf.starts()[1]
    assert second["pid"] == rescuer.pid
    assert second["job"] == job.job_id
    assert float(second["t"]) - killed_at <= lease + 3.0
    # And the delivery was counted, not the attempt
    assert second["deliveries"] == 2
    assert second["attempt"] == 1
    wait_until(lambda: wf.done_counts().get("j") == 1, 10, "completion")


@pytest.mark.parametrize(
    "task",
    [
        "sleep",  # a well-behaved async handler
        "sleep-sync",  # a sync handler in a worker thread
        "block-loop",  # an async handler that blocks the event loop
        "cpu-hog",  # a sync handler spinning in pure Python, competing for the GIL
    ],
)
def test_a_job_running_three_times_the_lease_is_not_duplicated(
    task: str,
    wf: workerproc.Testbed,
) -> None:
    # Given two workers with a 1.5 s lease and a job that runs 4.5 s
    lease = 1.5
    a = wf.spawn(concurrency=2, lease_seconds=lease)
    b = wf.spawn(concurrency=2, lease_seconds=lease)
    # When the job runs on one of them
    wf.producer.enqueue(task, {"seconds": 3 * lease, "marker": "long"})
    wait_until(
        lambda: wf.stats().completed_total == 1,
        30,
        "the ack",
    )
    # Then it ran exactly once: the heartbeat kept its lease the whole time
    assert len(wf.starts()) == 1
    assert wf.done_counts() == {"long": 1}
    s = wf.stats()
    assert s.completed_total == 1 and s.in_flight == 0 and s.backlog == 0
    for w in (a, b):
        w.send(signal.SIGTERM)
        assert w.wait(10) == 0
        assert "lease lost" not in w.logs()


def test_a_stopped_worker_loses_its_job_once_and_its_late_ack_is_rejected(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker with a 1.5 s lease running a job that needs 2 s
    lease = 1.5
    frozen = wf.spawn(concurrency=1, lease_seconds=lease)
    wf.producer.enqueue("sleep", {"seconds": 2.0, "later_seconds": 0.1, "marker": "j"})
    wait_until(lambda: wf.starts(), 20, "the job to start")
    # When the worker is SIGSTOPped and another worker is running
    frozen.send(signal.SIGSTOP)
    other = wf.spawn(concurrency=1, lease_seconds=lease)
    # Then the job is delivered again exactly once after the lease, and completes there
    wait_until(lambda: wf.done_counts().get("j") == 1, lease + 15, "the rerun")
    starts = wf.starts()
    assert len(starts) == 2
    assert starts[1]["pid"] == other.pid
    assert starts[1]["deliveries"] == 2
    # When the stopped worker is continued, its handler finishes late
    frozen.send(signal.SIGCONT)
    wait_until(lambda: wf.done_counts().get("j") == 2, 15, "the late finish")
    wait_until(
        lambda: "lease lost" in frozen.logs() or "settle rejected" in frozen.logs(),
        10,
        "the stale worker to notice",
    )
    # Then its stale ack was rejected: the queue counts one completion, nothing in flight
    time.sleep(0.2)  # nothing to poll for: we prove an ack did NOT happen
    s = wf.stats()
    assert s.completed_total == 1
    assert s.in_flight == 0 and s.backlog == 0
    assert len(wf.starts()) == 2
    for w in (frozen, other):
        w.send(signal.SIGTERM)
        assert w.wait(10) == 0
