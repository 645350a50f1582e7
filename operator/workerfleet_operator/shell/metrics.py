"""The operator's Prometheus metrics: per-pool gauges and the reconcile counters/histogram.

Names are the contract in docs/architecture.md ("Metrics"); the alert rules in deploy/alerts/ use
them. Created once per operator process by ``shell.main`` (or per test run with its own registry)
and updated by ``shell.report`` and ``shell.scaler`` after every reconcile and every autoscaler
poll; the local fleet (``local.runner``) exports the same per-pool series through
:meth:`PoolSeries.record_poll`.

Three per-pool series carry a label whose value changes: ``workerfleet_pool_queue_reachable``
(``reason``), ``workerfleet_pool_redis_eviction_unsafe`` (``policy``) and
``workerfleet_pool_condition`` (``status``, ``reason``; one series per condition type). Each
keeps exactly one series per pool (and type): the previous one is removed when the label
changes, so a query never sees a stale reason next to the current one.

Subscription lag (events, docs/events.md): a pool whose queue is a subscription's queue
(``<topic>:<group>``, :func:`worker_runtime.events.parse_subscription_queue`) also exports
``workerfleet_pool_subscription_backlog`` and
``workerfleet_pool_subscription_oldest_event_age_seconds`` with the extra labels ``topic`` and
``group``: the same stats read as the pool's queue series (a subscription is an ordinary queue;
no extra round trip), named and labelled so the alert ``WorkerPoolSubscriptionLagHigh`` and the
dashboard can say which topic and group are behind. One series per pool: cardinality grows with
pools, never with events. They are exported here, not by the workers' own exporter, because
every worker replica would export the same queue-wide number (N copies to de-duplicate) and a
pool scaled to zero, whose lag is the one that grows, would export none. Only the leader
operator polls, and the rules take ``max`` per pool over whatever scraped it (a restart, a
double scrape), so nothing is counted twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from worker_runtime import events
from worker_runtime.brokers import base
from worker_runtime.brokers.redis import stats
from workerfleet_operator import api

POOL_LABELS = ("namespace", "pool", "queue")
SUBSCRIPTION_LABELS = (*POOL_LABELS, "topic", "group")


class OperatorMetrics:
    """Every series the operator exports, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, POOL_LABELS, registry=self.registry)

        self.pool_info = Gauge(
            "workerfleet_pool_info",
            "1 for every pool the operator serves; broker names its queue system "
            "(redis, rabbitmq, sqs).",
            (*POOL_LABELS, "broker"),
            registry=self.registry,
        )
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
        self.dead_letter_oldest_age = gauge(
            "workerfleet_pool_dead_letter_oldest_age_seconds",
            "How long the oldest entry of the dead-letter queue has waited (0 when empty).",
        )
        self.oldest_job_age = gauge(
            "workerfleet_pool_oldest_job_age_seconds",
            "Age of the oldest ready job not yet started.",
        )
        self.subscription_backlog = Gauge(
            "workerfleet_pool_subscription_backlog",
            "Events of the subscription (topic, group) not yet started: its queue's backlog.",
            SUBSCRIPTION_LABELS,
            registry=self.registry,
        )
        self.subscription_oldest_event_age = Gauge(
            "workerfleet_pool_subscription_oldest_event_age_seconds",
            "How long the oldest event of the subscription (topic, group) not yet started has"
            " waited (0 when none waits).",
            SUBSCRIPTION_LABELS,
            registry=self.registry,
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
        self.paused = gauge(
            "workerfleet_pool_paused",
            "1 while the pool is paused (workerfleet.io/paused or paused-replicas), else 0.",
        )
        self.dead_letter_alert_threshold = gauge(
            "workerfleet_pool_dead_letter_alert_threshold", "deadLetter.alertThreshold of the pool."
        )
        self.oldest_job_age_target = gauge(
            "workerfleet_pool_oldest_job_age_target_seconds",
            "autoscaling.targetOldestJobAgeSeconds of the pool (0: not set).",
        )
        self.workers_expired = gauge(
            "workerfleet_pool_workers_expired",
            "Worker heartbeats expired and not yet reaped (killed, or stalled and may renew).",
        )
        self.queue_reachable = Gauge(
            "workerfleet_pool_queue_reachable",
            "1 if the last stats read worked, else 0; reason: the QueueReachable reason.",
            (*POOL_LABELS, "reason"),
            registry=self.registry,
        )
        self.eviction_unsafe = Gauge(
            "workerfleet_pool_redis_eviction_unsafe",
            "1 when the queue's Redis maxmemory-policy (label policy) may evict its keys, 0 for"
            " noeviction; absent while the policy could not be read.",
            (*POOL_LABELS, "policy"),
            registry=self.registry,
        )
        self.condition = Gauge(
            "workerfleet_pool_condition",
            "1 for the pool's current status and reason of each condition type.",
            (*POOL_LABELS, "type", "status", "reason"),
            registry=self.registry,
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
            "Expired worker heartbeats reaped without a clean deregistration (from Redis).",
            self.registry,
        )
        self.reconcile_total = Counter(
            "workerfleet_operator_reconcile",
            "Reconciles of WorkerPools by pool and result.",
            ["namespace", "pool", "result"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "workerfleet_operator_reconcile_errors",
            "Reconciles that raised, by pool.",
            ["namespace", "pool"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "workerfleet_operator_reconcile_duration_seconds",
            "Duration of one reconcile.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )

    def bind_pool(self, labels: Sequence[str], *, broker: str = "redis") -> PoolSeries:
        """Every per-pool series for one pool, bound once (``labels()`` is a dict lookup + lock).

        ``broker`` (``redis``, ``rabbitmq``, ``sqs``: the pool's ``spec.queue`` block) goes on
        the pool's ``workerfleet_pool_info`` series, set here: every other series keeps the same
        name and labels on every broker, and a query or panel that needs the broker joins it."""
        info = _OneSeries(self.pool_info, labels)
        info.set((broker,), 1)
        return PoolSeries(
            info=info,
            backlog=self.backlog.labels(*labels),
            in_flight=self.in_flight.labels(*labels),
            delayed=self.delayed.labels(*labels),
            dead_letter=self.dead_letter.labels(*labels),
            dead_letter_oldest_age=self.dead_letter_oldest_age.labels(*labels),
            oldest_job_age=_OneSeries(self.oldest_job_age, labels),
            replicas_desired=self.replicas_desired.labels(*labels),
            replicas_current=self.replicas_current.labels(*labels),
            replicas_ready=self.replicas_ready.labels(*labels),
            replicas_max=self.replicas_max.labels(*labels),
            paused=self.paused.labels(*labels),
            dead_letter_alert_threshold=self.dead_letter_alert_threshold.labels(*labels),
            oldest_job_age_target=self.oldest_job_age_target.labels(*labels),
            workers_expired=self.workers_expired.labels(*labels),
            queue_reachable=_OneSeries(self.queue_reachable, labels),
            eviction_unsafe=_OneSeries(self.eviction_unsafe, labels),
            conditions={},
            condition_gauge=self.condition,
            labels=tuple(labels),
            jobs_enqueued=self.jobs_enqueued.bind(labels),
            jobs_completed=self.jobs_completed.bind(labels),
            jobs_failed=self.jobs_failed.bind(labels),
            jobs_dead_lettered=self.jobs_dead_lettered.bind(labels),
            workers_killed=self.workers_killed.bind(labels),
            subscription=self._bind_subscription(labels),
        )

    def _bind_subscription(self, labels: Sequence[str]) -> SubscriptionSeries | None:
        parsed = events.parse_subscription_queue(labels[2])
        if parsed is None:
            return None
        topic, group = parsed
        return SubscriptionSeries(
            topic=topic,
            group=group,
            backlog=self.subscription_backlog.labels(*labels, topic, group),
            age_gauge=self.subscription_oldest_event_age,
            labels=(*labels, topic, group),
        )

    def count_reconcile(self, namespace: str, pool: str, result: str) -> None:
        """Count one reconcile of a pool (``result``: success, invalid or error)."""
        self.reconcile_total.labels(namespace, pool, result).inc()
        errors = self.reconcile_errors.labels(namespace, pool)  # exported from 0, not at the first
        if result == "error":
            errors.inc()

    def forget_pool(self, labels: Sequence[str], series: PoolSeries | None = None) -> None:
        """Drop every per-pool series of a deleted pool (``series``: its bound ones, if any)."""
        if series is not None:
            series.remove_labelled()
        namespace, pool = labels[0], labels[1]
        for result in RECONCILE_RESULTS:
            with contextlib.suppress(KeyError):
                self.reconcile_total.remove(namespace, pool, result)
        with contextlib.suppress(KeyError):
            self.reconcile_errors.remove(namespace, pool)
        for metric in (
            self.backlog,
            self.in_flight,
            self.delayed,
            self.dead_letter,
            self.dead_letter_oldest_age,
            self.oldest_job_age,
            self.replicas_desired,
            self.replicas_current,
            self.replicas_ready,
            self.replicas_max,
            self.paused,
            self.dead_letter_alert_threshold,
            self.oldest_job_age_target,
            self.workers_expired,
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
        parsed = events.parse_subscription_queue(labels[2])
        if parsed is not None:
            for metric in (self.subscription_backlog, self.subscription_oldest_event_age):
                with contextlib.suppress(KeyError):
                    metric.remove(*labels, *parsed)


@dataclass(frozen=True)
class SubscriptionSeries:
    """The lag series of a pool whose queue is subscription ``group`` of ``topic``."""

    topic: str
    group: str
    backlog: Any
    age_gauge: Gauge
    labels: tuple[str, ...]  # the pool's, then topic and group

    def record(self, queue_stats: base.QueueStats, *, age_measured: bool = True) -> None:
        """Set the lag read off the queue's stats, as ``workerfleet topic lag`` reads it.

        A broker that does not measure the oldest job's age (``Capabilities.oldest_job_age``
        False) reports 0: the age series is then absent (no data), never a 0 that would keep
        WorkerPoolSubscriptionLagHigh quiet however far behind the group is.
        """
        lag = base.SubscriptionLag.of(self.topic, self.group, queue_stats)
        self.backlog.set(lag.backlog)
        if age_measured:
            self.age_gauge.labels(*self.labels).set(lag.oldest_event_age_seconds)
        else:
            with contextlib.suppress(KeyError):
                self.age_gauge.remove(*self.labels)


@dataclass(frozen=True)
class PoolSeries:
    """One pool's bound series (see :meth:`OperatorMetrics.bind_pool`)."""

    info: _OneSeries  # workerfleet_pool_info{broker}
    backlog: Any
    in_flight: Any
    delayed: Any
    dead_letter: Any
    dead_letter_oldest_age: Any
    oldest_job_age: _OneSeries  # absent, not 0, while the broker cannot measure it
    replicas_desired: Any
    replicas_current: Any
    replicas_ready: Any
    replicas_max: Any
    paused: Any
    dead_letter_alert_threshold: Any
    oldest_job_age_target: Any
    workers_expired: Any
    queue_reachable: _OneSeries
    eviction_unsafe: _OneSeries
    conditions: dict[str, _OneSeries]
    condition_gauge: Gauge
    labels: tuple[str, ...]
    jobs_enqueued: Callable[[float], None]
    jobs_completed: Callable[[float], None]
    jobs_failed: Callable[[float], None]
    jobs_dead_lettered: Callable[[float], None]
    workers_killed: Callable[[float], None]
    subscription: SubscriptionSeries | None  # None: the pool's queue is not a subscription's

    def record_poll(
        self,
        queue_stats: stats.QueueStats | None,
        *,
        desired: int,
        max_replicas: int,
        alert_threshold: int,
        oldest_job_age_target: float,
        oldest_age_measured: bool = True,
    ) -> None:
        """Set what one autoscaler poll knows; replicas current/ready are the caller's to set.

        ``oldest_age_measured`` False: the broker reports no oldest-job age (the
        Observation's ``age_unavailable``); the pool's and the subscription's age series are
        left out (no data), never a 0 that would keep WorkerPoolOldestJobTooOld quiet.

        Without stats (the queue was unreadable) the queue series keep their last values and
        ``queue_reachable`` says why they stopped moving (reasons as the QueueReachable
        condition's: QueueRead, QueueUnreachable).
        """
        if queue_stats is not None:
            self.record_queue_reachable(True, api.Reason.QUEUE_READ)
        else:
            self.record_queue_reachable(False, api.Reason.QUEUE_UNREACHABLE)
        self.replicas_desired.set(desired)
        self.replicas_max.set(max_replicas)
        self.dead_letter_alert_threshold.set(float(alert_threshold))
        self.oldest_job_age_target.set(float(oldest_job_age_target))
        if queue_stats is None:
            return
        s = queue_stats
        self.backlog.set(s.backlog)
        self.in_flight.set(s.in_flight)
        self.delayed.set(s.future_delayed)
        self.dead_letter.set(s.dead_letter)
        self.dead_letter_oldest_age.set(s.oldest_dead_letter_age_seconds)
        if oldest_age_measured:
            self.oldest_job_age.set((), s.oldest_job_age_seconds)
        else:
            self.oldest_job_age.remove()
        if self.subscription is not None:
            self.subscription.record(s, age_measured=oldest_age_measured)
        self.jobs_enqueued(s.enqueued_total)
        self.jobs_completed(s.completed_total)
        self.jobs_failed(s.failed_total)
        self.jobs_dead_lettered(s.dead_lettered_total)
        self.workers_killed(s.workers_lost_total)
        self.workers_expired.set(s.workers_expired)
        if s.maxmemory_policy is not None:
            unsafe = stats.build_eviction_warning(s.maxmemory_policy) is not None
            self.eviction_unsafe.set((s.maxmemory_policy,), 1.0 if unsafe else 0.0)

    def record_queue_reachable(self, reachable: bool, reason: str) -> None:
        """1/0 with the reason, replacing the series of the previous reason."""
        self.queue_reachable.set((reason,), 1.0 if reachable else 0.0)

    def record_conditions(self, conditions: Iterable[tuple[str, str, str]]) -> None:
        """The pool's conditions as (type, status, reason): one series per type, value 1."""
        for ctype, status, reason in conditions:
            one = self.conditions.get(ctype)
            if one is None:
                one = self.conditions[ctype] = _OneSeries(self.condition_gauge, self.labels)
            one.set((ctype, status, reason), 1.0)

    def remove_labelled(self) -> None:
        """Remove the series whose extra labels change (broker, reason, condition status)."""
        self.info.remove()
        self.queue_reachable.remove()
        self.eviction_unsafe.remove()
        for one in self.conditions.values():
            one.remove()


RECONCILE_RESULTS = ("success", "invalid", "error")


class _OneSeries:
    """One series of a gauge for a pool whose extra label values change over time.

    Setting other extra labels removes the previous series, so there is always exactly one.
    """

    def __init__(self, gauge: Gauge, labels: Sequence[str]) -> None:
        self._gauge = gauge
        self._labels = tuple(labels)
        self._extra: tuple[str, ...] | None = None

    def set(self, extra: tuple[str, ...], value: float) -> None:
        if self._extra is not None and self._extra != extra:
            self.remove()
        self._extra = extra
        self._gauge.labels(*self._labels, *extra).set(value)

    def remove(self) -> None:
        if self._extra is not None:
            with contextlib.suppress(KeyError):
                self._gauge.remove(*self._labels, *self._extra)
            self._extra = None


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
