"""The operator's Prometheus metrics: per-pool gauges and the reconcile counters/histogram.

Names are the contract in docs/architecture.md ("Metrics"); the alert rules in deploy/alerts/ use
them. Created once per operator process by ``shell.main`` (or per test run with its own registry)
and updated by ``shell.report`` and ``shell.scaler`` after every reconcile and every autoscaler
poll; the local fleet (``local.runner``) exports the same per-pool series through
:meth:`PoolSeries.record_poll`.

The per-pool series are one collector (:class:`_PoolCollector`) reading each pool's
:class:`PoolSeries`, a slotted record of plain numbers, when Prometheus scrapes: not a labelled
child per pool and series. A child costs about 0.5 KB (an object with its own dict, a value
cell, a lock) and a pool had ~30 of them: 14 KB of the operator's memory per pool, measured at
2,000 pools on the real API server (``bench/operator_scale.py``), for numbers written every poll
and read every 15 s or so. A record is under 1 KB; a scrape builds the families then.

Three per-pool series carry a label whose value changes: ``workerfleet_pool_queue_reachable``
(``reason``), ``workerfleet_pool_redis_eviction_unsafe`` (``policy``) and
``workerfleet_pool_condition`` (``status``, ``reason``; one series per condition type). Each
keeps exactly one series per pool (and type): a new label value replaces the previous series,
so a query never sees a stale reason next to the current one.

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

Nothing is exported before it is known: a gauge from its first value on, the queue series and
the mirrored counters from the first stats read (an operator that just started, or took over as
leader, has none yet; nor has a pool held on bad input or whose queue was never reachable). A 0
in that gap would be a live series, which the alert rules' stand-in for a restart
(``last_over_time``, deploy/alerts/workerfleet-alerts.yaml) does not replace: the mirrored
counters would grow from 0 to their Redis value at the first poll (a false
WorkerPoolDeadLetterGrowing or WorkerPoolDrainKilled for every job ever dead-lettered or worker
ever killed), and the `for:` timers of WorkerPoolDeadLetterBacklog and WorkerPoolDeadLetterStale
would start again. A counter the broker does not keep (SQS keeps none: ``QueueStats``' totals
are None) is never exported for that pool: a flat 0 would say nothing was ever dead-lettered.
Nor is the oldest dead letter's age where the broker cannot tell it (None on SQS and RabbitMQ):
a 0 would keep WorkerPoolDeadLetterStale quiet for a DLQ of week-old letters.

Threads: the records are written on the operator's event loop and read by the exporter's HTTP
thread. A write replaces one slot or attribute (atomic), a label set that changes is replaced
as a whole tuple, and the pool table changes only under the collector's lock.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from worker_runtime import events
from worker_runtime.brokers import base
from worker_runtime.brokers.redis import stats
from workerfleet_operator import api

POOL_LABELS = ("namespace", "pool", "queue")
SUBSCRIPTION_LABELS = (*POOL_LABELS, "topic", "group")


# The plain per-pool gauges, (name, help), in the order of PoolSeries.gauges; each is exported
# from its first value on (None until then: no series, never a 0 nobody measured).
_GAUGES: tuple[tuple[str, str], ...] = (
    ("workerfleet_pool_backlog", "Ready jobs not yet delivered (incl. due retries)."),
    ("workerfleet_pool_in_flight", "Jobs delivered and not yet finished."),
    ("workerfleet_pool_delayed", "Delayed/retry jobs still waiting for their time."),
    ("workerfleet_pool_dead_letter", "Entries in the dead-letter queue."),
    (
        "workerfleet_pool_dead_letter_oldest_age_seconds",
        "How long the oldest entry of the dead-letter queue has waited (0 when empty).",
    ),
    ("workerfleet_pool_replicas_desired", "Replicas the autoscaler wants."),
    ("workerfleet_pool_replicas_current", "spec.replicas of the Deployment."),
    ("workerfleet_pool_replicas_ready", "Ready replicas of the Deployment."),
    ("workerfleet_pool_replicas_max", "autoscaling.maxReplicas of the pool."),
    (
        "workerfleet_pool_paused",
        "1 while the pool is paused (workerfleet.io/paused or paused-replicas), else 0.",
    ),
    ("workerfleet_pool_dead_letter_alert_threshold", "deadLetter.alertThreshold of the pool."),
    (
        "workerfleet_pool_oldest_job_age_target_seconds",
        "autoscaling.targetOldestJobAgeSeconds of the pool (0: not set).",
    ),
    (
        "workerfleet_pool_workers_expired",
        "Worker heartbeats expired and not yet reaped (killed, or stalled and may renew).",
    ),
)
(
    _BACKLOG,
    _IN_FLIGHT,
    _DELAYED,
    _DEAD_LETTER,
    _DEAD_LETTER_OLDEST_AGE,
    _REPLICAS_DESIRED,
    _REPLICAS_CURRENT,
    _REPLICAS_READY,
    _REPLICAS_MAX,
    _PAUSED,
    _ALERT_THRESHOLD,
    _AGE_TARGET,
    _WORKERS_EXPIRED,
) = range(len(_GAUGES))

# Counters copied from the broker, where they only grow, in the order of PoolSeries.totals:
# exported with the counter type (``*_total``), since a gauge would break ``rate()`` in
# dashboards; a restarted operator starts from the broker's value anyway (and exports nothing
# before it has read it: see the module's docstring).
_MIRRORED: tuple[tuple[str, str], ...] = (
    ("workerfleet_pool_jobs_enqueued", "Jobs ever enqueued (from Redis)."),
    ("workerfleet_pool_jobs_completed", "Jobs completed (from Redis)."),
    ("workerfleet_pool_jobs_failed", "Handler failures (from Redis)."),
    ("workerfleet_pool_jobs_dead_lettered", "Jobs dead-lettered (from Redis)."),
    (
        "workerfleet_pool_jobs_cancelled",
        "Jobs cancelled by id before they started (from Redis).",
    ),
    (
        "workerfleet_pool_workers_killed",
        "Expired worker heartbeats reaped without a clean deregistration (from Redis).",
    ),
)

RECONCILE_RESULTS = ("success", "invalid", "error")
# Who waited a Retry-After: the request itself, a pool's loop, or nobody (an Event dropped).
RETRY_AFTER_WAITED_IN = ("request", "pool", "dropped")


class OperatorMetrics:
    """Every series the operator exports, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._pools = _PoolCollector()
        self.registry.register(self._pools)
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
        self.api_retry_after = Histogram(
            "workerfleet_operator_api_retry_after_seconds",
            "Waits the API server asked for (Retry-After, as honoured), by who waited them: "
            "the request, before it was sent again; a pool's loop, whose next reconcile or "
            "poll came no sooner (longer ones); dropped: nobody, a best-effort Event post "
            "given up.",
            ["waited_in"],
            buckets=(0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0),
            registry=self.registry,
        )

    def bind_pool(self, labels: Sequence[str], *, broker: str = "redis") -> PoolSeries:
        """One pool's series (namespace, pool, queue), exported from now until forgotten.

        ``broker`` (``redis``, ``rabbitmq``, ``sqs``: the pool's ``spec.queue`` block) goes on
        the pool's ``workerfleet_pool_info`` series: every other series keeps the same name and
        labels on every broker, and a query or panel that needs the broker joins it."""
        series = PoolSeries(tuple(labels), broker)
        self._pools.add(series)
        return series

    def count_reconcile(self, namespace: str, pool: str, result: str) -> None:
        """Count one reconcile of a pool (``result``: success, invalid or error)."""
        self.reconcile_total.labels(namespace, pool, result).inc()
        errors = self.reconcile_errors.labels(namespace, pool)  # exported from 0, not at the first
        if result == "error":
            errors.inc()

    def observe_retry_after(self, seconds: float, waited_in: str) -> None:
        """Count one wait the API server asked for, by who waited it (``waited_in``, one of
        :data:`RETRY_AFTER_WAITED_IN`)."""
        self.api_retry_after.labels(waited_in).observe(seconds)

    def observe_slept_retry_after(self, seconds: float, slept: bool) -> None:
        """``KubeClient``'s hook: count a wait the request slept before it was sent again.

        One it handed back to its caller is counted by that caller, as it is waited (a pool's
        loop) or not (a dropped Event post): the client cannot tell which, and counting every
        one as the pool's made Event posts given up at once look like pools waiting."""
        if slept:
            self.observe_retry_after(seconds, "request")

    def forget_pool(self, labels: Sequence[str], series: PoolSeries | None = None) -> None:
        """Drop every per-pool series of a deleted pool (or of its old labels: a renamed queue).

        ``series``: the record bound for ``labels``, if the caller has it; only that record is
        dropped then, never one bound again for the same labels since."""
        self._pools.discard(tuple(labels), series)
        namespace, pool = labels[0], labels[1]
        for result in RECONCILE_RESULTS:
            with contextlib.suppress(KeyError):
                self.reconcile_total.remove(namespace, pool, result)
        with contextlib.suppress(KeyError):
            self.reconcile_errors.remove(namespace, pool)


class SubscriptionSeries:
    """The lag of a pool whose queue is subscription ``group`` of ``topic``."""

    __slots__ = ("backlog", "group", "oldest_event_age", "topic")

    def __init__(self, topic: str, group: str) -> None:
        self.topic = topic
        self.group = group
        self.backlog: float | None = None  # None: no series (no stats read yet)
        self.oldest_event_age: float | None = None  # None: no series (not measured)

    def record(self, queue_stats: base.QueueStats, *, age_measured: bool = True) -> None:
        """Set the lag read off the queue's stats, as ``workerfleet topic lag`` reads it.

        A broker that does not measure the oldest job's age (``Capabilities.oldest_job_age``
        False) reports 0: the age series is then absent (no data), never a 0 that would keep
        WorkerPoolSubscriptionLagHigh quiet however far behind the group is.
        """
        lag = base.SubscriptionLag.of(self.topic, self.group, queue_stats)
        self.backlog = float(lag.backlog)
        self.oldest_event_age = lag.oldest_event_age_seconds if age_measured else None


class PoolSeries:
    """One pool's series as plain numbers, read by the collector at scrape time.

    Made by :meth:`OperatorMetrics.bind_pool`; written by the pool's reconcile and autoscaler
    poll (``shell.report``, ``shell.scaler``) or the local fleet (``local.runner``).
    """

    __slots__ = (
        "broker",
        "conditions",
        "eviction_unsafe",
        "gauges",
        "labels",
        "oldest_job_age",
        "queue_reachable",
        "subscription",
        "totals",
    )

    def __init__(self, labels: tuple[str, ...], broker: str) -> None:
        self.labels = labels
        self.broker = broker
        self.gauges: list[float | None] = [None] * len(_GAUGES)  # None: not known yet
        # None until the first stats read; an entry None while the broker keeps no such counter
        self.totals: list[float | None] | None = None
        self.oldest_job_age: float | None = None  # None: absent while the broker cannot say
        self.queue_reachable: tuple[str, float] | None = None  # (reason, 1 or 0)
        self.eviction_unsafe: tuple[str, float] | None = None  # (policy, 1 or 0)
        # type -> (status, reason); replaced whole on a change, never edited in place
        self.conditions: dict[str, tuple[str, str]] = {}
        parsed = events.parse_subscription_queue(labels[2])
        self.subscription = None if parsed is None else SubscriptionSeries(*parsed)

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
        condition's: QueueRead, QueueUnreachable); before the first stats they have none and
        are not exported.
        """
        if queue_stats is not None:
            self.record_queue_reachable(True, api.Reason.QUEUE_READ)
        else:
            self.record_queue_reachable(False, api.Reason.QUEUE_UNREACHABLE)
        gauges = self.gauges
        gauges[_REPLICAS_DESIRED] = float(desired)
        gauges[_REPLICAS_MAX] = float(max_replicas)
        gauges[_ALERT_THRESHOLD] = float(alert_threshold)
        gauges[_AGE_TARGET] = float(oldest_job_age_target)
        if queue_stats is None:
            return
        s = queue_stats
        gauges[_BACKLOG] = float(s.backlog)
        gauges[_IN_FLIGHT] = float(s.in_flight)
        gauges[_DELAYED] = float(s.future_delayed)
        gauges[_DEAD_LETTER] = float(s.dead_letter)
        dead_age = s.oldest_dead_letter_age_seconds  # None: the broker cannot tell (SQS)
        gauges[_DEAD_LETTER_OLDEST_AGE] = None if dead_age is None else float(dead_age)
        gauges[_WORKERS_EXPIRED] = float(s.workers_expired)
        self.oldest_job_age = float(s.oldest_job_age_seconds) if oldest_age_measured else None
        if self.subscription is not None:
            self.subscription.record(s, age_measured=oldest_age_measured)
        self.totals = [
            None if total is None else float(total)
            for total in (
                s.enqueued_total,
                s.completed_total,
                s.failed_total,
                s.dead_lettered_total,
                s.cancelled_total,
                s.workers_lost_total,
            )
        ]
        if s.maxmemory_policy is not None:
            unsafe = stats.build_eviction_warning(s.maxmemory_policy) is not None
            self.eviction_unsafe = (s.maxmemory_policy, 1.0 if unsafe else 0.0)

    def record_replicas(self, current: int, ready: int) -> None:
        """The Deployment's spec.replicas and ready replicas."""
        self.gauges[_REPLICAS_CURRENT] = float(current)
        self.gauges[_REPLICAS_READY] = float(ready)

    def record_paused(self, paused: bool) -> None:
        """1 while the pool is paused, else 0."""
        self.gauges[_PAUSED] = 1.0 if paused else 0.0

    def record_queue_reachable(self, reachable: bool, reason: str) -> None:
        """1/0 with the reason, replacing the series of the previous reason."""
        self.queue_reachable = (reason, 1.0 if reachable else 0.0)

    def record_conditions(self, conditions: Iterable[tuple[str, str, str]]) -> None:
        """The pool's conditions as (type, status, reason): one series per type, value 1."""
        current = self.conditions
        wanted = {**current, **{ctype: (status, reason) for ctype, status, reason in conditions}}
        if wanted != current:
            self.conditions = wanted


class _PoolCollector(Collector):
    """Every bound pool's series, built into metric families when the registry collects."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, ...], PoolSeries] = {}

    def add(self, series: PoolSeries) -> None:
        with self._lock:
            self._pools[series.labels] = series

    def discard(self, labels: tuple[str, ...], series: PoolSeries | None) -> None:
        with self._lock:
            if series is None or self._pools.get(labels) is series:
                self._pools.pop(labels, None)

    def describe(self) -> Iterable[Metric]:
        # The names, for the registry's check that no other collector exports them.
        return _build_families(())

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            pools = list(self._pools.values())
        return _build_families(pools)


def _build_families(pools: Iterable[PoolSeries]) -> list[Metric]:
    """The per-pool metric families, with one sample per pool (and label value) that has one."""
    info = GaugeMetricFamily(
        "workerfleet_pool_info",
        "1 for every pool the operator serves; broker names its queue system "
        "(redis, rabbitmq, sqs).",
        labels=(*POOL_LABELS, "broker"),
    )
    gauges = [GaugeMetricFamily(name, doc, labels=POOL_LABELS) for name, doc in _GAUGES]
    oldest_job_age = GaugeMetricFamily(
        "workerfleet_pool_oldest_job_age_seconds",
        "Age of the oldest ready job not yet started.",
        labels=POOL_LABELS,
    )
    totals = [CounterMetricFamily(name, doc, labels=POOL_LABELS) for name, doc in _MIRRORED]
    reachable = GaugeMetricFamily(
        "workerfleet_pool_queue_reachable",
        "1 if the last stats read worked, else 0; reason: the QueueReachable reason.",
        labels=(*POOL_LABELS, "reason"),
    )
    eviction = GaugeMetricFamily(
        "workerfleet_pool_redis_eviction_unsafe",
        "1 when the queue's Redis maxmemory-policy (label policy) may evict its keys, 0 for"
        " noeviction; absent while the policy could not be read.",
        labels=(*POOL_LABELS, "policy"),
    )
    condition = GaugeMetricFamily(
        "workerfleet_pool_condition",
        "1 for the pool's current status and reason of each condition type.",
        labels=(*POOL_LABELS, "type", "status", "reason"),
    )
    subscription_backlog = GaugeMetricFamily(
        "workerfleet_pool_subscription_backlog",
        "Events of the subscription (topic, group) not yet started: its queue's backlog.",
        labels=SUBSCRIPTION_LABELS,
    )
    subscription_age = GaugeMetricFamily(
        "workerfleet_pool_subscription_oldest_event_age_seconds",
        "How long the oldest event of the subscription (topic, group) not yet started has"
        " waited (0 when none waits).",
        labels=SUBSCRIPTION_LABELS,
    )
    for pool in pools:
        labels = list(pool.labels)
        info.add_metric([*labels, pool.broker], 1.0)
        for family, gauge in zip(gauges, pool.gauges, strict=True):
            if gauge is not None:
                family.add_metric(labels, gauge)
        if pool.totals is not None:
            for total, value in zip(totals, pool.totals, strict=True):
                if value is not None:
                    total.add_metric(labels, value)
        age = pool.oldest_job_age
        if age is not None:
            oldest_job_age.add_metric(labels, age)
        one = pool.queue_reachable
        if one is not None:
            reachable.add_metric([*labels, one[0]], one[1])
        one = pool.eviction_unsafe
        if one is not None:
            eviction.add_metric([*labels, one[0]], one[1])
        for ctype, (status, reason) in pool.conditions.items():
            condition.add_metric([*labels, ctype, status, reason], 1.0)
        sub = pool.subscription
        if sub is not None:
            sub_labels = [*labels, sub.topic, sub.group]
            if sub.backlog is not None:
                subscription_backlog.add_metric(sub_labels, sub.backlog)
            sub_age = sub.oldest_event_age
            if sub_age is not None:
                subscription_age.add_metric(sub_labels, sub_age)
    return [
        info,
        *gauges,
        oldest_job_age,
        *totals,
        reachable,
        eviction,
        condition,
        subscription_backlog,
        subscription_age,
    ]
