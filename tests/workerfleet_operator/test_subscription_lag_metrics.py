"""Per-subscription lag as the operator's per-pool series, read off real subscriptions.

A real redis-server (and a real rabbitmq-server for a broker without an oldest-job age);
events published through the App onto registered subscriptions; the
operator's series (``shell.metrics``) fed from the real one-round-trip stats read, as the
autoscaler poll feeds them. What the series say is compared with what the broker says
(``Topics.fetch_topic_lag``, the source of ``workerfleet topic lag``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import redis
from prometheus_client import CollectorRegistry
from workerfleet_operator.shell import metrics

from tests.support.redis_servers import RedisServer
from tests.workerfleet_operator.conftest import (
    GROUP,
    NAMESPACE,
    OperatorRunner,
    build_pool,
    build_secret,
    wait_for_condition,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from worker_runtime import App, JobContext, envelope, events, queue_commands
from worker_runtime.brokers import base, open_broker
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker
from worker_runtime.brokers.redis import stats

BACKLOG = "workerfleet_pool_subscription_backlog"
AGE = "workerfleet_pool_subscription_oldest_event_age_seconds"


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float | None:
    return registry.get_sample_value(name, labels)


def samples_named(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [dict(s.labels) for m in registry.collect() for s in m.samples if s.name == name]


async def _publish(url: str, topic: str, groups: tuple[str, ...], count: int) -> None:
    app = App(queue="publisher", redis_url=url)
    for group in groups:

        @app.subscribe(topic, group=group)
        async def handle(data: dict[str, int], ctx: JobContext) -> None:  # never run here
            del data, ctx

    await app.register_subscriptions()
    for n in range(count):
        await app.publish(topic, {"n": n})
    await app.aclose()


async def _enqueue_one(url: str, queue: str) -> None:
    app = App(queue=queue, redis_url=url)
    await app.enqueue("send", {})
    await app.aclose()


async def _enqueue_on_rabbitmq(url: str, queue: str, count: int) -> None:
    b = rabbitmq_broker.RabbitMQBroker(url, queue)
    try:
        await b.enqueue_many(
            [base.EnqueueRequest(envelope.build_envelope("t", {"n": i})) for i in range(count)]
        )
    finally:
        await b.close()


async def _topic_lag(url: str, topic: str) -> list[base.SubscriptionLag]:
    broker = await open_broker(url, "lag-reader")
    try:
        assert isinstance(broker, base.Topics)
        return await broker.fetch_topic_lag(topic)
    finally:
        await broker.close()


def test_a_subscription_pool_exports_its_backlog_and_oldest_event_age_by_topic_and_group(
    redis_server: RedisServer,
) -> None:
    # Given a topic with two registered groups, three events published to it
    topic = f"shop{uuid.uuid4().hex[:8]}.order.placed"
    asyncio.run(_publish(redis_server.url, topic, ("analytics", "email"), 3))
    email = events.subscription_queue(topic, "email")
    # When the operator polls the pool serving the email subscription
    registry = CollectorRegistry()
    series = metrics.OperatorMetrics(registry).bind_pool(("shop", "email-sender", email))
    client = redis.Redis.from_url(redis_server.url)
    queue_stats = stats.fetch_queue_stats_sync(client, email)
    series.record_poll(
        queue_stats, desired=1, max_replicas=3, alert_threshold=1, oldest_job_age_target=0.0
    )
    # Then its lag series carry the topic and group, and say what the broker's topic lag says
    labels = {"namespace": "shop", "pool": "email-sender", "queue": email}
    labels |= {"topic": topic, "group": "email"}
    [lag] = [
        entry
        for entry in asyncio.run(_topic_lag(redis_server.url, topic))
        if entry.group == "email"
    ]
    assert sample(registry, BACKLOG, labels) == lag.backlog == 3
    age = sample(registry, AGE, labels)
    assert age is not None and age == queue_stats.oldest_job_age_seconds
    assert 0 < age <= lag.oldest_event_age_seconds
    # And only the polled pool's subscription is exported (no series for the other group)
    assert samples_named(registry, BACKLOG) == [labels]
    client.close()


def test_a_pool_on_an_ordinary_queue_exports_no_subscription_series(
    redis_server: RedisServer,
) -> None:
    # Given a pool on a queue that is not named <topic>:<group>, holding a job
    queue = f"emails-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_server.url)
    asyncio.run(_enqueue_one(redis_server.url, queue))
    registry = CollectorRegistry()
    series = metrics.OperatorMetrics(registry).bind_pool(("shop", "emails", queue))
    # When a poll records its stats
    series.record_poll(
        stats.fetch_queue_stats_sync(client, queue),
        desired=1,
        max_replicas=1,
        alert_threshold=1,
        oldest_job_age_target=0.0,
    )
    # Then its queue series say so, and no subscription series exists
    assert (
        sample(
            registry,
            "workerfleet_pool_backlog",
            {"namespace": "shop", "pool": "emails", "queue": queue},
        )
        == 1
    )
    assert samples_named(registry, BACKLOG) == []
    assert samples_named(registry, AGE) == []
    client.close()


def test_a_forgotten_subscription_pool_leaves_no_lag_series() -> None:
    # Given a pool on subscription email of shop.order.placed with recorded lag
    registry = CollectorRegistry()
    operator_metrics = metrics.OperatorMetrics(registry)
    labels = ("shop", "email-sender", "shop.order.placed:email")
    series = operator_metrics.bind_pool(labels)
    queue_stats = base.QueueStats(
        queue=labels[2], now=1000.0, backlog=5, due_delayed=0, future_delayed=0, in_flight=0,
        dead_letter=0, oldest_job_age_seconds=12.5, enqueued_total=5, completed_total=0,
        failed_total=0, retried_total=0, dead_lettered_total=0, cancelled_total=0,
        workers_lost_total=0, workers_expired=0, workers=(),
    )  # fmt: skip
    series.record_poll(
        queue_stats, desired=1, max_replicas=3, alert_threshold=1, oldest_job_age_target=0.0
    )
    assert len(samples_named(registry, BACKLOG)) == len(samples_named(registry, AGE)) == 1
    # When the pool is deleted (or its queue renamed: the old labels are forgotten)
    operator_metrics.forget_pool(labels, series)
    # Then neither lag series remains
    assert samples_named(registry, BACKLOG) == []
    assert samples_named(registry, AGE) == []


def test_a_queue_name_is_a_subscription_only_with_a_valid_topic_and_group() -> None:
    assert events.parse_subscription_queue("shop.order.placed:email") == (
        "shop.order.placed",
        "email",
    )
    assert events.parse_subscription_queue(events.subscription_queue("a.b.sent", "x-1")) == (
        "a.b.sent",
        "x-1",
    )
    for name in ("emails", "shop.order.place:email", "orders:email", "shop.order.placed:Email"):
        assert events.parse_subscription_queue(name) is None, name


def test_queue_stats_of_a_subscription_queue_name_its_topic_and_group(
    redis_server: RedisServer,
) -> None:
    # Given two events published to a topic with one registered group
    topic = f"shop{uuid.uuid4().hex[:8]}.order.placed"
    asyncio.run(_publish(redis_server.url, topic, ("email",), 2))
    client = redis.Redis.from_url(redis_server.url)
    # When `workerfleet queue stats --json` reads the subscription's queue and an ordinary one
    sub = queue_commands.build_stats_json(
        stats.fetch_queue_stats_sync(client, events.subscription_queue(topic, "email"))
    )
    plain = queue_commands.build_stats_json(
        stats.fetch_queue_stats_sync(client, f"plain-{uuid.uuid4().hex}")
    )
    client.close()
    # Then the subscription's stats name it, with the backlog its lag series carry
    assert sub["subscription"] == {"topic": topic, "group": "email"}
    assert sub["backlog"] == 2
    assert plain["subscription"] is None


def test_a_broker_that_does_not_measure_the_oldest_age_leaves_the_age_series_absent_not_zero(
    redis_server: RedisServer,
) -> None:
    # Given a subscription pool whose age series was exported, holding one event
    topic = f"shop{uuid.uuid4().hex[:8]}.order.placed"
    asyncio.run(_publish(redis_server.url, topic, ("email",), 1))
    queue = events.subscription_queue(topic, "email")
    registry = CollectorRegistry()
    series = metrics.OperatorMetrics(registry).bind_pool(("shop", "email-sender", queue))
    client = redis.Redis.from_url(redis_server.url)
    queue_stats = stats.fetch_queue_stats_sync(client, queue)
    client.close()
    poll = {"desired": 1, "max_replicas": 1, "alert_threshold": 1, "oldest_job_age_target": 0.0}
    series.record_poll(queue_stats, **poll)
    assert len(samples_named(registry, AGE)) == 1
    # When a poll says the broker reports no oldest-job age (RabbitMQ's always-0 age)
    series.record_poll(queue_stats, **poll, oldest_age_measured=False)
    # Then the age series is gone (no data, which the alert cannot read as "no lag"); the
    # backlog stays
    assert samples_named(registry, AGE) == []
    assert [s["group"] for s in samples_named(registry, BACKLOG)] == ["email"]


def test_the_operator_on_a_rabbitmq_subscription_queue_exports_its_backlog_and_no_age(
    emulator: Emulator, operator: Callable[..., OperatorRunner], rabbitmq_server: Any
) -> None:
    # Given a WorkerPool on RabbitMQ (which reports no oldest-job age) whose queue is named as
    # subscription email of a topic, holding 3 jobs
    queue = f"shop{uuid.uuid4().hex[:8]}.order.placed:email"
    url = f"{rabbitmq_server.url}?management_port={rabbitmq_server.management_port}"
    asyncio.run(_enqueue_on_rabbitmq(rabbitmq_server.url, queue, 3))
    emulator.create("secrets", build_secret("rabbit-creds", url))
    runner = operator()
    body = build_pool("order-emails", queue=queue)
    body["spec"]["queue"] = {
        "name": queue,
        "rabbitmq": {"urlSecretRef": {"name": "rabbit-creds", "key": "url"}},
    }
    emulator.create("workerpools", body, group=GROUP)
    # When the operator polls the queue
    wait_for_condition(emulator, "order-emails", "QueueReachable", timeout=30)
    # Then the subscription's backlog is exported, and its age is absent rather than 0
    labels = {"namespace": NAMESPACE, "pool": "order-emails", "queue": queue}
    labels |= {"topic": queue.split(":")[0], "group": "email"}
    wait_until(
        lambda: sample(runner.metrics.registry, BACKLOG, labels) == 3,
        timeout=30,
        message="the RabbitMQ subscription's backlog was never exported",
    )
    assert samples_named(runner.metrics.registry, AGE) == []


def test_the_pools_oldest_job_age_series_is_absent_not_zero_on_a_broker_without_the_age() -> None:
    # Given a pool whose oldest-job age was exported from a broker that measures it
    pool_age = "workerfleet_pool_oldest_job_age_seconds"
    labels = {"namespace": "shop", "pool": "invoices", "queue": "invoices"}
    registry = CollectorRegistry()
    series = metrics.OperatorMetrics(registry).bind_pool(tuple(labels.values()))
    queue_stats = base.QueueStats(
        queue="invoices", now=1000.0, backlog=5, due_delayed=0, future_delayed=0, in_flight=0,
        dead_letter=0, oldest_job_age_seconds=42.0, enqueued_total=5, completed_total=0,
        failed_total=0, retried_total=0, dead_lettered_total=0, cancelled_total=0,
        workers_lost_total=0, workers_expired=0, workers=(),
    )  # fmt: skip
    poll = {"desired": 1, "max_replicas": 3, "alert_threshold": 1, "oldest_job_age_target": 30.0}
    series.record_poll(queue_stats, **poll)
    assert sample(registry, pool_age, labels) == 42.0
    # When a poll says the broker reports no oldest-job age (RabbitMQ's stats carry 0)
    zero_age = dataclasses.replace(queue_stats, oldest_job_age_seconds=0.0)
    series.record_poll(zero_age, **poll, oldest_age_measured=False)
    # Then the age series is gone (no data, which WorkerPoolOldestJobTooOld cannot read as
    # "fresh"), and the backlog is still exported
    assert samples_named(registry, pool_age) == []
    assert sample(registry, "workerfleet_pool_backlog", labels) == 5.0
