"""What the operator makes of a queue whose broker keeps no totals (SQS: ``QueueStats``' ``*_total``
are None): no counter series, no arrival or completion rate, never a 0 nobody counted.

A 0 reads as "nothing happened": WorkerPoolDeadLetterGrowing could never fire and the status
said arrival 0/s on a busy queue. On SQS the DLQ's length (``workerfleet_pool_dead_letter``,
WorkerPoolDeadLetterBacklog) is what shows dead letters. The SQS side is
tests/worker_runtime/test_sqs_stats_totals.py.
"""

from __future__ import annotations

import dataclasses

import scaling_fixtures as fx
from prometheus_client import CollectorRegistry
from workerfleet_operator import autoscaling
from workerfleet_operator.console import sources
from workerfleet_operator.shell import metrics

from worker_runtime.brokers import base

TOTALS = (
    "workerfleet_pool_jobs_enqueued_total",
    "workerfleet_pool_jobs_completed_total",
    "workerfleet_pool_jobs_failed_total",
    "workerfleet_pool_jobs_dead_lettered_total",
    "workerfleet_pool_jobs_cancelled_total",
    "workerfleet_pool_workers_killed_total",
)


def unkept(stats: base.QueueStats) -> base.QueueStats:
    """``stats`` as a broker without totals reports them: every ``*_total`` None."""
    fields = [f.name for f in dataclasses.fields(stats) if f.name.endswith("_total")]
    return dataclasses.replace(stats, **dict.fromkeys(fields))


def test_a_pool_whose_broker_keeps_no_totals_exports_its_queue_series_and_no_counter() -> None:
    # Given a pool's series, and its queue read with 2 dead letters and no totals (SQS)
    registry = CollectorRegistry()
    series = metrics.OperatorMetrics(registry).bind_pool(("shop", "mailer", "emails"))
    stats = unkept(fx.queue_stats(1000.0, backlog=7, in_flight=1, dead_letter=2))
    # When the autoscaler's poll records it
    series.record_poll(
        stats, desired=1, max_replicas=5, alert_threshold=1, oldest_job_age_target=0.0
    )
    # Then the scrape has the queue's gauges, and no counter at all (a flat 0 would say nothing
    # was ever dead-lettered, and the growth alert could never fire)
    scraped = {s.name: s.value for family in registry.collect() for s in family.samples}
    assert (scraped["workerfleet_pool_backlog"], scraped["workerfleet_pool_dead_letter"]) == (7, 2)
    assert [name for name in TOTALS if name in scraped] == []


def test_the_autoscaler_measures_no_rate_from_totals_the_broker_does_not_keep() -> None:
    # Given a pool scaling on its backlog over a queue whose broker keeps no totals
    policy = fx.pool_policy(targetBacklogPerReplica=10)
    polls = fx.polls(0.0, 8, backlog=40, in_flight=4)
    timeline = [fx.Poll(p.at, None if p.stats is None else unkept(p.stats)) for p in polls]
    # When it polls for longer than its rate window
    decisions = fx.run(policy, timeline, current=1)
    # Then it still scales on the queue's counts, and reports no arrival or completion rate
    # (not 0/s, which would also hide a busy queue's traffic)
    last = decisions[-1]
    assert last.signals["backlog"] == 4 and last.desired >= 4
    assert (last.rates.arrival, last.rates.completion, last.rates.service_per_replica) == (
        None,
        None,
        None,
    )
    assert "arrival" not in autoscaling.explain_decision(last)


def test_the_console_shows_no_rates_for_a_broker_that_keeps_no_totals() -> None:
    # Given the console's rate tracker on a fake clock
    clock = iter([0.0, 10.0])
    tracker = sources.RateTracker(clock=lambda: next(clock))
    stats = unkept(fx.queue_stats(0.0, backlog=3))
    # When it reads the queue twice, 10 s apart
    tracker.observe("emails", stats)
    # Then it has no rates to show (not 0/s)
    assert tracker.observe("emails", stats) is None


def test_the_console_shows_the_rates_of_the_totals_a_broker_keeps_and_no_failure_rate() -> None:
    # Given the console's rate tracker on a fake clock, and a queue whose broker keeps the
    # enqueued and completed totals but no failed one (RabbitMQ)
    clock = iter([0.0, 10.0])
    tracker = sources.RateTracker(clock=lambda: next(clock))
    before = dataclasses.replace(
        unkept(fx.queue_stats(0.0, backlog=3)), enqueued_total=100, completed_total=50
    )
    after = dataclasses.replace(before, enqueued_total=130, completed_total=70)
    # When it reads the queue twice, 10 s apart
    tracker.observe("emails", before)
    rates = tracker.observe("emails", after)
    # Then it shows the arrival and completion rates, and no failure rate (not 0/s)
    assert rates == {"enqueued": 3.0, "completed": 2.0}


def test_a_pool_whose_broker_cannot_tell_its_oldest_dead_letters_age_exports_no_age_series() -> (
    None
):
    # Given a pool's series, and its queue read with 2 dead letters whose age the broker cannot
    # tell (SQS, RabbitMQ: no peek at the DLQ's head)
    registry = CollectorRegistry()
    series = metrics.OperatorMetrics(registry).bind_pool(("shop", "mailer", "emails"))
    stats = dataclasses.replace(
        fx.queue_stats(1000.0, dead_letter=2), oldest_dead_letter_age_seconds=None
    )
    # When the autoscaler's poll records it
    series.record_poll(
        stats, desired=1, max_replicas=5, alert_threshold=1, oldest_job_age_target=0.0
    )
    # Then the scrape has the DLQ's length and no age series (a 0 would keep
    # WorkerPoolDeadLetterStale quiet however old the letters are)
    scraped = {s.name: s.value for family in registry.collect() for s in family.samples}
    assert scraped["workerfleet_pool_dead_letter"] == 2
    assert "workerfleet_pool_dead_letter_oldest_age_seconds" not in scraped
