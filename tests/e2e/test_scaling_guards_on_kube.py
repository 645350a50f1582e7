"""The autoscaler's guards on a real cluster: fallback, shared queues, status write rate.

The emulator suite (tests/workerfleet_operator/test_operator_scale_guards.py,
test_operator_queue_conflict.py, test_operator_load.py) pins the same promises; here the API
server, the ReplicaSet controller and kwok's pods are real and the operator runs as the chart's
ServiceAccount with its default settings (a 30 s status refresh, failureThreshold 3).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from tests.e2e import kubecluster
from tests.e2e import workerfleet_support as wf
from tests.e2e.test_operator_scenarios_on_kube import (
    POLL_SECONDS,
    apply_pool,
    create_secret,
    wait_condition,
    wait_running_pods,
)
from tests.support.redis_servers import RedisServer
from worker_runtime import producer

pytestmark = pytest.mark.e2e


def _replicas(cluster: kubecluster.KubeCluster, namespace: str, name: str) -> str:
    return cluster.kubectl(
        "get", "deploy", name, "-n", namespace, "-o", "jsonpath={.spec.replicas}", check=False
    ).stdout


def _enqueue(url: str, queue: str, count: int) -> None:
    jobs = [producer.JobSpec(task="noop", payload={"n": n}) for n in range(count)]
    producer.SyncProducer(redis.Redis.from_url(url), queue).enqueue_many(jobs)


def test_a_fallback_after_an_outage_waits_for_the_threshold_and_marks_no_pod(
    kube_cluster: kubecluster.KubeCluster,
    operator: wf.Operator,
    pools_namespace: str,
    redis_factory: Callable[..., RedisServer],
) -> None:
    # Given a pool of 3 running pods on its own Redis, falling back to 1 when Redis is gone
    own = redis_factory()
    create_secret(kube_cluster, pools_namespace, "redis-fallback", own.url)
    autoscaling = {
        "minReplicas": 1,
        "maxReplicas": 3,
        "pollingIntervalSeconds": POLL_SECONDS,
        "onMetricFailure": "fallback",
        "fallbackReplicas": 1,
        "scaleUp": {"stabilizationWindowSeconds": 0},
        "scaleDown": {"stabilizationWindowSeconds": 1, "maxStepPercent": 100},
    }
    apply_pool(
        kube_cluster,
        pools_namespace,
        wf.build_pool("fallback", "e2e-fallback", autoscaling, "redis-fallback"),
    )
    _enqueue(own.url, "e2e-fallback", 250)
    pods = wait_running_pods(kube_cluster, pools_namespace, "fallback", 3)
    # When that Redis goes away
    stopped = time.monotonic()
    own.stop()
    # Then the replicas go to the fallback count, but not at the first failed read
    kubecluster.poll_until(
        "the fallback to 1 replica",
        lambda: _replicas(kube_cluster, pools_namespace, "fallback"),
        lambda replicas: replicas == "1",
        timeout_seconds=60,
    )
    took = time.monotonic() - stopped
    # And no pod was marked: without stats there is no ranking of the pods
    names = {p["metadata"]["name"] for p in pods}
    listing = kube_cluster.fetch_json(
        "pods", "-n", pools_namespace, "-l", f"{wf.POOL_LABEL}=fallback"
    )
    marked = [
        p["metadata"]["name"]
        for p in listing["items"]  # type: ignore[union-attr]
        if wf.DELETION_COST in (p["metadata"].get("annotations") or {})
    ]
    assert marked == [], f"deletion costs written without stats on {marked} of {sorted(names)}"
    assert took >= 2 * POLL_SECONDS, f"fell back {took:.1f}s after Redis stopped"
    assert operator.forbidden_lines() == []


def test_two_pools_on_one_queue_report_queue_conflict_and_the_second_one_holds(
    kube_cluster: kubecluster.KubeCluster,
    operator: wf.Operator,
    pools_namespace: str,
    redis_server: RedisServer,
) -> None:
    # Given pool "shared-a", then pool "shared-b", both on queue "e2e-shared" of the same Redis
    autoscaling = {"maxReplicas": 6, "pollingIntervalSeconds": POLL_SECONDS}
    apply_pool(kube_cluster, pools_namespace, wf.build_pool("shared-a", "e2e-shared", autoscaling))
    wait_condition(kube_cluster, pools_namespace, "shared-a", "QueueConflict", "False")
    apply_pool(kube_cluster, pools_namespace, wf.build_pool("shared-b", "e2e-shared", autoscaling))
    # Then both report the conflict, each naming the other
    first = wait_condition(kube_cluster, pools_namespace, "shared-a", "QueueConflict", "True")
    second = wait_condition(kube_cluster, pools_namespace, "shared-b", "QueueConflict", "True")
    assert f"{pools_namespace}/shared-b" in first["message"]
    assert f"{pools_namespace}/shared-a" in second["message"]
    # When a backlog arrives, only the first pool scales for it
    _enqueue(redis_server.url, "e2e-shared", 300)
    kubecluster.poll_until(
        "shared-a scaled up",
        lambda: _replicas(kube_cluster, pools_namespace, "shared-a"),
        lambda replicas: replicas not in ("", "0"),
        timeout_seconds=30,
    )
    time.sleep(3 * POLL_SECONDS)  # the subject is "the second one holds": three polls of it
    assert _replicas(kube_cluster, pools_namespace, "shared-b") == "0"
    events = [e["reason"] for e in wf.fetch_events(kube_cluster, pools_namespace, "shared-b")]
    assert "QueueShared" in events


def test_a_backlog_that_only_ages_does_not_rewrite_the_status_every_poll(
    kube_cluster: kubecluster.KubeCluster,
    operator: wf.Operator,
    pools_namespace: str,
    redis_server: RedisServer,
) -> None:
    # Given a pool pinned at 1 replica whose backlog nobody works on (kwok pods run nothing),
    # polling every second: its oldest job ages a second per poll
    autoscaling = {"minReplicas": 1, "maxReplicas": 1, "pollingIntervalSeconds": POLL_SECONDS}
    _enqueue(redis_server.url, "e2e-ageing", 50)
    apply_pool(kube_cluster, pools_namespace, wf.build_pool("ageing", "e2e-ageing", autoscaling))
    wait_condition(kube_cluster, pools_namespace, "ageing", "Ready", "True", timeout_seconds=90)
    wait_condition(kube_cluster, pools_namespace, "ageing", "QueueReachable", "True")
    # When ten more seconds of polls pass
    versions = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        versions.add(
            kube_cluster.kubectl(
                "get", "wp", "ageing", "-n", pools_namespace,
                "-o", "jsonpath={.metadata.resourceVersion}",
            ).stdout
        )  # fmt: skip
        time.sleep(0.25)
    # Then the pool's status was written at most once (the 30 s refresh), not on every poll
    assert len(versions) <= 2, f"{len(versions) - 1} status writes in 10 s"
