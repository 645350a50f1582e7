"""Prometheus metrics of one worker process (``workerfleet_`` prefix, base units).

Created by the worker loop (one :class:`WorkerMetrics` per worker, each with its own registry so
several workers in one test process do not collide) and served by :mod:`worker_runtime.health`.
The names are the contract in ``docs/architecture.md`` ("Metrics"); every series carries the
``queue`` label. Labelled children are cached because the worker touches them for every job.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

OUTCOMES = ("completed", "failed", "retried", "dead_lettered", "released", "timeout")
# The ``op`` values of workerfleet_redis_errors_total, exported from 0 at start so dashboards and
# alerts see a worker without errors as 0, not as no data.
REDIS_OPS = ("fetch", "adopt", "renew", "ack", "retry", "dead_letter", "history")
# The ``op`` values of workerfleet_settles_unconfirmed_total (the settling calls the worker
# re-sends), exported from 0 at start as well.
SETTLE_OPS = ("ack", "retry", "dead_letter")

# Seconds; no-op jobs take microseconds and real ones minutes, so the range is wide. No step is
# wider than 3 times, up to an hour: histogram_quantile interpolates inside a bucket and caps at the
# highest finite bound, and steps of 5 times (10 → 50 ms, 1 → 5 min) read 61 s jobs as 3 minutes at
# p50, a 15-minute top bound 40-minute jobs as 15 minutes.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1800.0,
    3600.0,
)


class WorkerMetrics:
    """The worker's series, bound to one queue label."""

    def __init__(self, queue: str, registry: CollectorRegistry | None = None) -> None:
        self.queue = queue
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.jobs = Counter(
            "workerfleet_jobs_total",
            "Jobs handled by this worker, by task and outcome.",
            ["queue", "task", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "workerfleet_job_duration_seconds",
            "Handler run time per attempt.",
            ["queue", "task"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "workerfleet_jobs_in_flight", "Jobs held by this worker.", ["queue"], registry=r
        ).labels(queue)
        self.retries = Counter(
            "workerfleet_job_retries_total",
            "Failed attempts scheduled for a retry.",
            ["queue", "task"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "workerfleet_dead_lettered_total",
            "Jobs this worker moved to the dead-letter queue, by reason.",
            ["queue", "reason"],
            registry=r,
        )
        self.expired = Counter(
            "workerfleet_jobs_expired_total",
            "Jobs not started because their deadline had passed, by task and action"
            " (dead_lettered or dropped).",
            ["queue", "task", "action"],
            registry=r,
        )
        self.children_exited = Counter(
            "workerfleet_process_children_exited_total",
            "Child processes of the process pool that ended, by reason (jobs, memory: recycled;"
            " timeout: killed at a job's timeout; died: crashed mid-job).",
            ["queue", "reason"],
            registry=r,
        )
        self.fetch_errors = Counter(
            "workerfleet_fetch_errors_total",
            "Fetch calls that failed (Redis unreachable, script error).",
            ["queue"],
            registry=r,
        ).labels(queue)
        self.redis_errors = Counter(
            "workerfleet_redis_errors_total",
            "Redis calls that failed, by operation.",
            ["queue", "op"],
            registry=r,
        )
        for op in REDIS_OPS:
            self.redis_errors.labels(queue, op)
        self.lease_renewals = Counter(
            "workerfleet_lease_renewals_total",
            "Lease renewals (one per held job per heartbeat).",
            ["queue"],
            registry=r,
        ).labels(queue)
        self.leases_lost = Counter(
            "workerfleet_leases_lost_total",
            "Held jobs whose lease was found expired or taken over (their result is discarded).",
            ["queue"],
            registry=r,
        ).labels(queue)
        self.settles_unconfirmed = Counter(
            "workerfleet_settles_unconfirmed_total",
            "Settling calls, by op, that got no reply and whose re-send was answered stale where"
            " the broker cannot tell whether the first one landed: the outcome is unknown"
            " (an acked job Redis no longer keeps, or a broker without the check); not counted"
            " as lost leases.",
            ["queue", "op"],
            registry=r,
        )
        for op in SETTLE_OPS:
            self.settles_unconfirmed.labels(queue, op)
        self.draining = Gauge(
            "workerfleet_worker_draining", "1 while the worker drains.", ["queue"], registry=r
        ).labels(queue)
        self.eviction_unsafe = Gauge(
            "workerfleet_redis_eviction_unsafe",
            "1 when the Redis maxmemory-policy (label policy) may evict queue keys, 0 for"
            " noeviction; absent while it could not be read.",
            ["queue", "policy"],
            registry=r,
        )
        self._job_children: dict[tuple[str, str], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}

    def job_finished(self, task: str, outcome: str, seconds: float | None) -> None:
        """Count one attempt's outcome and, when it ran, its duration."""
        key = (task, outcome)
        child = self._job_children.get(key)
        if child is None:
            child = self._job_children[key] = self.jobs.labels(self.queue, task, outcome)
        child.inc()
        if seconds is not None:
            hist = self._duration_children.get(task)
            if hist is None:
                hist = self._duration_children[task] = self.duration.labels(self.queue, task)
            hist.observe(seconds)

    def jobs_completed(self, finished: Iterable[tuple[str, float]]) -> None:
        """Count a batch of completed attempts (task, handler seconds): as many job_finished calls.

        The fetch loop settles a batch of acks at once; one counter increment per task and one
        per histogram bucket touched replace three locked increments and a bucket search per
        job (a tenth of the worker's CPU per no-op job, cProfile). The histogram is fed through
        its children's bucket and sum values, as ``Histogram.observe`` does, with the same
        ``amount <= bound`` rule; a client library without them gets one observe per job.
        """
        per_task: dict[str, list[float]] = collections.defaultdict(list)
        for task, seconds in finished:
            per_task[task].append(seconds)
        for task, durations in per_task.items():
            key = (task, "completed")
            child = self._job_children.get(key)
            if child is None:
                child = self._job_children[key] = self.jobs.labels(self.queue, task, "completed")
            child.inc(len(durations))
            hist = self._duration_children.get(task)
            if hist is None:
                hist = self._duration_children[task] = self.duration.labels(self.queue, task)
            buckets = getattr(hist, "_buckets", None)
            total = getattr(hist, "_sum", None)
            bounds = getattr(hist, "_upper_bounds", None)
            if buckets is None or total is None or bounds is None:
                for seconds in durations:
                    hist.observe(seconds)
                continue
            counts = [0] * len(bounds)
            for seconds in durations:
                # the first bound >= seconds, as observe's ``amount <= bound``
                counts[bisect.bisect_left(bounds, seconds)] += 1
            total.inc(sum(durations))
            for i, n in enumerate(counts):
                if n:
                    buckets[i].inc(n)

    def retried(self, task: str) -> None:
        """Count a failed attempt that was scheduled for a retry."""
        self.retries.labels(self.queue, task).inc()

    def dead_letter(self, reason: str) -> None:
        """Count one job moved to the DLQ."""
        self.dead_lettered.labels(self.queue, reason).inc()

    def job_expired(self, task: str, action: str) -> None:
        """Count one job that was not started because its deadline had passed."""
        self.expired.labels(self.queue, task, action).inc()

    def child_exited(self, reason: str) -> None:
        """Count one child process of the process pool that ended."""
        self.children_exited.labels(self.queue, reason).inc()

    def eviction_policy(self, policy: str, unsafe: bool) -> None:
        """Export the server's maxmemory-policy (one series: the current policy)."""
        self.eviction_unsafe.clear()
        self.eviction_unsafe.labels(self.queue, policy).set(1.0 if unsafe else 0.0)

    def redis_error(self, op: str) -> None:
        """Count one failed Redis call."""
        self.redis_errors.labels(self.queue, op).inc()

    def settle_unconfirmed(self, op: str) -> None:
        """Count one settling call whose landing the broker could not confirm or deny."""
        self.settles_unconfirmed.labels(self.queue, op).inc()

    def exposition(self) -> bytes:
        """The text exposition format of this worker's registry."""
        return generate_latest(self.registry)
