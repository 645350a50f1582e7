"""keda mode: a ScaledObject on the pool's own streams, with credentials by reference only."""

from __future__ import annotations

from typing import Any

import pytest
from workerfleet_operator import api, manifests

from tests.workerfleet_operator import crd_validation
from worker_runtime.brokers.redis import keys


def _pool(**autoscaling: Any) -> api.Pool:
    body = crd_validation.load_sample("keda")
    body["spec"]["autoscaling"].update(autoscaling)
    body["metadata"].update(namespace="media", uid="uid-k", generation=1)
    parsed = api.parse_pool(body)
    assert isinstance(parsed, api.Pool), getattr(parsed, "message", "")
    return parsed


def test_triggers_watch_the_lag_of_every_ready_stream_of_the_runtime_key_schema() -> None:
    scaled = manifests.build_scaled_object(_pool())
    triggers = scaled["spec"]["triggers"]
    streams = [t["metadata"]["stream"] for t in triggers]
    assert streams == list(keys.build_keys("thumbnails").ready)
    for trigger in triggers:
        assert trigger["type"] == "redis-streams"
        assert trigger["metadata"]["consumerGroup"] == keys.GROUP
        # lag-based (not pendingEntriesCount/streamLength): the only KEDA mode that reaches zero
        assert "lagCount" in trigger["metadata"]
        assert not {"pendingEntriesCount", "streamLength"} & set(trigger["metadata"])
        assert all(isinstance(v, str) for v in trigger["metadata"].values())


def test_the_target_and_the_activation_threshold_follow_the_spec() -> None:
    trigger = manifests.build_scaled_object(
        _pool(targetBacklogPerReplica=12.5, activationBacklog=5)
    )["spec"]["triggers"][0]["metadata"]
    assert trigger["lagCount"] == "13"
    # ours wakes at backlog >= 5, KEDA's at lag > activationLagCount
    assert trigger["activationLagCount"] == "4"


def test_the_scaled_object_targets_the_pools_deployment_within_its_bounds() -> None:
    spec = manifests.build_scaled_object(_pool(minReplicas=1, maxReplicas=7))["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "thumbnails",
    }
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 7)
    assert spec["pollingInterval"] == 10


def test_one_cooldown_model_the_scale_down_window_also_governs_the_step_to_zero() -> None:
    spec = manifests.build_scaled_object(_pool(scaleDown={"stabilizationWindowSeconds": 90}))[
        "spec"
    ]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert spec["cooldownPeriod"] == 90
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 90
    assert behavior["scaleUp"]["policies"] == [
        {"type": "Percent", "value": 100, "periodSeconds": 10},
        {"type": "Pods", "value": 4, "periodSeconds": 10},
    ]


def test_metric_failure_fallback_maps_to_keda_fallback_and_hold_to_none() -> None:
    fallback = manifests.build_scaled_object(_pool())["spec"]["fallback"]
    assert fallback == {"failureThreshold": 3, "replicas": 2}
    held = manifests.build_scaled_object(_pool(onMetricFailure="hold", fallbackReplicas=None))
    assert "fallback" not in held["spec"]


def test_keda_credentials_reference_keys_of_the_pools_own_secret() -> None:
    pool = _pool()
    auth = manifests.build_trigger_authentication(pool)
    refs = auth["spec"]["secretTargetRef"]
    assert {r["name"] for r in refs} == {pool.spec.queue.redis.url_secret_ref.name}
    assert [(r["parameter"], r["key"]) for r in refs] == [
        ("address", "address"),
        ("username", "username"),
        ("password", "password"),
    ]
    scaled = manifests.build_scaled_object(pool)
    assert {t["authenticationRef"]["name"] for t in scaled["spec"]["triggers"]} == {
        auth["metadata"]["name"]
    }
    assert scaled["spec"]["triggers"][0]["metadata"]["enableTLS"] == "true"


def test_keda_objects_cannot_be_built_without_the_secret_keys_keda_reads() -> None:
    body = crd_validation.load_sample("minimal")
    body["metadata"].update(namespace="ns", uid="u", generation=1)
    pool = api.parse_pool(body)
    assert isinstance(pool, api.Pool)
    with pytest.raises(ValueError, match=r"requires queue\.redis\.keda"):
        manifests.build_scaled_object(pool)
    with pytest.raises(ValueError, match=r"requires queue\.redis\.keda"):
        manifests.build_trigger_authentication(pool)
