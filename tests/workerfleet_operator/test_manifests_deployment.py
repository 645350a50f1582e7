"""The worker Deployment: security forced, env contract honoured, replicas never fought over."""

from __future__ import annotations

from typing import Any

import pytest
from workerfleet_operator import api, manifests

from tests.workerfleet_operator import crd_validation
from tests.workerfleet_operator.test_manifests_golden import build_sample_pool
from worker_runtime import config

POOL_SELECTOR = {"workerfleet.io/pool": "email-notifications"}


def _pool(name: str = "minimal", **spec_changes: Any) -> api.Pool:
    body = crd_validation.load_sample(name)
    body["spec"].update(spec_changes)
    body["metadata"].update(namespace="team-a", uid="uid-1", generation=4)
    parsed = api.parse_pool(body)
    assert isinstance(parsed, api.Pool), getattr(parsed, "message", "")
    return parsed


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = _pod(deployment)["containers"]
    return dict(container)


@pytest.mark.parametrize("name", crd_validation.SAMPLE_NAMES)
def test_worker_pods_always_meet_the_restricted_pod_security_standard(name: str) -> None:
    sample = build_sample_pool(name)
    deployment = manifests.build_deployment(sample, replicas=None)
    pod = _pod(deployment)
    container = _container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0
    assert ctx["privileged"] is False
    # the only volume is the scratch /tmp; no host paths, no secrets mounted as files
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
    # no ServiceAccount but, on an SQS pool, the pool's own (made by the operator, no token)
    own = manifests.worker_service_account_name(sample.name) if sample.spec.queue.sqs else None
    assert pod.get("serviceAccountName") == own


@pytest.mark.parametrize("name", crd_validation.SAMPLE_NAMES)
def test_worker_pods_never_mount_a_service_account_token(name: str) -> None:
    pod = _pod(manifests.build_deployment(build_sample_pool(name), replicas=None))
    assert pod["automountServiceAccountToken"] is False


def test_the_redis_url_reaches_the_pod_only_through_a_secret_key_ref() -> None:
    env = _container(manifests.build_deployment(_pool(), replicas=None))["env"]
    (url,) = [e for e in env if e["name"] == "WORKERFLEET_REDIS_URL"]
    assert url == {
        "name": "WORKERFLEET_REDIS_URL",
        "valueFrom": {"secretKeyRef": {"name": "redis-creds", "key": "url"}},
    }
    assert all("redis://" not in str(e.get("value", "")) for e in env)


def test_a_rabbitmq_pool_gets_its_amqp_url_as_the_broker_url_from_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a RabbitMQ pool's container env
    env = _container(manifests.build_deployment(_pool("rabbitmq"), replicas=None))["env"]
    urls = [e for e in env if e["name"] in ("WORKERFLEET_BROKER_URL", "WORKERFLEET_REDIS_URL")]
    # Then the URL is only a secretKeyRef, under the broker-neutral name (no Redis name at all)
    assert urls == [
        {
            "name": "WORKERFLEET_BROKER_URL",
            "valueFrom": {"secretKeyRef": {"name": "rabbitmq-creds", "key": "url"}},
        }
    ]
    # And the worker reads it from there (as the kubelet would resolve the reference)
    monkeypatch.delenv("WORKERFLEET_REDIS_URL", raising=False)
    monkeypatch.setenv("WORKERFLEET_BROKER_URL", "amqp://w:pw@rabbitmq:5672/orders")
    settings = config.WorkerSettings()  # type: ignore[call-arg]
    assert settings.redis_url == "amqp://w:pw@rabbitmq:5672/orders"


def test_the_env_is_exactly_what_the_runtime_settings_read_back_from_the_spec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the full sample's container env, as a kubelet would resolve it
    pool = _pool("full")
    env = _container(manifests.build_deployment(pool, replicas=None))["env"]
    for entry in env:
        if "value" in entry:
            monkeypatch.setenv(entry["name"], entry["value"])
    monkeypatch.setenv("WORKERFLEET_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("WORKERFLEET_POD_NAME", "email-notifications-abc")
    # When the worker reads its settings
    settings = config.WorkerSettings()
    # Then every runtime knob equals the spec's
    spec = pool.spec
    assert settings.queue == spec.queue.name
    assert settings.app == spec.app
    assert settings.concurrency == spec.concurrency
    assert settings.lease_seconds == spec.lease_seconds
    assert settings.job_timeout_seconds == spec.job_timeout_seconds
    assert settings.drain_timeout_seconds == spec.drain.timeout_seconds
    assert settings.retry_max_attempts == spec.retry.max_attempts
    assert settings.retry_max_deliveries == spec.retry.max_deliveries
    assert settings.retry_backoff_strategy == spec.retry.backoff.strategy
    assert settings.retry_backoff_base_seconds == spec.retry.backoff.base_seconds
    assert settings.retry_backoff_max_seconds == spec.retry.backoff.max_seconds
    assert settings.retry_backoff_jitter == spec.retry.backoff.jitter
    assert settings.dlq_max_length == spec.dead_letter.max_length
    assert settings.dlq_retention_seconds == spec.dead_letter.retention_seconds
    assert spec.rate_limit is not None
    assert settings.rate_limit_jobs == spec.rate_limit.jobs
    assert settings.rate_limit_per_seconds == spec.rate_limit.per_seconds
    assert settings.metrics_port == spec.metrics.port
    assert settings.log_level == "info"  # the user's own WORKERFLEET_LOG_LEVEL entry


def test_pod_identity_comes_from_the_downward_api() -> None:
    env = {
        e["name"]: e for e in _container(manifests.build_deployment(_pool(), replicas=None))["env"]
    }
    assert env["WORKERFLEET_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    ns = env["WORKERFLEET_POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert ns == "metadata.namespace"


def test_user_env_follows_the_operator_env_with_secret_refs_kept_as_refs() -> None:
    env = _container(manifests.build_deployment(_pool("full"), replicas=None))["env"]
    names = [e["name"] for e in env]
    assert names[-3:] == ["SMTP_HOST", "SMTP_PASSWORD", "WORKERFLEET_LOG_LEVEL"]
    assert env[-2]["valueFrom"] == {
        "secretKeyRef": {"name": "smtp-creds", "key": "password", "optional": False}
    }


def test_without_a_rate_limit_no_rate_limit_env_is_set() -> None:
    env = _container(manifests.build_deployment(_pool(), replicas=None))["env"]
    assert not [e for e in env if e["name"].startswith("WORKERFLEET_RATE_LIMIT")]


def test_the_container_runs_the_app_in_exec_form() -> None:
    container = _container(manifests.build_deployment(_pool(), replicas=None))
    assert container["command"] == ["workerfleet", "worker", "emails.tasks:app"]
    assert "args" not in container


@pytest.mark.parametrize("drain", [0, 1.5, 60, 3600])
def test_the_grace_period_always_exceeds_the_drain_budget(drain: float) -> None:
    pod = _pod(manifests.build_deployment(_pool(drain={"timeoutSeconds": drain}), replicas=None))
    grace = pod["terminationGracePeriodSeconds"]
    assert isinstance(grace, int)
    assert grace >= drain + manifests.GRACE_MARGIN_SECONDS
    assert grace < drain + manifests.GRACE_MARGIN_SECONDS + 1


def test_probes_use_the_health_endpoints_on_the_metrics_port() -> None:
    container = _container(manifests.build_deployment(_pool(metrics={"port": 9300}), replicas=None))
    assert container["ports"] == [{"name": "metrics", "containerPort": 9300, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"


def test_omitting_replicas_leaves_the_field_out_for_another_owner() -> None:
    deployment = manifests.build_deployment(_pool(), replicas=None)
    assert "replicas" not in deployment["spec"]
    assert manifests.build_deployment(_pool(), replicas=0)["spec"]["replicas"] == 0


def test_the_pool_controls_its_deployment_for_garbage_collection() -> None:
    deployment = manifests.build_deployment(_pool(), replicas=None)
    assert deployment["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "workerfleet.io/v1alpha1",
            "kind": "WorkerPool",
            "name": "emails",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert deployment["metadata"]["namespace"] == "team-a"


def test_recommended_labels_are_on_the_deployment_and_its_pods_and_select_only_the_pool() -> None:
    deployment = manifests.build_deployment(_pool(), replicas=None)
    for labels in (
        deployment["metadata"]["labels"],
        deployment["spec"]["template"]["metadata"]["labels"],
    ):
        assert labels["app.kubernetes.io/name"] == "workerfleet-worker"
        assert labels["app.kubernetes.io/instance"] == "emails"
        assert labels["app.kubernetes.io/component"] == "worker"
        assert labels["app.kubernetes.io/part-of"] == "workerfleet"
        assert labels["app.kubernetes.io/managed-by"] == "workerfleet"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {"workerfleet.io/pool": "emails"}
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert manifests.build_selector("emails") == "workerfleet.io/pool=emails"


def test_default_resources_apply_only_when_the_spec_sets_none() -> None:
    defaults = _container(manifests.build_deployment(_pool(), replicas=None))["resources"]
    assert defaults == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    own = _pool(resources={"requests": {"cpu": "2", "memory": "4Gi"}})
    assert _container(manifests.build_deployment(own, replicas=None))["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"}
    }


def test_scheduling_is_passed_through_and_spread_selects_the_pools_pods() -> None:
    pod = _pod(manifests.build_deployment(_pool("full"), replicas=None))
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0] == {
        "key": "workload",
        "operator": "Equal",
        "value": "batch",
        "effect": "NoSchedule",
    }
    assert pod["priorityClassName"] == "batch-high"
    assert "podAntiAffinity" in pod["affinity"] and "nodeAffinity" in pod["affinity"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"] == {
        "matchLabels": {"workerfleet.io/pool": "email-notifications"}
    }
    assert pod["imagePullSecrets"] == [{"name": "registry-pull"}]


def test_a_rollout_never_lowers_capacity_and_waits_long_enough_for_drains() -> None:
    deployment = manifests.build_deployment(_pool(drain={"timeoutSeconds": 3600}), replicas=None)
    strategy = deployment["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    grace = _pod(deployment)["terminationGracePeriodSeconds"]
    assert deployment["spec"]["progressDeadlineSeconds"] > grace


def test_the_same_pool_always_builds_the_same_deployment() -> None:
    assert manifests.build_deployment(_pool("full"), replicas=2) == manifests.build_deployment(
        _pool("full"), replicas=2
    )


def test_the_metrics_service_is_headless_on_the_metrics_port() -> None:
    service = manifests.build_metrics_service(_pool("full"))
    assert service["metadata"]["name"] == "email-notifications-metrics"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == POOL_SELECTOR
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_the_pod_monitor_scrapes_the_metrics_port_of_the_pools_pods() -> None:
    monitor = manifests.build_pod_monitor(_pool("full"))
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "workerfleet.io/pool": "email-notifications"
    }
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_the_disruption_budget_takes_the_spec_budget_and_lets_unhealthy_pods_go() -> None:
    pdb = manifests.build_pdb(_pool("full"))
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == "25%"
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_the_worker_pod_monitor_labels_series_with_the_pool_and_carries_the_spec_labels() -> None:
    # Given a pool whose Prometheus selects PodMonitors by `release` and wants the pods' team
    pool = _pool(
        metrics={
            "podMonitor": True,
            "podMonitorLabels": {"release": "kube-prometheus-stack"},
            "podTargetLabels": ["team"],
        }
    )
    # When its PodMonitor is built
    monitor = manifests.build_pod_monitor(pool)
    # Then Prometheus selects it, the pods' team label is copied, and every worker series gets
    # the pool label the alerts and the dashboard filter on
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["podTargetLabels"] == ["team"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_workerfleet_io_pool"],
        "targetLabel": "pool",
    } in endpoint["relabelings"]
    # And the pool's own labels still win over the extra ones
    assert monitor["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "workerfleet"


def test_a_pod_monitor_label_cannot_override_the_operator_s_own() -> None:
    parsed = api.parse_pool(
        {
            **crd_validation.load_sample("minimal"),
            "spec": {
                **crd_validation.load_sample("minimal")["spec"],
                "metrics": {"podMonitorLabels": {"app.kubernetes.io/managed-by": "me"}},
            },
        }
    )
    assert isinstance(parsed, api.InvalidPool)


@pytest.mark.parametrize("per_seconds", [0.0005, 0.0009])
def test_a_rate_limit_window_the_workers_would_refuse_is_refused_by_the_pool(
    per_seconds: float,
) -> None:
    # Given a pool whose rate limit window is under the workers' minimum
    body = crd_validation.load_sample("minimal")
    body["spec"]["rateLimit"] = {"jobs": 10, "perSeconds": per_seconds}
    body["metadata"].update(namespace="team-a", uid="uid-1", generation=4)
    # When the operator reads it
    parsed = api.parse_pool(body)
    # Then it is refused naming the field, instead of rolling out workers that exit at start
    assert not isinstance(parsed, api.Pool)
    assert "perSeconds" in getattr(parsed, "message", "")
    assert per_seconds < config.MIN_RATE_LIMIT_PER_SECONDS


def test_the_pools_shortest_rate_limit_window_is_the_workers() -> None:
    # Given a pool with the shortest window the workers take
    pool = _pool(rateLimit={"jobs": 1, "perSeconds": config.MIN_RATE_LIMIT_PER_SECONDS})
    # Then the operator takes it too
    assert pool.spec.rate_limit is not None
    assert pool.spec.rate_limit.per_seconds == config.MIN_RATE_LIMIT_PER_SECONDS
