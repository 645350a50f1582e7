"""The chart and the operator on a real control plane: install, reconcile, scale, clean up.

`helm install` of charts/workerfleet, the samples through kubectl, then the real operator
(`workerfleet operator`, a local process) authenticated as the chart's ServiceAccount with a
TokenRequest token — so the chart's RBAC is what it runs with, and any forbidden request in its
log fails the test. Worker pods land on kwok nodes; the autoscaling test starts real worker
processes on the host that claim those pods' names, so the operator sees real heartbeats.
The CRD's rule-by-rule refusals are covered in tests/workerfleet_operator/test_crd_apiserver.py
on the same harness.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.e2e import kubecluster
from tests.e2e import workerfleet_support as wf
from tests.support.redis_servers import RedisServer
from worker_runtime import producer
from worker_runtime.brokers.redis import stats

pytestmark = pytest.mark.e2e


def test_helm_install_of_the_chart_establishes_the_workerpool_crd(
    kube_cluster: kubecluster.KubeCluster, workerfleet_chart: str
) -> None:
    # Given the chart installed with helm (the fixture)
    # Then its CRD is Established and served under the short name wp
    kube_cluster.kubectl("wait", "--for=condition=Established", f"crd/{wf.CRD}", "--timeout=60s")
    served = re.compile(r"^workerpools\s+wp\s+workerfleet.io/v1alpha1\s+true\s+WorkerPool", re.M)
    resources = kubecluster.poll_until(
        "discovery to list workerpools",  # discovery follows Established by a moment
        lambda: kube_cluster.kubectl("api-resources", "--api-group=workerfleet.io").stdout,
        lambda out: bool(served.search(out)),
        timeout_seconds=30,
    )
    assert served.search(resources)
    # And the operator's ServiceAccount exists in the release namespace
    assert workerfleet_chart.endswith("operator")


@pytest.mark.parametrize("sample", wf.SAMPLES, ids=[p.stem for p in wf.SAMPLES])
def test_every_sample_workerpool_is_accepted_by_kubectl_apply(
    kube_cluster: kubecluster.KubeCluster, workerfleet_chart: str, namespace: str, sample: Path
) -> None:
    # Given the chart's CRD, and a namespace the operator does not watch
    # When a sample is applied with kubectl
    result = kube_cluster.kubectl("apply", "-n", namespace, "-f", str(sample), check=False)
    # Then the API server admits it and lists it
    assert result.returncode == 0, result.stderr
    listed = kube_cluster.kubectl("get", "wp", "-n", namespace, "-o", "name").stdout.split()
    assert len(listed) >= 1


def test_the_operator_turns_a_workerpool_into_running_pods_and_reports_ready(
    kube_cluster: kubecluster.KubeCluster, operator: wf.Operator, pools_namespace: str
) -> None:
    # Given the operator running with the chart's RBAC
    # When a WorkerPool asking for at least 2 replicas is applied
    pool = wf.build_pool("ready", "e2e-ready", {"minReplicas": 2, "maxReplicas": 4})
    kube_cluster.kubectl("apply", "-n", pools_namespace, "-f", "-", input=json.dumps(pool))
    # Then a Deployment owned by the pool runs 2 Pods that kwok reports Running on its nodes
    pods = kubecluster.poll_until(
        "2 Running pods",
        lambda: wf.fetch_running_pods(kube_cluster, pools_namespace, "ready"),
        lambda ps: len(ps) == 2,
        timeout_seconds=90,
    )
    assert {p["spec"]["nodeName"] for p in pods} <= set(kube_cluster.node_names)
    owner = kube_cluster.fetch_json("deploy", "ready", "-n", pools_namespace)["metadata"]
    stored = kube_cluster.fetch_json("wp", "ready", "-n", pools_namespace)
    refs = owner["ownerReferences"]  # type: ignore[index]
    assert [(r["kind"], r["uid"], r.get("controller")) for r in refs] == [
        ("WorkerPool", stored["metadata"]["uid"], True)  # type: ignore[index]
    ]
    # And the pool's status reaches Ready, shown by kubectl's printer columns
    kubecluster.poll_until(
        "Ready=True",
        lambda: wf.fetch_condition(kube_cluster, pools_namespace, "ready", "Ready"),
        lambda c: c.get("status") == "True",
        timeout_seconds=60,
    )
    table = kubecluster.poll_until(
        "printer columns with 2 replicas",
        lambda: kube_cluster.kubectl("get", "wp", "ready", "-n", pools_namespace).stdout.split(),
        # NAME READY REPLICAS DESIRED MIN MAX BACKLOG IN-FLIGHT OLDEST DLQ PAUSED AGE, then the row
        lambda words: words[12:16] == ["ready", "True", "2", "2"],
        timeout_seconds=60,
    )
    header, row = table[:12], table[12:]
    columns = "NAME READY REPLICAS DESIRED MIN MAX BACKLOG IN-FLIGHT OLDEST DLQ PAUSED AGE"
    assert header == columns.split()
    # backlog and dead letters of the empty queue; not paused
    assert [row[header.index(c)] for c in ("BACKLOG", "DLQ", "PAUSED")] == ["0", "0", "False"]
    assert operator.forbidden_lines() == []


def test_a_backlog_scales_up_and_the_drain_scales_down_keeping_the_busy_pod(
    kube_cluster: kubecluster.KubeCluster,
    operator: wf.Operator,
    pools_namespace: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # Given a pool of 1..4 replicas, 10 jobs per replica, reacting within a second
    queue = "e2e-scale"
    autoscaling = {
        "minReplicas": 1,
        "maxReplicas": 4,
        "targetBacklogPerReplica": 10,
        "pollingIntervalSeconds": 1,
        "scaleDown": {"stabilizationWindowSeconds": 0},
    }
    pool = wf.build_pool("scale", queue, autoscaling)
    kube_cluster.kubectl("apply", "-n", pools_namespace, "-f", "-", input=json.dumps(pool))
    kubecluster.poll_until(
        "1 Running pod",
        lambda: wf.fetch_running_pods(kube_cluster, pools_namespace, "scale"),
        lambda ps: len(ps) == 1,
        timeout_seconds=90,
    )
    # When a backlog of 40 quick jobs lands in the real Redis
    client = redis.Redis.from_url(redis_server.url)
    jobs = producer.SyncProducer(client, queue)
    jobs.enqueue_many([producer.JobSpec(task="quick", payload={}) for _ in range(40)])
    # Then the operator raises the Deployment to 4 replicas and kwok runs 4 pods
    pods = kubecluster.poll_until(
        "4 Running pods",
        lambda: wf.fetch_running_pods(kube_cluster, pools_namespace, "scale"),
        lambda ps: len(ps) == 4,
        timeout_seconds=120,
    )
    # The busy pod is the newest: without deletion costs the ReplicaSet would remove it first.
    by_age = sorted(pods, key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))
    busy, idle = by_age[-1]["metadata"]["name"], by_age[-2]["metadata"]["name"]
    # When a real worker claiming the newest pod takes a slow high-priority job (concurrency 1,
    # so it takes nothing else) and its heartbeat says so, and then another worker claiming a
    # second pod drains the quick jobs
    jobs.enqueue("slow", {}, priority="high")
    workers = [start_worker(redis_server.url, queue, busy, 1, tmp_path / "busy.log")]
    try:
        kubecluster.poll_until(
            "the slow job held by the busy worker",
            lambda: stats.fetch_queue_stats_sync(client, queue),
            lambda q: (
                q.in_flight == 1
                and q.completed_total == 0
                and [w.in_flight for w in q.workers] == [1]
            ),
            timeout_seconds=60,
        )
        workers.append(start_worker(redis_server.url, queue, idle, 8, tmp_path / "idle.log"))
        # Then the pool scales back to 1 replica and the pod that survives is the busy one,
        # marked the most expensive to delete
        seen: list[list[tuple[str, str | None]]] = []  # each poll's pods and deletion costs

        def running_pods() -> list[dict[str, Any]]:
            pods = wf.fetch_running_pods(kube_cluster, pools_namespace, "scale")
            costs = [
                (
                    p["metadata"]["name"],
                    (p["metadata"].get("annotations") or {}).get(wf.DELETION_COST),
                )
                for p in pods
            ]
            if not seen or seen[-1] != costs:
                seen.append(costs)
            return pods

        survivors = kubecluster.poll_until(
            "scale-in to 1 pod", running_pods, lambda ps: len(ps) == 1, timeout_seconds=180
        )
        beats = stats.fetch_queue_stats_sync(client, queue).workers
        assert survivors[0]["metadata"]["name"] == busy, (busy, seen[-3:], beats)
        annotations = survivors[0]["metadata"].get("annotations", {})
        assert int(annotations[wf.DELETION_COST]) > 0
        assert stats.fetch_queue_stats_sync(client, queue).backlog == 0
    finally:
        for worker in workers:
            kubecluster.stop_process(worker)
        client.close()
    assert operator.forbidden_lines() == []


def start_worker(
    url: str, queue: str, pod_name: str, concurrency: int, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        "WORKERFLEET_REDIS_URL": url,
        "WORKERFLEET_QUEUE": queue,
        "WORKERFLEET_POD_NAME": pod_name,
        "WORKERFLEET_METRICS_PORT": "0",
        "WORKERFLEET_DRAIN_TIMEOUT_SECONDS": "1",
        # Heartbeats every lease/3 s: a 6 s lease lets the operator see the held job within
        # 2 s, instead of up to 10 s later (it marks deletion costs from heartbeats), and a
        # worker starved for a few seconds on a busy machine still keeps its slow job.
        "WORKERFLEET_LEASE_SECONDS": "6",
    }
    return wf.start_host_worker(
        "tests.e2e.e2e_tasks:app", env, log, "--concurrency", str(concurrency)
    )


def test_deleting_a_workerpool_garbage_collects_its_children(
    kube_cluster: kubecluster.KubeCluster, operator: wf.Operator, pools_namespace: str
) -> None:
    # Given a reconciled pool with its Deployment, ReplicaSet and Pods
    pool = wf.build_pool("doomed", "e2e-doomed", {"minReplicas": 2, "maxReplicas": 2})
    kube_cluster.kubectl("apply", "-n", pools_namespace, "-f", "-", input=json.dumps(pool))
    kubecluster.poll_until(
        "2 Running pods",
        lambda: wf.fetch_running_pods(kube_cluster, pools_namespace, "doomed"),
        lambda ps: len(ps) == 2,
        timeout_seconds=90,
    )
    # When the WorkerPool is deleted
    kube_cluster.kubectl("delete", "wp", "doomed", "-n", pools_namespace, "--timeout=60s")
    # Then every child carrying the pool's label is gone
    left = kubecluster.poll_until(
        "no children left",
        lambda: kube_cluster.kubectl(
            "get", "deploy,rs,pods,svc,pdb", "-n", pools_namespace,
            "-l", f"{wf.POOL_LABEL}=doomed", "-o", "name",
        ).stdout.split(),
        lambda names: names == [],
        timeout_seconds=90,
    )  # fmt: skip
    assert left == []
    assert operator.forbidden_lines() == []
