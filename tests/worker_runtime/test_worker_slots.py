"""A worker never runs (or holds) more jobs than its concurrency."""

from __future__ import annotations

import pytest

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until
from worker_runtime import producer


@pytest.mark.parametrize("task", ["sleep", "sleep-sync"])
def test_at_most_concurrency_handlers_run_at_once(
    task: str,
    wf: workerproc.Testbed,
) -> None:
    # Given 12 jobs of 0.3 s and a worker with 3 slots
    n, slots = 12, 3
    wf.producer.enqueue_many(
        [producer.JobSpec(task, {"seconds": 0.3, "marker": str(i)}) for i in range(n)]
    )
    wf.spawn(concurrency=slots)
    # When it works through them, while we watch how many jobs Redis says are in flight
    most_in_flight = 0

    def finished() -> bool:
        nonlocal most_in_flight
        s = wf.stats()
        most_in_flight = max(most_in_flight, s.in_flight)
        return s.completed_total == n

    wait_until(finished, 30, "all jobs", interval=0.02)
    # Then never more than 3 handlers overlapped, and never more than 3 jobs were leased
    changes = sorted((float(e["t"]), 1 if e["event"] == "start" else -1) for e in wf.events())
    running = peak = 0
    for _, delta in changes:
        running += delta
        peak = max(peak, running)
    assert peak == slots
    assert most_in_flight <= slots
