"""Pure builders of every Kubernetes object a WorkerPool owns.

Who calls it: :func:`workerfleet_operator.plan.plan` picks the children a pool needs and the
operator's shell applies them by server-side apply; the golden tests render the samples.
No I/O: a :class:`~workerfleet_operator.api.Pool` in, plain dicts out (the shape the API server
accepts), deterministic so that re-applying an unchanged pool changes nothing.

The worker pod is locked down whatever the spec says: the restricted Pod Security Standard
(non-root UID 10001, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp),
a read-only root filesystem with an ``emptyDir`` on ``/tmp``, no service-account token, no
service links. The Redis URL reaches the pod only as a ``secretKeyRef``; runtime settings follow
the environment contract in ``docs/architecture.md``.

Children and their names: Deployment ``<pool>``, headless metrics Service ``<pool>-metrics``,
PodMonitor ``<pool>``, PodDisruptionBudget ``<pool>``, KEDA ScaledObject ``<pool>`` and
TriggerAuthentication ``<pool>-redis``.
"""

from __future__ import annotations

import math
from typing import Any

from worker_runtime.brokers.redis import keys
from workerfleet_operator import api
from workerfleet_operator.api import spec as spec_mod

Manifest = dict[str, Any]

CONTAINER_NAME = "worker"
METRICS_PORT_NAME = "metrics"
RUN_AS_USER = 10001
GRACE_MARGIN_SECONDS = 15
"""terminationGracePeriodSeconds = drain budget + this: time to release jobs and exit 0."""

POOL_LABEL = "workerfleet.io/pool"
REDIS_SECRET_VERSION_ANNOTATION = "workerfleet.io/redis-secret-version"
"""Pod-template annotation: the Redis Secret's ``<uid>/<resourceVersion>``, so a rotated Secret
rolls the pods (they read WORKERFLEET_REDIS_URL only at start). Never derived from the value."""
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"cpu": "1", "memory": "512Mi"},
}
TMP_SIZE_LIMIT = "64Mi"
PROGRESS_DEADLINE_FLOOR_SECONDS = 600


def build_selector_labels(pool_name: str) -> dict[str, str]:
    """The labels that select a pool's pods (immutable once the Deployment exists)."""
    return {POOL_LABEL: pool_name}


def build_selector(pool_name: str) -> str:
    """The selector as a string, for ``status.selector`` and ``kubectl get pods -l``."""
    return ",".join(f"{k}={v}" for k, v in build_selector_labels(pool_name).items())


def build_labels(pool_name: str) -> dict[str, str]:
    """The recommended ``app.kubernetes.io/*`` labels plus the pool selector label."""
    return {
        "app.kubernetes.io/name": "workerfleet-worker",
        "app.kubernetes.io/instance": pool_name,
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "workerfleet",
        "app.kubernetes.io/managed-by": "workerfleet",
        **build_selector_labels(pool_name),
    }


def build_owner_reference(pool: api.Pool) -> Manifest:
    """Makes the pool the controller of a child, so garbage collection removes it with the pool."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": pool.name,
        "uid": pool.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


KEDA_PAUSED_ANNOTATION = "autoscaling.keda.sh/paused"
KEDA_PAUSED_REPLICAS_ANNOTATION = "autoscaling.keda.sh/paused-replicas"


def _build_metadata(pool: api.Pool, name: str) -> Manifest:
    return {
        "name": name,
        "namespace": pool.namespace,
        "labels": build_labels(pool.name),
        "ownerReferences": [build_owner_reference(pool)],
    }


def grace_seconds_for(spec: spec_mod.WorkerPoolSpec) -> int:
    """terminationGracePeriodSeconds: always above the drain budget."""
    return math.ceil(spec.drain.timeout_seconds) + GRACE_MARGIN_SECONDS


def _format_number(value: float) -> str:
    # "30" rather than "30.0": the env reads like the spec the user wrote.
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def build_env(spec: spec_mod.WorkerPoolSpec) -> list[Manifest]:
    """The worker container's env: the WORKERFLEET_* contract first, then the user's entries."""
    ref = spec.queue.redis.url_secret_ref
    backoff = spec.retry.backoff

    def plain(name: str, value: str) -> Manifest:
        return {"name": name, "value": value}

    env: list[Manifest] = [
        {
            "name": "WORKERFLEET_REDIS_URL",
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        },
        plain("WORKERFLEET_QUEUE", spec.queue.name),
        plain("WORKERFLEET_APP", spec.app),
        plain("WORKERFLEET_CONCURRENCY", str(spec.concurrency)),
        plain("WORKERFLEET_LEASE_SECONDS", _format_number(spec.lease_seconds)),
        plain("WORKERFLEET_JOB_TIMEOUT_SECONDS", _format_number(spec.job_timeout_seconds)),
        plain("WORKERFLEET_DRAIN_TIMEOUT_SECONDS", _format_number(spec.drain.timeout_seconds)),
        plain("WORKERFLEET_RETRY_MAX_ATTEMPTS", str(spec.retry.max_attempts)),
        plain("WORKERFLEET_RETRY_MAX_DELIVERIES", str(spec.retry.max_deliveries)),
        plain("WORKERFLEET_RETRY_BACKOFF_STRATEGY", backoff.strategy),
        plain("WORKERFLEET_RETRY_BACKOFF_BASE_SECONDS", _format_number(backoff.base_seconds)),
        plain("WORKERFLEET_RETRY_BACKOFF_MAX_SECONDS", _format_number(backoff.max_seconds)),
        plain("WORKERFLEET_RETRY_BACKOFF_JITTER", backoff.jitter),
        plain("WORKERFLEET_DLQ_MAX_LENGTH", str(spec.dead_letter.max_length)),
        plain(
            "WORKERFLEET_DLQ_RETENTION_SECONDS",
            _format_number(spec.dead_letter.retention_seconds),
        ),
    ]
    if spec.rate_limit is not None:
        env.append(plain("WORKERFLEET_RATE_LIMIT_JOBS", str(spec.rate_limit.jobs)))
        env.append(
            plain("WORKERFLEET_RATE_LIMIT_PER_SECONDS", _format_number(spec.rate_limit.per_seconds))
        )
    env += [
        plain("WORKERFLEET_METRICS_PORT", str(spec.metrics.port)),
        {
            "name": "WORKERFLEET_POD_NAME",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        },
        {
            "name": "WORKERFLEET_POD_NAMESPACE",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
        },
    ]
    for entry in spec.env or ():
        env.append(entry.model_dump(by_alias=True, exclude_none=True))
    return env


def build_resources(spec: spec_mod.WorkerPoolSpec) -> Manifest:
    """The container's resources: the spec's as written, or the defaults when unset."""
    if spec.resources is None:
        return {section: dict(values) for section, values in DEFAULT_RESOURCES.items()}
    resources: Manifest = {}
    if spec.resources.requests:
        resources["requests"] = dict(spec.resources.requests)
    if spec.resources.limits:
        resources["limits"] = dict(spec.resources.limits)
    return resources


def build_container_security_context() -> Manifest:
    """The restricted profile, forced on every worker container."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _build_probe(path: str, *, period: int, failures: int, timeout: int = 3) -> Manifest:
    return {
        "httpGet": {"path": path, "port": METRICS_PORT_NAME, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


def _build_container(spec: spec_mod.WorkerPoolSpec) -> Manifest:
    container: Manifest = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        # Exec form: the runtime is PID 1 and handles SIGTERM itself (drain).
        "command": ["workerfleet", "worker", spec.app],
        "env": build_env(spec),
        "ports": [
            {"name": METRICS_PORT_NAME, "containerPort": spec.metrics.port, "protocol": "TCP"}
        ],
        # Start-up gets a minute; afterwards /healthz (a recent good Redis round trip) may fail
        # for a minute before a restart, so a short Redis blip never restarts the whole pool.
        "startupProbe": _build_probe("/healthz", period=2, failures=30),
        "livenessProbe": _build_probe("/healthz", period=10, failures=6),
        # /readyz turns false as soon as a drain starts.
        "readinessProbe": _build_probe("/readyz", period=5, failures=2),
        "resources": build_resources(spec),
        "securityContext": build_container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.image_pull_policy is not None:
        container["imagePullPolicy"] = spec.image_pull_policy
    return container


def _build_scheduling(pool: api.Pool, pod_spec: Manifest) -> None:
    scheduling = pool.spec.scheduling
    if scheduling is None:
        return
    if scheduling.node_selector:
        pod_spec["nodeSelector"] = dict(scheduling.node_selector)
    if scheduling.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in scheduling.tolerations
        ]
    if scheduling.affinity is not None:
        affinity = scheduling.affinity.model_dump(by_alias=True, exclude_none=True)
        if affinity:
            pod_spec["affinity"] = affinity
    if scheduling.topology_spread:
        pod_spec["topologySpreadConstraints"] = [
            {
                "maxSkew": t.max_skew,
                "topologyKey": t.topology_key,
                "whenUnsatisfiable": t.when_unsatisfiable,
                "labelSelector": {"matchLabels": build_selector_labels(pool.name)},
            }
            for t in scheduling.topology_spread
        ]
    if scheduling.priority_class_name is not None:
        pod_spec["priorityClassName"] = scheduling.priority_class_name


def build_deployment(
    pool: api.Pool, *, replicas: int | None, redis_secret_version: str | None = None
) -> Manifest:
    """The worker Deployment.

    ``replicas=None`` leaves ``spec.replicas`` out entirely, so a server-side apply by this
    field manager never claims (or fights over) a count another manager owns.
    ``redis_secret_version`` (the Secret's ``<uid>/<resourceVersion>``, never its value) goes
    into the pod template as :data:`REDIS_SECRET_VERSION_ANNOTATION`: a new one rolls the pods,
    the same one leaves the Deployment byte-identical; None leaves the annotation out.
    """
    spec = pool.spec
    grace = grace_seconds_for(spec)
    pod_spec: Manifest = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": grace,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_build_container(spec)],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}}],
    }
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    _build_scheduling(pool, pod_spec)
    template_annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(spec.metrics.port),
        "prometheus.io/path": "/metrics",
    }
    if redis_secret_version is not None:
        template_annotations[REDIS_SECRET_VERSION_ANNOTATION] = redis_secret_version
    deployment_spec: Manifest = {}
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    deployment_spec.update(
        {
            "revisionHistoryLimit": 5,
            # A rollout waits for drains: never report a stuck rollout before they can end.
            "progressDeadlineSeconds": max(PROGRESS_DEADLINE_FLOOR_SECONDS, 2 * grace + 60),
            "selector": {"matchLabels": build_selector_labels(pool.name)},
            # Never below the current capacity during a rollout: surge first, then drain.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": build_labels(pool.name),
                    "annotations": template_annotations,
                },
                "spec": pod_spec,
            },
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _build_metadata(pool, pool.name),
        "spec": deployment_spec,
    }


def metrics_service_name(pool_name: str) -> str:
    """Name of the headless metrics Service."""
    return f"{pool_name}-metrics"


def build_metrics_service(pool: api.Pool) -> Manifest:
    """A headless Service over the pool's pods, exposing the metrics port (for scrapers)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _build_metadata(pool, metrics_service_name(pool.name)),
        "spec": {
            "clusterIP": "None",
            "selector": build_selector_labels(pool.name),
            "ports": [
                {
                    "name": METRICS_PORT_NAME,
                    "port": pool.spec.metrics.port,
                    "targetPort": METRICS_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def build_pod_monitor(pool: api.Pool) -> Manifest:
    """A Prometheus Operator PodMonitor scraping every worker pod's /metrics."""
    metrics = pool.spec.metrics
    metadata = _build_metadata(pool, pool.name)
    metadata["labels"] = {**metrics.pod_monitor_labels, **metadata["labels"]}
    spec: Manifest = {
        "selector": {"matchLabels": build_selector_labels(pool.name)},
        "podMetricsEndpoints": [
            {
                "port": METRICS_PORT_NAME,
                "path": "/metrics",
                "interval": "15s",
                # The alerts and the dashboard select worker series by pool, as the operator's.
                "relabelings": [
                    {
                        "sourceLabels": ["__meta_kubernetes_pod_label_workerfleet_io_pool"],
                        "targetLabel": "pool",
                    }
                ],
            }
        ],
    }
    if metrics.pod_target_labels:
        spec["podTargetLabels"] = list(metrics.pod_target_labels)
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata,
        "spec": spec,
    }


def build_pdb(pool: api.Pool) -> Manifest:
    """A PodDisruptionBudget; unhealthy pods may always be evicted so node drains never stall."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _build_metadata(pool, pool.name),
        "spec": {
            "maxUnavailable": pool.spec.pod_disruption_budget.max_unavailable,
            "selector": {"matchLabels": build_selector_labels(pool.name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def trigger_authentication_name(pool_name: str) -> str:
    """Name of the KEDA TriggerAuthentication."""
    return f"{pool_name}-redis"


def build_trigger_authentication(pool: api.Pool) -> Manifest:
    """KEDA's credentials: references to keys of the pool's own Secret, never copies."""
    redis = pool.spec.queue.redis
    if redis.keda is None:
        raise ValueError("autoscaling.mode: keda requires queue.redis.keda")
    secret = redis.url_secret_ref.name
    targets = [{"parameter": "address", "name": secret, "key": redis.keda.address_key}]
    if redis.keda.username_key is not None:
        targets.append({"parameter": "username", "name": secret, "key": redis.keda.username_key})
    if redis.keda.password_key is not None:
        targets.append({"parameter": "password", "name": secret, "key": redis.keda.password_key})
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": _build_metadata(pool, trigger_authentication_name(pool.name)),
        "spec": {"secretTargetRef": targets},
    }


def _build_hpa_rules(window: float, percent: float, pods: int | None, period: int) -> Manifest:
    policies: list[Manifest] = [
        {"type": "Percent", "value": max(1, round(percent)), "periodSeconds": period}
    ]
    if pods is not None:
        policies.append({"type": "Pods", "value": pods, "periodSeconds": period})
    return {
        "stabilizationWindowSeconds": math.ceil(window),
        "selectPolicy": "Max",
        "policies": policies,
    }


def build_scaled_object(pool: api.Pool) -> Manifest:
    """A KEDA ScaledObject scaling the pool's Deployment on its ready streams' consumer lag.

    One ``redis-streams`` trigger per priority stream (``worker_runtime.brokers.redis.keys``),
    lag-based
    (``lagCount``: entries not yet delivered to the ``workers`` group), the only KEDA mode that
    scales to zero. KEDA activates when lag > activationLagCount; our activationBacklog means
    "at least", hence the ``- 1``. The HPA takes the largest trigger, so a backlog spread over
    priorities counts less than in builtin mode (documented trade-off of keda mode).
    """
    spec = pool.spec
    a = spec.autoscaling
    redis = spec.queue.redis
    if redis.keda is None:
        raise ValueError("autoscaling.mode: keda requires queue.redis.keda")
    queue_keys = keys.build_keys(spec.queue.name)
    period = max(1, math.ceil(a.polling_interval_seconds))
    triggers = [
        {
            "type": "redis-streams",
            "name": f"ready-{priority}",
            "metadata": {
                "stream": stream,
                "consumerGroup": keys.GROUP,
                "lagCount": str(math.ceil(a.target_backlog_per_replica)),
                "activationLagCount": str(max(a.activation_backlog - 1, 0)),
                "enableTLS": "true" if redis.keda.enable_tls else "false",
                "databaseIndex": str(redis.keda.database_index),
            },
            "authenticationRef": {"name": trigger_authentication_name(pool.name)},
        }
        for priority, stream in zip(keys.PRIORITIES, queue_keys.ready, strict=True)
    ]
    scaled: Manifest = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": pool.name},
        "pollingInterval": period,
        # One cooldown model: the scale-down window also governs the last step to zero.
        "cooldownPeriod": math.ceil(a.scale_down.stabilization_window_seconds),
        "minReplicaCount": a.min_replicas,
        "maxReplicaCount": a.max_replicas,
        "advanced": {
            "horizontalPodAutoscalerConfig": {
                "behavior": {
                    "scaleUp": _build_hpa_rules(
                        a.scale_up.stabilization_window_seconds,
                        a.scale_up.max_step_percent,
                        a.scale_up.max_step_pods,
                        period,
                    ),
                    "scaleDown": _build_hpa_rules(
                        a.scale_down.stabilization_window_seconds,
                        a.scale_down.max_step_percent,
                        a.scale_down.max_step_pods,
                        period,
                    ),
                }
            }
        },
        "triggers": triggers,
    }
    if a.on_metric_failure == "fallback" and a.fallback_replicas is not None:
        scaled["fallback"] = {
            "failureThreshold": a.failure_threshold,
            "replicas": a.fallback_replicas,
        }
    metadata = _build_metadata(pool, pool.name)
    if pool.pause is not None:
        # The pool's pause, in KEDA's own words: KEDA holds (or sets) the replicas itself.
        metadata["annotations"] = (
            {KEDA_PAUSED_ANNOTATION: "true"}
            if pool.pause.replicas is None
            else {KEDA_PAUSED_REPLICAS_ANNOTATION: str(pool.pause.replicas)}
        )
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata,
        "spec": scaled,
    }
