"""Reading a WorkerPool for the local fleet: validation, the scaling policy, the worker env."""

from __future__ import annotations

import pathlib

import local_fleet_support as support
import pytest
import yaml
from workerfleet_operator.local import fleet, manifest


def test_every_autoscaling_knob_of_the_spec_reaches_the_scaling_policy() -> None:
    document = support.build_manifest(
        "knobs",
        minReplicas=1,
        maxReplicas=7,
        targetBacklogPerReplica=30,
        targetUtilization=0.5,
        targetOldestJobAgeSeconds=12,
        activationBacklog=3,
        pollingIntervalSeconds=2,
        scaleUp={"stabilizationWindowSeconds": 10, "maxStepPercent": 50, "maxStepPods": 2},
        scaleDown={"stabilizationWindowSeconds": 60, "maxStepPercent": 25, "maxStepPods": 1},
        onMetricFailure="fallback",
        fallbackReplicas=2,
        dryRun=True,
    )
    policy = manifest.build_pool(document).policy
    assert (policy.min_replicas, policy.max_replicas, policy.concurrency) == (1, 7, 2)
    assert policy.target_backlog_per_replica == 30
    assert policy.target_utilization == 0.5
    assert policy.target_oldest_job_age_seconds == 12
    assert policy.activation_backlog == 3
    assert policy.polling_interval_seconds == 2
    assert (policy.scale_up.stabilization_window_seconds, policy.scale_up.max_step_percent) == (
        10,
        50,
    )
    assert policy.scale_up.max_step_pods == 2
    assert policy.scale_down.stabilization_window_seconds == 60
    assert (policy.scale_down.max_step_percent, policy.scale_down.max_step_pods) == (25, 1)
    assert (policy.on_metric_failure, policy.fallback_replicas) == ("fallback", 2)
    assert policy.dry_run is True
    assert policy.mode == "builtin"


def test_a_keda_pool_is_scaled_by_the_builtin_loop_locally() -> None:
    document = support.build_manifest("keda", mode="keda")
    document["spec"]["queue"]["redis"]["keda"] = {"addressKey": "address"}
    assert manifest.build_pool(document).policy.mode == "builtin"


def test_a_disabled_pool_runs_its_fixed_replica_count_locally() -> None:
    document = support.build_manifest("fixed", mode="disabled", replicas=2)
    policy = manifest.build_pool(document).policy
    assert (policy.mode, policy.replicas) == ("disabled", 2)


def test_the_worker_env_follows_the_operator_contract_and_skips_secret_refs() -> None:
    document = support.build_manifest("env")
    document["spec"]["env"] = [
        {"name": "GREETING", "value": "hi"},
        {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
    ]
    document["spec"]["rateLimit"] = {"jobs": 10, "perSeconds": 2}
    pool = manifest.build_pool(document)
    env, skipped = manifest.build_worker_env(
        pool, redis_url="redis://127.0.0.1:1/0", pod_name="env-0"
    )
    assert env["WORKERFLEET_REDIS_URL"] == "redis://127.0.0.1:1/0"
    assert env["WORKERFLEET_QUEUE"] == "env"
    assert env["WORKERFLEET_APP"] == "local_fleet_tasks:app"
    assert env["WORKERFLEET_CONCURRENCY"] == "2"
    assert env["WORKERFLEET_LEASE_SECONDS"] == "3"
    assert env["WORKERFLEET_DRAIN_TIMEOUT_SECONDS"] == "10"
    assert env["WORKERFLEET_RETRY_MAX_ATTEMPTS"] == "2"
    assert env["WORKERFLEET_RETRY_BACKOFF_BASE_SECONDS"] == "0.1"
    assert env["WORKERFLEET_RATE_LIMIT_JOBS"] == "10"
    assert env["WORKERFLEET_RATE_LIMIT_PER_SECONDS"] == "2"
    assert env["WORKERFLEET_POD_NAME"] == "env-0"
    assert env["WORKERFLEET_POD_NAMESPACE"] == "local"
    assert env["WORKERFLEET_METRICS_PORT"] == "0"  # many local workers, no port clashes
    assert env["GREETING"] == "hi"
    assert "API_TOKEN" not in env
    assert skipped == ["API_TOKEN"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        pytest.param(lambda d: d["metadata"].pop("name"), "metadata.name", id="no_name"),
        pytest.param(
            lambda d: d["spec"]["autoscaling"].update(minReplicas=5, maxReplicas=2),
            "minReplicas must not exceed maxReplicas",
            id="min_above_max",
        ),
        pytest.param(lambda d: d["spec"].pop("app"), "spec.app", id="missing_app"),
        pytest.param(
            lambda d: d["spec"].update(concurrency=0), "spec.concurrency", id="zero_concurrency"
        ),
    ],
)
def test_an_invalid_manifest_is_refused_with_the_field_named(mutate: object, message: str) -> None:
    document = support.build_manifest("bad")
    mutate(document)  # type: ignore[operator]
    with pytest.raises(manifest.ManifestError, match=message):
        manifest.build_pool(document)


def test_the_first_workerpool_of_a_multi_document_file_is_used(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "all.yaml"
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis"}}
    path.write_text(yaml.safe_dump_all([secret, support.build_manifest("second-doc")]))
    assert manifest.fetch_pool(path).name == "second-doc"


def test_a_file_without_a_workerpool_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "none.yaml"
    path.write_text("kind: ConfigMap\n")
    with pytest.raises(manifest.ManifestError, match="no document of kind WorkerPool"):
        manifest.fetch_pool(path)


def test_scale_in_removes_the_cheapest_pods_first_and_the_newest_among_equals() -> None:
    costs = {"p-0": -100, "p-1": 20_005, "p-2": -100, "p-3": -1000}
    indexes = {"p-0": 0, "p-1": 1, "p-2": 2, "p-3": 3}
    order = fleet.sort_for_removal(["p-0", "p-1", "p-2", "p-3"], costs, indexes)
    assert order == ["p-3", "p-2", "p-0", "p-1"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"^cannot read .*pool\.yaml: No such file or directory$"),
        # a UnicodeDecodeError is no YAMLError: 'workerfleet run' ended in a traceback
        (b"\xff\xfekind: WorkerPool\n", r"pool\.yaml is not UTF-8 text \(byte 0: invalid"),
    ],
    ids=["missing", "not_utf8"],
)
def test_a_manifest_that_cannot_be_read_is_one_line_saying_why(
    content: bytes | None, message: str, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "pool.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(manifest.ManifestError, match=message):
        manifest.fetch_pool(path)
