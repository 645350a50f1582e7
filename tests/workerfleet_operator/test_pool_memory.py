"""What a pool's controller keeps in memory of the objects it watches, times thousands of pools.

``make bench-operator`` on the real API server: the operator's RSS grows with every pool that
converges (~100 KB of Python objects per pool measured on the emulator), and a tenth of that was
``managedFields``: a tree of small dicts per field and per manager that nothing reads except the
owners of ``spec.replicas`` (the hand-over to the autoscaler's manager).
"""

from __future__ import annotations

import copy
import gc
import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import prometheus_client
import yaml
from workerfleet_operator import api, plan
from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import context, drift, kube, metrics, pool

from worker_runtime.brokers import base

UID = "0f6c1a52-0000-4000-8000-000000000001"
ROOT = Path(__file__).resolve().parents[2]


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


def _kept_after_a_watch_event(live: dict[str, Any]) -> dict[str, Any]:
    """What a new pool controller keeps of its Deployment ``live`` after its watch event."""
    controller = _controller()
    controller.observe_deployment(live, deleted=False)
    assert controller.deployment is not None
    return controller.deployment


async def test_a_watched_deployment_is_kept_with_only_the_owners_of_its_replicas() -> None:
    # Given a pool's controller, when its Deployment's watch event arrives
    live = _deployment()
    kept = _kept_after_a_watch_event(live)
    # Then it keeps the Deployment without the managedFields nobody reads, but still knows who
    # owns spec.replicas (the hand-over to the autoscaler's manager depends on it)
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


def _traced_bytes_per_item(build: Callable[[], object], count: int) -> float:
    """Python memory still held per item after building ``count`` of them (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [build() for _ in range(count)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == count
    return held / count


def test_a_pools_metric_series_cost_about_a_kilobyte_not_a_child_object_per_series() -> None:
    # Given the operator's metrics and a poll's stats (every per-pool series gets a value)
    registry = prometheus_client.CollectorRegistry()
    operator_metrics = metrics.OperatorMetrics(registry)
    queue_stats = base.QueueStats(
        queue="q", now=1000.0, backlog=5, due_delayed=0, future_delayed=1, in_flight=2,
        dead_letter=3, oldest_job_age_seconds=4.0, enqueued_total=9, completed_total=4,
        failed_total=3, retried_total=0, dead_lettered_total=3, workers_lost_total=0,
        workers_expired=0, workers=(), maxmemory_policy="noeviction",
    )  # fmt: skip
    names = iter(range(10**6))

    def bind_and_record() -> object:
        series = operator_metrics.bind_pool(("team-a", f"pool-{next(names)}", "q"))
        series.record_poll(
            queue_stats, desired=1, max_replicas=3, alert_threshold=1, oldest_job_age_target=0.0
        )
        series.record_replicas(1, 1)
        series.record_conditions([("Ready", "True", "Idle"), ("Degraded", "False", "AsExpected")])
        return series

    # When 500 pools are bound and polled
    per_pool = _traced_bytes_per_item(bind_and_record, 500)
    # Then each costs a record of numbers (~30 labelled prometheus children took ~14 KB), and
    # a scrape still shows every series of every pool
    assert per_pool < 3_000, per_pool
    scraped = prometheus_client.generate_latest(registry).decode()
    assert scraped.count('workerfleet_pool_backlog{namespace="team-a"') == 500
    assert scraped.count("workerfleet_pool_condition{") == 1000


def test_a_kept_drift_reference_is_compact_and_still_tells_drift() -> None:
    # Given the drift reference of a full worker Deployment (the sample pool's)
    body = yaml.safe_load((ROOT / "deploy" / "samples" / "full.yaml").read_text())
    body["metadata"].update(namespace="team-a", uid=UID, generation=1)
    parsed = api.parse_pool(body)
    assert isinstance(parsed, api.Pool)
    deployment = plan.build_children(parsed, replicas=None)[0]
    reference = drift.build_drift_reference(deployment, parsed)
    as_dicts = _traced_bytes_per_item(lambda: json.loads(json.dumps(reference)), 50)
    # When the controller keeps it between rounds
    kept_bytes = _traced_bytes_per_item(lambda: drift.PackedJSON(reference), 50)
    kept = drift.PackedJSON(reference)
    # Then it takes a fraction of the same reference as dicts
    assert kept_bytes < as_dicts / 3, (kept_bytes, as_dicts)
    # and still says whether a Deployment keeps every field we own
    assert drift.is_subset(kept, copy.deepcopy(deployment))
    edited = copy.deepcopy(deployment)
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:1"
    assert not drift.is_subset(kept, edited)
    assert kept == drift.PackedJSON(copy.deepcopy(reference))


async def test_a_kept_pod_template_is_packed_and_still_tells_a_template_change() -> None:
    # Given a pool's controller that kept its Deployment from a watch event
    live = _deployment()
    kept = _kept_after_a_watch_event(live)
    # Then the pod template is kept packed, and kopf's body keeps its own dicts
    assert isinstance(kept["spec"]["template"], drift.PackedJSON)
    assert isinstance(live["spec"]["template"], dict)
    # and it still equals the template it packs, so an unchanged template is no rollout
    unchanged = {**live, "metadata": {**live["metadata"], "generation": 2}}
    assert drift.track_rollout_generation(1, kept, unchanged) == 1
    # while a changed one is, at the generation that carries it
    changed = copy.deepcopy(unchanged)
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "worker:2"
    assert drift.track_rollout_generation(1, kept, changed) == 2
    # and the drift check reads through it
    reference = drift.PackedJSON(
        {"spec": {"template": {"spec": {"containers": [{"name": "worker"}]}}}}
    )
    assert drift.is_subset(reference, kept)
    renamed = copy.deepcopy(live)
    renamed["spec"]["template"]["spec"]["containers"][0]["name"] = "someone-else"
    assert not drift.is_subset(reference, drift.pack_pod_template(renamed))
