"""A WorkerPool serving an event subscription on a real control plane.

``spec.queue.subscription`` as a user meets it: ``kubectl explain`` describes it, the API
server's CEL rules refuse a queue name that is not ``<topic>:<group>`` and a subscription on a
broker without topics, and the real operator (the shared one, running with the chart's RBAC)
registers the subscription in the real Redis and scales the pool's pods on the events a
publisher sends, before any worker ever ran.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.e2e import kubecluster
from tests.e2e import workerfleet_support as wf
from tests.support.redis_servers import RedisServer
from worker_runtime import App, brokers
from worker_runtime.brokers import base

pytestmark = pytest.mark.e2e

TOPIC = "kubeshop.order.placed"


def build_subscription_pool(name: str, group: str, autoscaling: dict[str, Any]) -> dict[str, Any]:
    pool = wf.build_pool(name, f"{TOPIC}:{group}", autoscaling)
    pool["spec"]["queue"]["subscription"] = {"topic": TOPIC, "group": group}
    return pool


def registered_groups(url: str) -> list[str]:
    async def read() -> list[str]:
        broker = await brokers.open_broker(url, "e2e-reader")
        try:
            assert isinstance(broker, base.Topics)
            return await broker.list_subscriptions(TOPIC)
        finally:
            await broker.close()

    return asyncio.run(read())


def publish(url: str, count: int) -> None:
    async def send() -> None:
        broker = await brokers.open_broker(url, "e2e-storefront")
        app = App(queue="e2e-storefront")
        app.bind_broker(broker)
        try:
            for n in range(count):
                await app.publish(TOPIC, {"order_id": f"k{n}"})
        finally:
            await broker.close()

    asyncio.run(send())


def test_kubectl_explains_the_subscription_and_the_api_server_refuses_a_mismatched_queue(
    kube_cluster: kubecluster.KubeCluster, workerfleet_chart: str, namespace: str
) -> None:
    # Given the chart's CRD, published in the API server's OpenAPI document
    # When a user asks kubectl about the field
    explained = kubecluster.poll_until(
        "kubectl explain of the field",
        lambda: (
            kube_cluster.kubectl(
                "explain", "workerpool.spec.queue.subscription", check=False
            ).stdout
        ),
        lambda out: "topic" in out,
        timeout_seconds=60,
    )
    # Then it says what the subscription is and what queue.name must be
    assert "<topic>:<group>" in explained and "topic" in explained and "group" in explained
    # When a pool names a subscription but another queue, or a subscription on RabbitMQ
    wrong_name = build_subscription_pool("wrong-name", "email", {})
    wrong_name["spec"]["queue"]["name"] = "emails"
    on_rabbitmq = build_subscription_pool("on-rabbitmq", "email", {})
    on_rabbitmq["spec"]["queue"]["rabbitmq"] = on_rabbitmq["spec"]["queue"].pop("redis")
    refusals = [
        kube_cluster.kubectl(
            "apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False
        )
        for body in (wrong_name, on_rabbitmq)
    ]
    # Then the API server refuses each with the rule's message
    assert refusals[0].returncode != 0
    assert "queue.name must be <topic>:<group> of queue.subscription" in refusals[0].stderr
    assert refusals[1].returncode != 0
    assert "topics (event subscriptions) are on Redis only" in refusals[1].stderr


def test_the_operator_registers_the_subscription_and_scales_pods_on_published_events(
    kube_cluster: kubecluster.KubeCluster,
    operator: wf.Operator,
    pools_namespace: str,
    redis_server: RedisServer,
) -> None:
    # Given a subscription pool at zero replicas (0..3, 5 events per replica) and no worker
    assert registered_groups(redis_server.url) == []
    autoscaling = {
        "minReplicas": 0,
        "maxReplicas": 3,
        "targetBacklogPerReplica": 5,
        "pollingIntervalSeconds": 1,
    }
    pool = build_subscription_pool("sub-fulfilment", "fulfilment", autoscaling)
    kube_cluster.kubectl("apply", "-n", pools_namespace, "-f", "-", input=json.dumps(pool))
    # Then the operator registers the subscription in the real Redis
    kubecluster.poll_until(
        "the subscription registered",
        lambda: registered_groups(redis_server.url),
        lambda groups: groups == ["fulfilment"],
        timeout_seconds=60,
    )
    assert wf.fetch_running_pods(kube_cluster, pools_namespace, "sub-fulfilment") == []
    # When a publisher that knows nothing of the pool publishes 30 events
    publish(redis_server.url, 30)
    # Then the operator scales the pool on the subscription's lag and kwok runs 3 pods
    kubecluster.poll_until(
        "3 Running pods",
        lambda: wf.fetch_running_pods(kube_cluster, pools_namespace, "sub-fulfilment"),
        lambda pods: len(pods) == 3,
        timeout_seconds=120,
    )
    assert operator.forbidden_lines() == []
