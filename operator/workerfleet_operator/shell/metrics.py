"""The operator's Prometheus metrics: per-pool gauges and the reconcile counters/histogram.

Names are the contract in docs/architecture.md ("Metrics"); alert rules in the chart use them.
Created once per operator process by ``shell.main`` (or per test run with its own registry) and
updated by ``shell.handlers`` after every reconcile and every autoscaler poll; the local fleet
(``local.runner``) exports the same per-pool series through :meth:`PoolSeries.record_poll`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from worker_runtime import stats

POOL_LABELS = ("namespace", "pool", "queue")


class OperatorMetrics:
    """Every series the operator exports, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, POOL_LABELS, registry=self.registry)

        self.backlog = gauge(
            "workerfleet_pool_backlog", "Ready jobs not yet delivered (incl. due retries)."
        )
        self.in_flight = gauge("workerfleet_pool_in_flight", "Jobs delivered and not yet finished.")
        self.delayed = gauge(
            "workerfleet_pool_delayed", "Delayed/retry jobs still waiting for their time."
        )
        self.dead_letter = gauge(
            "workerfleet_pool_dead_letter", "Entries in the dead-letter queue."
        )
        self.oldest_job_age = gauge(
            "workerfleet_pool_oldest_job_age_seconds",
            "Age of the oldest ready job not yet started.",
        )
        self.replicas_desired = gauge(
            "workerfleet_pool_replicas_desired", "Replicas the autoscaler wants."
        )
        self.replicas_current = gauge(
            "workerfleet_pool_replicas_current", "spec.replicas of the Deployment."
        )
        self.replicas_ready = gauge(
            "workerfleet_pool_replicas_ready", "Ready replicas of the Deployment."
        )
        self.replicas_max = gauge(
            "workerfleet_pool_replicas_max", "autoscaling.maxReplicas of the pool."
        )
        self.dead_letter_alert_threshold = gauge(
            "workerfleet_pool_dead_letter_alert_threshold", "deadLetter.alertThreshold of the pool."
        )
        self.queue_reachable = gauge(
            "workerfleet_pool_queue_reachable", "1 if the last stats read worked."
        )
        self.jobs_enqueued = _MirroredCounter(
            "workerfleet_pool_jobs_enqueued", "Jobs ever enqueued (from Redis).", self.registry
        )
        self.jobs_completed = _MirroredCounter(
            "workerfleet_pool_jobs_completed", "Jobs completed (from Redis).", self.registry
        )
        self.jobs_failed = _MirroredCounter(
            "workerfleet_pool_jobs_failed", "Handler failures (from Redis).", self.registry
        )
        self.jobs_dead_lettered = _MirroredCounter(
            "workerfleet_pool_jobs_dead_lettered", "Jobs dead-lettered (from Redis).", self.registry
        )
        self.workers_killed = _MirroredCounter(
            "workerfleet_pool_workers_killed",
            "Worker heartbeats that expired (from Redis).",
            self.registry,
        )
        self.reconcile_total = Counter(
            "workerfleet_operator_reconcile",
            "Reconciles of WorkerPools by result.",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "workerfleet_operator_reconcile_errors",
            "Reconciles that raised.",
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "workerfleet_operator_reconcile_duration_seconds",
            "Duration of one reconcile.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )

    def bind_pool(self, labels: Sequence[str]) -> PoolSeries:
        """Every per-pool series for one pool, bound once (``labels()`` is a dict lookup + lock)."""
        return PoolSeries(
            backlog=self.backlog.labels(*labels),
            in_flight=self.in_flight.labels(*labels),
            delayed=self.delayed.labels(*labels),
            dead_letter=self.dead_letter.labels(*labels),
            oldest_job_age=self.oldest_job_age.labels(*labels),
            replicas_desired=self.replicas_desired.labels(*labels),
            replicas_current=self.replicas_current.labels(*labels),
            replicas_ready=self.replicas_ready.labels(*labels),
            replicas_max=self.replicas_max.labels(*labels),
            dead_letter_alert_threshold=self.dead_letter_alert_threshold.labels(*labels),
            queue_reachable=self.queue_reachable.labels(*labels),
            jobs_enqueued=self.jobs_enqueued.bind(labels),
            jobs_completed=self.jobs_completed.bind(labels),
            jobs_failed=self.jobs_failed.bind(labels),
            jobs_dead_lettered=self.jobs_dead_lettered.bind(labels),
            workers_killed=self.workers_killed.bind(labels),
        )

    def forget_pool(self, labels: Sequence[str]) -> None:
        """Drop every per-pool series of a deleted pool."""
        for metric in (
            self.backlog,
            self.in_flight,
            self.delayed,
            self.dead_letter,
            self.oldest_job_age,
            self.replicas_desired,
            self.replicas_current,
            self.replicas_ready,
            self.replicas_max,
            self.dead_letter_alert_threshold,
            self.queue_reachable,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(*labels)
        for mirrored in (
            self.jobs_enqueued,
            self.jobs_completed,
            self.jobs_failed,
            self.jobs_dead_lettered,
            self.workers_killed,
        ):
            mirrored.remove(labels)


@dataclass(frozen=True)
class PoolSeries:
    """One pool's bound series (see :meth:`OperatorMetrics.bind_pool`)."""

    backlog: Any
    in_flight: Any
    delayed: Any
    dead_letter: Any
    oldest_job_age: Any
    replicas_desired: Any
    replicas_current: Any
    replicas_ready: Any
    replicas_max: Any
    dead_letter_alert_threshold: Any
    queue_reachable: Any
    jobs_enqueued: Callable[[float], None]
    jobs_completed: Callable[[float], None]
    jobs_failed: Callable[[float], None]
    jobs_dead_lettered: Callable[[float], None]
    workers_killed: Callable[[float], None]

    def record_poll(
        self,
        queue_stats: stats.QueueStats | None,
        *,
        desired: int,
        max_replicas: int,
        alert_threshold: int,
    ) -> None:
        """Set what one autoscaler poll knows; replicas current/ready are the caller's to set.

        Without stats (the queue was unreadable) the queue series keep their last values and
        ``queue_reachable`` says why they stopped moving.
        """
        self.queue_reachable.set(1 if queue_stats is not None else 0)
        self.replicas_desired.set(desired)
        self.replicas_max.set(max_replicas)
        self.dead_letter_alert_threshold.set(float(alert_threshold))
        if queue_stats is None:
            return
        s = queue_stats
        self.backlog.set(s.backlog)
        self.in_flight.set(s.in_flight)
        self.delayed.set(s.future_delayed)
        self.dead_letter.set(s.dead_letter)
        self.oldest_job_age.set(s.oldest_job_age_seconds)
        self.jobs_enqueued(s.enqueued_total)
        self.jobs_completed(s.completed_total)
        self.jobs_failed(s.failed_total)
        self.jobs_dead_lettered(s.dead_lettered_total)
        self.workers_killed(s.workers_lost_total)


class _MirroredCounter:
    """A counter whose value is copied from Redis (monotonic there), exported as ``*_total``.

    Exported with the counter type (a gauge would break ``rate()`` semantics in dashboards).
    """

    def __init__(self, name: str, doc: str, registry: CollectorRegistry) -> None:
        self._counter = Counter(name, doc, POOL_LABELS, registry=registry)

    def bind(self, labels: Sequence[str]) -> Callable[[float], None]:
        """A setter for one pool's series."""
        child = self._counter.labels(*labels)

        def set_value(value: float) -> None:
            # Counter has no public set(); a restarted operator starts from Redis's value anyway.
            child._value.set(float(value))

        return set_value

    def remove(self, labels: Sequence[str]) -> None:
        with contextlib.suppress(KeyError):
            self._counter.remove(*labels)
