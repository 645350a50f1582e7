"""The queue-wide rate limit holds across several worker processes."""

from __future__ import annotations

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until


def test_two_workers_share_one_rate_limit(
    wf: workerproc.Testbed,
) -> None:
    # Given 20 queued jobs and two workers sharing a limit of 5 jobs per second
    n, rate = 20, 5
    env = {"WORKERFLEET_RATE_LIMIT_JOBS": str(rate), "WORKERFLEET_RATE_LIMIT_PER_SECONDS": "1"}
    for i in range(n):
        wf.producer.enqueue("order", {"order_id": i, "amount": 1.0})
    # When both run (8 slots each: without the limit they would finish in a blink)
    a = wf.spawn(concurrency=8, extra_env=env)
    b = wf.spawn(concurrency=8, extra_env=env)
    wait_until(
        lambda: wf.stats().completed_total == n,
        30,
        "all jobs",
    )
    # Then the starts follow the shared limit: a burst of at most one bucket, then ~5/s
    times = sorted(float(e["t"]) for e in wf.events())
    assert len(times) == n
    span = times[-1] - times[0]
    assert span >= (n - rate) / rate - 0.5  # 3 s for 15 jobs after the first burst of 5
    for i, start in enumerate(times):
        in_window = sum(1 for t in times[i:] if t < start + 1.0)
        # a full bucket plus one second of refill; +1 because a start is recorded a moment
        # after its token was taken, and that moment varies from job to job
        assert in_window <= 2 * rate + 1
    assert {e["pid"] for e in wf.events()} <= {a.pid, b.pid}
