"""The topics contract: publish fans out on write to every subscription, each an ordinary queue.

Runs on the memory broker (the reference), a real redis-server and a real rabbitmq-server,
through the public ``Topics`` and ``Broker`` protocols only; on Redis Cluster topics are not
declared (``Capabilities.topics`` False) and a publish is refused with that reason. A test
marked ``@pytest.mark.needs("field")`` relies on that ``Capabilities`` promise and is skipped,
saying so, on a broker that does not make it (RabbitMQ: no enqueue dedup, so a re-sent
publish is stored again; no oldest-event age). Assertions are histories: which subscription
queues hold which event ids, what was delivered, acked and dead-lettered.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support import brokers as support
from tests.support import cli as cli_support
from tests.support.brokers import FakeClock
from worker_runtime import brokers, errors
from worker_runtime.brokers import base, memory
from worker_runtime.brokers.redis import broker as redis_broker
from worker_runtime.brokers.redis import topics

LEASE = 0.4


class Backend(support.Contract):
    """A contract harness that also opens the subscription queues (memory: one store)."""

    async def open_queue(self, queue: str, **options: Any) -> Any:
        broker = await self.opener(queue, base.QueueOptions(**options))
        self.opened.append(broker)
        return broker


@pytest.fixture(params=["memory", "redis", "rabbitmq"])
def unopened_backend(request: pytest.FixtureRequest) -> Backend:
    # sync on purpose: the Redis client is an async fixture, reachable from here by name
    if request.param == "memory":
        store = f"topics-{uuid.uuid4().hex}"
        clock = FakeClock()

        async def open_memory(queue: str, options: base.QueueOptions) -> Any:
            return memory.MemoryBroker(queue, options, clock=clock, store=store)

        return Backend("memory", "publisher", open_memory, clock)
    if request.param == "rabbitmq":
        server = request.getfixturevalue("rabbitmq_server")

        async def open_rabbitmq(queue: str, options: base.QueueOptions) -> Any:
            url = f"{server.url}?prefetch=20&management_port={server.management_port}"
            return await brokers.open_broker(url, queue, options=options)

        return Backend("rabbitmq", f"publisher-{uuid.uuid4().hex[:8]}", open_rabbitmq, None)
    client = request.getfixturevalue("redis_client")

    async def open_redis(queue: str, options: base.QueueOptions) -> Any:
        return redis_broker.RedisBroker(client, queue, options)

    return Backend("redis", "publisher", open_redis, None)


@pytest.fixture
async def backend(
    request: pytest.FixtureRequest, unopened_backend: Backend
) -> AsyncIterator[Backend]:
    marker = request.node.get_closest_marker("needs")
    if marker is not None:
        probe = await unopened_backend.open()
        for capability in marker.args:
            if not getattr(probe.capabilities, capability):
                await unopened_backend.close()
                pytest.skip(f"{unopened_backend.name} does not declare Capabilities.{capability}")
    yield unopened_backend
    await unopened_backend.close()
    memory.forget_stores()


def topic() -> str:
    # a fresh topic per test: the redis-server is shared by the session
    return f"shop{uuid.uuid4().hex[:8]}.order.placed"


def event(topic_name: str, event_id: str | None = None, n: int = 1) -> base.PublishRequest:
    eid = event_id or uuid.uuid4().hex
    payload = {"type": topic_name, "version": 1, "id": eid, "data": {"n": n}}
    return base.PublishRequest(topic=topic_name, event_id=eid, payload=payload)


async def drain_ids(broker: Any) -> list[str]:
    """Every job id the queue hands out now, acknowledged (what the subscription received)."""
    got: list[str] = []
    for _ in range(100):
        batch = await broker.fetch("reader", 100)
        if not batch:
            return got
        for delivery in batch:
            got.append(delivery.id)
            assert await broker.ack(delivery)
    return got


async def test_a_publish_reaches_every_current_subscription_exactly_once(
    backend: Backend,
) -> None:
    # Given a topic with three subscriptions
    t = topic()
    publisher = await backend.open()
    groups = ["email", "analytics", "fulfilment"]
    queues = [await publisher.subscribe(t, g) for g in groups]
    # When one event is published
    req = event(t)
    result = await publisher.publish(req)
    # Then each subscription's queue holds exactly one job: the event, named for that queue
    assert queues == [f"{t}:{g}" for g in groups]
    assert sorted(result.created) == sorted(groups) and result.duplicate == ()
    for queue in queues:
        sub = await backend.open_queue(queue)
        [delivery] = await sub.fetch("w", 10)
        assert (delivery.id, delivery.envelope.task) == (req.event_id, queue)
        assert delivery.envelope.payload == req.payload
        assert delivery.envelope.idempotency_key == req.event_id
        assert await sub.ack(delivery)
        assert await sub.fetch("w", 10) == []
    assert await publisher.list_subscriptions(t) == sorted(groups)


async def test_a_subscription_sees_only_events_published_after_it_registered(
    backend: Backend,
) -> None:
    # Given a topic with one subscription and an event published to it
    t = topic()
    publisher = await backend.open()
    early_q = await publisher.subscribe(t, "early")
    first = await publisher.publish(event(t))
    # When a second subscription registers and another event is published
    late_q = await publisher.subscribe(t, "late")
    second = await publisher.publish(event(t))
    # Then the early one got both, the late one only the second
    assert await drain_ids(await backend.open_queue(early_q)) == [first.event_id, second.event_id]
    assert await drain_ids(await backend.open_queue(late_q)) == [second.event_id]


async def test_an_unsubscribed_group_gets_no_more_events_and_keeps_what_it_had(
    backend: Backend,
) -> None:
    t = topic()
    publisher = await backend.open()
    q = await publisher.subscribe(t, "gone")
    kept = await publisher.publish(event(t))
    assert await publisher.unsubscribe(t, "gone") is True
    missed = await publisher.publish(event(t))
    assert await publisher.unsubscribe(t, "gone") is False
    assert (missed.created, missed.duplicate) == ((), ())
    assert await drain_ids(await backend.open_queue(q)) == [kept.event_id]


@pytest.mark.needs("enqueue_dedup")
async def test_a_resent_publish_of_the_same_event_id_is_not_delivered_twice(
    backend: Backend,
) -> None:
    # Given a publish whose reply the publisher did not see (it sends it again)
    t = topic()
    publisher = await backend.open()
    queues = [await publisher.subscribe(t, g) for g in ("a", "b")]
    req = event(t)
    first = await publisher.publish(req)
    # When the same event id is published again, even after its first job was acknowledged
    [delivery] = await (await backend.open_queue(queues[0])).fetch("w", 1)
    assert await backend.opened[-1].ack(delivery)
    again = await publisher.publish(req)
    # Then nothing new was stored: each subscription had the event once
    assert sorted(first.created) == ["a", "b"]
    assert (again.created, sorted(again.duplicate)) == ((), ["a", "b"])
    assert await drain_ids(await backend.open_queue(queues[0])) == []
    assert await drain_ids(await backend.open_queue(queues[1])) == [req.event_id]


async def test_without_enqueue_dedup_a_resent_publish_is_stored_once_more_per_subscription(
    backend: Backend,
) -> None:
    # Given a broker that declares no enqueue dedup, and a publish whose confirm the publisher
    # did not see (it sends the same event again)
    t = topic()
    publisher = await backend.open()
    if publisher.capabilities.enqueue_dedup:
        pytest.skip(f"{backend.name} declares enqueue_dedup: a re-send is a no-op there")
    queues = [await publisher.subscribe(t, g) for g in ("a", "b")]
    req = event(t)
    first = await publisher.publish(req)
    # When the same event id is published again
    again = await publisher.publish(req)
    # Then each subscription holds exactly two copies, both under the event id (the key its
    # handler deduplicates by), and the publisher was never told "duplicate"
    assert sorted(first.created) == sorted(again.created) == ["a", "b"]
    assert first.duplicate == again.duplicate == ()
    for queue in queues:
        sub = await backend.open_queue(queue)
        copies: list[Any] = []
        for _ in range(20):
            copies += await sub.fetch("w", 10, block=0.5)
            if len(copies) >= 2:
                break
        assert [(d.id, d.envelope.idempotency_key) for d in copies] == [
            (req.event_id, req.event_id)
        ] * 2
        assert {d.envelope.task for d in copies} == {queue}
        for delivery in copies:
            assert await sub.ack(delivery)
        assert await sub.fetch("w", 10, block=0.5) == []


async def test_subscriptions_are_isolated_one_groups_poison_does_not_touch_anothers(
    backend: Backend,
) -> None:
    # Given an event in two subscriptions; "fragile" treats a job as poison after 1 lost lease
    t = topic()
    publisher = await backend.open()
    fragile_q = await publisher.subscribe(t, "fragile")
    steady_q = await publisher.subscribe(t, "steady")
    req = event(t)
    await publisher.publish(req)
    fragile = await backend.open_queue(fragile_q, lease_seconds=LEASE, max_deliveries=1)
    steady = await backend.open_queue(steady_q, lease_seconds=LEASE, max_deliveries=1)
    # When fragile's worker dies holding the job and steady's acks it. The death: its lease
    # expires, or (a broker whose leases last as long as the connection) its connection ends
    [held] = await fragile.fetch("dies", 1)
    [ok] = await steady.fetch("lives", 1)
    if fragile.capabilities.lease_expiry:
        await backend.advance(LEASE + 0.3)
        assert await fragile.fetch("next", 1) == []  # the expired delivery was poison
    else:
        await fragile.close()
        fragile = await backend.open_queue(fragile_q, lease_seconds=LEASE, max_deliveries=1)
        assert await fragile.fetch("next", 1, block=1.0) == []  # the returned one was poison
    assert await steady.ack(ok)
    # Then the event is a dead letter in fragile only, and completed once in steady
    letter = await fragile.show_dead_letter(req.event_id)
    assert letter is not None and letter.reason == "max_deliveries"
    assert held.id == ok.id == req.event_id
    assert await steady.count_dead_letters() == 0
    if steady.capabilities.exact_stats:
        stats = await steady.fetch_stats()
        assert (stats.completed_total, stats.dead_letter, stats.backlog) == (1, 0, 0)
    else:  # sampled stats: the history says it instead (nothing left to hand out)
        assert await drain_ids(steady) == []


async def test_a_publish_with_no_subscription_reaches_nobody(backend: Backend) -> None:
    publisher = await backend.open()
    result = await publisher.publish(event(topic()))
    assert (result.created, result.duplicate, result.subscriptions) == ((), (), ())


async def test_topics_are_declared_by_memory_single_redis_and_rabbitmq(backend: Backend) -> None:
    broker = await backend.open()
    assert broker.capabilities.topics is True
    assert isinstance(broker, base.Topics)


async def test_redis_cluster_declares_no_topics_and_refuses_a_publish_saying_why(
    cluster_client: Any,
) -> None:
    # Given a broker on Redis Cluster
    broker = redis_broker.RedisBroker(cluster_client, "publisher")
    # When an event is published / a group subscribes
    # Then both are refused with the reason, and the capability says so
    assert broker.capabilities.topics is False
    with pytest.raises(errors.CapabilityMissing, match="Redis Cluster"):
        await broker.publish(event(topic()))
    with pytest.raises(errors.CapabilityMissing, match="Redis Cluster"):
        await broker.subscribe(topic(), "a")


async def test_a_group_registered_between_reading_and_publishing_still_gets_the_event(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a publisher that read the subscriptions before "late" registered (a stale list)
    t = topic()
    publisher = redis_broker.RedisBroker(redis_client, "publisher")
    await publisher.subscribe(t, "early")
    await publisher.subscribe(t, "late")
    stale_reads = iter([["early"]])
    real_read = topics.fetch_subscriptions

    async def read_once_stale(client: Any, topic_name: str) -> list[str]:
        return next(stale_reads, None) or await real_read(client, topic_name)

    monkeypatch.setattr(topics, "fetch_subscriptions", read_once_stale)
    # When it publishes
    req = event(t)
    result = await publisher.publish(req)
    # Then the script refused the stale list and the event reached both groups
    assert sorted(result.created) == ["early", "late"]
    for group in ("early", "late"):
        sub = redis_broker.RedisBroker(redis_client, f"{t}:{group}")
        assert await drain_ids(sub) == [req.event_id]


@pytest.mark.needs("oldest_job_age", "exact_stats")
async def test_each_subscription_reports_its_own_lag_backlog_and_oldest_event_age(
    backend: Backend,
) -> None:
    # Given three events in two subscriptions; "fast" has handled them, "slow" has not
    t = topic()
    publisher = await backend.open()
    fast_q = await publisher.subscribe(t, "fast")
    await publisher.subscribe(t, "slow")
    for n in range(3):
        await publisher.publish(event(t, n=n))
    assert len(await drain_ids(await backend.open_queue(fast_q))) == 3
    # When a second passes and the lag is read
    await backend.advance(1.0)
    lag = {entry.group: entry for entry in await publisher.fetch_topic_lag(t)}
    # Then the slow group is 3 events behind, the oldest at least a second old; fast is not
    assert sorted(lag) == ["fast", "slow"]
    assert (lag["slow"].backlog, lag["slow"].queue) == (3, f"{t}:slow")
    assert lag["slow"].oldest_event_age_seconds >= 1.0
    assert (lag["fast"].backlog, lag["fast"].oldest_event_age_seconds) == (0, 0.0)


@pytest.mark.needs("exact_stats")
async def test_a_subscription_whose_events_wait_for_a_retry_reports_them_as_delayed(
    backend: Backend,
) -> None:
    # Given two events in a subscription whose handler failed one, retried in a minute
    t = topic()
    publisher = await backend.open()
    q = await publisher.subscribe(t, "failing")
    for n in range(2):
        await publisher.publish(event(t, n=n))
    sub = await backend.open_queue(q)
    (first, *_) = await sub.fetch("w", 1)
    assert await sub.retry(first, support.failure(), delay_seconds=60.0)
    # When the lag is read
    (lag,) = await publisher.fetch_topic_lag(t)
    # Then the event waiting for its retry is counted as delayed, not lost from sight
    assert (lag.backlog, lag.in_flight, lag.delayed) == (1, 0, 1)


@pytest.mark.needs("enqueue_dedup")
async def test_a_publish_of_an_old_event_id_after_the_dedup_window_is_stored_again(
    backend: Backend,
) -> None:
    # Given an event handled in its subscription, and a queue remembering ids for 0.5 s
    t = topic()
    publisher = await backend.open(enqueue_dedup_seconds=0.5)
    q = await publisher.subscribe(t, "a")
    req = event(t)
    await publisher.publish(req)
    assert await drain_ids(await backend.open_queue(q)) == [req.event_id]
    # When the same event id is published after the window
    await backend.advance(0.8)
    again = await publisher.publish(req)
    # Then it is stored again (the window is the publish's whole dedup promise; beyond it the
    # handler's idempotency key, the event id, is what protects it)
    assert again.created == ("a",)
    assert await drain_ids(await backend.open_queue(q)) == [req.event_id]


async def test_on_rabbitmq_each_subscription_reports_its_sampled_lag_also_through_the_cli(
    rabbitmq_server: Any,
) -> None:
    # Given three events in two subscriptions on a real rabbitmq-server; "fast" handled them
    t = topic()
    url = f"{rabbitmq_server.url}?prefetch=20&management_port={rabbitmq_server.management_port}"
    publisher = await brokers.open_broker(url, "publisher")
    fast = await brokers.open_broker(url, f"{t}:fast")
    try:
        await publisher.subscribe(t, "fast")
        await publisher.subscribe(t, "slow")
        for n in range(3):
            await publisher.publish(event(t, n=n))
        got: list[str] = []
        for _ in range(20):
            for delivery in await fast.fetch("w", 10, block=0.5):
                got.append(delivery.id)
                assert await fast.ack(delivery)
            if len(got) == 3:
                break
        assert len(got) == 3
        # When the lag is read (the management API samples every few seconds: polled, bounded)
        lag: dict[str, Any] = {}
        for _ in range(60):
            lag = {entry.group: entry for entry in await publisher.fetch_topic_lag(t)}
            if lag["slow"].backlog == 3 and lag["fast"].backlog == 0:
                break
            await asyncio.sleep(0.5)
        # Then the slow group is 3 events behind and fast is not; the age is not measured here
        assert sorted(lag) == ["fast", "slow"]
        assert (lag["slow"].backlog, lag["slow"].queue) == (3, f"{t}:slow")
        assert (lag["fast"].backlog, lag["slow"].oldest_event_age_seconds) == (0, 0.0)
        done = await asyncio.to_thread(
            cli_support.run_cli, "topic", "lag", t, "--json", redis_url=url
        )
        assert done.returncode == 0, done.stderr
        rows = {row["group"]: row["backlog"] for row in json.loads(done.stdout)}
        assert rows == {"fast": 0, "slow": 3}
    finally:
        await fast.close()
        await publisher.close()
