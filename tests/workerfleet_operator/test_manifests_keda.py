"""keda mode: a ScaledObject on the pool's own streams or queues, credentials by reference only."""

from __future__ import annotations

import re
from typing import Any

import pytest
from workerfleet_operator import api, manifests

from tests.workerfleet_operator import crd_validation
from worker_runtime.brokers.rabbitmq import topology
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
    assert {r["name"] for r in refs} == {pool.spec.queue.url_secret_ref.name}
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


@pytest.mark.parametrize(("sample", "broker"), [("minimal", "redis"), ("rabbitmq", "rabbitmq")])
def test_keda_objects_cannot_be_built_without_the_secret_keys_keda_reads(
    sample: str, broker: str
) -> None:
    body = crd_validation.load_sample(sample)
    body["metadata"].update(namespace="ns", uid="u", generation=1)
    pool = api.parse_pool(body)
    assert isinstance(pool, api.Pool)
    with pytest.raises(ValueError, match=rf"requires queue\.{broker}\.keda"):
        manifests.build_scaled_object(pool)
    with pytest.raises(ValueError, match=rf"requires queue\.{broker}\.keda"):
        manifests.build_trigger_authentication(pool)


def _rabbitmq_pool(queue: str = "refunds", **autoscaling: Any) -> api.Pool:
    body = crd_validation.load_sample("rabbitmq-keda")
    body["spec"]["queue"]["name"] = queue
    body["spec"]["autoscaling"].update(autoscaling)
    body["metadata"].update(namespace="shop", uid="uid-r", generation=1)
    parsed = api.parse_pool(body)
    assert isinstance(parsed, api.Pool), getattr(parsed, "message", "")
    return parsed


@pytest.mark.parametrize("queue", ["refunds", "billing.v2:eu-west_1"])
def test_one_rabbitmq_trigger_sums_the_backlog_of_exactly_the_three_priority_queues(
    queue: str,
) -> None:
    (trigger,) = manifests.build_scaled_object(_rabbitmq_pool(queue))["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "rabbitmq"
    # the management API lists queues by regex and KEDA adds them up: the total backlog
    assert (meta["protocol"], meta["useRegex"], meta["operation"]) == ("http", "true", "sum")
    assert (meta["mode"], meta["excludeUnacknowledged"]) == ("QueueLength", "true")
    pattern = re.compile(meta["queueName"])
    work = [topology.work_queue(queue, level) for level in topology.LEVELS]
    assert all(pattern.search(name) for name in work)
    not_work = [
        topology.dead_queue(queue),
        topology.delay_queue(queue, "normal", 1600),
        topology.work_queue(queue + "x", "high"),
        "x" + topology.work_queue(queue, "low"),
        topology.work_queue(queue, "normal") + "x",
    ]
    assert not any(pattern.search(name) for name in not_work)
    assert all(isinstance(v, str) for v in meta.values())


def test_the_rabbitmq_target_and_activation_follow_the_spec() -> None:
    (trigger,) = manifests.build_scaled_object(
        _rabbitmq_pool(targetBacklogPerReplica=12.5, activationBacklog=5)
    )["spec"]["triggers"]
    # ours wakes at backlog >= 5, KEDA's above activationValue
    assert (trigger["metadata"]["value"], trigger["metadata"]["activationValue"]) == ("13", "4")


def test_rabbitmq_keda_credentials_reference_keys_of_the_pools_own_secret() -> None:
    pool = _rabbitmq_pool()
    auth = manifests.build_trigger_authentication(pool)
    assert auth["metadata"]["name"] == "refunds-rabbitmq"
    assert [(r["parameter"], r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]] == [
        ("host", "rabbitmq-creds", "management"),
        ("username", "rabbitmq-creds", "username"),
        ("password", "rabbitmq-creds", "password"),
    ]
    (trigger,) = manifests.build_scaled_object(pool)["spec"]["triggers"]
    assert trigger["authenticationRef"] == {"name": "refunds-rabbitmq"}
