"""``workerfleet pools -A`` and ``--pool NAMESPACE/NAME`` on the real control plane.

A live operator (the shared ``operator`` fixture) measures a real queue and writes its numbers
into the WorkerPool's status; the CLI, run as a process with the admin kubeconfig, must list
them, and must find a pool's queue and Secret for the dlq commands. The web console runs as the
chart's console ServiceAccount (its RBAC applied from the chart, a TokenRequest token), so the
chart's least-privilege rules are what it reads the cluster with.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import requests
import yaml

from tests.e2e import kubecluster
from tests.e2e import workerfleet_support as wf
from tests.support.redis_servers import RedisServer
from worker_runtime import envelope
from worker_runtime.brokers.redis import queue

pytestmark = pytest.mark.e2e


async def fill_queue(url: str, name: str, ready: int) -> str:
    """``ready`` jobs waiting and one dead letter; returns the dead letter's id."""
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    engine = queue.QueueClient(client, name, queue.QueueOptions())
    try:
        [dead] = await engine.enqueue_many(
            [queue.EnqueueRequest(envelope=envelope.build_envelope("charge", {"n": -1}))]
        )
        [job] = await engine.fetch("w-e2e", 1)
        failure = queue.Failure("ValueError", "bad card", "tb", "w-e2e")
        assert await engine.dead_letter(job, "non_retryable", failure=failure)
        await engine.enqueue_many(
            [
                queue.EnqueueRequest(envelope=envelope.build_envelope("charge", {"n": i}))
                for i in range(ready)
            ]
        )
        return dead.job_id
    finally:
        await client.aclose()


def workerfleet(cluster: kubecluster.KubeCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "COLUMNS": "200"}
    env.pop("WORKERFLEET_REDIS_URL", None)
    return subprocess.run(
        [str(wf.WORKERFLEET), *args], capture_output=True, text=True, timeout=60, env=env,
        check=False,
    )  # fmt: skip


def test_pools_lists_every_pool_with_the_numbers_the_operator_measured_and_pool_finds_the_queue(
    kube_cluster: kubecluster.KubeCluster,
    operator: wf.Operator,
    pools_namespace: str,
    redis_server: RedisServer,
) -> None:
    # Given a pool whose queue has 5 jobs waiting and 1 dead letter (kwok pods run nothing)
    dead_id = asyncio.run(fill_queue(redis_server.url, "e2e-cli-pools", ready=5))
    pool = wf.build_pool("cli-pools", "e2e-cli-pools", {"minReplicas": 1, "maxReplicas": 1})
    kube_cluster.kubectl("apply", "-n", pools_namespace, "-f", "-", input=json.dumps(pool))
    # When the operator has measured the queue
    kubecluster.poll_until(
        "status.queue of cli-pools: backlog 5, DLQ 1",
        lambda: kube_cluster.fetch_json("wp", "cli-pools", "-n", pools_namespace),
        lambda o: (
            (o.get("status", {}).get("queue") or {}).get("backlog") == 5  # type: ignore[union-attr]
            and (o.get("status", {}).get("queue") or {}).get("deadLetter") == 1
        ),  # type: ignore[union-attr]
        timeout_seconds=90,
    )
    # Then `workerfleet pools -A` lists the pool with those numbers and its replicas
    listed = workerfleet(kube_cluster, "pools", "-A", "--json")
    assert listed.returncode == 0, listed.stderr
    rows: list[dict[str, Any]] = json.loads(listed.stdout)
    [row] = [r for r in rows if r["key"] == f"{pools_namespace}/cli-pools"]
    assert (row["queue"], row["backlog"], row["dead_letter"], row["in_flight"]) == (
        "e2e-cli-pools", 5, 1, 0,
    )  # fmt: skip
    assert row["desired"] == 1 and any(c["type"] == "Ready" for c in row["conditions"])
    table = workerfleet(kube_cluster, "pools", "-A")
    line = next(x for x in table.stdout.splitlines() if "cli-pools" in x)
    assert line.split()[:3] == [pools_namespace, "cli-pools", "e2e-cli-pools"]
    assert line.split()[-4:-2] == ["5", "0"] and line.split()[-1] == "1"
    # and --live reads the queue itself through the pool's Secret (the URL is never printed)
    live = workerfleet(kube_cluster, "pools", "-n", pools_namespace, "--live", "--json")
    [live_row] = [r for r in json.loads(live.stdout) if r["name"] == "cli-pools"]
    assert (live_row["backlog"], live_row["dead_letter"]) == (5, 1)
    assert redis_server.url not in live.stdout + table.stdout + listed.stdout
    # and --pool finds the queue and its Redis URL from the WorkerPool and its Secret
    dead = workerfleet(
        kube_cluster, "dlq", "ls", "--pool", f"{pools_namespace}/cli-pools", "--json"
    )
    assert dead.returncode == 0, dead.stderr
    assert [d["job_id"] for d in json.loads(dead.stdout)] == [dead_id]
    stats = workerfleet(
        kube_cluster, "queue", "stats", "--pool", f"{pools_namespace}/cli-pools", "--json"
    )
    assert json.loads(stats.stdout)["backlog"] == 5
    missing = workerfleet(kube_cluster, "dlq", "ls", "--pool", f"{pools_namespace}/nope")
    assert missing.returncode == 2 and "no WorkerPool" in missing.stderr
    kube_cluster.kubectl("delete", "wp", "cli-pools", "-n", pools_namespace)


CONSOLE_RELEASE = "wfc"  # a second render of the chart: only its console identity is applied
IDENTITY_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def apply_console_identity(cluster: kubecluster.KubeCluster, namespace: str, workdir: Path) -> Path:
    """The chart's console ServiceAccount and RBAC (namespaced on ``namespace``), applied;
    returns a kubeconfig authenticating as that ServiceAccount."""
    rendered = cluster.helm(
        "template", CONSOLE_RELEASE, str(wf.CHART), "-n", wf.SYSTEM_NAMESPACE,
        "--set", "console.enabled=true", "--set", "console.auth.existingSecret=unused",
        "--set", f"watchNamespaces={{{namespace}}}",
        "--show-only", "templates/console.yaml", "--show-only", "templates/console-rbac.yaml",
    ).stdout  # fmt: skip
    identity = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in IDENTITY_KINDS]
    assert {d["kind"] for d in identity} == {"ServiceAccount", "Role", "RoleBinding"}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(identity))
    account = f"{CONSOLE_RELEASE}-workerfleet-console"
    token = cluster.fetch_service_account_token(wf.SYSTEM_NAMESPACE, account)
    return cluster.write_kubeconfig(workdir / "console.kubeconfig", token, account)


def test_the_console_shows_workerpools_with_status_conditions_and_the_scaling_decision(
    kube_cluster: kubecluster.KubeCluster,
    operator: wf.Operator,
    pools_namespace: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    from tests.workerfleet_operator import console_support as cs

    # Given a measured pool (3 jobs waiting, 1 dead letter)
    dead_id = asyncio.run(fill_queue(redis_server.url, "e2e-console", ready=3))
    pool = wf.build_pool("console-pool", "e2e-console", {"minReplicas": 1, "maxReplicas": 2})
    kube_cluster.kubectl("apply", "-n", pools_namespace, "-f", "-", input=json.dumps(pool))
    kubecluster.poll_until(
        "status.queue and a scaling decision of console-pool",
        lambda: kube_cluster.fetch_json("wp", "console-pool", "-n", pools_namespace),
        lambda o: (
            (o.get("status", {}).get("queue") or {}).get("backlog") == 3  # type: ignore[union-attr]
            and bool((o.get("status", {}).get("autoscaling") or {}).get("reason"))
        ),  # type: ignore[union-attr]
        timeout_seconds=90,
    )
    # When the console reads the cluster as the chart's console ServiceAccount (get/list
    # workerpools, get secrets in the watched namespace; nothing else)
    kubeconfig = apply_console_identity(kube_cluster, pools_namespace, tmp_path)
    console = cs.ConsoleProcess(
        "", [], allow_writes=False,
        extra_args=["--kube", "--namespace", pools_namespace],
        extra_env={"KUBECONFIG": str(kubeconfig)},
    )  # fmt: skip
    try:
        auth = {"Authorization": f"Bearer {cs.TOKEN}"}
        page = requests.get(console.base + "/", headers=auth, timeout=30)
        # Then the pool's row has its numbers, its Ready condition and the decision in words
        assert page.status_code == 200, console.log()
        row = page.text.split(f'data-pool="{pools_namespace}/console-pool"')[1].split("</tr>")[0]
        assert '<td class="n backlog">3</td>' in row and ">1</a>" in row
        stored = kube_cluster.fetch_json("wp", "console-pool", "-n", pools_namespace)
        conditions = stored["status"]["conditions"]  # type: ignore[index]
        for c in conditions:  # every condition with its status and reason, as stored
            assert f"{c['type']}={c['status']}</span> {c['reason']}" in row
        reason = stored["status"]["autoscaling"]["reason"]  # type: ignore[index]
        assert html.escape(reason, quote=False) in row
        # and a pool's DLQ page reads the queue through the pool's Secret, never showing it
        dlq = requests.get(
            console.base + "/dlq",
            params={"pool": f"{pools_namespace}/console-pool"},
            headers=auth,
            timeout=30,
        )
        assert dlq.status_code == 200 and dead_id in dlq.text
        assert redis_server.url not in page.text + dlq.text
    finally:
        console.stop()
        kube_cluster.kubectl("delete", "wp", "console-pool", "-n", pools_namespace)
