"""Helpers for the e2e tests of the chart and the operator on the real control plane.

Used by tests/e2e/conftest.py (the `workerfleet_chart` and `operator` fixtures) and the
tests/e2e/test_*_on_kube.py files: installing the chart, running `workerfleet operator` as a
local process under the chart's ServiceAccount (a TokenRequest token), building WorkerPools and
reading back what the cluster made of them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e import kubecluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "workerfleet"
SAMPLES = sorted((REPO / "deploy" / "samples").glob("*.yaml"))
RELEASE = "wf"
SYSTEM_NAMESPACE = "workerfleet-system"
CRD = "workerpools.workerfleet.io"
POOL_LABEL = "workerfleet.io/pool"
# The label the chart's admission policy requires on every Secret a WorkerPool names.
USABLE_LABEL = "workerfleet.io/usable"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
WORKERFLEET = Path(sys.executable).parent / "workerfleet"
# Any refusal by RBAC shows up in the operator's log as an HTTP 403 / "forbidden".
# A refusal by RBAC, not any "403" (a resourceVersion, a count or a duration can contain it).
FORBIDDEN = re.compile(r'forbidden|"status":\s*403|\bHTTP/\S+ 403\b|\b403 Forbidden\b', re.I)
# A 403 that is not RBAC's: the API server refuses to create an object of a CRD being deleted
# (tests/e2e/test_third_party_crds_on_kube.py removes the PodMonitor CRD while a pool of
# test_operator_correctness_on_kube.py that asks for a PodMonitor is still reconciled).
NOT_RBAC = re.compile(r"not allowed while custom resource definition is terminating")
START_TIMEOUT_SECONDS = 60.0
LOG_TAIL_LINES = 25


@dataclass
class Operator:
    """A running `workerfleet operator` process, its log, and the identity it runs as."""

    process: subprocess.Popen[bytes]
    log_path: Path
    user: str
    namespaces: tuple[str, ...]
    metrics_port: int = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def forbidden_lines(self) -> list[str]:
        return [
            line
            for line in self.log().splitlines()
            if FORBIDDEN.search(line) and not NOT_RBAC.search(line)
        ]

    def stop(self) -> None:
        kubecluster.stop_process(self.process)


def apply_chart(cluster: kubecluster.KubeCluster) -> str:
    """`helm install` the chart; return the operator's ServiceAccount name.

    operator.replicas=0: the operator image is not available here (kwok would only pretend to
    run it); the real operator runs on the host under the chart's identity instead.
    clusterWide=true (the explicit choice): the tests start operators on namespaces they make
    as they go. The Secret-label admission policy is off here because those tests' Secrets are
    plain; tests/e2e/test_chart_security_on_kube.py installs the default (namespaced, policy
    on) and proves both.
    """
    cluster.helm(
        "install", RELEASE, str(CHART), "-n", SYSTEM_NAMESPACE, "--create-namespace",
        "--set", "operator.replicas=0", "--set", "clusterWide=true",
        "--set", "admissionPolicy.enabled=false", "--wait", "--timeout", "120s",
    )  # fmt: skip
    accounts = cluster.kubectl(
        "get", "sa", "-n", SYSTEM_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}",
        "-o", "jsonpath={.items[*].metadata.name}",
    ).stdout.split()  # fmt: skip
    if len(accounts) != 1:
        raise AssertionError(f"expected one ServiceAccount from the chart, found {accounts}")
    return accounts[0]


def fetch_url_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_operator(
    cluster: kubecluster.KubeCluster,
    service_account: str,
    namespaces: tuple[str, ...],
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    account_namespace: str = SYSTEM_NAMESPACE,
    kubeconfig: Path | None = None,
) -> Operator:
    """Start `workerfleet operator` as `service_account` (of `account_namespace`), watching
    `namespaces`; wait for /healthz.

    ``kubeconfig``: one the caller wrote (a token it will rotate, an exec plugin); by default a
    TokenRequest token of `service_account` in a fresh one. Raises AssertionError with the
    operator's log if it exits or never becomes healthy.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if kubeconfig is None:
        token = cluster.fetch_service_account_token(account_namespace, service_account)
        kubeconfig = cluster.write_kubeconfig(
            workdir / "operator.kubeconfig", token, service_account
        )
    health_port, metrics_port = kubecluster.fetch_free_port(), kubecluster.fetch_free_port()
    env = {
        **os.environ,
        "WORKERFLEET_OPERATOR_HEALTH_PORT": str(health_port),
        "WORKERFLEET_OPERATOR_METRICS_PORT": str(metrics_port),
        "WORKERFLEET_OPERATOR_BIND_HOST": "127.0.0.1",
        "WORKERFLEET_OPERATOR_LOG_FORMAT": "json",
        **(extra_env or {}),
    }
    env.pop("KUBECONFIG", None)
    command = [str(WORKERFLEET), "operator", "--kubeconfig", str(kubeconfig)]
    command += ["--namespaces", ",".join(namespaces)]
    log_path = workdir / "operator.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
            preexec_fn=kubecluster.build_parent_death_signal(),
        )
    user = f"system:serviceaccount:{account_namespace}:{service_account}"
    operator = Operator(process, log_path, user, namespaces, metrics_port)
    try:
        kubecluster.poll_until(
            "the operator's /healthz",
            lambda: (process.poll(), fetch_url_ok(f"http://127.0.0.1:{health_port}/healthz")),
            lambda state: state[0] is not None or state[1],
            timeout_seconds=START_TIMEOUT_SECONDS,
        )
    except AssertionError:
        operator.stop()
        raise
    if process.poll() is not None:
        lines = operator.log().splitlines()
        errors = [line for line in lines if '"level":"error"' in line][:5]
        raise AssertionError(
            f"the operator exited with {process.returncode}; its first errors:\n"
            + "\n".join(errors)
            + "\nlog tail:\n"
            + "\n".join(lines[-LOG_TAIL_LINES:])
        )
    return operator


def start_host_worker(
    app: str, env: dict[str, str], log: Path, *args: str
) -> subprocess.Popen[bytes]:
    """A real ``workerfleet worker APP ARGS`` process on the host (the pods on kwok nodes run
    nothing), with ``env`` over the test's environment, its output in ``log``; it dies with the
    test process. The caller stops it by its PID."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(WORKERFLEET), "worker", app, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            cwd=REPO,
            preexec_fn=kubecluster.build_parent_death_signal(),
        )


def build_pool(
    name: str,
    queue: str,
    autoscaling: dict[str, Any],
    secret: str = "redis",
    broker: str = "redis",
) -> dict[str, Any]:
    """A WorkerPool of the e2e tasks on ``queue``, its URL in key ``url`` of Secret ``secret``,
    under the broker block ``broker`` (``redis``, ``rabbitmq``)."""
    return {
        "apiVersion": "workerfleet.io/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name},
        "spec": {
            "image": "registry.example/e2e-worker:1.0.0",
            "app": "tests.e2e.e2e_tasks:app",
            "queue": {"name": queue, broker: {"urlSecretRef": {"name": secret, "key": "url"}}},
            "autoscaling": autoscaling,
        },
    }


def fetch_pods(cluster: kubecluster.KubeCluster, namespace: str, pool: str) -> list[dict[str, Any]]:
    """Every pod of the pool, whatever its phase."""
    listing = cluster.fetch_json("pods", "-n", namespace, "-l", f"{POOL_LABEL}={pool}")
    items: list[dict[str, Any]] = listing["items"]  # type: ignore[assignment]
    return items


def fetch_running_pods(
    cluster: kubecluster.KubeCluster, namespace: str, pool: str
) -> list[dict[str, Any]]:
    """The pool's pods that are Running and not being deleted."""
    return [
        p
        for p in fetch_pods(cluster, namespace, pool)
        if p["status"].get("phase") == "Running" and "deletionTimestamp" not in p["metadata"]
    ]


def fetch_condition(
    cluster: kubecluster.KubeCluster, namespace: str, pool: str, kind: str
) -> dict[str, Any]:
    """The pool's condition of type `kind` ({} while it has none)."""
    stored = cluster.fetch_json("wp", pool, "-n", namespace)
    status: dict[str, Any] = stored.get("status") or {}  # type: ignore[assignment]
    for condition in status.get("conditions", []):
        if condition["type"] == kind:
            found: dict[str, Any] = condition
            return found
    return {}


def wait_for_condition(
    cluster: kubecluster.KubeCluster,
    namespace: str,
    pool: str,
    kind: str,
    status: str = "True",
    timeout_seconds: float = 60,
) -> dict[str, Any]:
    """Poll the pool's condition `kind` until it has `status`; return it."""
    return kubecluster.poll_until(
        f"{namespace}/{pool} {kind}={status}",
        lambda: fetch_condition(cluster, namespace, pool, kind),
        lambda condition: condition.get("status") == status,
        timeout_seconds=timeout_seconds,
    )


def fetch_events(
    cluster: kubecluster.KubeCluster, namespace: str, pool: str
) -> list[dict[str, Any]]:
    """Events about the WorkerPool `pool`."""
    listing = cluster.fetch_json(
        "events", "-n", namespace, "--field-selector",
        f"involvedObject.kind=WorkerPool,involvedObject.name={pool}",
    )  # fmt: skip
    items: list[dict[str, Any]] = listing["items"]  # type: ignore[assignment]
    return items


def fetch_replicas(cluster: kubecluster.KubeCluster, namespace: str, name: str) -> int | None:
    """The Deployment's spec.replicas, or None while the operator has not created it yet (a
    poll right after applying a pool must wait for it, not fail on NotFound)."""
    out = cluster.kubectl(
        "get",
        "deploy",
        name,
        "-n",
        namespace,
        "--ignore-not-found",
        "-o",
        "jsonpath={.spec.replicas}",
    ).stdout
    return int(out) if out.strip() else None


def wait_condition(
    cluster: kubecluster.KubeCluster,
    namespace: str,
    pool: str,
    ctype: str,
    accept: dict[str, Any],
    timeout_seconds: float = 60,
) -> dict[str, Any]:
    """Wait (bounded) until the pool's condition ``ctype`` has every key/value of ``accept``."""
    found: dict[str, Any] = kubecluster.poll_until(
        f"{pool} {ctype} {accept}",
        lambda: fetch_condition(cluster, namespace, pool, ctype),
        lambda c: all(c.get(k) == v for k, v in accept.items()),
        timeout_seconds=timeout_seconds,
    )
    return found
