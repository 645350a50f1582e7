"""The autoscaler's replicas write on the real apiserver: it lands only on the version it judged.

The operator decides from its watch cache; someone else (an HPA, `kubectl scale`) may have
taken `spec.replicas` since. Its forced server-side apply names the resourceVersion whose
managedFields it checked, and this proves the apiserver refuses it when that version is old.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kopf
import pytest
from workerfleet_operator.shell import kube

from tests.e2e import kubecluster
from tests.e2e.test_control_plane import build_deployment

pytestmark = pytest.mark.e2e


def write_replicas(
    cluster: kubecluster.KubeCluster, namespace: str, replicas: int, resource_version: str
) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        info = kopf.ConnectionInfo(
            server=cluster.server, ca_path=str(cluster.ca_file), token=cluster.admin_token
        )
        client = kube.KubeClient(info)
        try:
            return await kube.apply_replicas(
                client, namespace, "web", replicas, force=True, resource_version=resource_version
            )
        finally:
            await client.close()

    return asyncio.run(run())


def fetch_replicas_and_version(cluster: kubecluster.KubeCluster, namespace: str) -> tuple[int, str]:
    dep: Any = cluster.fetch_json("deployment", "web", "-n", namespace)
    return int(dep["spec"]["replicas"]), str(dep["metadata"]["resourceVersion"])


def test_a_replicas_write_judged_on_an_old_version_is_refused_and_on_the_current_one_lands(
    kube_cluster: kubecluster.KubeCluster, namespace: str
) -> None:
    # Given a Deployment the autoscaler saw at one resourceVersion
    kube_cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=workerfleet",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(build_deployment("web", 1)),
    )
    _, seen = fetch_replicas_and_version(kube_cluster, namespace)
    # When someone else scales it to 7
    kube_cluster.kubectl("scale", "deployment/web", "--replicas=7", "-n", namespace)
    # Then a forced write naming the version it saw is refused, and 7 stays
    with pytest.raises(kube.ApiError) as refused:
        write_replicas(kube_cluster, namespace, 4, seen)
    assert refused.value.status == 409 and refused.value.is_conflict
    replicas, _ = fetch_replicas_and_version(kube_cluster, namespace)
    assert replicas == 7
    # And a write naming the current version lands. (The deployment controller keeps writing the
    # status while the 7 pods come up, each write a new version: a version read a moment ago may
    # be old by the time the write arrives, so the write is retried on a fresh read, a bounded
    # number of times, and each refusal must be that conflict.)
    for _attempt in range(10):
        _, current = fetch_replicas_and_version(kube_cluster, namespace)
        try:
            written = write_replicas(kube_cluster, namespace, 4, current)
        except kube.ApiError as exc:
            assert exc.is_conflict, exc
            continue
        break
    else:
        raise AssertionError("10 writes naming the version just read were all refused")
    assert written["spec"]["replicas"] == 4
