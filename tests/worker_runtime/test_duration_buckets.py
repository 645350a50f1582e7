"""The job-duration histogram tells millisecond jobs and hour-long jobs apart.

Dashboards read ``workerfleet_job_duration_seconds`` with ``histogram_quantile``, which places a
quantile by linear interpolation inside its bucket and caps it at the highest finite bound. The
buckets jumped 5 times in places (10 ms → 50 ms, 1 min → 5 min) and stopped at 15 minutes: jobs of
61 s read as 3 minutes at p50, and 40-minute jobs as 15 minutes.
"""

from __future__ import annotations

import math

import pytest

from worker_runtime import metrics


def estimate_quantile(m: metrics.WorkerMetrics, task: str, q: float) -> float:
    """``histogram_quantile(q, ...)`` over this worker's buckets of ``task``, as Prometheus
    computes it."""
    buckets: list[tuple[float, float]] = []
    for family in m.registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels["task"] == task:
                buckets.append((float(sample.labels["le"]), sample.value))
    buckets.sort()
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(upper):
                return lower  # Prometheus answers the highest finite bound
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        lower, below = upper, cumulative
    raise AssertionError("no bucket holds the rank")


@pytest.mark.parametrize(
    "seconds",
    [0.0006, 0.0011, 0.003, 0.011, 0.03, 0.07, 0.3, 1.2, 3.0, 12.0, 40.0, 61.0, 150.0, 310.0,
     650.0, 1000.0, 2400.0, 3500.0],
)  # fmt: skip
def test_the_median_duration_read_from_the_histogram_is_within_a_factor_of_two(
    seconds: float,
) -> None:
    # Given a worker whose jobs of one task all take the same time, from 0.6 ms to an hour
    m = metrics.WorkerMetrics("q")
    # When 100 of them finish
    for _ in range(100):
        m.job_finished("t", "completed", seconds)
    # Then the median a dashboard computes from the buckets is within a factor of 2 of it
    estimate = estimate_quantile(m, "t", 0.5)
    assert seconds / 2 <= estimate <= seconds * 2, f"{seconds}s read as {estimate:.4g}s"
