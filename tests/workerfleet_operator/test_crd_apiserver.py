"""The generated CRD and manifests against a real kube-apiserver (not an approximation).

The cel-python/jsonschema checks in the other CRD tests approximate the API server; this file
asks the real one (the control plane of tests/e2e/kubecluster.py, `make testbin`): the CRD is
accepted as structural with CEL rules inside the cost budget, the samples are admitted, every
rule case of test_api_rules is refused with its message, defaults are what the model assumes,
the status subresource accepts a planned status, and the built-in children pass the server's
own validation (server-side dry run). Marked ``e2e``: `make e2e` / `make test` run it.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from workerfleet_operator import api, plan
from workerfleet_operator import autoscaling as autoscaling_mod

from tests.e2e import kubecluster
from tests.workerfleet_operator import crd_validation, test_api_rules
from tests.workerfleet_operator.test_manifests_golden import build_sample_children

pytestmark = pytest.mark.e2e

NAMESPACE = "crd-check"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kubecluster.KubeCluster]:
    missing = kubecluster.missing_binaries()
    if missing:
        pytest.fail(f"missing {missing} in {kubecluster.TESTBIN}: run `make testbin`")
    workdir: Path = tmp_path_factory.mktemp("crd-kube")
    with kubecluster.running_kube_cluster(workdir, node_count=0) as running:
        running.kubectl("apply", "--server-side", "-f", str(crd_validation.CRD_FILE))
        running.kubectl(
            "wait", "--for=condition=Established", f"crd/{api.CRD_NAME}", "--timeout=60s"
        )
        running.kubectl("create", "namespace", NAMESPACE)
        yield running


def _apply(
    cluster: kubecluster.KubeCluster, obj: dict[str, Any], *, dry_run: bool = True
) -> subprocess.CompletedProcess[str]:
    args = ["apply", "--server-side", "-n", NAMESPACE, "-f", "-"]
    if dry_run:
        args.append("--dry-run=server")
    return cluster.kubectl(*args, input=json.dumps(obj), check=False)


def _apply_minimal_with(
    cluster: kubecluster.KubeCluster, mutate: test_api_rules.Mutation
) -> subprocess.CompletedProcess[str]:
    """Server-side dry run of the minimal sample changed by ``mutate``."""
    obj = crd_validation.load_sample("minimal")
    mutate(obj)
    return _apply(cluster, obj)


def test_the_api_server_accepts_the_crd_as_structural(cluster: kubecluster.KubeCluster) -> None:
    crd = cluster.fetch_json(f"crd/{api.CRD_NAME}")
    conditions = {c["type"]: c for c in crd["status"]["conditions"]}  # type: ignore[index]
    assert conditions["Established"]["status"] == "True"
    assert conditions["NamesAccepted"]["status"] == "True"
    assert "NonStructuralSchema" not in conditions


@pytest.mark.parametrize("name", crd_validation.SAMPLE_NAMES)
def test_the_api_server_admits_each_sample(cluster: kubecluster.KubeCluster, name: str) -> None:
    result = _apply(cluster, crd_validation.load_sample(name))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case", test_api_rules.CASES, ids=[c.id for c in test_api_rules.CASES])
def test_the_api_server_refuses_each_rule_case_with_its_message(
    cluster: kubecluster.KubeCluster, case: test_api_rules.Case
) -> None:
    result = _apply_minimal_with(cluster, case.mutate)
    assert result.returncode != 0
    assert case.message in result.stderr


def test_the_api_server_refuses_renaming_the_queue_of_a_stored_pool(
    cluster: kubecluster.KubeCluster,
) -> None:
    # Given a stored pool
    pool = crd_validation.load_sample("minimal")
    pool["metadata"]["name"] = "rename-me"
    created = _apply(cluster, pool, dry_run=False)
    assert created.returncode == 0, created.stderr
    # When its queue is renamed
    renamed = cluster.kubectl(
        "patch", "wp", "rename-me", "-n", NAMESPACE, "--type=merge",
        "-p", json.dumps({"spec": {"queue": {"name": "emails-v2"}}}), check=False,
    )  # fmt: skip
    # Then the API server refuses it with the rule's message, and other changes still pass
    assert renamed.returncode != 0
    assert test_api_rules.QUEUE_RENAME_MESSAGE in renamed.stderr
    changed = cluster.kubectl(
        "patch", "wp", "rename-me", "-n", NAMESPACE, "--type=merge",
        "-p", json.dumps({"spec": {"concurrency": 3}}), check=False,
    )  # fmt: skip
    assert changed.returncode == 0, changed.stderr


@pytest.mark.parametrize(
    "mutate",
    [m for _, m in test_api_rules.SCHEMA_REFUSALS],
    ids=[i for i, _ in test_api_rules.SCHEMA_REFUSALS],
)
def test_the_api_server_refuses_out_of_bounds_and_unknown_fields(
    cluster: kubecluster.KubeCluster, mutate: test_api_rules.Mutation
) -> None:
    result = _apply_minimal_with(cluster, mutate)
    assert result.returncode != 0, "admitted"


@pytest.mark.parametrize(
    "mutate",
    [m for _, m in test_api_rules.VALID_EDGES],
    ids=[i for i, _ in test_api_rules.VALID_EDGES],
)
def test_the_api_server_admits_objects_at_the_edge_of_a_rule(
    cluster: kubecluster.KubeCluster, mutate: test_api_rules.Mutation
) -> None:
    result = _apply_minimal_with(cluster, mutate)
    assert result.returncode == 0, result.stderr


def test_server_defaults_equal_the_model_defaults_and_the_status_is_writable(
    cluster: kubecluster.KubeCluster,
) -> None:
    # Given the minimal sample created for real
    minimal = crd_validation.load_sample("minimal")
    result = _apply(cluster, minimal, dry_run=False)
    assert result.returncode == 0, result.stderr
    stored = cluster.fetch_json("workerpool", "emails", "-n", NAMESPACE)
    # Then the defaulted spec parses to exactly the model's defaults
    parsed = api.parse_pool(stored)
    assert isinstance(parsed, api.Pool)
    assert parsed.spec == api.WorkerPoolSpec.model_validate(minimal["spec"])
    assert stored["spec"]["autoscaling"]["scaleDown"]["stabilizationWindowSeconds"] == 120  # type: ignore[index]
    # When a planned status is written to the status subresource
    state = plan.DeploymentState(1, 1, 2, 2, 2, 2, 2)
    now = dt.datetime.now(dt.UTC)
    planned = plan.plan(
        parsed, plan.Observed(now=now, secret=plan.SecretCheck("ok"), deployment=state)
    )
    patch = {"status": api.build_status_patch(planned.status)}
    cluster.kubectl(
        "patch",
        "workerpool",
        "emails",
        "-n",
        NAMESPACE,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(patch),
    )
    # Then it is stored as written and kubectl get shows the printer columns
    again = cluster.fetch_json("workerpool", "emails", "-n", NAMESPACE)
    assert again["status"] == patch["status"]
    table = cluster.kubectl("get", "wp", "-n", NAMESPACE).stdout.split()
    header = ["NAME", "READY", "REPLICAS", "DESIRED", "MIN", "MAX", "BACKLOG", "IN-FLIGHT"]
    header += ["OLDEST", "DLQ", "PAUSED", "AGE"]
    assert table[:12] == header
    assert table[12:15] == ["emails", "True", "2"]


def test_a_zero_target_turns_a_signal_off_and_survives_apply_while_null_is_defaulted_back(
    cluster: kubecluster.KubeCluster,
) -> None:
    # Given a backlog-only pool (targetUtilization: 0) created with server-side apply
    pool = crd_validation.load_sample("minimal")
    pool["metadata"]["name"] = "backlog-only"
    pool["spec"]["autoscaling"] = {"targetUtilization": 0}
    assert _apply(cluster, pool, dry_run=False).returncode == 0
    # When it is applied again with another change
    pool["spec"]["autoscaling"]["maxReplicas"] = 20
    assert _apply(cluster, pool, dry_run=False).returncode == 0
    stored = cluster.fetch_json("workerpool", "backlog-only", "-n", NAMESPACE)
    # Then the 0 is kept and the pool scales on the backlog signal alone
    autoscaling = stored["spec"]["autoscaling"]  # type: ignore[index]
    assert (autoscaling["targetUtilization"], autoscaling["maxReplicas"]) == (0, 20)
    parsed = api.parse_pool(stored)
    assert isinstance(parsed, api.Pool)
    policy = autoscaling_mod.build_scaling_policy(parsed.spec)
    assert (policy.target_backlog_per_replica, policy.target_utilization) == (100.0, None)
    # And a null is pruned and defaulted by the API server: it cannot mean "off"
    pool["metadata"]["name"] = "null-target"
    pool["spec"]["autoscaling"] = {"targetUtilization": None}
    assert _apply(cluster, pool, dry_run=False).returncode == 0
    stored = cluster.fetch_json("workerpool", "null-target", "-n", NAMESPACE)
    assert stored["spec"]["autoscaling"]["targetUtilization"] == 0.8  # type: ignore[index]


def _builtin_children() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name in crd_validation.SAMPLE_NAMES:
        for child in build_sample_children(name):
            if child["kind"] in {"Deployment", "Service", "PodDisruptionBudget"}:
                child = yaml.safe_load(yaml.safe_dump(child))
                child["metadata"]["namespace"] = NAMESPACE
                found.append((f"{name}-{child['kind']}", child))
    return found


BUILTIN = _builtin_children()


@pytest.mark.parametrize("child", [c for _, c in BUILTIN], ids=[i for i, _ in BUILTIN])
def test_the_api_server_accepts_every_builtin_child(
    cluster: kubecluster.KubeCluster, child: dict[str, Any]
) -> None:
    result = _apply(cluster, child)
    assert result.returncode == 0, result.stderr


RESTRICTED_NAMESPACE = "crd-check-restricted"


def _ensure_restricted_namespace(cluster: kubecluster.KubeCluster) -> None:
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": RESTRICTED_NAMESPACE,
            "labels": {
                f"pod-security.kubernetes.io/{mode}": "restricted"
                for mode in ("enforce", "warn", "audit")
            },
        },
    }
    cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(namespace))


def _deployments() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, child in BUILTIN:
        if child["kind"] == "Deployment":
            child = yaml.safe_load(yaml.safe_dump(child))
            child["metadata"]["namespace"] = RESTRICTED_NAMESPACE
            found.append((name, child))
    return found


DEPLOYMENTS = _deployments()


@pytest.mark.parametrize("deployment", [d for _, d in DEPLOYMENTS], ids=[i for i, _ in DEPLOYMENTS])
def test_worker_pods_pass_the_restricted_pod_security_admission(
    cluster: kubecluster.KubeCluster, deployment: dict[str, Any]
) -> None:
    # Given a namespace enforcing (and warning about) the restricted Pod Security Standard
    _ensure_restricted_namespace(cluster)
    # When the worker Deployment is submitted there
    result = cluster.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps(deployment),
        check=False,
    )
    # Then it is admitted without any PodSecurity warning
    assert result.returncode == 0, result.stderr
    assert "PodSecurity" not in result.stderr


def test_the_pod_security_check_does_catch_a_worker_with_extra_capabilities(
    cluster: kubecluster.KubeCluster,
) -> None:
    # The control for the test above: the same Deployment with an added capability is refused.
    _ensure_restricted_namespace(cluster)
    deployment = yaml.safe_load(yaml.safe_dump(DEPLOYMENTS[0][1]))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
    result = cluster.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps(deployment),
        check=False,
    )
    assert 'would violate PodSecurity "restricted' in result.stderr
