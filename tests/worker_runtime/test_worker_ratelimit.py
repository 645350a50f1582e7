"""The queue-wide rate limit holds across several worker processes."""

from __future__ import annotations

from collections.abc import Callable

import redis

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import events, wait_until
from worker_runtime import producer, stats


def test_two_workers_share_one_rate_limit(
    wf_spawn: Callable[..., workerproc.WorkerProc],
    wf_producer: producer.SyncProducer,
    wf_client: redis.Redis,
    wf_queue: str,
) -> None:
    # Given 20 queued jobs and two workers sharing a limit of 5 jobs per second
    n, rate = 20, 5
    env = {"WORKERFLEET_RATE_LIMIT_JOBS": str(rate), "WORKERFLEET_RATE_LIMIT_PER_SECONDS": "1"}
    for i in range(n):
        wf_producer.enqueue("order", {"order_id": i, "amount": 1.0})
    # When both run (8 slots each: without the limit they would finish in a blink)
    a = wf_spawn(concurrency=8, extra_env=env)
    b = wf_spawn(concurrency=8, extra_env=env)
    wait_until(
        lambda: stats.fetch_queue_stats_sync(wf_client, wf_queue).completed_total == n,
        30,
        "all jobs",
    )
    # Then the starts follow the shared limit: a burst of at most one bucket, then ~5/s
    times = sorted(float(e["t"]) for e in events(wf_client, wf_queue))
    assert len(times) == n
    span = times[-1] - times[0]
    assert span >= (n - rate) / rate - 0.5  # 3 s for 15 jobs after the first burst of 5
    for i, start in enumerate(times):
        in_window = sum(1 for t in times[i:] if t < start + 1.0)
        assert in_window <= 2 * rate
    assert {e["pid"] for e in events(wf_client, wf_queue)} <= {a.pid, b.pid}
