"""Pure builders of every Kubernetes object a WorkerPool owns.

Who calls it: :func:`workerfleet_operator.plan.plan` picks the children a pool needs and the
operator's shell applies them by server-side apply; the golden tests render the samples.
No I/O: a :class:`~workerfleet_operator.api.Pool` in, plain dicts out (the shape the API server
accepts), deterministic so that re-applying an unchanged pool changes nothing.

The worker pod is locked down whatever the spec says: the restricted Pod Security Standard
(non-root UID 10001, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp),
a read-only root filesystem with an ``emptyDir`` on ``/tmp``, no service-account token, no
service links. The broker URL reaches the pod only as a ``secretKeyRef``; runtime settings follow
the environment contract in ``docs/architecture.md``.

Children and their names: Deployment ``<pool>``, headless metrics Service ``<pool>-metrics``,
PodMonitor ``<pool>``, PodDisruptionBudget ``<pool>``, KEDA ScaledObject ``<pool>`` and
TriggerAuthentication ``<pool>-<broker>`` (``<pool>-redis``, ``<pool>-rabbitmq``, ``<pool>-sqs``);
an SQS pool also owns the ServiceAccount ``<pool>-worker`` its pods run under (the identity IRSA
or EKS Pod Identity binds an IAM role to; still no API token) and gets its ``sqs://`` URL, which
holds no credential, as a plain env value.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from typing import Any

from worker_runtime.brokers.rabbitmq import topology
from worker_runtime.brokers.redis import keys
from worker_runtime.brokers.sqs import settings as sqs_settings
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
"""Pod-template annotation: the broker URL Secret's ``<uid>/<resourceVersion>``, so a rotated
Secret rolls the pods (they read their broker URL only at start). Never derived from the value.
The key keeps its first name on every broker: renaming it would roll every existing pool."""
URL_ENV_NAMES: dict[str, str] = {"redis": "WORKERFLEET_REDIS_URL"}
"""The env name of the broker URL per broker block: Redis pools keep the name their images have
always read (no rollout of every pool on an operator upgrade, and an image from before the
broker seam still starts); every other broker gets :data:`BROKER_URL_ENV`."""
BROKER_URL_ENV = "WORKERFLEET_BROKER_URL"
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
    ref = spec.queue.url_secret_ref
    backoff = spec.retry.backoff

    def plain(name: str, value: str) -> Manifest:
        return {"name": name, "value": value}

    url_name = URL_ENV_NAMES.get(spec.queue.broker, BROKER_URL_ENV)
    if spec.queue.sqs is not None:
        # an sqs:// URL holds no credential (the AWS chain gives them): a plain value
        url: Manifest = plain(url_name, encode_sqs_url(spec.queue.sqs))
    else:
        assert ref is not None  # every other broker block names its URL's Secret
        url = {
            "name": url_name,
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
        }
    env: list[Manifest] = [
        url,
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
    if spec.queue.sqs is not None:
        # the pool's own account (build_worker_service_account), still without an API token
        pod_spec["serviceAccountName"] = worker_service_account_name(pool.name)
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


def trigger_authentication_name(pool_name: str, broker: str) -> str:
    """Name of the KEDA TriggerAuthentication of a pool on ``broker`` (a broker block's name)."""
    return f"{pool_name}-{broker}"


def build_trigger_authentication(pool: api.Pool) -> Manifest:
    """KEDA's credentials: references to keys of the pool's own Secret, never copies."""
    queue = pool.spec.queue
    auth = queue.keda_auth
    if isinstance(auth, spec_mod.KedaSqsAuth):
        return build_sqs_trigger_authentication(pool, trigger_authentication_name(pool.name, "sqs"))
    if queue.url_secret_ref is None:
        raise ValueError(f"queue.{queue.broker} names no Secret")
    secret = queue.url_secret_ref.name
    if isinstance(auth, spec_mod.KedaRedisAuth):
        wanted = [
            ("address", auth.address_key),
            ("username", auth.username_key),
            ("password", auth.password_key),
        ]
    elif isinstance(auth, spec_mod.KedaRabbitMQAuth):
        wanted = [
            ("host", auth.host_key),
            ("username", auth.username_key),
            ("password", auth.password_key),
        ]
    else:
        raise ValueError(f"autoscaling.mode: keda requires queue.{queue.broker}.keda")
    targets = [
        {"parameter": parameter, "name": secret, "key": key}
        for parameter, key in wanted
        if key is not None
    ]
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": _build_metadata(pool, trigger_authentication_name(pool.name, queue.broker)),
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
    """A KEDA ScaledObject scaling the pool's Deployment on its backlog (jobs not yet delivered).

    The triggers depend on the broker (:func:`build_redis_triggers`,
    :func:`build_rabbitmq_triggers`, :func:`build_sqs_triggers`); the rest (polling, cooldown,
    HPA behaviour, fallback, pause) is the pool's autoscaling spec in KEDA's words.
    """
    spec = pool.spec
    a = spec.autoscaling
    period = max(1, math.ceil(a.polling_interval_seconds))
    auth = spec.queue.keda_auth
    if isinstance(auth, spec_mod.KedaRedisAuth):
        triggers = build_redis_triggers(pool, auth)
    elif isinstance(auth, spec_mod.KedaRabbitMQAuth):
        triggers = build_rabbitmq_triggers(pool)
    elif isinstance(auth, spec_mod.KedaSqsAuth):
        triggers = build_sqs_triggers(pool, trigger_authentication_name(pool.name, "sqs"))
    else:
        raise ValueError(f"autoscaling.mode: keda requires queue.{spec.queue.broker}.keda")
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


def build_redis_triggers(pool: api.Pool, auth: spec_mod.KedaRedisAuth) -> list[Manifest]:
    """One ``redis-streams`` trigger per priority stream (``worker_runtime.brokers.redis.keys``).

    Lag-based (``lagCount``: entries not yet delivered to the ``workers`` group), the only KEDA
    mode that scales to zero. KEDA activates when lag > activationLagCount; our
    activationBacklog means "at least", hence the ``- 1``. The HPA takes the largest trigger,
    so a backlog spread over priorities counts less than in builtin mode (documented trade-off
    of keda mode on Redis: KEDA cannot add streams up).
    """
    a = pool.spec.autoscaling
    queue_keys = keys.build_keys(pool.spec.queue.name)
    return [
        {
            "type": "redis-streams",
            "name": f"ready-{priority}",
            "metadata": {
                "stream": stream,
                "consumerGroup": keys.GROUP,
                "lagCount": str(math.ceil(a.target_backlog_per_replica)),
                "activationLagCount": str(max(a.activation_backlog - 1, 0)),
                "enableTLS": "true" if auth.enable_tls else "false",
                "databaseIndex": str(auth.database_index),
            },
            "authenticationRef": {"name": trigger_authentication_name(pool.name, "redis")},
        }
        for priority, stream in zip(keys.PRIORITIES, queue_keys.ready, strict=True)
    ]


def build_rabbitmq_work_queues_regex(queue: str) -> str:
    """A regular expression matching exactly the pool's work queues, one per priority level
    (``wf.Q.high``, ``wf.Q.normal``, ``wf.Q.low``), not its DLQ or retry buckets."""
    names = "|".join(re.escape(topology.work_queue(queue, level)) for level in topology.LEVELS)
    return f"^({names})$"


def build_rabbitmq_triggers(pool: api.Pool) -> list[Manifest]:
    """One ``rabbitmq`` trigger counting the backlog of all three priority levels together.

    The broker keeps one quorum queue per priority level. One trigger per level would let the
    HPA see only the largest level (it takes the largest trigger), so 300 jobs spread evenly
    would scale like 100; instead one trigger reads the management HTTP API (``protocol:
    http``) with a regex over the three work queue names (``useRegex``) and adds them up
    (``operation: sum``): the same total backlog the builtin autoscaler scales on. The regex
    leaves out the DLQ and the retry buckets (not work yet). ``excludeUnacknowledged``: only
    ready messages count, as the backlog signal defines them (delivered jobs are in flight).
    ``activationValue``: KEDA activates above it, our activationBacklog means "at least".
    """
    a = pool.spec.autoscaling
    return [
        {
            "type": "rabbitmq",
            "name": "backlog",
            "metadata": {
                "protocol": "http",
                "mode": "QueueLength",
                "queueName": build_rabbitmq_work_queues_regex(pool.spec.queue.name),
                "useRegex": "true",
                "operation": "sum",
                "excludeUnacknowledged": "true",
                "value": str(math.ceil(a.target_backlog_per_replica)),
                "activationValue": str(max(a.activation_backlog - 1, 0)),
            },
            "authenticationRef": {"name": trigger_authentication_name(pool.name, "rabbitmq")},
        }
    ]


# --- SQS: the broker URL, the worker ServiceAccount, KEDA's aws-sqs-queue triggers ------------

IRSA_ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"
"""The ServiceAccount annotation EKS's IRSA webhook reads to give pods a web-identity token."""


def encode_sqs_url(sqs: spec_mod.SqsSpec) -> str:
    """The workers' ``sqs://`` broker URL for the pool's ``spec.queue.sqs`` (no credentials:
    they come from the AWS chain). ``worker_runtime.brokers.sqs.settings.parse_sqs_url`` reads
    it back to the same region, endpoint and queue set (the tests hold them together)."""
    query = {"region": sqs.region}
    host = ""
    if sqs.endpoint is not None:
        parts = urllib.parse.urlsplit(sqs.endpoint)
        host = parts.netloc
        if parts.scheme == "http":
            query["secure"] = "false"
    if sqs.fifo:
        query["fifo"] = "true"
    if not sqs.priorities:
        query["priorities"] = "false"
    if sqs.prefix:
        query["prefix"] = sqs.prefix
    if sqs.max_message_bytes is not None:
        query["max_message_bytes"] = str(sqs.max_message_bytes)
    return f"sqs://{host}?{urllib.parse.urlencode(query)}"


def compose_sqs_queue_urls(sqs: spec_mod.SqsSpec, queue: str) -> list[tuple[str, str]]:
    """(priority, SQS queue URL) of each queue the workers poll, highest priority first, as
    KEDA's scaler needs them (needs ``accountId``): the endpoint's or AWS's regional host."""
    if sqs.account_id is None:
        raise ValueError("KEDA's SQS queue URLs need queue.sqs.accountId")
    if sqs.endpoint is not None:
        host = sqs.endpoint.rstrip("/")
    else:
        domain = "amazonaws.com.cn" if sqs.region.startswith("cn-") else "amazonaws.com"
        host = f"https://sqs.{sqs.region}.{domain}"
    names = sqs_settings.build_queue_names(
        queue,
        sqs_settings.SqsSettings(fifo=sqs.fifo, priorities=sqs.priorities, prefix=sqs.prefix),
    )
    return [
        (priority.value, f"{host}/{sqs.account_id}/{name}") for priority, name in names.by_priority
    ]


def worker_service_account_name(pool_name: str) -> str:
    """Name of the ServiceAccount the worker pods of an SQS pool run under."""
    return f"{pool_name}-worker"


def build_worker_service_account(pool: api.Pool) -> Manifest:
    """The pool's own ServiceAccount (SQS pools): the identity IRSA or EKS Pod Identity binds an
    IAM role to. It never mounts a Kubernetes API token; the spec can name a role for it
    (``sqs.roleArn``) but never another ServiceAccount."""
    sqs = pool.spec.queue.sqs
    metadata = _build_metadata(pool, worker_service_account_name(pool.name))
    if sqs is not None and sqs.role_arn is not None:
        metadata["annotations"] = {IRSA_ROLE_ANNOTATION: sqs.role_arn}
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata,
        "automountServiceAccountToken": False,
    }


def build_sqs_trigger_authentication(pool: api.Pool, name: str) -> Manifest:
    """KEDA's AWS identity for the pool's SQS triggers: ``podIdentity`` provider ``aws``, never
    a key (see :class:`~workerfleet_operator.api.spec.KedaSqsAuth` for whose role)."""
    sqs = pool.spec.queue.sqs
    if sqs is None:
        raise ValueError("not an SQS pool")
    identity: Manifest = {"provider": "aws"}
    if sqs.keda.role_arn is not None:
        identity["roleArn"] = sqs.keda.role_arn
    else:
        identity["identityOwner"] = "workload" if sqs.role_arn is not None else "keda"
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": _build_metadata(pool, name),
        "spec": {"podIdentity": identity},
    }


def build_sqs_triggers(pool: api.Pool, authentication: str) -> list[Manifest]:
    """One ``aws-sqs-queue`` trigger per priority queue (the HPA follows the largest).

    ``queueLength`` is targetBacklogPerReplica and counts visible plus in-flight messages
    (``scaleOnInFlight``: a pool is not scaled below what its running jobs need; SQS gives no
    separate "not yet delivered" count that would match the redis-streams lag), delayed
    retries are not counted; KEDA activates above ``activationQueueLength``, our
    activationBacklog means "at least", hence the ``- 1``.
    """
    sqs = pool.spec.queue.sqs
    if sqs is None:
        raise ValueError("not an SQS pool")
    a = pool.spec.autoscaling
    metadata_common: dict[str, str] = {
        "awsRegion": sqs.region,
        "queueLength": str(math.ceil(a.target_backlog_per_replica)),
        "activationQueueLength": str(max(a.activation_backlog - 1, 0)),
        "scaleOnInFlight": "true",
        "scaleOnDelayed": "false",
    }
    if sqs.endpoint is not None:
        metadata_common["awsEndpoint"] = sqs.endpoint
    return [
        {
            "type": "aws-sqs-queue",
            "name": f"ready-{priority}",
            "metadata": {"queueURL": url, **metadata_common},
            "authenticationRef": {"name": authentication},
        }
        for priority, url in compose_sqs_queue_urls(sqs, pool.spec.queue.name)
    ]
