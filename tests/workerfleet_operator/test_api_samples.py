"""The sample WorkerPools are accepted by the CRD (schema and CEL) and by the model."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel
from workerfleet_operator import api, autoscaling

from tests.workerfleet_operator import crd_validation

CRD = api.build_crd()


@pytest.mark.parametrize("name", crd_validation.SAMPLE_NAMES)
def test_each_sample_is_accepted_by_the_crd_schema_and_its_cel_rules(name: str) -> None:
    sample = crd_validation.load_sample(name)
    assert (sample["apiVersion"], sample["kind"]) == ("workerfleet.io/v1alpha1", "WorkerPool")
    assert crd_validation.validate(CRD, sample) == []


@pytest.mark.parametrize("name", crd_validation.SAMPLE_NAMES)
def test_each_sample_parses_into_a_pool(name: str) -> None:
    parsed = api.parse_pool(crd_validation.load_sample(name))
    assert isinstance(parsed, api.Pool), getattr(parsed, "message", "")


def _field_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        alias = field.alias or name
        path = f"{prefix}.{alias}".lstrip(".")
        paths.add(path)
        for arg in _model_args(field.annotation):
            paths |= _field_paths(arg, path)
    return paths


def _model_args(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()):
        found.extend(_model_args(arg))
    return found


def _present_paths(value: Any, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, sub in value.items():
            path = f"{prefix}.{key}".lstrip(".")
            paths.add(path)
            paths |= _present_paths(sub, path)
    elif isinstance(value, list):
        for item in value:
            paths |= _present_paths(item, prefix)
    return paths


def test_the_full_sample_shows_every_field_a_builtin_pool_can_use() -> None:
    # Fields that only make sense in another mode, or that alternate with one shown, are listed.
    other_modes = {
        "autoscaling.replicas",  # mode: disabled
        "queue.redis.keda",  # mode: keda, shown in the keda sample
        "queue.rabbitmq",  # the other broker, shown in the rabbitmq samples
        "queue.subscription",  # an event subscription's pool, shown in the subscription sample
        "queue.sqs",  # the third broker, shown in the sqs sample
    }
    full = crd_validation.load_sample("full")["spec"]
    wanted = {
        p
        for p in _field_paths(api.WorkerPoolSpec)
        if not any(p == o or p.startswith(o + ".") for o in other_modes)
        # deep affinity alternatives: one of each kind is shown
        and not p.startswith("scheduling.affinity.")
    }
    missing = sorted(wanted - _present_paths(full))
    assert missing == []


def test_the_keda_sample_shows_every_secret_key_field_keda_reads() -> None:
    keda = crd_validation.load_sample("keda")["spec"]["queue"]["redis"]["keda"]
    assert set(keda) == {f.alias for f in api.KedaRedisAuth.model_fields.values()}


def test_the_rabbitmq_samples_show_every_field_of_the_rabbitmq_block() -> None:
    builtin = crd_validation.load_sample("rabbitmq")["spec"]["queue"]["rabbitmq"]
    keda = crd_validation.load_sample("rabbitmq-keda")["spec"]["queue"]["rabbitmq"]
    assert set(builtin) == {"urlSecretRef"}
    assert set(keda) == {f.alias or n for n, f in api.RabbitMQSpec.model_fields.items()}
    assert set(keda["keda"]) == {f.alias for f in api.KedaRabbitMQAuth.model_fields.values()}


def test_the_scaling_policy_carries_every_autoscaling_knob_of_the_full_sample() -> None:
    parsed = api.parse_pool(crd_validation.load_sample("full"))
    assert isinstance(parsed, api.Pool)
    policy = autoscaling.build_scaling_policy(parsed.spec)
    assert policy == autoscaling.ScalingPolicy(
        min_replicas=1,
        max_replicas=50,
        concurrency=16,
        target_backlog_per_replica=100.0,
        target_utilization=0.8,
        target_oldest_job_age_seconds=30.0,
        activation_backlog=1,
        polling_interval_seconds=5.0,
        scale_up=autoscaling.StepPolicy(0.0, 100.0, 4),
        scale_down=autoscaling.StepPolicy(120.0, 50.0, 10),
        on_metric_failure="fallback",
        fallback_replicas=4,
        mode="builtin",
        dry_run=False,
    )


def test_a_disabled_pool_hands_its_fixed_replicas_to_the_policy() -> None:
    sample = crd_validation.load_sample("minimal")
    sample["spec"]["autoscaling"] = {"mode": "disabled", "replicas": 3}
    parsed = api.parse_pool(sample)
    assert isinstance(parsed, api.Pool)
    policy = autoscaling.build_scaling_policy(parsed.spec)
    assert (policy.mode, policy.replicas) == ("disabled", 3)


def test_an_explicit_null_reads_as_the_default_as_the_api_server_stores_it() -> None:
    # Given a manifest that writes null where the CRD has a default (the API server prunes the
    # null and applies the default, so `kubectl get` would show maxStepPods: 4)
    sample = crd_validation.load_sample("minimal")
    sample["spec"]["autoscaling"] = {"scaleUp": {"maxStepPods": None}, "targetUtilization": None}
    # When it is parsed locally (as `workerfleet run` does)
    parsed = api.parse_pool(sample)
    # Then it is the spec the cluster would store: defaults, not "no limit"
    assert isinstance(parsed, api.Pool), getattr(parsed, "message", "")
    policy = autoscaling.build_scaling_policy(parsed.spec)
    assert policy.scale_up.max_step_pods == 4
    assert policy.target_utilization == 0.8
