"""TEMPORARY stand-in for the pure core (api/manifests/plan) until it lands; used by handlers.

Builds just enough of a worker Deployment from the raw spec for the shell and its tests to run.
Deleted as soon as ``workerfleet_operator.manifests``/``plan`` exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workerfleet_operator import autoscaling

Body = dict[str, Any]


def build_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "workerfleet-worker",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "workerfleet",
        "workerfleet.io/pool": name,
    }


def build_owner_reference(pool: Mapping[str, Any]) -> Body:
    meta = pool["metadata"]
    return {
        "apiVersion": pool["apiVersion"],
        "kind": pool["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def build_deployment(pool: Mapping[str, Any], replicas: int | None) -> Body:
    meta = pool["metadata"]
    spec = pool.get("spec", {})
    name = meta["name"]
    ref = spec["queue"]["redis"]["urlSecretRef"]
    labels = build_labels(name)
    env = [
        {
            "name": "WORKERFLEET_REDIS_URL",
            "valueFrom": {"secretKeyRef": {"name": ref["name"], "key": ref["key"]}},
        },
        {"name": "WORKERFLEET_QUEUE", "value": spec["queue"]["name"]},
        {"name": "WORKERFLEET_APP", "value": spec.get("app", "")},
        {"name": "WORKERFLEET_CONCURRENCY", "value": str(spec.get("concurrency", 8))},
    ]
    env += [dict(e) for e in spec.get("env", [])]
    deployment_spec: Body = {
        "selector": {"matchLabels": {"workerfleet.io/pool": name}},
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "worker",
                        "image": spec["image"],
                        "args": ["worker", "$(WORKERFLEET_APP)"],
                        "env": env,
                    }
                ],
            },
        },
    }
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [build_owner_reference(pool)],
        },
        "spec": deployment_spec,
    }


def build_scaling_policy(spec: Mapping[str, Any]) -> autoscaling.ScalingPolicy:
    a = spec.get("autoscaling", {})
    up = a.get("scaleUp", {})
    down = a.get("scaleDown", {})
    return autoscaling.ScalingPolicy(
        min_replicas=a.get("minReplicas", 0),
        max_replicas=a.get("maxReplicas", 10),
        concurrency=spec.get("concurrency", 8),
        target_backlog_per_replica=a.get("targetBacklogPerReplica", 100.0),
        target_utilization=a.get("targetUtilization", 0.8),
        target_oldest_job_age_seconds=a.get("targetOldestJobAgeSeconds"),
        activation_backlog=a.get("activationBacklog", 1),
        polling_interval_seconds=a.get("pollingIntervalSeconds", 5.0),
        scale_up=autoscaling.StepPolicy(
            up.get("stabilizationWindowSeconds", 0.0),
            up.get("maxStepPercent", 100.0),
            up.get("maxStepPods", 4),
        ),
        scale_down=autoscaling.StepPolicy(
            down.get("stabilizationWindowSeconds", 120.0),
            down.get("maxStepPercent", 50.0),
            down.get("maxStepPods"),
        ),
        on_metric_failure=a.get("onMetricFailure", "hold"),
        fallback_replicas=a.get("fallbackReplicas"),
        mode=a.get("mode", "builtin"),
        dry_run=a.get("dryRun", False),
    )
