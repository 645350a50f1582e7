"""An SQS-backed WorkerPool on the real control plane, its queue on a private ElasticMQ.

The operator runs as a local process under the chart's ServiceAccount, reading the queue through
the runtime's SQS probe (one GetQueueAttributes per SQS queue per poll) with dummy AWS keys in
its environment (ElasticMQ checks no signature; IMDS is off so the credential chain never waits
on a metadata server). The pool's pods run on kwok nodes and so run nothing: the backlog is
drained by a real `workerfleet worker` process on the host, started with the broker URL the
operator composed into the Deployment, which proves the workers would reach the same queues.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import kubecluster
from tests.e2e import workerfleet_support as wf
from tests.support import elasticmq

pytestmark = pytest.mark.e2e

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "e2e-elasticmq",
    "AWS_SECRET_ACCESS_KEY": "e2e-elasticmq",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def build_sqs_pool(name: str, queue: str, endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": "workerfleet.io/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name},
        "spec": {
            "image": "registry.example/e2e-worker:1.0.0",
            "app": "tests.e2e.e2e_tasks:app",
            "leaseSeconds": 6,
            "queue": {"name": queue, "sqs": {"region": "us-east-1", "endpoint": endpoint}},
            "autoscaling": {
                "minReplicas": 0,
                "maxReplicas": 4,
                "targetBacklogPerReplica": 10,
                "targetUtilization": 0,
                "pollingIntervalSeconds": 1,
                "scaleDown": {"stabilizationWindowSeconds": 0, "maxStepPercent": 100},
            },
        },
    }


def container_env(cluster: kubecluster.KubeCluster, namespace: str, name: str) -> dict[str, str]:
    deployment = cluster.fetch_json("deployment", name, "-n", namespace)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def fetch_pool_status(cluster: kubecluster.KubeCluster, namespace: str, name: str) -> Any:
    return cluster.fetch_json("workerpool", name, "-n", namespace).get("status", {})


def test_an_sqs_pool_scales_up_on_a_backlog_and_down_to_zero_when_the_queue_empties(
    kube_cluster: kubecluster.KubeCluster,
    workerfleet_chart: str,
    namespace: str,
    elasticmq_server: elasticmq.ElasticMQServer,
    tmp_path: Path,
) -> None:
    # Given the operator with AWS credentials from its environment (the chain, dummy keys for
    # ElasticMQ) and an SQS pool of 0..4 replicas, 10 jobs per replica, on ElasticMQ
    operator = wf.start_operator(
        kube_cluster, workerfleet_chart, (namespace,), tmp_path / "operator", extra_env=AWS_ENV
    )
    queue = f"e2e-sqs-{uuid.uuid4().hex[:8]}"
    pool = build_sqs_pool("sqs-scale", queue, elasticmq_server.endpoint)
    worker: subprocess.Popen[bytes] | None = None
    try:
        kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pool))
        wf.wait_condition(kube_cluster, namespace, "sqs-scale", "Ready", {"status": "True"}, 90)
        assert wf.fetch_replicas(kube_cluster, namespace, "sqs-scale") == 0
        # and the pods run under the pool's own ServiceAccount, without an API token
        account = kube_cluster.fetch_json("serviceaccount", "sqs-scale-worker", "-n", namespace)
        assert account["automountServiceAccountToken"] is False
        # (kubectl explain tells how that account gets its IAM role)
        explained = kube_cluster.kubectl("explain", "workerpool.spec.queue.sqs.roleArn").stdout
        assert "eks.amazonaws.com/role-arn" in explained and "<pool>-worker" in explained
        env = container_env(kube_cluster, namespace, "sqs-scale")
        assert not any(name.startswith("AWS_") for name in env), "no AWS key in the pod's env"
        # When a backlog of 40 jobs lands in the SQS queues
        asyncio.run(elasticmq.enqueue_jobs(elasticmq_server.url, queue, "quick", 40))
        # Then the operator raises the Deployment to 4 replicas, reading the backlog from SQS
        kubecluster.poll_until(
            "4 replicas",
            lambda: wf.fetch_replicas(kube_cluster, namespace, "sqs-scale"),
            lambda replicas: replicas == 4,
            timeout_seconds=120,
        )
        status = fetch_pool_status(kube_cluster, namespace, "sqs-scale")
        assert status["queue"]["backlog"] + status["queue"]["inFlight"] >= 30
        # and shows no oldest-job age: SQS reports none
        assert "oldestJobAgeSeconds" not in status["queue"]
        # When a real worker, with the broker URL the operator gave the pods, drains the queue
        worker = start_worker(env, tmp_path / "worker.log")
        # Then the Deployment goes back to zero replicas
        kubecluster.poll_until(
            "0 replicas",
            lambda: wf.fetch_replicas(kube_cluster, namespace, "sqs-scale"),
            lambda replicas: replicas == 0,
            timeout_seconds=180,
        )
        final = fetch_pool_status(kube_cluster, namespace, "sqs-scale")["queue"]
        assert (final["backlog"], final["inFlight"], final["deadLetter"]) == (0, 0, 0)
    finally:
        if worker is not None:
            kubecluster.stop_process(worker)
        operator.stop()
    assert operator.forbidden_lines() == []


def start_worker(pod_env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **AWS_ENV,
        **pod_env,
        "WORKERFLEET_POD_NAME": "host-worker",
        "WORKERFLEET_METRICS_PORT": "0",
        "WORKERFLEET_DRAIN_TIMEOUT_SECONDS": "1",
    }
    command = [str(wf.WORKERFLEET), "worker", "tests.e2e.e2e_tasks:app", "--concurrency", "8"]
    with log.open("wb") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=wf.REPO,
            preexec_fn=kubecluster.build_parent_death_signal(),
        )
