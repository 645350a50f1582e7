"""The e2e harness itself: the control plane behaves like a real cluster for what we rely on.

Deployments become ReplicaSets and Pods that kwok runs on fake nodes, garbage collection
follows owner references, and CRDs become Established. If these fail, every later e2e test
about the operator or the chart would fail for reasons that are not ours.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e import kubecluster

pytestmark = pytest.mark.e2e


def build_deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": "example.invalid/worker:1"}]},
            },
        },
    }


def fetch_pods(cluster: kubecluster.KubeCluster, namespace: str, app: str) -> list[Any]:
    listing = cluster.fetch_json("pods", "-n", namespace, "-l", f"app={app}")
    items: list[Any] = listing["items"]  # type: ignore[assignment]
    return items


def test_a_deployment_of_two_replicas_runs_two_pods_on_kwok_nodes(
    kube_cluster: kubecluster.KubeCluster, namespace: str
) -> None:
    # Given a control plane with kwok nodes
    # When a Deployment of 2 replicas is applied
    kube_cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(build_deployment("web", 2))
    )
    # Then two Pods are scheduled on the fake nodes and kwok reports them Running
    pods = kubecluster.poll_until(
        "2 Running pods",
        lambda: fetch_pods(kube_cluster, namespace, "web"),
        lambda ps: len(ps) == 2 and all(p["status"].get("phase") == "Running" for p in ps),
        timeout_seconds=90,
    )
    assert {p["spec"]["nodeName"] for p in pods} <= set(kube_cluster.node_names)
    # And the Deployment reports both replicas available
    available = kubecluster.poll_until(
        "deployment availableReplicas == 2",
        lambda: (
            kube_cluster.kubectl(
                "get",
                "deploy",
                "web",
                "-n",
                namespace,
                "-o",
                "jsonpath={.status.availableReplicas}",
            ).stdout
        ),
        lambda v: v == "2",
        timeout_seconds=60,
    )
    assert available == "2"


def test_deleting_a_deployment_garbage_collects_its_replicaset_and_pods(
    kube_cluster: kubecluster.KubeCluster, namespace: str
) -> None:
    # Given a Deployment whose ReplicaSet and Pods exist
    kube_cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(build_deployment("gc", 2))
    )
    kubecluster.poll_until(
        "2 pods",
        lambda: fetch_pods(kube_cluster, namespace, "gc"),
        lambda ps: len(ps) == 2,
        timeout_seconds=90,
    )
    replica_sets = kube_cluster.fetch_json("rs", "-n", namespace, "-l", "app=gc")["items"]
    assert len(replica_sets) == 1  # type: ignore[arg-type]
    # When the Deployment is deleted (background propagation: the garbage collector's job)
    kube_cluster.kubectl(
        "delete", "deploy", "gc", "-n", namespace, "--cascade=background", "--wait=false"
    )
    # Then the garbage collector removes the ReplicaSet and, through it, the Pods
    left = kubecluster.poll_until(
        "no ReplicaSets and no Pods left",
        lambda: kube_cluster.kubectl(
            "get", "rs,pods", "-n", namespace, "-l", "app=gc", "-o", "name"
        ).stdout.split(),
        lambda names: names == [],
        timeout_seconds=90,
    )
    assert left == []


def test_a_crd_applied_with_kubectl_becomes_established(
    kube_cluster: kubecluster.KubeCluster,
) -> None:
    # Given a CustomResourceDefinition with a structural schema
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.e2e.example.com"},
        "spec": {
            "group": "e2e.example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    # When it is applied with kubectl
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(crd))
    # Then the API server reports it Established and serves the new kind
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.e2e.example.com", "--timeout=60s"
    )
    widget = {
        "apiVersion": "e2e.example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {"size": 0},
    }
    # (discovery learns the kind a moment after Established: "no matches for kind" until then)
    rejected = kubecluster.poll_until(
        "the Widget schema to refuse size 0",
        lambda: kube_cluster.kubectl(
            "apply", "-n", "default", "-f", "-", input=json.dumps(widget), check=False
        ),
        lambda r: "no matches for kind" not in r.stderr,
        timeout_seconds=30,
    )
    assert rejected.returncode != 0
    assert "should be greater than or equal to 1" in rejected.stderr
    kube_cluster.kubectl("delete", "crd", "widgets.e2e.example.com")
