"""The reconcile decision of one WorkerPool, as a pure function: observations in, a plan out.

Who calls it: the operator's shell, once per reconcile (and after each autoscaler poll). The
shell gathers what it saw into an :class:`Observed` (the Deployment's status, whether the Redis
Secret is usable, the queue statistics or the error reading them, the autoscaler's decision,
the pool's stored status), calls :func:`plan`, then applies ``Plan.children`` by server-side
apply, deletes ``Plan.obsolete``, writes ``Plan.status`` to the ``/status`` subresource and posts
``Plan.events``. No I/O here, no clock (``Observed.now``), so every branch is a unit test.

Rules:

- Bad input (an invalid spec, a missing Secret or key, an unparseable Redis URL) gives
  ``Ready=False`` and ``Degraded=True`` with a precise CamelCase reason, a Warning Event on the
  transition, and an empty plan (``hold=True``): nothing applied and nothing deleted, so a pool
  never ends half-applied and running workers keep running until the input is fixed.
- Conditions keep their ``lastTransitionTime`` while their status is unchanged; Events are
  emitted only when a condition's status or reason changes, and for each replica change the
  autoscaler decided, so a converged pool emits nothing.
- ``spec.replicas`` is only in the applied Deployment when this manager owns it: always with
  ``mode: disabled``, and at creation in ``builtin`` mode (the autoscaler's own manager owns it
  afterwards). ``keda`` mode never sets it (KEDA's HPA does).
- The Secret's ``<uid>/<resourceVersion>`` (``SecretCheck.version``) is a pod-template
  annotation: a rotated Secret rolls the pods, an unchanged one changes nothing.
- The plan never sees the Secret's value, only :class:`SecretCheck`; error texts are passed
  through :func:`redact` as a last line of defence against URLs with passwords.
- ``status.observedGeneration`` is the generation whose children were applied
  (``Observed.applied_generation``): a spec the API server refuses (400/422, e.g. requests
  above limits, or an admission webhook's denial) gives ``Ready=False``/``Degraded=True``
  reason ``ApplyRejected`` and leaves it at the last applied one. A reconcile that raised
  keeps ``Degraded=True`` reason ``ReconcileFailed`` in every plan
  (``Observed.reconcile_error``) until one gets through, so the autoscaler's polls in between
  neither flip it back nor announce it again. A child kind that is not served (no KEDA, no
  Prometheus Operator), or whose CRD is being deleted, is ``Degraded=True`` reason
  ``ChildAPIMissing`` (and not Ready in keda mode, where nothing else scales the pool): one
  Warning on the transition, not one per resync.
- A rollout is a pod template the Deployment controller has not acted on, or pods of an older
  template still running; a generation bumped by a replicas write alone is not one, so scaling
  never flips Ready.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol

from worker_runtime.brokers.redis import eviction
from workerfleet_operator import api, autoscaling, manifests

Manifest = dict[str, Any]
SecretState = Literal["ok", "missing", "key_missing", "invalid_url"]
EventType = Literal["Normal", "Warning"]

SECRET_REASONS: Mapping[SecretState, api.Reason] = {
    "missing": api.Reason.SECRET_NOT_FOUND,
    "key_missing": api.Reason.SECRET_KEY_NOT_FOUND,
    "invalid_url": api.Reason.INVALID_REDIS_URL,
}
PROBLEM_REASONS = frozenset(
    {
        api.Reason.INVALID_SPEC,
        api.Reason.APPLY_REJECTED,
        api.Reason.INVALID_BROKER_URL,
        *SECRET_REASONS.values(),
    }
)
"""Reasons of bad input: Ready=False with these means the user must act."""
HOLD_REASONS = frozenset(
    {api.Reason.INVALID_SPEC, api.Reason.INVALID_BROKER_URL, *SECRET_REASONS.values()}
)
"""Reasons of a held plan (:func:`_build_held_plan`): nothing was applied for its generation."""


class EventReason(StrEnum):
    """Reasons of the Events that are not a condition's own reason (those are ``api.Reason``)."""

    READY = "Ready"
    DRIFT_CORRECTED = "DriftCorrected"
    PAUSED = "Paused"
    RESUMED = "Resumed"
    SCALED = "Scaled"
    """A replica change the autoscaler decided (its reason's first word when it has one)."""


SCALING_KINDS = frozenset({"ScaledObject", "TriggerAuthentication"})
"""Children without which a keda pool cannot scale: their API missing makes it not Ready."""


class QueueStatsView(Protocol):
    """The fields of ``worker_runtime.brokers.base.QueueStats`` the status shows."""

    @property
    def backlog(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def future_delayed(self) -> int: ...
    @property
    def dead_letter(self) -> int: ...
    @property
    def oldest_job_age_seconds(self) -> float: ...
    @property
    def workers(self) -> Sequence[object]: ...
    @property
    def maxmemory_policy(self) -> str | None: ...


@dataclass(frozen=True)
class SecretCheck:
    """What the shell found behind the broker block's ``urlSecretRef`` (never the value).

    ``version`` is the Secret's ``<uid>/<resourceVersion>`` when it was read: it becomes a
    pod-template annotation so that a rotated Secret rolls the worker pods.
    """

    state: SecretState
    message: str = ""
    version: str | None = None


@dataclass(frozen=True)
class DeploymentState:
    """The parts of the pool's Deployment the status is computed from."""

    generation: int
    observed_generation: int
    spec_replicas: int
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    available_replicas: int = 0
    progress_deadline_exceeded: bool = False
    replica_failure: str | None = None
    # The Deployment generation at which the pod template last changed (the shell knows: it
    # wrote it). A generation bumped by a replicas write alone is no rollout. None: unknown,
    # every generation the controller has not observed counts as one.
    rollout_generation: int | None = None


def read_deployment_state(deployment: Mapping[str, Any]) -> DeploymentState:
    """Read a Deployment object (as the API server returns it) into a :class:`DeploymentState`."""
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or ()}
    progressing = conditions.get("Progressing") or {}
    failure = conditions.get("ReplicaFailure") or {}
    return DeploymentState(
        generation=int((deployment.get("metadata") or {}).get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        spec_replicas=int(spec.get("replicas", 1)),
        replicas=int(status.get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        updated_replicas=int(status.get("updatedReplicas") or 0),
        available_replicas=int(status.get("availableReplicas") or 0),
        progress_deadline_exceeded=progressing.get("status") == "False"
        and progressing.get("reason") == "ProgressDeadlineExceeded",
        replica_failure=str(failure.get("message") or "ReplicaFailure")
        if failure.get("status") == "True"
        else None,
    )


@dataclass(frozen=True)
class Observed:
    """Everything the shell saw for one pool; ``stats``/``stats_error`` both None = not read now."""

    now: dt.datetime
    secret: SecretCheck
    deployment: DeploymentState | None = None
    stats: QueueStatsView | None = None
    stats_error: str | None = None
    # Why ``stats`` carries no oldest-job age (the broker reports none); None: it does.
    age_unavailable: str | None = None
    decision: autoscaling.Decision | None = None
    previous: api.WorkerPoolStatus | None = None
    # Other pools reading the same queue on the same Redis; None = not known yet.
    queue_sharing: QueueSharing | None = None
    # The generation whose children were last applied successfully (None: this one).
    applied_generation: int | None = None
    # Why the API server refused the children of this generation (a 422), if it did.
    apply_problem: str | None = None
    # The error of the last reconcile, when it raised (its type and message); None once one
    # got through.
    reconcile_error: str | None = None
    # Kinds of children whose API is not served (their CRD is not installed).
    missing_apis: tuple[str, ...] = ()
    # Children by name ("<Kind> <name>") that exist but someone else controls: left alone.
    not_owned: tuple[str, ...] = ()
    # Live autoscalers (HPA, ScaledObject) driving the Deployment's replicas: the autoscaler holds.
    replicas_owned_by: tuple[str, ...] = ()
    # False when the decided replicas were not written (held: another pool scales this queue,
    # another owner drives them, an unchanged dry run): no Event announces a scale that did not
    # happen.
    scale_applied: bool = True
    # The pool left builtin mode and its pods may still carry the builtin autoscaler's
    # deletion costs: ``status.autoscaling`` keeps naming builtin until they are removed (a
    # restarted operator reads it there to know it has them to remove).
    builtin_costs_pending: bool = False


@dataclass(frozen=True)
class QueueSharing:
    """Who else reads this pool's queue on the same Redis (``namespace/name``, sorted).

    ``first`` is the pool created first among all of them: it alone scales; the others hold
    (they only scale down).
    """

    others: tuple[str, ...]
    first: str
    holds: bool


EVENT_MESSAGE_MAX_LENGTH = 1024
"""Event messages are cut here (events.k8s.io/v1 refuses notes above 1 kB)."""


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the WorkerPool."""

    type: EventType
    reason: str
    message: str

    def __post_init__(self) -> None:
        cut = api.truncate_message(self.message, EVENT_MESSAGE_MAX_LENGTH)
        object.__setattr__(self, "message", cut)


@dataclass(frozen=True)
class ChildRef:
    """A child object by identity (what to delete when it is no longer wanted)."""

    api_version: str
    kind: str
    namespace: str
    name: str


@dataclass(frozen=True)
class Plan:
    """What the shell does for one reconcile."""

    children: tuple[Manifest, ...]
    obsolete: tuple[ChildRef, ...]
    replicas: int | None
    status: api.WorkerPoolStatus
    events: tuple[Event, ...]
    hold: bool = False
    problem: str | None = field(default=None)


_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")
_PASSWORD_WORDS = re.compile(r"(?i)(password|passwd|pwd|auth)(\s*[=:]\s*)\S+")


def redact(text: str) -> str:
    """Remove credentials from an error text: ``redis://user:pw@host`` -> ``redis://***@host``."""
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    return _PASSWORD_WORDS.sub(r"\1\2***", text)


# --- children ------------------------------------------------------------------------------


def choose_replicas(pool: api.Pool, deployment: DeploymentState | None) -> int | None:
    """The ``spec.replicas`` this manager puts in the Deployment, or None to leave it alone.

    A pool paused at N replicas starts (or, in ``disabled`` mode, stays) at N; in ``builtin``
    mode the autoscaler's manager sets N on a running pool (``autoscaling.hold_paused``), and in
    ``keda`` mode KEDA does (the ScaledObject carries KEDA's own pause annotations).
    """
    a = pool.spec.autoscaling
    paused_at = pool.pause.replicas if pool.pause is not None else None
    if a.mode == "disabled":
        return a.replicas if paused_at is None else paused_at
    if a.mode == "builtin" and deployment is None:
        return a.min_replicas if paused_at is None else paused_at
    return None


def build_children(
    pool: api.Pool, *, replicas: int | None, redis_secret_version: str | None = None
) -> tuple[Manifest, ...]:
    """Every child the pool wants, in apply order (the Deployment first)."""
    spec = pool.spec
    children = [
        manifests.build_deployment(
            pool, replicas=replicas, redis_secret_version=redis_secret_version
        )
    ]
    if spec.metrics.service:
        children.append(manifests.build_metrics_service(pool))
    if spec.metrics.pod_monitor:
        children.append(manifests.build_pod_monitor(pool))
    if spec.pod_disruption_budget.enabled:
        children.append(manifests.build_pdb(pool))
    if spec.queue.sqs is not None:
        # the shell applies it before the Deployment that names it (shell.reconcile)
        children.append(manifests.build_worker_service_account(pool))
    if spec.autoscaling.mode == "keda":
        children.append(manifests.build_trigger_authentication(pool))
        children.append(manifests.build_scaled_object(pool))
    return tuple(children)


def build_optional_child_refs(namespace: str, name: str) -> tuple[ChildRef, ...]:
    """Every child a pool may own besides its Deployment (candidates for deletion)."""
    return (
        ChildRef("v1", "Service", namespace, manifests.metrics_service_name(name)),
        ChildRef("monitoring.coreos.com/v1", "PodMonitor", namespace, name),
        ChildRef("policy/v1", "PodDisruptionBudget", namespace, name),
        # one per broker block: a pool moved to another broker loses the old one
        *(
            ChildRef(
                "keda.sh/v1alpha1",
                "TriggerAuthentication",
                namespace,
                manifests.trigger_authentication_name(name, broker),
            )
            for broker in api.BROKER_FIELDS
        ),
        ChildRef("keda.sh/v1alpha1", "ScaledObject", namespace, name),
        ChildRef("v1", "ServiceAccount", namespace, manifests.worker_service_account_name(name)),
    )


def _find_obsolete(pool: api.Pool, children: Sequence[Manifest]) -> tuple[ChildRef, ...]:
    wanted = {(c["kind"], c["metadata"]["name"]) for c in children}
    return tuple(
        ref
        for ref in build_optional_child_refs(pool.namespace, pool.name)
        if (ref.kind, ref.name) not in wanted
    )


# --- status --------------------------------------------------------------------------------


@dataclass
class _Conditions:
    """Collects the conditions of one plan, keeping transition times from the stored status."""

    generation: int
    now: dt.datetime
    previous: Sequence[api.Condition]
    items: dict[str, api.Condition] = field(default_factory=dict)

    def set(self, type_: str, status: api.ConditionStatus, reason: str, message: str) -> None:
        self.items[type_] = api.build_condition(
            type_,
            status,
            reason,
            message,
            generation=self.generation,
            now=self.now,
            previous=self.previous,
        )

    def carry(self, type_: str, status: api.ConditionStatus, reason: str, msg: str) -> None:
        """Keep the stored condition when there is no new observation, else set a default."""
        before = api.find_condition(self.previous, type_)
        if before is not None:
            self.items[type_] = before.model_copy(update={"observed_generation": self.generation})
        else:
            self.set(type_, status, reason, msg)

    def build(self) -> list[api.Condition]:
        order = {t: i for i, t in enumerate(api.CONDITION_TYPES)}
        return sorted(self.items.values(), key=lambda c: order.get(c.type, len(order)))


def _build_events(
    previous: Sequence[api.Condition],
    current: Sequence[api.Condition],
    decision: autoscaling.Decision | None,
    *,
    scale_applied: bool = True,
) -> tuple[Event, ...]:
    events: list[Event] = []
    for condition in current:
        before = api.find_condition(previous, condition.type)
        if before is not None and (before.status, before.reason) == (
            condition.status,
            condition.reason,
        ):
            continue
        event = _build_condition_event(condition, before)
        if event is not None:
            events.append(event)
    if decision is not None and decision.desired != decision.current and scale_applied:
        verb = decision.reason.split(" ", 1)[0] if decision.reason else EventReason.SCALED
        reason = ("DryRun" + verb) if decision.dry_run else verb
        events.append(Event("Normal", reason, redact(decision.reason)))
    return tuple(events)


def _build_condition_event(condition: api.Condition, before: api.Condition | None) -> Event | None:
    message = condition.message
    if condition.type == api.READY:
        if condition.status == "True":
            return Event("Normal", EventReason.READY, message)
        if condition.reason == api.Reason.CREATING:
            return None  # the same reconcile creates it: its RollingOut Event follows
        kind: EventType = "Warning" if condition.reason in PROBLEM_REASONS else "Normal"
        return Event(kind, condition.reason, message)
    if condition.type == api.QUEUE_REACHABLE:
        if condition.status == "False":
            return Event("Warning", condition.reason, message)
        if condition.status == "True" and before is not None and before.status == "False":
            return Event("Normal", condition.reason, message)
        return None
    if condition.type == api.DEGRADED:
        # Bad input already has its Ready event; queue outages have their QueueReachable one.
        if condition.status == "True" and condition.reason not in PROBLEM_REASONS | {
            api.Reason.QUEUE_UNREACHABLE
        }:
            return Event("Warning", condition.reason, message)
        return None
    if condition.type in (api.SCALING_LIMITED, api.QUEUE_CONFLICT) and condition.status == "True":
        if condition.reason == api.Reason.SCALING_PAUSED:
            return None  # asked for: the Paused condition's own Normal Event announces it
        return Event("Warning", condition.reason, message)
    if condition.type == api.PAUSED:
        if condition.status == "True":
            return Event("Normal", EventReason.PAUSED, message)
        if before is not None and before.status == "True":
            return Event("Normal", EventReason.RESUMED, message)
    return None


def _set_rollout_conditions(
    conds: _Conditions, pool: api.Pool, deployment: DeploymentState | None
) -> None:
    name = pool.name
    if deployment is None:
        conds.set(api.READY, "False", api.Reason.CREATING, f"creating Deployment {name}")
        conds.set(api.PROGRESSING, "True", api.Reason.CREATING, f"creating Deployment {name}")
        return
    want = deployment.spec_replicas
    template_generation = (
        deployment.generation
        if deployment.rollout_generation is None
        else deployment.rollout_generation
    )
    # A rollout: a pod template the controller has not acted on yet, or pods of an older
    # template still running. Pods still being created for a scale-up are not one. A
    # Deployment that wants no pods and reports none has nothing to roll out, observed by its
    # controller or not: a new pool on an idle queue is Ready on its first status write
    # instead of RollingOut first and Ready a moment later (a second status write and a
    # second Event per pool: the API server's largest cost when thousands are created).
    nothing_to_roll = want == 0 and deployment.replicas == 0
    if not nothing_to_roll and (
        deployment.observed_generation < template_generation
        or deployment.replicas > deployment.updated_replicas
    ):
        message = f"{deployment.updated_replicas}/{want} replicas run the current spec"
        conds.set(api.READY, "False", api.Reason.ROLLING_OUT, message)
        conds.set(api.PROGRESSING, "True", api.Reason.ROLLING_OUT, message)
        return
    if want > 0 and deployment.available_replicas == 0:
        message = f"0/{want} replicas available"
        conds.set(api.READY, "False", api.Reason.REPLICAS_UNAVAILABLE, message)
        conds.set(api.PROGRESSING, "True", api.Reason.WAITING_FOR_REPLICAS, message)
        return
    if want == 0:
        conds.set(api.READY, "True", api.Reason.SCALED_TO_ZERO, _describe_zero_replicas(pool))
    else:
        conds.set(
            api.READY,
            "True",
            api.Reason.AVAILABLE,
            f"{deployment.available_replicas}/{want} replicas available",
        )
    if deployment.available_replicas < want:
        message = f"{deployment.available_replicas}/{want} replicas available"
        conds.set(api.PROGRESSING, "True", api.Reason.WAITING_FOR_REPLICAS, message)
    else:
        conds.set(
            api.PROGRESSING, "False", api.Reason.ROLLOUT_COMPLETE, "the Deployment is up to date"
        )


def _describe_zero_replicas(pool: api.Pool) -> str:
    """Why a pool runs no replicas: an idle queue is only the autoscalers' reason."""
    a = pool.spec.autoscaling
    if pool.pause is not None and a.mode != "disabled":
        return f"no replicas: paused at 0 by {_pause_annotation(pool.pause)}"
    if pool.pause is not None and pool.pause.replicas == 0:
        return f"no replicas: paused at 0 by {api.PAUSED_REPLICAS_ANNOTATION}"
    if a.mode == "disabled":
        return "no replicas: autoscaling disabled, fixed replicas 0"
    if a.mode == "keda":
        return "no replicas: KEDA scaled the pool to zero"
    return "no replicas wanted: the queue is idle"


def _build_queue_status(
    stats: QueueStatsView,
    decision: autoscaling.Decision | None,
    now: dt.datetime,
    before: api.QueueStatus | None,
    *,
    age_known: bool = True,
) -> api.QueueStatus:
    rates = decision.rates if decision is not None else None
    arrival = None if rates is None or rates.arrival is None else round(rates.arrival, 4)
    completion = None if rates is None or rates.completion is None else round(rates.completion, 4)
    # Rates need two reads: until an operator (re)started has them, the last measured ones stay.
    if arrival is None and completion is None and before is not None:
        arrival, completion = before.arrival_rate, before.completion_rate
    return api.QueueStatus(
        backlog=stats.backlog,
        in_flight=stats.in_flight,
        delayed=stats.future_delayed,
        dead_letter=stats.dead_letter,
        # left out, not 0, when the broker cannot measure it
        oldest_job_age_seconds=round(float(stats.oldest_job_age_seconds), 3) if age_known else None,
        arrival_rate=arrival,
        completion_rate=completion,
        workers=len(stats.workers),
        observed_time=api.format_timestamp(now),
    )


def _build_autoscaling_status(
    pool: api.Pool,
    decision: autoscaling.Decision | None,
    previous: api.WorkerPoolStatus | None,
    *,
    keep_builtin: bool = False,
) -> api.AutoscalingStatus | None:
    a = pool.spec.autoscaling
    if decision is None:
        before = previous.autoscaling if previous is not None else None
        if keep_builtin and before is not None and before.mode == "builtin":
            return before  # stored until the deletion costs are off the pods (Observed)
        if a.mode == "keda":
            return api.AutoscalingStatus(mode="keda", reason="replicas are managed by KEDA")
        if a.mode == "disabled":
            return api.AutoscalingStatus(
                mode="disabled", reason=f"autoscaling disabled: fixed replicas {a.replicas}"
            )
        if before is not None and before.mode == a.mode:
            return before
        return api.AutoscalingStatus(mode=a.mode, dry_run=a.dry_run or None)
    last = decision.state.last_scale_time
    return api.AutoscalingStatus(
        mode=a.mode,
        signals={k: None if v is None else round(float(v), 4) for k, v in decision.signals.items()},
        chosen=decision.chosen,
        raw_desired=decision.raw_desired,
        clamped_by=decision.clamped_by,
        last_scale_time=None
        if last is None
        else api.format_timestamp(dt.datetime.fromtimestamp(last, dt.UTC)),
        reason=redact(decision.reason),
        dry_run=decision.dry_run or None,
        signals_unavailable=[
            api.SignalUnavailable(
                signal=signal, reason=api.Reason.OLDEST_JOB_AGE_UNAVAILABLE, message=why
            )
            for signal, why in sorted(decision.unavailable.items())
        ]
        or None,
    )


def _desired_replicas(
    pool: api.Pool,
    decision: autoscaling.Decision | None,
    deployment: DeploymentState | None,
    previous: api.WorkerPoolStatus | None,
) -> int | None:
    a = pool.spec.autoscaling
    if a.mode == "disabled":
        return a.replicas
    if a.mode == "builtin" and decision is not None:
        return decision.desired
    if deployment is not None:
        return deployment.spec_replicas
    if a.mode == "builtin":
        return a.min_replicas
    return previous.desired_replicas if previous is not None else None


def _set_queue_reachable(conds: _Conditions, pool: api.Pool, observed: Observed) -> None:
    queue = pool.spec.queue.name
    if observed.stats is not None:
        conds.set(api.QUEUE_REACHABLE, "True", api.Reason.QUEUE_READ, f"queue {queue} read")
    elif observed.stats_error is not None:
        message = f"queue {queue} unreadable: {redact(observed.stats_error)}"
        conds.set(api.QUEUE_REACHABLE, "False", api.Reason.QUEUE_UNREACHABLE, message)
    else:
        conds.carry(
            api.QUEUE_REACHABLE, "Unknown", api.Reason.NOT_YET_READ, f"queue {queue} not read yet"
        )


def _set_scaling_limited(conds: _Conditions, pool: api.Pool, observed: Observed) -> None:
    mode = pool.spec.autoscaling.mode
    decision = observed.decision
    if mode != "builtin":
        conds.set(
            api.SCALING_LIMITED,
            "False",
            api.Reason.NOT_MANAGED,
            f"the builtin autoscaler is off ({mode})",
        )
    elif observed.replicas_owned_by:
        owners = ", ".join(observed.replicas_owned_by)
        message = (
            f"spec.replicas is driven by {owners}; the autoscaler holds instead of fighting. "
            "Delete it to hand the replicas back (or set autoscaling.mode: disabled or keda; "
            f"to hold a count by hand, annotate the pool {api.PAUSED_REPLICAS_ANNOTATION})"
        )
        conds.set(api.SCALING_LIMITED, "True", api.Reason.REPLICAS_OWNED_ELSEWHERE, message)
    elif pool.pause is not None:
        # Said as WithinLimits ("the replicas meet the signals"), a pool held at 2 under a
        # backlog that wants 40 told on-call nothing; the pause limits it, whatever the queue.
        held = _describe_held_replicas(pool.pause, decision, observed.deployment)
        message = (
            f"scaling is suspended by {_pause_annotation(pool.pause)}: {held}; the autoscaler "
            "reads the queue but scales nothing until the annotation is removed"
        )
        conds.set(api.SCALING_LIMITED, "True", api.Reason.SCALING_PAUSED, message)
    elif decision is None or not decision.queue_reachable:
        # No signals measured (an unreadable queue): what was last measured stands. Said as
        # WithinLimits, an outage told "the replicas meet the signals" of a pool pinned at
        # maxReplicas, and the next read announced it again with a Warning. A pause or another
        # mode is not carried: the pool itself says it is over, and carried, "scaling is
        # suspended by workerfleet.io/paused" outlived the pause (a resume during a queue
        # outage, or a reconcile before the next poll). Another owner of the replicas is
        # carried: only a scale attempt finds it again (a restarted operator knows none).
        before = api.find_condition(conds.previous, api.SCALING_LIMITED)
        if before is not None and before.reason in _READ_OFF_THE_POOL:
            conds.set(
                api.SCALING_LIMITED, "Unknown", api.Reason.NOT_YET_EVALUATED, "no decision yet"
            )
        else:
            conds.carry(
                api.SCALING_LIMITED, "Unknown", api.Reason.NOT_YET_EVALUATED, "no decision yet"
            )
    elif decision.scaling_limited:
        message = (
            f"pinned at maxReplicas {pool.spec.autoscaling.max_replicas}: the backlog grew "
            f"past it and the signals still want {decision.raw_desired}"
        )
        conds.set(api.SCALING_LIMITED, "True", api.Reason.MAX_REPLICAS_REACHED, message)
    else:
        conds.set(
            api.SCALING_LIMITED, "False", api.Reason.WITHIN_LIMITS, "the replicas meet the signals"
        )


# The ScalingLimited reasons the pool's own spec and annotations decide: stale once they differ.
_READ_OFF_THE_POOL = frozenset({api.Reason.SCALING_PAUSED, api.Reason.NOT_MANAGED})


def _pause_annotation(pause: api.Pause) -> str:
    return api.PAUSED_ANNOTATION if pause.replicas is None else api.PAUSED_REPLICAS_ANNOTATION


def _describe_held_replicas(
    pause: api.Pause, decision: autoscaling.Decision | None, deployment: DeploymentState | None
) -> str:
    """At what count a paused pool is held: its ``paused-replicas``, else the count it had."""
    if pause.replicas is not None:
        return f"replicas held at {pause.replicas}"
    if decision is not None:
        return f"replicas held at {decision.desired}"
    if deployment is not None:
        return f"replicas held at {deployment.spec_replicas}"
    return "replicas held where they are"


def _set_queue_conflict(conds: _Conditions, pool: api.Pool, sharing: QueueSharing | None) -> None:
    queue = pool.spec.queue.name
    if sharing is None:
        conds.carry(
            api.QUEUE_CONFLICT, "Unknown", api.Reason.NOT_YET_CHECKED, f"queue {queue} not read yet"
        )
    elif not sharing.others:
        message = f"no other WorkerPool reads queue {queue} on this broker"
        conds.set(api.QUEUE_CONFLICT, "False", api.Reason.QUEUE_NOT_SHARED, message)
    else:
        if pool.pause is not None:
            who = "this pool is paused and scales nothing"
        elif sharing.holds:
            who = "this pool holds its replicas"
        else:
            who = "this pool scales"
        message = (
            f"queue {queue} on this broker is also read by WorkerPool "
            f"{', '.join(sharing.others)}: pools on one queue would each scale to the whole "
            f"backlog and take each other's jobs. {sharing.first} (created first) scales and "
            f"the others hold (they only scale down): {who}. Give each pool its own queue."
        )
        conds.set(api.QUEUE_CONFLICT, "True", api.Reason.QUEUE_SHARED, message)


def _set_paused(conds: _Conditions, pool: api.Pool) -> None:
    pause = pool.pause
    if pause is None:
        message = f'not paused (annotate {api.PAUSED_ANNOTATION}: "true" to hold the replicas)'
        conds.set(api.PAUSED, "False", api.Reason.NOT_PAUSED, message)
    elif pause.replicas is None:
        message = (
            f"paused by {api.PAUSED_ANNOTATION}: nothing scales the pool, its replicas stay "
            "where they are; remove the annotation to resume autoscaling"
        )
        conds.set(api.PAUSED, "True", api.Reason.PAUSED_BY_ANNOTATION, message)
    else:
        message = (
            f"paused by {api.PAUSED_REPLICAS_ANNOTATION}: held at {pause.replicas} replicas; "
            "remove the annotation to resume autoscaling"
        )
        conds.set(api.PAUSED, "True", api.Reason.PAUSED_AT_REPLICAS, message)


def _describe_not_owned(names: Sequence[str]) -> str:
    return (
        f"exists and is not controlled by this WorkerPool, so it is left alone: "
        f"{', '.join(names)} (rename or delete it, or turn off the feature that wants it)"
    )


def _describe_missing_apis(kinds: Sequence[str]) -> str:
    return (
        f"not served by the API server (or its CRD is being deleted): {', '.join(kinds)} "
        "(install its CRDs, or turn off what asks for it: autoscaling.mode keda, "
        "metrics.podMonitor)"
    )


def _set_degraded(conds: _Conditions, observed: Observed) -> None:
    deployment = observed.deployment
    if observed.reconcile_error is not None:
        # As plan_failure wrote it: an autoscaler poll between two failed reconciles keeps it.
        message = describe_reconcile_error(observed.reconcile_error)
        conds.set(api.DEGRADED, "True", api.Reason.RECONCILE_FAILED, message)
    elif observed.apply_problem is not None:
        conds.set(api.DEGRADED, "True", api.Reason.APPLY_REJECTED, observed.apply_problem)
    elif deployment is not None and deployment.progress_deadline_exceeded:
        message = "the Deployment's rollout exceeded its progress deadline"
        conds.set(api.DEGRADED, "True", api.Reason.PROGRESS_DEADLINE_EXCEEDED, message)
    elif deployment is not None and deployment.replica_failure is not None:
        conds.set(api.DEGRADED, "True", api.Reason.REPLICA_FAILURE, deployment.replica_failure)
    elif observed.not_owned:
        message = _describe_not_owned(observed.not_owned)
        conds.set(api.DEGRADED, "True", api.Reason.CHILD_NOT_OWNED, message)
    elif observed.missing_apis:
        message = _describe_missing_apis(observed.missing_apis)
        conds.set(api.DEGRADED, "True", api.Reason.CHILD_API_MISSING, message)
    elif observed.stats_error is not None:
        message = "the queue cannot be read; autoscaling holds or falls back"
        conds.set(api.DEGRADED, "True", api.Reason.QUEUE_UNREACHABLE, message)
    elif observed.stats is not None and (
        warning := eviction.build_eviction_warning(observed.stats.maxmemory_policy)
    ):
        # reachable, but Redis may drop the queue's keys: at-least-once no longer holds
        conds.set(api.DEGRADED, "True", api.Reason.REDIS_MAY_EVICT, warning)
    elif (
        observed.stats is None
        and _previous_reason(observed, api.DEGRADED) == api.Reason.REDIS_MAY_EVICT
    ):
        conds.carry(api.DEGRADED, "True", api.Reason.REDIS_MAY_EVICT, "")  # not read now: keep it
    else:
        conds.set(api.DEGRADED, "False", api.Reason.AS_EXPECTED, "no problems observed")


def _previous_reason(observed: Observed, type_: str) -> str | None:
    found = api.find_condition(_previous_conditions(observed), type_)
    return found.reason if found is not None else None


# --- the plan ------------------------------------------------------------------------------


def _previous_conditions(observed: Observed) -> list[api.Condition]:
    previous = observed.previous
    return list(previous.conditions or ()) if previous is not None else []


def _build_held_plan(
    pool: api.Pool | api.InvalidPool, observed: Observed, reason: str, message: str
) -> Plan:
    """Bad input: explain it, apply nothing, delete nothing."""
    previous = _previous_conditions(observed)
    conds = _Conditions(pool.generation, observed.now, previous)
    conds.set(api.READY, "False", reason, message)
    conds.set(api.DEGRADED, "True", reason, message)
    conds.carry(api.PROGRESSING, "False", reason, "nothing is applied until the input is fixed")
    if reason in SECRET_REASONS.values() or reason == api.Reason.INVALID_BROKER_URL:
        conds.set(api.QUEUE_REACHABLE, "Unknown", reason, "the broker URL is not usable")
    else:
        conds.carry(api.QUEUE_REACHABLE, "Unknown", reason, "the spec is not usable")
    conds.carry(api.SCALING_LIMITED, "Unknown", reason, "the spec is not usable")
    conds.carry(api.QUEUE_CONFLICT, "Unknown", reason, "the spec is not usable")
    if isinstance(pool, api.Pool):
        _set_paused(conds, pool)
    else:
        conds.carry(api.PAUSED, "Unknown", reason, "the spec is not usable")
    conditions = conds.build()
    before = observed.previous
    deployment = observed.deployment
    status = api.WorkerPoolStatus(
        observed_generation=pool.generation,
        replicas=deployment.replicas if deployment is not None else None,
        ready_replicas=deployment.ready_replicas if deployment is not None else None,
        updated_replicas=deployment.updated_replicas if deployment is not None else None,
        desired_replicas=before.desired_replicas if before is not None else None,
        selector=manifests.build_selector(pool.name),
        queue=before.queue if before is not None else None,
        autoscaling=before.autoscaling if before is not None else None,
        conditions=conditions,
    )
    return Plan(
        children=(),
        obsolete=(),
        replicas=None,
        status=status,
        events=_build_events(previous, conditions, None),
        hold=True,
        problem=f"{reason}: {message}",
    )


def is_held(status: api.WorkerPoolStatus) -> bool:
    """Whether ``status`` was written by a held plan. Its ``observedGeneration`` is then the
    pool's generation though none of its children were applied (nor obsolete ones deleted):
    a restarted operator must not take it for a generation it reconciled."""
    ready = api.find_condition(list(status.conditions or ()), api.READY)
    return ready is not None and ready.status == "False" and ready.reason in HOLD_REASONS


@dataclass(frozen=True)
class FailureReport:
    """What the shell writes when a reconcile raised: the stored status with Degraded set."""

    status: api.WorkerPoolStatus
    events: tuple[Event, ...]


def describe_reconcile_error(error: str) -> str:
    """The Degraded message of a reconcile that raised: ``error`` redacted and cut."""
    return redact(error)[:512]


def plan_failure(
    generation: int, previous: api.WorkerPoolStatus | None, error: str, now: dt.datetime
) -> FailureReport:
    """``Degraded=True reason ReconcileFailed`` on the stored status, a Warning on the transition.

    ``error`` is the exception as text (its type and message); it is redacted and cut here.
    Every other condition stays as stored: nothing new was observed.
    """
    stored = previous or api.WorkerPoolStatus()
    before = list(stored.conditions or ())
    conds = _Conditions(generation, now, before)
    conds.items = {c.type: c for c in before}
    conds.set(api.DEGRADED, "True", api.Reason.RECONCILE_FAILED, describe_reconcile_error(error))
    conditions = conds.build()
    return FailureReport(
        status=stored.model_copy(update={"conditions": conditions}),
        events=_build_events(before, [c for c in conditions if c.type == api.DEGRADED], None),
    )


def _secret_reason(pool: api.Pool, state: SecretState) -> api.Reason:
    if state == "invalid_url" and pool.spec.queue.broker != "redis":
        return api.Reason.INVALID_BROKER_URL
    return SECRET_REASONS[state]


def plan(pool: api.Pool | api.InvalidPool, observed: Observed) -> Plan:
    """Decide the children, the status and the Events of one WorkerPool."""
    if isinstance(pool, api.InvalidPool):
        return _build_held_plan(pool, observed, api.Reason.INVALID_SPEC, pool.message)
    if pool.spec.autoscaling.mode == "keda" and pool.spec.queue.keda_auth is None:
        message = f"spec: autoscaling.mode: keda requires queue.{pool.spec.queue.broker}.keda"
        return _build_held_plan(pool, observed, api.Reason.INVALID_SPEC, message)
    if observed.secret.state != "ok":
        reason = _secret_reason(pool, observed.secret.state)
        return _build_held_plan(pool, observed, reason, redact(observed.secret.message))

    deployment = observed.deployment
    replicas = choose_replicas(pool, deployment)
    children = build_children(pool, replicas=replicas, redis_secret_version=observed.secret.version)
    previous = _previous_conditions(observed)
    conds = _Conditions(pool.generation, observed.now, previous)
    _set_rollout_conditions(conds, pool, deployment)
    if observed.apply_problem is not None:
        conds.set(api.READY, "False", api.Reason.APPLY_REJECTED, observed.apply_problem)
        conds.set(api.PROGRESSING, "False", api.Reason.APPLY_REJECTED, "the spec is not applied")
    elif any(name.startswith("Deployment ") for name in observed.not_owned):
        message = _describe_not_owned(observed.not_owned)
        conds.set(api.READY, "False", api.Reason.CHILD_NOT_OWNED, message)
        conds.set(api.PROGRESSING, "False", api.Reason.CHILD_NOT_OWNED, "nothing of this pool runs")
    elif SCALING_KINDS & set(observed.missing_apis):
        message = _describe_missing_apis(observed.missing_apis)
        conds.set(api.READY, "False", api.Reason.CHILD_API_MISSING, message)
    _set_degraded(conds, observed)
    _set_queue_reachable(conds, pool, observed)
    _set_scaling_limited(conds, pool, observed)
    _set_queue_conflict(conds, pool, observed.queue_sharing)
    _set_paused(conds, pool)
    conditions = conds.build()
    before = observed.previous
    if observed.stats is not None:
        queue_status: api.QueueStatus | None = _build_queue_status(
            observed.stats,
            observed.decision,
            observed.now,
            before.queue if before is not None else None,
            age_known=observed.age_unavailable is None,
        )
    else:
        queue_status = before.queue if before is not None else None
    decision = observed.decision if pool.spec.autoscaling.mode == "builtin" else None
    applied = observed.applied_generation
    status = api.WorkerPoolStatus(
        # Only a generation whose children were applied is observed (a 422 keeps the last).
        observed_generation=pool.generation if applied is None else applied,
        replicas=deployment.replicas if deployment is not None else 0,
        ready_replicas=deployment.ready_replicas if deployment is not None else 0,
        updated_replicas=deployment.updated_replicas if deployment is not None else 0,
        desired_replicas=_desired_replicas(pool, decision, deployment, before),
        selector=manifests.build_selector(pool.name),
        queue=queue_status,
        autoscaling=_build_autoscaling_status(
            pool, decision, before, keep_builtin=observed.builtin_costs_pending
        ),
        conditions=conditions,
    )
    return Plan(
        children=children,
        obsolete=_find_obsolete(pool, children),
        replicas=replicas,
        status=status,
        events=_build_events(previous, conditions, decision, scale_applied=observed.scale_applied),
    )


BROKER_NAMES = {"amqp": "RabbitMQ", "amqps": "RabbitMQ", "sqs": "SQS"}
"""How the status names a broker by its URL scheme."""


def describe_age_unavailable(scheme: str) -> str:
    """Why a pool on the broker of this URL scheme has no oldest-job-age signal (its status
    message; the operator's and the local runner's queue reads both say it)."""
    broker = BROKER_NAMES.get(scheme, scheme)
    return f"the {broker} broker does not report the oldest waiting job's age"
