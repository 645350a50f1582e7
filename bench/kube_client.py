"""The operator's own API client against the ``kubernetes`` package, request by request.

Run: ``.venv/bin/python bench/kube_client.py [--requests N]`` (needs ``make testbin``). Starts
the real control plane of tests/e2e/kubecluster.py, creates one worker-sized Deployment, then
times N sequential requests of each kind, one client after the other, on the same server:

- ``shell.kube.KubeClient`` (aiohttp, JSON into dicts; what the operator uses): GET and
  server-side apply of the Deployment;
- the ``kubernetes`` package's ``AppsV1Api`` (urllib3, JSON into ``V1Deployment`` models): the
  same GET and apply, and the GET with ``_preload_content=False`` + ``json.loads`` (its transport
  without its models).

Prints the median and 90th percentile per request. Both clients keep their connection alive;
the numbers include TLS-free time on the loopback, the API server's own work and decoding.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client as k8s
from workerfleet_operator.shell import kube

from tests.e2e import kubecluster

NAMESPACE = "default"
NAME = "bench"


def build_deployment() -> dict[str, Any]:
    """A Deployment about the size of a worker pool's (env, probes, resources, labels)."""
    env = [{"name": f"WORKERFLEET_SETTING_{i}", "value": f"value-{i}"} for i in range(12)]
    container = {
        "name": "worker",
        "image": "registry.example/worker:1.0.0",
        "args": ["worker", "--app", "tasks:app"],
        "env": env,
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8000}},
        "livenessProbe": {"httpGet": {"path": "/livez", "port": 8000}},
    }
    labels = {"app.kubernetes.io/name": NAME, "workerfleet.io/pool": NAME}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def summarize(label: str, seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p90 = ordered[int(len(ordered) * 0.9) - 1]
    return (
        f"{label:<58} median {statistics.median(ordered) * 1e3:6.2f} ms   "
        f"p90 {p90 * 1e3:6.2f} ms   (n={len(ordered)})"
    )


def time_sync(call: Callable[[], object], count: int) -> list[float]:
    call()  # warm: connection, TLS, caches
    spent = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        spent.append(time.perf_counter() - started)
    return spent


async def time_fast_path(info: kopf.ConnectionInfo, count: int) -> dict[str, list[float]]:
    client = kube.KubeClient(info)
    ref = kube.build_ref("Deployment", NAMESPACE, NAME)
    body = build_deployment()
    results: dict[str, list[float]] = {"get": [], "apply": []}
    try:
        await kube.fetch_object(client, ref)
        for _ in range(count):
            started = time.perf_counter()
            await kube.fetch_object(client, ref)
            results["get"].append(time.perf_counter() - started)
        for _ in range(count):
            started = time.perf_counter()
            await kube.apply_object(client, body)
            results["apply"].append(time.perf_counter() - started)
    finally:
        await client.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="wf-bench-kube-client-"))
    cluster = kubecluster.start_kube_cluster(workdir, node_count=1)
    try:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(build_deployment()))
        info = kopf.ConnectionInfo(
            server=cluster.server, ca_path=str(cluster.ca_file), token=cluster.admin_token
        )
        fast = asyncio.run(time_fast_path(info, args.requests))

        configuration = k8s.Configuration()
        configuration.host = cluster.server
        configuration.ssl_ca_cert = str(cluster.ca_file)
        configuration.api_key["BearerToken"] = f"Bearer {cluster.admin_token}"
        apps = k8s.AppsV1Api(k8s.ApiClient(configuration))
        body = build_deployment()
        models_get = time_sync(
            lambda: apps.read_namespaced_deployment(NAME, NAMESPACE), args.requests
        )
        raw_get = time_sync(
            lambda: json.loads(
                apps.read_namespaced_deployment(NAME, NAMESPACE, _preload_content=False).data
            ),
            args.requests,
        )
        models_apply = time_sync(
            lambda: apps.patch_namespaced_deployment(
                NAME, NAMESPACE, body, field_manager="workerfleet", force=True,
                _content_type="application/apply-patch+yaml",
            ),
            args.requests,
        )  # fmt: skip
        print(
            f"kube-apiserver {kubecluster.K8S_VERSION} on loopback, {args.requests} requests each"
        )
        print(summarize("GET Deployment: shell.kube (aiohttp, dict)", fast["get"]))
        print(summarize("GET Deployment: kubernetes package (V1Deployment)", models_get))
        print(summarize("GET Deployment: kubernetes package, raw + json.loads", raw_get))
        print(summarize("server-side apply: shell.kube (aiohttp, dict)", fast["apply"]))
        print(summarize("server-side apply: kubernetes package (V1Deployment)", models_apply))
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
