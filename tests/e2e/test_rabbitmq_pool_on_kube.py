"""A RabbitMQ-backed WorkerPool on the real control plane: scaled up on a backlog, back down;
``kubectl explain`` of its fields.

The operator runs as a local process under the chart's ServiceAccount (its RBAC is what it runs
with); the queue is a private rabbitmq-server on loopback (tests/support/rabbitmq_server.py),
read by the operator over RabbitMQ's management API as the pool's Secret says. The pool's pods
land on kwok nodes and run nothing, so the queue is drained by a real worker process on the
host, started with the environment the operator put in the pods' template (the broker URL as
WORKERFLEET_BROKER_URL from the Secret).
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import kubecluster
from tests.e2e import workerfleet_support as wf
from tests.support.rabbitmq_server import RabbitMQServer
from worker_runtime import brokers, producer
from worker_runtime.brokers import base

pytestmark = pytest.mark.e2e

SECRET = "rabbitmq"
JOBS = 30


async def enqueue_quick_jobs(url: str, queue: str, count: int) -> None:
    broker = await brokers.open_broker(url, queue)
    try:
        jobs = [producer.JobSpec(task="quick", payload={"n": n}) for n in range(count)]
        await producer.Producer.on_broker(broker).enqueue_many(jobs)
    finally:
        await broker.close()


async def fetch_queue_stats(url: str, queue: str) -> base.QueueStats:
    broker = await brokers.open_broker(url, queue)
    try:
        assert isinstance(broker, base.QueueProbe)
        return await broker.fetch_stats()
    finally:
        await broker.close()


def fetch_status(cluster: kubecluster.KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    stored = cluster.fetch_json("wp", name, "-n", namespace)
    status: dict[str, Any] = stored.get("status") or {}  # type: ignore[assignment]
    return status


def wait_for_replicas(
    cluster: kubecluster.KubeCluster, namespace: str, name: str, want: int, timeout_seconds: float
) -> None:
    """Poll (bounded) until the Deployment's spec.replicas is ``want``."""
    kubecluster.poll_until(
        f"{want} replicas",
        lambda: wf.fetch_replicas(cluster, namespace, name),
        lambda replicas: replicas == want,
        timeout_seconds=timeout_seconds,
    )


def resolve_worker_env(
    cluster: kubecluster.KubeCluster, namespace: str, name: str
) -> dict[str, str]:
    """The worker container's env as a kubelet would resolve it (Secret keys read)."""
    deployment = cluster.fetch_json("deploy", name, "-n", namespace)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]  # type: ignore[index]
    env: dict[str, str] = {}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["secretKeyRef"]
            secret = cluster.fetch_json("secret", ref["name"], "-n", namespace)
            data: dict[str, str] = secret["data"]  # type: ignore[index,assignment]
            env[entry["name"]] = base64.b64decode(data[ref["key"]]).decode()
    return env


def test_a_rabbitmq_pool_scales_up_on_a_backlog_and_back_down_when_the_queue_empties(
    kube_cluster: kubecluster.KubeCluster,
    workerfleet_chart: str,
    namespace: str,
    rabbitmq_server: RabbitMQServer,
    tmp_path: Path,
) -> None:
    # Given a Secret with the AMQP URL of a private RabbitMQ (its management port in the URL)
    url = f"{rabbitmq_server.url}?management_port={rabbitmq_server.management_port}"
    queue = f"e2e-rabbit-{namespace.removeprefix('e2e-')}"
    kube_cluster.kubectl(
        "create", "secret", "generic", SECRET, "-n", namespace, f"--from-literal=url={url}"
    )
    # And the operator watching the namespace with the chart's RBAC
    operator = wf.start_operator(kube_cluster, workerfleet_chart, (namespace,), tmp_path / "op")
    worker = None
    try:
        # And a RabbitMQ-backed pool of 0..3 replicas, 10 jobs each, the latency signal on too
        autoscaling = {
            "minReplicas": 0,
            "maxReplicas": 3,
            "targetBacklogPerReplica": 10,
            "targetUtilization": 0,
            "targetOldestJobAgeSeconds": 30,
            "pollingIntervalSeconds": 1,
            "scaleDown": {"stabilizationWindowSeconds": 0},
        }
        pool = wf.build_pool("rabbit", queue, autoscaling, SECRET, broker="rabbitmq")
        kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pool))
        wf.wait_for_condition(kube_cluster, namespace, "rabbit", "QueueReachable", "True", 90)
        assert wf.fetch_replicas(kube_cluster, namespace, "rabbit") == 0
        # When a backlog of 30 jobs is enqueued on RabbitMQ
        asyncio.run(enqueue_quick_jobs(url, queue, JOBS))
        # Then the operator scales the Deployment up to 3 replicas (30 jobs / 10 per replica)
        wait_for_replicas(kube_cluster, namespace, "rabbit", 3, timeout_seconds=90)
        # And the status shows the backlog, no made-up oldest-job age, and why the age is off
        status = kubecluster.poll_until(
            "the backlog in status",
            lambda: fetch_status(kube_cluster, namespace, "rabbit"),
            lambda s: (s.get("queue") or {}).get("backlog") == JOBS,
            timeout_seconds=30,
        )
        assert "oldestJobAgeSeconds" not in status["queue"]
        (unavailable,) = status["autoscaling"]["signalsUnavailable"]
        assert (unavailable["signal"], unavailable["reason"]) == (
            "latency",
            "OldestJobAgeUnavailable",
        )
        # When a real worker started with the pods' own environment drains the queue
        env = resolve_worker_env(kube_cluster, namespace, "rabbit")
        assert env["WORKERFLEET_BROKER_URL"] == url and "WORKERFLEET_REDIS_URL" not in env
        env.update(WORKERFLEET_METRICS_PORT="0", WORKERFLEET_POD_NAME="host-worker")
        worker = wf.start_host_worker("tests.e2e.e2e_tasks:app", env, tmp_path / "worker.log")
        # Then the queue empties and the Deployment scales back down to 0 replicas
        wait_for_replicas(kube_cluster, namespace, "rabbit", 0, timeout_seconds=180)
        # (the management API samples its numbers: read until the acks are counted)
        drained = kubecluster.poll_until(
            "every job acked",
            lambda: asyncio.run(fetch_queue_stats(url, queue)),
            lambda q: q.completed_total >= JOBS,
            timeout_seconds=30,
        )
        assert (drained.backlog, drained.in_flight, drained.dead_letter) == (0, 0, 0)
        events = {e["reason"] for e in wf.fetch_events(kube_cluster, namespace, "rabbit")}
        assert {"ScaledUp", "ScaledDown"} <= events
    finally:
        if worker is not None:
            kubecluster.stop_process(worker)
        operator.stop()
    assert operator.forbidden_lines() == []


def test_kubectl_explains_the_rabbitmq_block_and_every_field_of_it(
    kube_cluster: kubecluster.KubeCluster, workerfleet_chart: str
) -> None:
    # Given the chart's CRD, published in the API server's OpenAPI document
    # When a user asks kubectl about the rabbitmq block, recursively
    explained = kubecluster.poll_until(
        "kubectl explain of spec.queue.rabbitmq",
        lambda: (
            kube_cluster.kubectl(
                "explain", "workerpool.spec.queue.rabbitmq", "--recursive", check=False
            ).stdout
        ),
        lambda out: "hostKey" in out,
        timeout_seconds=60,
    )
    # Then every field is listed, and each one explains itself
    for field in ("urlSecretRef", "keda", "hostKey", "usernameKey", "passwordKey"):
        assert field in explained
    for path, words in (
        ("workerpool.spec.queue.rabbitmq", "exactly one broker block"),
        ("workerpool.spec.queue.rabbitmq.urlSecretRef", "management_port"),
        ("workerpool.spec.queue.rabbitmq.keda", "autoscaling.mode is keda"),
        ("workerpool.spec.queue.rabbitmq.keda.hostKey", "management API URL"),
        ("workerpool.spec.queue.rabbitmq.keda.usernameKey", "together with passwordKey"),
        ("workerpool.spec.queue.rabbitmq.keda.passwordKey", "RabbitMQ password"),
        ("workerpool.status.autoscaling.signalsUnavailable", "OldestJobAgeUnavailable"),
    ):
        described = kube_cluster.kubectl("explain", path).stdout
        assert words in " ".join(described.split()), (path, described)
