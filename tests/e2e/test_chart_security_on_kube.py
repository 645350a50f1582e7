"""The chart's default install on the real control plane: namespaced RBAC and the Secret policy.

A second release of charts/workerfleet with the default scope (namespaced: one watched
namespace, a Role + RoleBinding there and nothing cluster-wide for the operator) and the default
ValidatingAdmissionPolicy. The real API server (v1.35) enforces the policy; the real operator
runs on the host with a TokenRequest token of the release's ServiceAccount, so the namespaced
Role is all it has.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import kubecluster
from tests.e2e import workerfleet_support as wf
from tests.support.redis_servers import RedisServer

pytestmark = pytest.mark.e2e

RELEASE = "sec"
RELEASE_NAMESPACE = "e2e-sec-system"
POOLS = "e2e-sec-pools"
ACCOUNT = f"{RELEASE}-workerfleet-operator"
REFUSED = 'which is not labelled workerfleet.io/usable="true"'


@pytest.fixture(scope="module")
def secured_release(
    kube_cluster: kubecluster.KubeCluster, workerfleet_chart: str, redis_server: RedisServer
) -> Iterator[str]:
    """The chart installed with its defaults, watching POOLS; Secrets `plain` and `usable`."""
    kube_cluster.kubectl("create", "namespace", POOLS)
    # The first release owns the CRD; the operator runs on the host (no image here).
    kube_cluster.helm(
        "install", RELEASE, str(wf.CHART), "-n", RELEASE_NAMESPACE, "--create-namespace",
        "--set", "crds.enabled=false", "--set", "operator.replicas=0",
        "--set", f"watchNamespaces={{{POOLS}}}", "--wait", "--timeout", "120s",
    )  # fmt: skip
    for name, labelled in (("plain", False), ("usable", True)):
        kube_cluster.kubectl(
            "create", "secret", "generic", name, "-n", POOLS,
            f"--from-literal=url={redis_server.url}",
        )  # fmt: skip
        if labelled:
            kube_cluster.kubectl("label", "secret", name, "-n", POOLS, f"{wf.USABLE_LABEL}=true")
    try:
        yield POOLS
    finally:
        kube_cluster.kubectl("delete", "wp", "--all", "-n", POOLS, "--wait=false", check=False)
        kube_cluster.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", check=False)
        for namespace in (POOLS, RELEASE_NAMESPACE):
            kube_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def create_pool(
    cluster: kubecluster.KubeCluster, namespace: str, pool: dict[str, Any], *, dry_run: bool = False
) -> subprocess.CompletedProcess[str]:
    args = ["create", "-n", namespace, "-f", "-"]
    if dry_run:
        args.append("--dry-run=server")  # through admission, stores nothing
    return cluster.kubectl(*args, input=json.dumps(pool), check=False)


def wait_for_the_policy(cluster: kubecluster.KubeCluster, namespace: str) -> None:
    """The API server compiles a new policy and syncs its params a moment after it is created."""
    probe = wf.build_pool(
        "policy-probe", "policy-probe", {"mode": "disabled", "replicas": 0}, "plain"
    )
    kubecluster.poll_until(
        "the admission policy to refuse a pool naming Secret plain",
        lambda: create_pool(cluster, namespace, probe, dry_run=True),
        lambda done: done.returncode != 0 and REFUSED in done.stderr,
        timeout_seconds=60,
    )


def test_the_admission_policy_refuses_a_workerpool_naming_an_unlabelled_secret(
    kube_cluster: kubecluster.KubeCluster, secured_release: str, namespace: str
) -> None:
    wait_for_the_policy(kube_cluster, secured_release)
    # When a WorkerPool names the unlabelled Secret `plain` for its queue
    pool = wf.build_pool("plain-pool", "plain-pool", {"mode": "disabled", "replicas": 0}, "plain")
    refused = create_pool(kube_cluster, secured_release, pool)
    # Then the API server refuses it, saying which Secret, why, and how to allow it
    assert refused.returncode != 0
    assert (
        'WorkerPool plain-pool names Secret "plain", which is not labelled '
        'workerfleet.io/usable="true": a WorkerPool may only reference Secrets labelled for '
        "workerfleet use (kubectl label secret plain workerfleet.io/usable=true)"
    ) in refused.stderr, refused.stderr
    assert "ValidatingAdmissionPolicy" in refused.stderr
    # And naming it through an env secretKeyRef is refused the same way
    sneaky = wf.build_pool("env-pool", "env-pool", {"mode": "disabled", "replicas": 0}, "usable")
    sneaky["spec"]["env"] = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "plain", "key": "url"}}}
    ]
    refused = create_pool(kube_cluster, secured_release, sneaky)
    assert refused.returncode != 0 and 'names Secret "plain"' in refused.stderr
    # And a RabbitMQ pool is held to the same rule through its own broker block
    fixed = {"mode": "disabled", "replicas": 0}
    rabbit = wf.build_pool("rabbit-pool", "rabbit-pool", fixed, "plain", broker="rabbitmq")
    refused = create_pool(kube_cluster, secured_release, rabbit)
    assert refused.returncode != 0 and 'names Secret "plain"' in refused.stderr, refused.stderr
    rabbit = wf.build_pool("rabbit-pool", "rabbit-pool", fixed, "usable", broker="rabbitmq")
    admitted = create_pool(kube_cluster, secured_release, rabbit, dry_run=True)
    assert admitted.returncode == 0, admitted.stderr
    # And a pool naming the labelled Secret is admitted
    allowed = wf.build_pool(
        "usable-pool", "usable-pool", {"mode": "disabled", "replicas": 0}, "usable"
    )
    done = create_pool(kube_cluster, secured_release, allowed)
    assert done.returncode == 0, done.stderr
    # And the Secret it names cannot lose its label while the pool names it
    unlabel = kube_cluster.kubectl(
        "label", "secret", "usable", "-n", secured_release, f"{wf.USABLE_LABEL}-", check=False
    )
    assert unlabel.returncode != 0
    assert "Secret usable is named by WorkerPool usable-pool" in unlabel.stderr, unlabel.stderr
    # And outside the watched namespaces the release's policy does not apply
    kube_cluster.kubectl(
        "create", "secret", "generic", "plain", "-n", namespace, "--from-literal=url=redis://x"
    )
    elsewhere = create_pool(kube_cluster, namespace, pool)
    assert elsewhere.returncode == 0, elsewhere.stderr
    kube_cluster.kubectl("delete", "wp", "usable-pool", "-n", secured_release, "--wait=false")


def test_the_namespaced_install_runs_the_operator_with_namespaced_rbac_only(
    kube_cluster: kubecluster.KubeCluster, secured_release: str, tmp_path: Path
) -> None:
    # Given the default (namespaced) install: nothing cluster-wide is bound to the operator
    user = f"system:serviceaccount:{RELEASE_NAMESPACE}:{ACCOUNT}"
    bindings: list[dict[str, Any]] = kube_cluster.fetch_json("clusterrolebindings")["items"]  # type: ignore[assignment]
    bound = [
        b["metadata"]["name"]
        for b in bindings
        for s in b.get("subjects") or []
        if s.get("kind") == "ServiceAccount" and s.get("name") == ACCOUNT
    ]
    assert bound == []
    bound_roles = kube_cluster.kubectl(
        "get", "rolebindings", "-A", "-l", f"app.kubernetes.io/instance={RELEASE}", "-o",
        "jsonpath={range .items[*]}{.metadata.namespace}/{.roleRef.name}{' '}{end}",
    ).stdout.split()  # fmt: skip
    # The operator's Role in the watched namespace, and the Lease Role in its own namespace.
    assert sorted(bound_roles) == sorted(
        [f"{RELEASE_NAMESPACE}/{ACCOUNT}-leader-election", f"{POOLS}/{ACCOUNT}"]
    )
    for namespace, expected in ((POOLS, "yes"), ("default", "no")):
        can = kube_cluster.kubectl(
            "auth", "can-i", "list", "workerpools.workerfleet.io", "-n", namespace,
            f"--as={user}", check=False,
        )  # fmt: skip
        assert can.stdout.strip() == expected, (namespace, can.stdout, can.stderr)
    # When the real operator runs as that ServiceAccount on the watched namespace
    # (elected, as the chart's Deployment runs it: the Lease in the release namespace)
    election = {
        "WORKERFLEET_OPERATOR_LEADER_ELECTION": "true",
        "WORKERFLEET_OPERATOR_LEASE_NAME": f"{ACCOUNT}-leader",
        "WORKERFLEET_OPERATOR_LEASE_NAMESPACE": RELEASE_NAMESPACE,
        "WORKERFLEET_OPERATOR_LEADER_IDENTITY": "e2e-host-operator",
    }
    operator = wf.start_operator(
        kube_cluster, ACCOUNT, (POOLS,), tmp_path / "operator", election, RELEASE_NAMESPACE
    )
    try:
        pool = wf.build_pool(
            "namespaced", "e2e-namespaced", {"minReplicas": 1, "maxReplicas": 2}, "usable"
        )
        kube_cluster.kubectl("apply", "-n", POOLS, "-f", "-", input=json.dumps(pool))
        # Then it reconciles the pool to a Ready Deployment
        ready = wf.wait_for_condition(
            kube_cluster, POOLS, "namespaced", "Ready", timeout_seconds=120
        )
        assert ready["status"] == "True"
        owner = kube_cluster.fetch_json("deploy", "namespaced", "-n", POOLS)["metadata"]
        assert owner["ownerReferences"][0]["kind"] == "WorkerPool"  # type: ignore[index]
        # And no request of the operator or of kopf was refused by RBAC
        assert operator.forbidden_lines() == []
        assert operator.process.poll() is None
        lease = kube_cluster.fetch_json("lease", f"{ACCOUNT}-leader", "-n", RELEASE_NAMESPACE)
        assert lease["spec"]["holderIdentity"] == "e2e-host-operator"  # type: ignore[index]
    finally:
        kube_cluster.kubectl("delete", "wp", "namespaced", "-n", POOLS, "--wait=true",
                             "--timeout=60s", check=False)  # fmt: skip
        operator.stop()
