"""What workerfleet emits for KEDA and the Prometheus Operator, against their real CRDs.

The CRDs come from the projects' own Go modules (scripts/ensure-crds.sh: KEDA's
config/crd/bases/, prometheus-operator's example/prometheus-operator-crd/), so a field name or
type we get wrong is refused here by the real API server's structural schema, with
`--validate=strict` turning an unknown field into an error instead of a silent prune. The
objects are the operator's own (plan.build_children for a keda-mode pool with a PodMonitor, and
what the real operator applies for such a pool) and the chart's monitoring render.

The CRDs are removed again afterwards: the rest of the session runs on a control plane that
serves no KEDA or PodMonitor API (test_operator_correctness_on_kube.py relies on that).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from workerfleet_operator import api, plan

from tests.e2e import kubecluster
from tests.e2e import workerfleet_support as wf

pytestmark = pytest.mark.e2e

SCRIPT = wf.REPO / "scripts" / "ensure-crds.sh"
CACHE = Path(os.environ.get("WORKERFLEET_CACHE", Path.home() / ".cache" / "workerfleet"))


def read_pinned_version(name: str) -> str:
    """A version pinned in scripts/ensure-crds.sh (the cache directory is keyed by it)."""
    found = re.search(rf'^{name}="(v[0-9.]+)"$', SCRIPT.read_text(), re.M)
    assert found, f"{name} not found in {SCRIPT}"
    return found.group(1)


CRD_DIRS = {
    "keda": CACHE / "crds" / f"keda-{read_pinned_version('KEDA_VERSION')}",
    "prometheus-operator": CACHE
    / "crds"
    / f"prometheus-operator-{read_pinned_version('PROMETHEUS_OPERATOR_VERSION')}",
}


@pytest.fixture(scope="module")
def third_party_crds(kube_cluster: kubecluster.KubeCluster) -> Iterator[list[str]]:
    """KEDA's and prometheus-operator's CRDs installed and Established; removed afterwards."""
    files: list[Path] = []
    for name, directory in CRD_DIRS.items():
        if not (directory / ".complete").exists():
            pytest.fail(f"{name} CRDs missing in {directory}: run `make deps` (ensure-crds.sh)")
        files += sorted(directory.glob("*.yaml"))
    names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
    for path in files:
        # Server-side: the CRDs are too large for the client-side last-applied annotation.
        kube_cluster.kubectl("apply", "--server-side", "-f", str(path))
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", *[f"crd/{n}" for n in names], "--timeout=60s"
    )
    try:
        yield names
    finally:
        kube_cluster.kubectl("delete", "crd", *names, "--timeout=90s", check=False, timeout=120)


def build_keda_pool(namespace: str, secret: str, sample: str = "keda") -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(
        (wf.REPO / "deploy" / "samples" / f"{sample}.yaml").read_text()
    )
    body["metadata"]["namespace"] = namespace
    (broker,) = [b for b in api.BROKER_FIELDS if b in body["spec"]["queue"]]
    body["spec"]["queue"][broker]["urlSecretRef"]["name"] = secret
    body["spec"]["metrics"] = {"podMonitor": True, "podMonitorLabels": {"release": "kps"}}
    return body


def assert_kept(sent: Any, stored: Any, where: str) -> None:
    """Every field we sent is stored as sent (the CRD's defaults may add more)."""
    if isinstance(sent, dict):
        assert isinstance(stored, dict), where
        for key, value in sent.items():
            assert key in stored, f"{where}.{key} was pruned"
            assert_kept(value, stored[key], f"{where}.{key}")
    elif isinstance(sent, list):
        assert isinstance(stored, list) and len(stored) == len(sent), where
        for i, (a, b) in enumerate(zip(sent, stored, strict=True)):
            assert_kept(a, b, f"{where}[{i}]")
    else:
        assert sent == stored, where


def apply_strictly(cluster: kubecluster.KubeCluster, namespace: str, obj: dict[str, Any]) -> None:
    done = cluster.kubectl(
        "apply", "--server-side", "--field-manager=workerfleet", "--validate=strict",
        "-n", namespace, "-f", "-", input=json.dumps(obj), check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{obj['kind']} {obj['metadata']['name']}: {done.stderr}"


@pytest.mark.parametrize("sample", ["keda", "rabbitmq-keda"])
def test_every_object_keda_mode_emits_is_accepted_by_the_real_crds(
    kube_cluster: kubecluster.KubeCluster, third_party_crds: list[str], namespace: str, sample: str
) -> None:
    # Given a keda-mode pool (redis-streams triggers, or the rabbitmq trigger) with a
    # PodMonitor, as the operator parses it
    body = build_keda_pool(namespace, "queue-creds", sample)
    body["metadata"].update(uid="0f0e0d0c-0000-4000-8000-000000000001", generation=1)
    pool = api.parse_pool(body)
    assert isinstance(pool, api.Pool), getattr(pool, "message", "")
    children = plan.build_children(pool, replicas=None)
    kinds = [c["kind"] for c in children]
    assert {"ScaledObject", "TriggerAuthentication", "PodMonitor"} <= set(kinds)
    # When every child is applied server-side with strict field validation (owner references
    # dropped: the pool itself is not created here)
    for child in children:
        child = {**child, "metadata": {k: v for k, v in child["metadata"].items()
                                       if k != "ownerReferences"}}  # fmt: skip
        apply_strictly(kube_cluster, namespace, child)
    # Then KEDA's and the Prometheus Operator's schemas kept every field we set (and the check
    # has teeth: a misspelt field is refused, not pruned)
    (scaled,) = [c for c in children if c["kind"] == "ScaledObject"]
    misspelt = {**scaled, "metadata": {"name": "misspelt"},
                "spec": {**scaled["spec"], "pollingIntervall": 10}}  # fmt: skip
    refused = kube_cluster.kubectl(
        "apply", "--server-side", "--validate=strict", "-n", namespace, "-f", "-",
        input=json.dumps(misspelt), check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "pollingIntervall" in refused.stderr, refused.stderr
    for child in children:
        if child["kind"] in {"ScaledObject", "TriggerAuthentication", "PodMonitor"}:
            stored = kube_cluster.fetch_json(
                f"{child['kind'].lower()}.{child['apiVersion'].split('/')[0]}",
                child["metadata"]["name"], "-n", namespace,
            )  # fmt: skip
            assert_kept(child["spec"], stored["spec"], child["kind"])


KEDA_ROLE = "arn:aws:iam::123456789012:role/keda-reads-emails"


@pytest.mark.parametrize(
    "sqs",
    [
        {},  # the pool's IRSA role: identityOwner workload
        {"roleArn": None},  # no pool role: KEDA's own (identityOwner keda)
        {"keda": {"roleArn": KEDA_ROLE}, "endpoint": "http://elasticmq.q.svc:9324"},
    ],
    ids=["workload", "keda", "assumed-role-and-endpoint"],
)
def test_every_object_keda_mode_emits_for_an_sqs_pool_is_accepted_by_the_real_crds(
    kube_cluster: kubecluster.KubeCluster,
    third_party_crds: list[str],
    namespace: str,
    sqs: dict[str, Any],
) -> None:
    # Given a keda-mode SQS pool (aws-sqs-queue triggers, a podIdentity aws authentication)
    body: dict[str, Any] = yaml.safe_load((wf.REPO / "deploy" / "samples" / "sqs.yaml").read_text())
    body["metadata"].update(namespace=namespace, uid="0f0e0d0c-0000-4000-8000-000000000002",
                            generation=1)  # fmt: skip
    body["spec"]["queue"]["sqs"].update(sqs)
    body["spec"]["autoscaling"].update(mode="keda", targetUtilization=0)
    pool = api.parse_pool(body)
    assert isinstance(pool, api.Pool), getattr(pool, "message", "")
    children = plan.build_children(pool, replicas=None)
    assert {"ScaledObject", "TriggerAuthentication", "ServiceAccount"} <= {
        c["kind"] for c in children
    }
    # When every child is applied server-side with strict field validation
    for child in children:
        child = {**child, "metadata": {k: v for k, v in child["metadata"].items()
                                       if k != "ownerReferences"}}  # fmt: skip
        apply_strictly(kube_cluster, namespace, child)
    # Then KEDA's schemas kept every field we set: three triggers, the AWS pod identity
    for child in children:
        if child["kind"] in {"ScaledObject", "TriggerAuthentication"}:
            stored = kube_cluster.fetch_json(
                f"{child['kind'].lower()}.keda.sh", child["metadata"]["name"], "-n", namespace
            )
            assert_kept(child["spec"], stored["spec"], child["kind"])
    (scaled,) = [c for c in children if c["kind"] == "ScaledObject"]
    assert [t["type"] for t in scaled["spec"]["triggers"]] == ["aws-sqs-queue"] * 3


def test_the_operator_creates_keda_and_podmonitor_children_with_the_charts_rbac(
    kube_cluster: kubecluster.KubeCluster,
    third_party_crds: list[str],
    operator: wf.Operator,
    pools_namespace: str,
) -> None:
    # Given the real operator (the chart's ServiceAccount) and the third-party APIs served
    kube_cluster.kubectl(
        "create", "secret", "generic", "redis-creds", "-n", pools_namespace,
        "--from-literal=url=redis://127.0.0.1:1/0", "--from-literal=address=127.0.0.1:1",
        "--from-literal=username=u", "--from-literal=password=p",
    )  # fmt: skip
    # When a keda-mode pool with a PodMonitor is applied
    pool = build_keda_pool(pools_namespace, "redis-creds")
    pool["metadata"]["name"] = "keda-crds"
    pool["spec"]["queue"]["name"] = "keda-crds"
    kube_cluster.kubectl("apply", "-n", pools_namespace, "-f", "-", input=json.dumps(pool))
    try:
        # Then the operator applies the ScaledObject, TriggerAuthentication and PodMonitor (other
        # tests' pools share the namespace: a PodMonitor pool of theirs gets its child as soon as
        # the CRD is served, so only this pool's children are counted)
        this_pool = "app.kubernetes.io/instance=keda-crds"
        kinds = ("scaledobjects.keda.sh", "triggerauthentications.keda.sh",
                 "podmonitors.monitoring.coreos.com")  # fmt: skip
        names = kubecluster.poll_until(
            "the operator's keda and PodMonitor children",
            lambda: {
                kind: kube_cluster.kubectl(
                    "get", kind, "-n", pools_namespace, "-o", "name", "-l", this_pool, check=False
                ).stdout.split()
                for kind in kinds
            },
            lambda found: all(found.values()),
            timeout_seconds=60,
        )
        assert all(len(v) == 1 for v in names.values()), names
        scaled = kube_cluster.fetch_json(
            "scaledobject.keda.sh", "keda-crds", "-n", pools_namespace, "--show-managed-fields"
        )
        managers = {m["manager"] for m in scaled["metadata"]["managedFields"]}  # type: ignore[index]
        assert managers == {"workerfleet"}
        # And no child API is reported missing, and nothing was refused by RBAC
        degraded = wf.fetch_condition(kube_cluster, pools_namespace, "keda-crds", "Degraded")
        assert degraded.get("reason") != "ChildAPIMissing", degraded
        assert operator.forbidden_lines() == []
    finally:
        kube_cluster.kubectl("delete", "wp", "keda-crds", "-n", pools_namespace, "--wait=true",
                             "--timeout=60s", check=False)  # fmt: skip


@pytest.mark.parametrize("monitor", ["serviceMonitor", "podMonitor"])
def test_the_charts_monitoring_objects_are_accepted_by_the_real_crds(
    kube_cluster: kubecluster.KubeCluster,
    third_party_crds: list[str],
    namespace: str,
    monitor: str,
) -> None:
    # Given the chart rendered with its monitoring objects on, into this namespace
    rendered = kube_cluster.helm(
        "template", "mon", str(wf.CHART), "-n", namespace,
        "--set", f"metrics.{monitor}.enabled=true", "--set", "prometheusRule.enabled=true",
        "--set", f"metrics.{monitor}.labels.release=kps",
    ).stdout  # fmt: skip
    objects = [
        o
        for o in yaml.safe_load_all(rendered)
        if o and o["apiVersion"].startswith("monitoring.coreos.com/")
    ]
    assert sorted(o["kind"] for o in objects) == sorted(
        ["PrometheusRule", "ServiceMonitor" if monitor == "serviceMonitor" else "PodMonitor"]
    )
    # When each is applied server-side with strict field validation
    for obj in objects:
        apply_strictly(kube_cluster, namespace, obj)
    # Then the stored objects keep every field the chart set
    for obj in objects:
        stored = kube_cluster.fetch_json(
            f"{obj['kind'].lower()}.monitoring.coreos.com", obj["metadata"]["name"], "-n", namespace
        )
        assert_kept(obj["spec"], stored["spec"], obj["kind"])
