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
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import RedisServer
from tests.e2e import kubecluster
from worker_runtime import producer, stats

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "workerfleet"
SAMPLES = sorted((REPO / "deploy" / "samples").glob("*.yaml"))
RELEASE = "wf"
SYSTEM_NAMESPACE = "workerfleet-system"
POOLS_NAMESPACE = "e2e-pools"
CRD = "workerpools.workerfleet.io"
POOL_LABEL = "workerfleet.io/pool"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
WORKERFLEET = Path(sys.executable).parent / "workerfleet"
FORBIDDEN = re.compile(r"forbidden|\b403\b", re.IGNORECASE)


@dataclass
class Operator:
    """The operator process, its log, and the identity it runs as."""

    process: subprocess.Popen[bytes]
    log_path: Path
    user: str

    def forbidden_lines(self) -> list[str]:
        return [line for line in self.log_path.read_text().splitlines() if FORBIDDEN.search(line)]


def build_pool(name: str, queue: str, autoscaling: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "workerfleet.io/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name},
        "spec": {
            "image": "registry.example/e2e-worker:1.0.0",
            "app": "tests.e2e.e2e_tasks:app",
            "queue": {"name": queue, "redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
            "autoscaling": autoscaling,
        },
    }


def fetch_url_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def fetch_running_pods(cluster: kubecluster.KubeCluster, pool: str) -> list[dict[str, Any]]:
    """The pool's pods that are Running and not being deleted."""
    listing = cluster.fetch_json("pods", "-n", POOLS_NAMESPACE, "-l", f"{POOL_LABEL}={pool}")
    items: list[dict[str, Any]] = listing["items"]  # type: ignore[assignment]
    return [
        p
        for p in items
        if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]
    ]


def fetch_ready_condition(cluster: kubecluster.KubeCluster, pool: str) -> str:
    return cluster.kubectl(
        "get",
        "wp",
        pool,
        "-n",
        POOLS_NAMESPACE,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
    ).stdout


@pytest.fixture(scope="module")
def chart(kube_cluster: kubecluster.KubeCluster) -> Iterator[str]:
    """The chart installed for real; yields the operator's ServiceAccount name."""
    # operator.replicas=0: the operator image is not available here (and kwok would only
    # pretend to run it); the real operator runs on the host under the chart's identity instead.
    kube_cluster.helm(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        SYSTEM_NAMESPACE,
        "--create-namespace",
        "--set",
        "operator.replicas=0",
        "--wait",
        "--timeout",
        "120s",
    )
    accounts = kube_cluster.kubectl(
        "get", "sa", "-n", SYSTEM_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}",
        "-o", "jsonpath={.items[*].metadata.name}",
    ).stdout.split()  # fmt: skip
    assert len(accounts) == 1, accounts
    yield accounts[0]
    kube_cluster.helm("uninstall", RELEASE, "-n", SYSTEM_NAMESPACE, "--wait", check=False)


@pytest.fixture(scope="module")
def pools_namespace(kube_cluster: kubecluster.KubeCluster, redis_server: RedisServer) -> str:
    """The namespace the operator watches, with the Secret holding the real Redis URL."""
    kube_cluster.kubectl("create", "namespace", POOLS_NAMESPACE)
    kube_cluster.kubectl(
        "create", "secret", "generic", "redis", "-n", POOLS_NAMESPACE,
        f"--from-literal=url={redis_server.url}",
    )  # fmt: skip
    return POOLS_NAMESPACE


@pytest.fixture(scope="module")
def operator(
    kube_cluster: kubecluster.KubeCluster,
    chart: str,
    pools_namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operator]:
    """`workerfleet operator` as the chart's ServiceAccount (TokenRequest), watching the pools."""
    workdir = tmp_path_factory.mktemp("operator")
    token = kube_cluster.fetch_service_account_token(SYSTEM_NAMESPACE, chart)
    kubeconfig = kube_cluster.write_kubeconfig(workdir / "operator.kubeconfig", token, chart)
    health_port, metrics_port = kubecluster.fetch_free_port(), kubecluster.fetch_free_port()
    env = {
        **os.environ,
        "WORKERFLEET_OPERATOR_HEALTH_PORT": str(health_port),
        "WORKERFLEET_OPERATOR_METRICS_PORT": str(metrics_port),
        "WORKERFLEET_OPERATOR_BIND_HOST": "127.0.0.1",
        "WORKERFLEET_OPERATOR_LOG_FORMAT": "json",
    }
    env.pop("KUBECONFIG", None)
    log_path = workdir / "operator.log"
    command = [str(WORKERFLEET), "operator", "--kubeconfig", str(kubeconfig)]
    command += ["--namespaces", pools_namespace]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
        )
    running = Operator(process, log_path, f"system:serviceaccount:{SYSTEM_NAMESPACE}:{chart}")
    try:
        kubecluster.poll_until(
            "the operator's /healthz",
            lambda: (process.poll(), fetch_url_ok(f"http://127.0.0.1:{health_port}/healthz")),
            lambda state: state[0] is not None or state[1],
            timeout_seconds=60,
        )
        if process.poll() is not None:
            pytest.fail(f"the operator exited with {process.returncode}:\n{log_path.read_text()}")
        yield running
    finally:
        kubecluster.stop_process(process)
    tail = "\n".join(log_path.read_text().splitlines()[-30:])
    assert not running.forbidden_lines(), f"the operator was refused:\n{tail}"


def test_helm_install_of_the_chart_establishes_the_workerpool_crd(
    kube_cluster: kubecluster.KubeCluster, chart: str
) -> None:
    # Given the chart installed with helm (the fixture)
    # Then its CRD is Established and served under the short name wp
    kube_cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s")
    resources = kube_cluster.kubectl("api-resources", "--api-group=workerfleet.io").stdout
    assert re.search(
        r"^workerpools\s+wp\s+workerfleet.io/v1alpha1\s+true\s+WorkerPool", resources, re.M
    )
    # And the operator's ServiceAccount exists in the release namespace
    assert chart.endswith("operator")


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_every_sample_workerpool_is_accepted_by_kubectl_apply(
    kube_cluster: kubecluster.KubeCluster, chart: str, namespace: str, sample: Path
) -> None:
    # Given the chart's CRD, and a namespace the operator does not watch
    # When a sample is applied with kubectl
    result = kube_cluster.kubectl("apply", "-n", namespace, "-f", str(sample), check=False)
    # Then the API server admits it and lists it
    assert result.returncode == 0, result.stderr
    listed = kube_cluster.kubectl("get", "wp", "-n", namespace, "-o", "name").stdout.split()
    assert len(listed) >= 1


def test_the_operator_turns_a_workerpool_into_running_pods_and_reports_ready(
    kube_cluster: kubecluster.KubeCluster, operator: Operator
) -> None:
    # Given the operator running with the chart's RBAC
    # When a WorkerPool asking for at least 2 replicas is applied
    pool = build_pool("ready", "e2e-ready", {"minReplicas": 2, "maxReplicas": 4})
    kube_cluster.kubectl("apply", "-n", POOLS_NAMESPACE, "-f", "-", input=json.dumps(pool))
    # Then a Deployment owned by the pool runs 2 Pods that kwok reports Running on its nodes
    pods = kubecluster.poll_until(
        "2 Running pods",
        lambda: fetch_running_pods(kube_cluster, "ready"),
        lambda ps: len(ps) == 2,
        timeout_seconds=90,
    )
    assert {p["spec"]["nodeName"] for p in pods} <= set(kube_cluster.node_names)
    owner = kube_cluster.fetch_json("deploy", "ready", "-n", POOLS_NAMESPACE)["metadata"]
    stored = kube_cluster.fetch_json("wp", "ready", "-n", POOLS_NAMESPACE)
    refs = owner["ownerReferences"]  # type: ignore[index]
    assert [(r["kind"], r["uid"], r.get("controller")) for r in refs] == [
        ("WorkerPool", stored["metadata"]["uid"], True)  # type: ignore[index]
    ]
    # And the pool's status reaches Ready, shown by kubectl's printer columns
    kubecluster.poll_until(
        "Ready=True",
        lambda: fetch_ready_condition(kube_cluster, "ready"),
        lambda s: s == "True",
        timeout_seconds=60,
    )
    table = kubecluster.poll_until(
        "printer columns with 2 replicas",
        lambda: kube_cluster.kubectl("get", "wp", "ready", "-n", POOLS_NAMESPACE).stdout.split(),
        lambda words: words[7:11] == ["ready", "True", "2", "2"],
        timeout_seconds=60,
    )
    assert table[:7] == ["NAME", "READY", "REPLICAS", "DESIRED", "BACKLOG", "DLQ", "AGE"]
    assert table[11:13] == ["0", "0"]  # backlog and dead letters of the empty queue
    assert operator.forbidden_lines() == []


def test_a_backlog_scales_up_and_the_drain_scales_down_keeping_the_busy_pod(
    kube_cluster: kubecluster.KubeCluster,
    operator: Operator,
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
    pool = build_pool("scale", queue, autoscaling)
    kube_cluster.kubectl("apply", "-n", POOLS_NAMESPACE, "-f", "-", input=json.dumps(pool))
    kubecluster.poll_until(
        "1 Running pod",
        lambda: fetch_running_pods(kube_cluster, "scale"),
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
        lambda: fetch_running_pods(kube_cluster, "scale"),
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
        survivors = kubecluster.poll_until(
            "scale-in to 1 pod",
            lambda: fetch_running_pods(kube_cluster, "scale"),
            lambda ps: len(ps) == 1,
            timeout_seconds=180,
        )
        assert survivors[0]["metadata"]["name"] == busy
        annotations = survivors[0]["metadata"].get("annotations", {})
        assert int(annotations[DELETION_COST]) > 0
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
        **os.environ,
        "WORKERFLEET_REDIS_URL": url,
        "WORKERFLEET_QUEUE": queue,
        "WORKERFLEET_POD_NAME": pod_name,
        "WORKERFLEET_METRICS_PORT": "0",
        "WORKERFLEET_DRAIN_TIMEOUT_SECONDS": "1",
        # Heartbeats every lease/3 s: a 3 s lease lets the operator see the held job within a
        # second, instead of up to 10 s later (it marks deletion costs from heartbeats).
        "WORKERFLEET_LEASE_SECONDS": "3",
    }
    command = [str(WORKERFLEET), "worker", "tests.e2e.e2e_tasks:app"]
    command += ["--concurrency", str(concurrency)]
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
        )


def test_deleting_a_workerpool_garbage_collects_its_children(
    kube_cluster: kubecluster.KubeCluster, operator: Operator
) -> None:
    # Given a reconciled pool with its Deployment, ReplicaSet and Pods
    pool = build_pool("doomed", "e2e-doomed", {"minReplicas": 2, "maxReplicas": 2})
    kube_cluster.kubectl("apply", "-n", POOLS_NAMESPACE, "-f", "-", input=json.dumps(pool))
    kubecluster.poll_until(
        "2 Running pods",
        lambda: fetch_running_pods(kube_cluster, "doomed"),
        lambda ps: len(ps) == 2,
        timeout_seconds=90,
    )
    # When the WorkerPool is deleted
    kube_cluster.kubectl("delete", "wp", "doomed", "-n", POOLS_NAMESPACE, "--timeout=60s")
    # Then every child carrying the pool's label is gone
    left = kubecluster.poll_until(
        "no children left",
        lambda: kube_cluster.kubectl(
            "get", "deploy,rs,pods,svc,pdb", "-n", POOLS_NAMESPACE,
            "-l", f"{POOL_LABEL}=doomed", "-o", "name",
        ).stdout.split(),
        lambda names: names == [],
        timeout_seconds=90,
    )  # fmt: skip
    assert left == []
    assert operator.forbidden_lines() == []
