"""What Prometheus scrapes from a pool the operator has not read the queue of yet.

An operator that just started (or took over as leader) binds a pool's series at its first
reconcile, before the autoscaler's first poll; a pool whose queue is unreachable, or that is
held on bad input, may never read it. In that gap the queue series and the counters mirrored
from Redis must be absent, not 0: the alert rules bridge a restart with ``last_over_time`` only
while no live series exists, so an exported 0 followed by the real value reads as growth (the
whole DLQ history paged as "dead-lettered in the last 5 minutes"). The rules' side of the same
restart is deploy/alerts/tests/dead_letter_growing.yaml and drain_killed.yaml.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from workerfleet_operator import api
from workerfleet_operator.shell import metrics

from worker_runtime.brokers import base

LABELS = ("shop", "email-worker", "emails")

# Read off the queue: absent until the first stats.
QUEUE_SERIES = (
    "workerfleet_pool_backlog",
    "workerfleet_pool_in_flight",
    "workerfleet_pool_delayed",
    "workerfleet_pool_dead_letter",
    "workerfleet_pool_dead_letter_oldest_age_seconds",
    "workerfleet_pool_workers_expired",
    "workerfleet_pool_oldest_job_age_seconds",
    "workerfleet_pool_jobs_enqueued_total",
    "workerfleet_pool_jobs_completed_total",
    "workerfleet_pool_jobs_failed_total",
    "workerfleet_pool_jobs_dead_lettered_total",
    "workerfleet_pool_jobs_cancelled_total",
    "workerfleet_pool_workers_killed_total",
)
# Set by every poll, read or not: absent until the first poll.
POLL_SERIES = (
    "workerfleet_pool_replicas_desired",
    "workerfleet_pool_replicas_max",
    "workerfleet_pool_dead_letter_alert_threshold",
    "workerfleet_pool_oldest_job_age_target_seconds",
)


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    """One scrape: each sample's name (with its extra labels beyond the pool's) -> value."""
    found = {}
    for family in registry.collect():
        for sample in family.samples:
            extra = {k: v for k, v in sample.labels.items() if k not in metrics.POOL_LABELS}
            key = sample.name + "".join(f",{k}={v}" for k, v in sorted(extra.items()))
            found[key] = sample.value
    return found


def build_stats(queue: str, *, dead_letter: int, dead_lettered_total: int) -> base.QueueStats:
    return base.QueueStats(
        queue=queue, now=1000.0, backlog=7, due_delayed=0, future_delayed=2, in_flight=1,
        dead_letter=dead_letter, oldest_job_age_seconds=3.0, enqueued_total=9000,
        completed_total=8000, failed_total=600, retried_total=100,
        dead_lettered_total=dead_lettered_total, cancelled_total=30, workers_lost_total=4,
        workers_expired=0, workers=(),
    )  # fmt: skip


def test_a_restarted_operator_exports_the_queue_series_first_with_their_redis_values() -> None:
    # Given a new operator process whose first reconcile bound the pool's series and exported
    # its conditions (what shell.report does before any poll)
    registry = CollectorRegistry()
    series = metrics.OperatorMetrics(registry).bind_pool(LABELS)
    series.record_conditions([("Ready", "True", "AsExpected")])
    series.record_paused(False)
    scrapes = [scrape(registry)]
    # When its first poll cannot read the queue, and the next one reads 500 jobs ever
    # dead-lettered, 3 of them still in the DLQ
    series.record_poll(
        None, desired=2, max_replicas=10, alert_threshold=5, oldest_job_age_target=0.0
    )
    scrapes.append(scrape(registry))
    stats = build_stats(LABELS[2], dead_letter=3, dead_lettered_total=500)
    series.record_poll(
        stats, desired=2, max_replicas=10, alert_threshold=5, oldest_job_age_target=0.0
    )
    series.record_replicas(2, 2)
    scrapes.append(scrape(registry))
    # Then the mirrored counter's history as scraped is: absent, absent, 500 (never 0 -> 500)
    history = [s.get("workerfleet_pool_jobs_dead_lettered_total") for s in scrapes]
    assert history == [None, None, 500.0]
    # And no queue series or replica count existed before the queue was read, nor any value
    # of a poll before the first poll; the conditions did, from the first reconcile on
    before_poll, unreadable, read = scrapes
    for name in (*QUEUE_SERIES, *POLL_SERIES, "workerfleet_pool_replicas_current"):
        assert name not in before_poll, name
    for name in (*QUEUE_SERIES, "workerfleet_pool_replicas_ready"):
        assert name not in unreadable, name
    assert before_poll["workerfleet_pool_condition,reason=AsExpected,status=True,type=Ready"] == 1
    assert before_poll["workerfleet_pool_paused"] == 0
    assert (
        unreadable[f"workerfleet_pool_queue_reachable,reason={api.Reason.QUEUE_UNREACHABLE}"] == 0
    )
    assert {name: unreadable[name] for name in POLL_SERIES} == {
        "workerfleet_pool_replicas_desired": 2,
        "workerfleet_pool_replicas_max": 10,
        "workerfleet_pool_dead_letter_alert_threshold": 5,
        "workerfleet_pool_oldest_job_age_target_seconds": 0,
    }
    # And once read, every series is there with the queue's values
    assert {name: read[name] for name in QUEUE_SERIES} == {
        "workerfleet_pool_backlog": 7,
        "workerfleet_pool_in_flight": 1,
        "workerfleet_pool_delayed": 2,
        "workerfleet_pool_dead_letter": 3,
        "workerfleet_pool_dead_letter_oldest_age_seconds": 0,
        "workerfleet_pool_workers_expired": 0,
        "workerfleet_pool_oldest_job_age_seconds": 3,
        "workerfleet_pool_jobs_enqueued_total": 9000,
        "workerfleet_pool_jobs_completed_total": 8000,
        "workerfleet_pool_jobs_failed_total": 600,
        "workerfleet_pool_jobs_dead_lettered_total": 500,
        "workerfleet_pool_jobs_cancelled_total": 30,
        "workerfleet_pool_workers_killed_total": 4,
    }


def test_a_subscription_pool_exports_no_lag_before_its_first_stats() -> None:
    # Given a pool on subscription email of shop.order.placed, bound but never read
    registry = CollectorRegistry()
    labels = ("shop", "email-sender", "shop.order.placed:email")
    series = metrics.OperatorMetrics(registry).bind_pool(labels)
    series.record_poll(
        None, desired=0, max_replicas=3, alert_threshold=1, oldest_job_age_target=0.0
    )
    backlog = "workerfleet_pool_subscription_backlog,group=email,topic=shop.order.placed"
    # Then it has no lag series (a 0 would say the group is caught up)
    assert backlog not in scrape(registry)
    # When the queue is read, the lag is there
    series.record_poll(
        build_stats(labels[2], dead_letter=0, dead_lettered_total=0),
        desired=1, max_replicas=3, alert_threshold=1, oldest_job_age_target=0.0,
    )  # fmt: skip
    assert scrape(registry)[backlog] == 7
