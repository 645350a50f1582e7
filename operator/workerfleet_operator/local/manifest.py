"""A WorkerPool manifest read for the local fleet: the validated spec, its policy and worker env.

Called by :mod:`workerfleet_operator.local.runner` (``workerfleet run POOL.yaml``) and the
demo. The spec is parsed with the same pydantic model the operator uses
(:class:`workerfleet_operator.api.spec.WorkerPoolSpec`), so a manifest that runs locally is one
the cluster accepts. Everything here is pure except :func:`fetch_pool`, which reads the file.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from workerfleet_operator import autoscaling, manifests
from workerfleet_operator.api import pool as pool_api
from workerfleet_operator.api import spec as spec_mod

LOCAL_NAMESPACE = "local"  # the namespace label of local metrics (docs/architecture.md)


class ManifestError(ValueError):
    """The file is not a usable WorkerPool manifest; the message says what to fix."""


@dataclass(frozen=True)
class LocalPool:
    """One WorkerPool as the local fleet runs it."""

    name: str
    spec: spec_mod.WorkerPoolSpec
    policy: autoscaling.ScalingPolicy
    pause: pool_api.Pause | None = None  # workerfleet.io/paused or paused-replicas

    @property
    def queue(self) -> str:
        return self.spec.queue.name


def fetch_pool(path: pathlib.Path) -> LocalPool:
    """Read and validate a WorkerPool manifest (the first WorkerPool of a multi-document file)."""
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:  # a traceback before: not a YAMLError
        raise ManifestError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == "WorkerPool":
            return build_pool(document)
    raise ManifestError(f"{path}: no document of kind WorkerPool")


def build_pool(document: Mapping[str, Any]) -> LocalPool:
    """Validate one WorkerPool document and derive its scaling policy and pause.

    The pause annotations (``workerfleet.io/paused``, ``paused-replicas``) are read as the
    operator reads them (:func:`workerfleet_operator.api.pool.parse_pause`).
    """
    metadata = document.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ManifestError("metadata.name is required")
    annotations = metadata.get("annotations")
    try:
        pause = pool_api.parse_pause(annotations if isinstance(annotations, Mapping) else None)
    except ValueError as exc:  # a paused-replicas that is not a count, named
        raise ManifestError(f"WorkerPool {name}: {exc}") from None
    try:
        spec = spec_mod.WorkerPoolSpec.model_validate(document.get("spec") or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors()
        )
        raise ManifestError(f"WorkerPool {name}: {problems}") from None
    return LocalPool(name=name, spec=spec, policy=build_scaling_policy(spec), pause=pause)


def build_scaling_policy(spec: spec_mod.WorkerPoolSpec) -> autoscaling.ScalingPolicy:
    """The operator's policy for the pool; KEDA does not exist locally, so keda means builtin."""
    policy = autoscaling.build_scaling_policy(spec)
    return dataclasses.replace(policy, mode="builtin") if policy.mode == "keda" else policy


def build_worker_env(
    pool: LocalPool, *, redis_url: str, pod_name: str, metrics_port: int = 0
) -> tuple[dict[str, str], list[str]]:
    """The ``WORKERFLEET_*`` environment of one local worker, and the env entries skipped.

    Mirrors what the operator puts in the pod (docs/architecture.md, the environment
    contract). ``secretKeyRef`` entries of ``spec.env`` cannot be resolved without a cluster:
    they are skipped and named in the second value so the caller can say so.
    """
    spec = pool.spec
    backoff = spec.retry.backoff
    # the name the operator gives the URL in the pod: WORKERFLEET_REDIS_URL for a Redis pool,
    # WORKERFLEET_BROKER_URL for the others
    url_env = manifests.URL_ENV_NAMES.get(spec.queue.broker, manifests.BROKER_URL_ENV)
    env = {
        url_env: redis_url,
        "WORKERFLEET_QUEUE": spec.queue.name,
        "WORKERFLEET_APP": spec.app,
        "WORKERFLEET_CONCURRENCY": str(spec.concurrency),
        "WORKERFLEET_LEASE_SECONDS": _number(spec.lease_seconds),
        "WORKERFLEET_JOB_TIMEOUT_SECONDS": _number(spec.job_timeout_seconds),
        "WORKERFLEET_DRAIN_TIMEOUT_SECONDS": _number(spec.drain.timeout_seconds),
        "WORKERFLEET_RETRY_MAX_ATTEMPTS": str(spec.retry.max_attempts),
        "WORKERFLEET_RETRY_MAX_DELIVERIES": str(spec.retry.max_deliveries),
        "WORKERFLEET_RETRY_BACKOFF_STRATEGY": backoff.strategy,
        "WORKERFLEET_RETRY_BACKOFF_BASE_SECONDS": _number(backoff.base_seconds),
        "WORKERFLEET_RETRY_BACKOFF_MAX_SECONDS": _number(backoff.max_seconds),
        "WORKERFLEET_RETRY_BACKOFF_JITTER": backoff.jitter,
        "WORKERFLEET_DLQ_MAX_LENGTH": str(spec.dead_letter.max_length),
        "WORKERFLEET_DLQ_RETENTION_SECONDS": _number(spec.dead_letter.retention_seconds),
        "WORKERFLEET_METRICS_PORT": str(metrics_port),
        "WORKERFLEET_METRICS_HOST": "127.0.0.1",
        "WORKERFLEET_POD_NAME": pod_name,
        "WORKERFLEET_POD_NAMESPACE": LOCAL_NAMESPACE,
        "WORKERFLEET_LOG_FORMAT": "json",
    }
    if spec.rate_limit is not None:
        env["WORKERFLEET_RATE_LIMIT_JOBS"] = str(spec.rate_limit.jobs)
        env["WORKERFLEET_RATE_LIMIT_PER_SECONDS"] = _number(spec.rate_limit.per_seconds)
    skipped: list[str] = []
    for entry in spec.env or ():
        if entry.value is not None:
            env[entry.name] = entry.value
        else:
            skipped.append(entry.name)
    return env, skipped


def _number(value: float) -> str:
    return f"{value:g}"
