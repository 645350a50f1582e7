"""What a pool's controller keeps in memory of the objects it watches, times thousands of pools.

``make bench-operator`` on the real API server: the operator's RSS grows with every pool that
converges (~100 KB of Python objects per pool measured on the emulator), and a tenth of that was
``managedFields``: a tree of small dicts per field and per manager that nothing reads except the
owners of ``spec.replicas`` (the hand-over to the autoscaler's manager).
"""

from __future__ import annotations

from typing import Any

from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import context, kube, pool

UID = "0f6c1a52-0000-4000-8000-000000000001"


def _entry(manager: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "manager": manager,
        "operation": "Apply",
        "apiVersion": "apps/v1",
        "time": "2026-12-02T22:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": spec},
    }


def _deployment() -> dict[str, Any]:
    template = {"f:template": {"f:spec": {"f:containers": {'k:{"name":"worker"}': {".": {}}}}}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "emails",
            "namespace": "team-a",
            "resourceVersion": "12",
            "generation": 1,
            "ownerReferences": [
                {
                    "apiVersion": "workerfleet.io/v1alpha1",
                    "kind": "WorkerPool",
                    "name": "emails",
                    "uid": UID,
                    "controller": True,
                },
            ],
            "managedFields": [
                _entry(kube.FIELD_MANAGER, {"f:replicas": {}, **template}),
                _entry(kube.REPLICAS_FIELD_MANAGER, {"f:replicas": {}}),
                _entry("kube-controller-manager", {"f:revisionHistoryLimit": {}}),
            ],
        },
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "worker"}]}}},
        "status": {"observedGeneration": 1, "replicas": 2},
    }


def _controller() -> pool.PoolController:
    ctx = context.build_context(config_module.OperatorConfig())
    controller = pool.PoolController(ctx, "team-a", "emails")
    controller.observe(
        {
            "apiVersion": "workerfleet.io/v1alpha1",
            "kind": "WorkerPool",
            "metadata": {
                "name": "emails",
                "namespace": "team-a",
                "uid": UID,
                "generation": 1,
                "resourceVersion": "10",
                "managedFields": [_entry("kubectl", {"f:queue": {}})],
            },
            "spec": {},
        }
    )
    return controller


async def test_a_watched_deployment_is_kept_with_only_the_owners_of_its_replicas() -> None:
    # Given a pool's controller
    controller = _controller()
    live = _deployment()
    # When its Deployment's watch event arrives
    controller.observe_deployment(live, deleted=False)
    kept = controller.deployment
    # Then it keeps the Deployment without the managedFields nobody reads, but still knows who
    # owns spec.replicas (the hand-over to the autoscaler's manager depends on it)
    assert kept is not None
    assert kube.build_owner_of_replicas(kept) == [kube.FIELD_MANAGER, kube.REPLICAS_FIELD_MANAGER]
    assert all(set(e) == {"manager", "fieldsV1"} for e in kept["metadata"]["managedFields"])
    assert kept["spec"] == live["spec"] and kept["status"] == live["status"]
    assert kept["metadata"]["ownerReferences"] == live["metadata"]["ownerReferences"]
    # and kopf's body is left as it was
    assert len(live["metadata"]["managedFields"]) == 3


async def test_a_watched_pool_is_kept_without_managed_fields() -> None:
    # Given a pool's controller that observed its pool (whose managedFields own no replicas)
    controller = _controller()
    # Then the body it keeps has no managedFields at all, and the rest as observed
    assert controller.body is not None
    assert "managedFields" not in controller.body["metadata"]
    assert controller.body["metadata"]["uid"] == UID
