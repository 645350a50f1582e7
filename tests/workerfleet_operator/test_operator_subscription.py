"""A WorkerPool naming ``spec.queue.subscription``: the operator registers the subscription in
the broker and scales the pool on its lag.

Operator in a thread, the API emulator, a real (password-protected) redis-server; the
subscription is read and events are published through the runtime's own topics API, as a
publisher and ``workerfleet topic lag`` do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from workerfleet_operator.shell import queue as queue_mod
from workerfleet_operator.shell import scaler

from tests.workerfleet_operator.conftest import (
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    build_pool,
    build_secret,
    condition,
    wait_for_condition,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from tests.workerfleet_operator.test_operator_autoscaling import replicas
from worker_runtime import App, brokers
from worker_runtime.brokers import base

TOPIC = "shop.order.placed"
QUEUE = "shop.order.placed:fulfilment"


def registered_groups(server: QueueRedis, topic: str = TOPIC) -> list[str]:
    async def read() -> list[str]:
        broker = await brokers.open_broker(server.url, "reader")
        try:
            assert isinstance(broker, base.Topics)
            return await broker.list_subscriptions(topic)
        finally:
            await broker.close()

    return asyncio.run(read())


def publish_orders(server: QueueRedis, count: int) -> None:
    async def publish() -> None:
        broker = await brokers.open_broker(server.url, "storefront")
        app = App(queue="storefront")
        app.bind_broker(broker)
        try:
            for n in range(count):
                await app.publish(TOPIC, {"order_id": f"o{n}"}, version=2)
        finally:
            await broker.close()

    asyncio.run(publish())


def unsubscribe(server: QueueRedis, group: str) -> None:
    async def remove() -> None:
        broker = await brokers.open_broker(server.url, "admin")
        try:
            assert isinstance(broker, base.Topics)
            assert await broker.unsubscribe(TOPIC, group)
        finally:
            await broker.close()

    asyncio.run(remove())


def start_subscription_pool(emu: Emulator, server: QueueRedis, name: str) -> None:
    emu.create("secrets", build_secret("redis-creds", server.url))
    body = build_pool(
        name,
        queue=QUEUE,
        autoscaling={
            "targetBacklogPerReplica": 10,
            "scaleUp": {"stabilizationWindowSeconds": 0, "maxStepPercent": 100, "maxStepPods": 4},
        },
    )
    body["spec"]["queue"]["subscription"] = {"topic": TOPIC, "group": "fulfilment"}
    emu.create("workerpools", body, group="workerfleet.io")


def test_the_operator_registers_the_subscription_and_scales_the_pool_from_zero_on_its_events(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a pool at zero replicas serving the fulfilment subscription of shop.order.placed,
    # with no worker ever started and nothing registered in the broker yet
    assert registered_groups(queue_redis) == []
    operator()
    start_subscription_pool(emulator, queue_redis, "fulfilment")
    # Then the operator registers the subscription in the broker and reads its queue
    wait_until(
        lambda: registered_groups(queue_redis) == ["fulfilment"], timeout=15, message="never"
    )
    wait_for_condition(emulator, "fulfilment", "QueueReachable", message="queue never read")
    assert replicas(emulator, "fulfilment") == 0
    # When a publisher that knows nothing of the pool publishes 35 orders
    publish_orders(queue_redis, 35)
    # Then every order is in the subscription's queue and the pool scales on that lag
    wait_until(lambda: replicas(emulator, "fulfilment") == 4, timeout=15, message="no scale-up")


def test_a_subscription_removed_by_hand_is_registered_again_at_the_next_check(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a registered subscription pool whose registration is checked every 2 seconds
    monkeypatch.setattr(scaler, "SUBSCRIPTION_RECHECK_SECONDS", 2.0)
    operator()
    start_subscription_pool(emulator, queue_redis, "fulfilment")
    wait_until(lambda: registered_groups(queue_redis) == ["fulfilment"], timeout=15)
    # When someone unregisters it in the broker
    unsubscribe(queue_redis, "fulfilment")
    assert registered_groups(queue_redis) == []
    # Then the operator registers it again (level-triggered, idempotent)
    wait_until(lambda: registered_groups(queue_redis) == ["fulfilment"], timeout=10)


class _ProbeWithoutTopics:
    """A queue probe of a broker that has no topics (as Redis Cluster and SQS are today)."""

    async def fetch_stats(self) -> Any:
        raise AssertionError("not read")


async def test_a_broker_without_topics_is_reported_not_registered_and_names_the_reason() -> None:
    # Given a reader whose probe for the queue has no topics
    reader = queue_mod.QueueReader()
    key = queue_mod.ClientKey("ns", "creds", "url", "1")
    reader._probes[(key, QUEUE)] = _ProbeWithoutTopics()  # type: ignore[assignment]
    secret = _secret("redis://:hunter2@127.0.0.1:1/0")
    # When the subscription is ensured
    problem = await reader.ensure_subscription(
        key, secret, QUEUE, TOPIC, "fulfilment", deadline_seconds=1.0
    )
    # Then it says why, and never the URL's password
    assert problem is not None and problem.startswith("CapabilityMissing: ")
    assert "no topics" in problem and "hunter2" not in problem


def test_a_pool_whose_subscription_cannot_be_registered_reports_it_and_holds(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a subscription pool whose Redis is down
    operator()
    queue_redis.stop()
    start_subscription_pool(emulator, queue_redis, "fulfilment")

    # Then the queue is reported unobserved, naming the subscription that is not registered
    def unreachable() -> dict[str, Any] | None:
        pool = emulator.get("workerpools", NAMESPACE, "fulfilment", group="workerfleet.io")
        found = condition(pool, "QueueReachable")
        return found if found.get("status") == "False" else None

    cond = wait_until(unreachable, timeout=15, message="no QueueReachable=False")
    assert f"subscription {QUEUE} is not registered" in cond["message"], cond
    assert queue_redis.password not in cond["message"]
    assert replicas(emulator, "fulfilment") == 0


def _secret(url: str) -> Any:
    from workerfleet_operator.shell import kube

    return kube.SecretValue(resource_version="1", value=url)
