"""The WorkerPool status as pydantic models, and the condition helpers.

Who uses it: :mod:`workerfleet_operator.plan` builds a :class:`WorkerPoolStatus` each reconcile
and the shell writes ``build_status_patch(status)`` to the ``/status`` subresource;
:mod:`workerfleet_operator.api.crd` generates the status part of the CRD schema from these
models. Parsing an existing status is lenient (unknown fields are ignored) so that an operator
upgrade never fails on a status written by an older version.

Condition types and their CamelCase reasons are listed here so every part of the operator uses
the same words.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

ConditionStatus = Literal["True", "False", "Unknown"]

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
QUEUE_REACHABLE = "QueueReachable"
SCALING_LIMITED = "ScalingLimited"
QUEUE_CONFLICT = "QueueConflict"
PAUSED = "Paused"
CONDITION_TYPES: tuple[str, ...] = (
    READY,
    PROGRESSING,
    DEGRADED,
    QUEUE_REACHABLE,
    SCALING_LIMITED,
    QUEUE_CONFLICT,
    PAUSED,
)


class Reason(StrEnum):
    """Every condition reason the operator writes (CamelCase, as metav1.Condition wants).

    Defined once here: ``plan`` decides which applies, the shell, the metrics and the tests name
    them from this enum, never by a string of their own.
    """

    # Ready / Progressing: the rollout
    CREATING = "Creating"
    ROLLING_OUT = "RollingOut"
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    WAITING_FOR_REPLICAS = "WaitingForReplicas"
    SCALED_TO_ZERO = "ScaledToZero"
    AVAILABLE = "Available"
    ROLLOUT_COMPLETE = "RolloutComplete"
    # bad input: Ready=False and Degraded=True, the user must act
    INVALID_SPEC = "InvalidSpec"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"
    INVALID_REDIS_URL = "InvalidRedisURL"
    INVALID_BROKER_URL = "InvalidBrokerURL"
    """The Secret's URL does not parse as a URL of the pool's broker (any broker but Redis)."""
    APPLY_REJECTED = "ApplyRejected"
    """The API server refused a child as written (422: e.g. requests above limits)."""
    # Degraded
    CHILD_NOT_OWNED = "ChildNotOwned"
    """An object with a child's name exists and is not controlled by this pool: never adopted."""
    CHILD_API_MISSING = "ChildAPIMissing"
    """A child's kind is not served (KEDA or the Prometheus Operator's CRDs are not installed)."""
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    REPLICA_FAILURE = "ReplicaFailure"
    REDIS_MAY_EVICT = "RedisMayEvict"
    """The queue's Redis has a maxmemory-policy other than noeviction."""
    RECONCILE_FAILED = "ReconcileFailed"
    """A reconcile raised (an API error after its retries, a bug): retried with backoff."""
    AS_EXPECTED = "AsExpected"
    # status.autoscaling.signalsUnavailable
    OLDEST_JOB_AGE_UNAVAILABLE = "OldestJobAgeUnavailable"
    """The broker reports no oldest-job age: the latency signal's age reaction is off."""
    # QueueReachable
    QUEUE_READ = "QueueRead"
    QUEUE_UNREACHABLE = "QueueUnreachable"
    NOT_YET_READ = "NotYetRead"
    # ScalingLimited
    NOT_MANAGED = "NotManaged"
    NOT_YET_EVALUATED = "NotYetEvaluated"
    MAX_REPLICAS_REACHED = "MaxReplicasReached"
    WITHIN_LIMITS = "WithinLimits"
    REPLICAS_OWNED_ELSEWHERE = "ReplicasOwnedElsewhere"
    """A live HPA or ScaledObject drives spec.replicas: the autoscaler holds, never fights."""
    SCALING_PAUSED = "Paused"
    """A pause annotation suspends the builtin autoscaler: the replicas are held."""
    # QueueConflict
    NOT_YET_CHECKED = "NotYetChecked"
    QUEUE_NOT_SHARED = "QueueNotShared"
    QUEUE_SHARED = "QueueShared"
    # Paused
    NOT_PAUSED = "NotPaused"
    PAUSED_BY_ANNOTATION = "PausedByAnnotation"
    """``workerfleet.io/paused: "true"``: replicas are held where they are."""
    PAUSED_AT_REPLICAS = "PausedAtReplicas"
    """``workerfleet.io/paused-replicas: "N"``: replicas are set to N and held."""


REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
"""The reason format of metav1.Condition (CamelCase in practice)."""

MESSAGE_MAX_LENGTH = 4096
"""Condition messages are cut here: a status the API server refuses would never be written."""


def truncate_message(text: str, limit: int = MESSAGE_MAX_LENGTH) -> str:
    """``text`` cut to ``limit`` characters, marking the cut."""
    suffix = " ... (truncated)"
    return text if len(text) <= limit else text[: limit - len(suffix)] + suffix


class StatusModel(BaseModel):
    """Base of the status models: camelCase on the wire, tolerant of unknown fields, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )


class Condition(StatusModel):
    """One observation of the pool's state (the metav1.Condition fields)."""

    type: str = Field(max_length=316, description="Ready, Progressing, Degraded, ...")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1, max_length=1024, pattern=REASON_PATTERN, description="CamelCase cause."
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"},
        description="When the status last changed (RFC 3339).",
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The spec generation this condition was computed from."
    )


class QueueStatus(StatusModel):
    """The latest read of the pool's queue (worker_runtime.brokers.redis.stats.QueueStats)."""

    backlog: int = Field(default=0, ge=0, description="Jobs waiting to start (incl. due retries).")
    in_flight: int = Field(
        default=0,
        ge=0,
        description=(
            "Jobs delivered to workers and not finished yet (on RabbitMQ also those waiting in"
            " a worker's prefetch buffer)."
        ),
    )
    delayed: int = Field(default=0, ge=0, description="Retries and delayed jobs not yet due.")
    dead_letter: int = Field(default=0, ge=0, description="Jobs in the dead-letter queue.")
    oldest_job_age_seconds: float | None = Field(
        default=None,
        ge=0.0,
        description=(
            "Age of the oldest waiting job (absent when the broker does not report it: "
            "RabbitMQ, SQS)."
        ),
    )
    arrival_rate: float | None = Field(default=None, description="Jobs enqueued per second.")
    completion_rate: float | None = Field(default=None, description="Jobs finished per second.")
    workers: int = Field(default=0, ge=0, description="Live workers with a heartbeat.")
    observed_time: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="When the queue was read (RFC 3339).",
    )


class SignalUnavailable(StatusModel):
    """A part of a scaling signal the spec turns on that the pool's broker cannot measure."""

    signal: str = Field(description="The signal (backlog, capacity, latency).")
    reason: str = Field(
        min_length=1, max_length=1024, pattern=REASON_PATTERN, description="CamelCase cause."
    )
    message: str = Field(default="", max_length=4096, description="What is off, and why.")


class AutoscalingStatus(StatusModel):
    """The latest scaling decision, with what it was made from."""

    mode: str | None = Field(default=None, description="The autoscaling mode in force.")
    signals: dict[str, float | None] | None = Field(
        default=None, description="Each signal's replica count (null: disabled or unmeasured)."
    )
    chosen: str | None = Field(default=None, description="The signal that set the replicas.")
    raw_desired: int | None = Field(
        default=None, ge=0, description="Replicas wanted by the signals before shaping."
    )
    clamped_by: str | None = Field(
        default=None, description="The last limit that changed the value (e.g. maxReplicas)."
    )
    last_scale_time: str | None = Field(
        default=None,
        json_schema_extra={"format": "date-time"},
        description="When replicas were last changed (RFC 3339).",
    )
    reason: str | None = Field(default=None, description="The decision, in words.")
    dry_run: bool | None = Field(default=None, description="Decisions are recorded, not applied.")
    signals_unavailable: list[SignalUnavailable] | None = Field(
        default=None,
        max_length=8,
        description=(
            "Signal parts that are on in the spec but cannot be measured on this broker "
            "(e.g. the oldest-job age on RabbitMQ: reason OldestJobAgeUnavailable)."
        ),
    )


class WorkerPoolStatus(StatusModel):
    """What the operator observed and decided for the pool."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The spec generation last reconciled."
    )
    replicas: int | None = Field(default=None, ge=0, description="Worker pods (Deployment).")
    ready_replicas: int | None = Field(default=None, ge=0, description="Ready worker pods.")
    updated_replicas: int | None = Field(
        default=None, ge=0, description="Worker pods running the current spec."
    )
    desired_replicas: int | None = Field(
        default=None, ge=0, description="Replicas the pool should have now."
    )
    selector: str | None = Field(default=None, description="Label selector of the pool's pods.")
    queue: QueueStatus | None = Field(default=None, description="The latest queue statistics.")
    autoscaling: AutoscalingStatus | None = Field(
        default=None, description="The latest scaling decision."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        max_length=16,
        description=(
            "Ready, Progressing, Degraded, QueueReachable, ScalingLimited, QueueConflict, Paused."
        ),
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


def format_timestamp(now: dt.datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_status(raw: Mapping[str, Any] | None) -> WorkerPoolStatus | None:
    """Read a stored status; ``None`` when absent or unreadable (it is rebuilt from scratch)."""
    if not raw:
        return None
    try:
        return WorkerPoolStatus.model_validate(dict(raw))
    except ValidationError:
        return None


def find_condition(conditions: Sequence[Condition] | None, type_: str) -> Condition | None:
    """The condition of ``type_``, if present."""
    for condition in conditions or ():
        if condition.type == type_:
            return condition
    return None


def build_condition(
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    generation: int,
    now: dt.datetime,
    previous: Sequence[Condition] | None,
) -> Condition:
    """A condition whose ``lastTransitionTime`` only moves when its status changes."""
    before = find_condition(previous, type_)
    if before is not None and before.status == status:
        since = before.last_transition_time
    else:
        since = format_timestamp(now)
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=truncate_message(message),
        last_transition_time=since,
        observed_generation=generation,
    )


def build_status_patch(
    status: WorkerPoolStatus, stored: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The status as the JSON the API server stores (camelCase, unset fields left out).

    With ``stored`` (the status as the API server has it), the result is the merge patch that
    turns ``stored`` into ``status``: a field set there and unset now is sent as ``null``, so
    it is removed instead of keeping a value that no longer applies (RFC 7386 keeps what a
    merge patch leaves out).
    """
    wanted = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    return _null_what_is_gone(wanted, stored) if stored else wanted


def _null_what_is_gone(wanted: dict[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    patch = dict(wanted)
    for key, before in stored.items():
        if key not in wanted:
            patch[key] = None
        elif isinstance(before, Mapping) and isinstance(wanted[key], dict):
            patch[key] = _null_what_is_gone(wanted[key], before)
    return patch
