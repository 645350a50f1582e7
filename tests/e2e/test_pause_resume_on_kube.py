"""Pause and resume a WorkerPool on the real API server (KEDA's annotations, workerfleet's names).

``workerfleet.io/paused-replicas: "N"`` sets the pool to N replicas and holds them whatever the
backlog; removing it gives the replicas back to the autoscaler. The operator runs as the chart's
ServiceAccount; the CRD (its PAUSED printer column) is the chart's.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from tests.e2e import kubecluster
from tests.e2e import workerfleet_support as wf
from tests.support.redis_servers import RedisServer
from worker_runtime import producer

pytestmark = pytest.mark.e2e

PAUSED = "workerfleet.io/paused"
PAUSED_REPLICAS = "workerfleet.io/paused-replicas"


def wait_replicas(cluster: kubecluster.KubeCluster, namespace: str, name: str, wanted: int) -> None:
    kubecluster.poll_until(
        f"{name} at {wanted} replicas",
        lambda: wf.fetch_replicas(cluster, namespace, name),
        lambda n: n == wanted,
        timeout_seconds=60,
    )


def fetch_queue_status(
    cluster: kubecluster.KubeCluster, namespace: str, pool: str
) -> dict[str, Any]:
    stored: Any = cluster.fetch_json("wp", pool, "-n", namespace)
    return dict((stored.get("status") or {}).get("queue") or {})


def count_events(cluster: kubecluster.KubeCluster, namespace: str, pool: str, reason: str) -> int:
    return sum(1 for e in wf.fetch_events(cluster, namespace, pool) if e["reason"] == reason)


def test_pause_holds_the_replicas_and_sets_the_condition_and_resume_restores_autoscaling(
    kube_cluster: kubecluster.KubeCluster,
    operator: wf.Operator,
    pools_namespace: str,
    redis_server: RedisServer,
) -> None:
    # Given a Ready builtin pool of 1 to 4 replicas (10 jobs per replica), not paused
    autoscaling = {
        "minReplicas": 1,
        "maxReplicas": 4,
        "targetBacklogPerReplica": 10,
        "pollingIntervalSeconds": 1,
    }
    pool = wf.build_pool("paused", "e2e-paused", autoscaling)
    kube_cluster.kubectl("apply", "-n", pools_namespace, "-f", "-", input=json.dumps(pool))
    wf.wait_condition(kube_cluster, pools_namespace, "paused", "Ready", {"status": "True"})
    wf.wait_condition(kube_cluster, pools_namespace, "paused", "Paused", {"status": "False"})

    # When it is paused at 2 replicas
    kube_cluster.kubectl("annotate", "wp", "paused", f"{PAUSED_REPLICAS}=2", "-n", pools_namespace)
    # Then the Deployment is set to 2, the pool says Paused=True PausedAtReplicas, with one
    # Normal Event, and kubectl get shows it in the PAUSED column
    wait_replicas(kube_cluster, pools_namespace, "paused", 2)
    paused = wf.wait_condition(
        kube_cluster,
        pools_namespace,
        "paused",
        "Paused",
        {"status": "True", "reason": "PausedAtReplicas"},
    )
    assert "held at 2 replicas" in paused["message"]
    column = kube_cluster.kubectl(
        "get", "wp", "paused", "-n", pools_namespace,
        "-o", "custom-columns=PAUSED:.status.conditions[?(@.type==\"Paused\")].status",
        "--no-headers",
    ).stdout.split()  # fmt: skip
    lines = kube_cluster.kubectl("get", "wp", "paused", "-n", pools_namespace).stdout.splitlines()
    header, row = lines[0].split(), lines[1].split()
    assert column == ["True"] and row[header.index("PAUSED")] == "True"

    # When 40 jobs arrive (the unpaused autoscaler would take it to 4)
    client = redis.Redis.from_url(redis_server.url)
    try:
        producer.SyncProducer(client, "e2e-paused").enqueue_many(
            [producer.JobSpec(task="quick", payload={}) for _ in range(40)]
        )
    finally:
        client.close()
    # Then the operator reads the backlog (the status shows it) and still holds 2
    kubecluster.poll_until(
        "backlog 40 in the status",
        lambda: fetch_queue_status(kube_cluster, pools_namespace, "paused"),
        lambda q: q.get("backlog") == 40,
        timeout_seconds=60,
    )
    seen = set()
    for _ in range(10):
        seen.add(wf.fetch_replicas(kube_cluster, pools_namespace, "paused"))
        time.sleep(0.5)  # the subject is "stays so over polls" (1 s polling interval)
    assert seen == {2}
    assert count_events(kube_cluster, pools_namespace, "paused", "Paused") == 1

    # When the annotation is removed (resume)
    kube_cluster.kubectl("annotate", "wp", "paused", f"{PAUSED_REPLICAS}-", "-n", pools_namespace)
    # Then autoscaling is back: the backlog takes it to 4, Paused=False, one Resumed Event
    wait_replicas(kube_cluster, pools_namespace, "paused", 4)
    wf.wait_condition(
        kube_cluster,
        pools_namespace,
        "paused",
        "Paused",
        {"status": "False", "reason": "NotPaused"},
    )
    kubecluster.poll_until(
        "one Resumed Event",
        lambda: count_events(kube_cluster, pools_namespace, "paused", "Resumed"),
        lambda n: n == 1,
        timeout_seconds=30,
    )
    # And a plain pause (no count) holds the replicas where they are
    kube_cluster.kubectl("annotate", "wp", "paused", f"{PAUSED}=true", "-n", pools_namespace)
    wf.wait_condition(
        kube_cluster,
        pools_namespace,
        "paused",
        "Paused",
        {"status": "True", "reason": "PausedByAnnotation"},
    )
    assert wf.fetch_replicas(kube_cluster, pools_namespace, "paused") == 4
    assert operator.forbidden_lines() == []
