"""The one scaling decision of workerfleet: queue statistics in, replicas and reasons out.

Pure and deterministic: no I/O, no clock of its own (``now`` is passed in), no randomness. The
operator's control loop (``shell``) and the local fleet (``local``) both call :func:`decide` once
per ``pollingIntervalSeconds`` with the latest :class:`Observation` and carry the returned
:class:`ScalerState` into the next call. Right before lowering replicas they call
:func:`deletion_costs_for` so that idle workers are removed first.

How a decision is made (the order matters, and each step that changes the value is named in
``Decision.clamped_by``):

1. Signals, each expressed in replicas (``None`` when disabled in the policy — a target of 0 in
   the CRD — or not measurable yet); ``raw_desired`` is the ceiling of the largest one.
   - ``backlog``: backlog / targetBacklogPerReplica (the KEDA-style signal).
   - ``capacity``: (backlog + in-flight) / (concurrency x targetUtilization). Counting in-flight
     jobs is what makes a busy queue with an empty backlog keep its workers.
   - ``latency`` (only with targetOldestJobAgeSeconds = T): Little's law. With arrival rate
     lambda (jobs/s, from the rise of ``enqueued_total`` over the carried history, at most
     ``rate_window_seconds`` = 15 s or three polls) and service rate mu per replica (jobs/s:
     heartbeats' processed jobs per busy slot-second x concurrency; before two heartbeats of a
     worker exist, Little's law again: concurrency x completion rate / mean in-flight, once at
     least max(3, concurrency) jobs finished; no rate before two polling intervals of history),
     ``(lambda / targetUtilization + backlog / T) / mu``
     replicas keep up with arrivals with the same headroom as the capacity signal and drain the
     current backlog within T, so the newest waiting job starts within T. When the oldest waiting
     job is already older than T the scaler also reacts HPA-style,
     ``max(serving, 1) x oldestAge / T``, which works before any rate is known. ``serving`` is
     the replicas that heartbeat (non-draining workers, at most ``current``), not the replicas
     asked for: the age keeps growing while new pods start, and weighing it against pods that
     do not work yet compounded (2 -> 200 in 40 s with T = 30 s and 60 s pod starts).
   Retries waiting in the delayed set (``future_delayed``) and dead letters are not work: only
   ``backlog`` (which includes due retries) and ``in_flight`` enter the signals.
   In ``keda`` mode decide() keeps the current count (KEDA owns it); in ``disabled`` mode it
   returns the fixed ``replicas``.
   Tolerance (like the HPA's): when the largest signal is within ``tolerance`` (default 10 %)
   of the current count, the recommendation is the current count (``clamped_by: tolerance``),
   so a backlog of 4001 does not move 40 replicas to 41. It never applies at 0 replicas.
2. Activation: from 0 replicas the pool wakes only when ``backlog >= activationBacklog``. We use
   ``>=`` (KEDA uses ``>``, with a default of 0) so the default ``activationBacklog: 1`` reads
   "the first job wakes the pool".
3. In-flight floor: never below what running jobs need — ``max(ceil(in_flight / concurrency),
   busy workers)`` where busy workers are non-draining heartbeats holding at least one job
   (capped at the queue's exact in-flight count, since heartbeats lag by up to lease/3) — and
   never raised by it above the current count. Together with deletion costs this is how scale-in
   avoids busy pods (KEDA's pain point 1).
4. ``minReplicas``/``maxReplicas`` clamp.
5. Stabilization exactly like the HPA: the recommendation is recorded; scaling up uses the
   minimum of the recommendations within the scale-up window, scaling down the maximum within the
   scale-down window. The same window governs every step down, including 1 -> 0 (one cooldown
   model, unlike KEDA's split cooldownPeriod/HPA behaviour); in addition 1 -> 0 needs the queue
   to have been idle (no backlog, nothing in flight) for the whole scale-down window. A fresh
   state is seeded with the current replica count, so a restarted controller never scales down
   before it has watched one full window; so is a state whose every recommendation is older
   than the windows (back in ``builtin`` mode after ``keda`` or ``disabled``, or after polls
   that never ran: someone else set the replicas meanwhile). The seed counts in both windows,
   as the HPA's initial recommendation does: with a scale-up window (0 s by default) a fresh
   scaler waits that window before scaling up too, so a short peak at the first poll after a
   restart is not scaled up to and then, a scale-down window later, back down.
6. Step limits per decision: a step may change replicas by the larger of ``maxStepPercent`` of
   the current count and ``maxStepPods`` (the HPA's default ``selectPolicy: Max``, which is why
   the defaults 100 % / 4 pods allow 2 -> 6), and always by at least one pod so 0 -> 1 and 1 -> 0
   stay possible.
7. ``minReplicas``/``maxReplicas`` again: they are hard limits and win over everything above.

``scaling_limited`` (the ScalingLimited condition) is set when the pool is already at
maxReplicas, the signals want more, and the backlog grew over the rate window; it stays set
while the pool is at maxReplicas and the signals want more, whatever the backlog's noise. A
poll that cannot read the queue measures nothing: the condition keeps its last value.

If the queue cannot be read, the decision holds the current count (``onMetricFailure: hold``),
says why in the reason and records the held value in the history so the windows stay honest
after the outage. With ``fallback`` it holds too until ``failureThreshold`` consecutive polls
have failed (KEDA's ``failureThreshold``, default 3: one Redis timeout is not an outage); from
then on ``fallbackReplicas`` is the recommendation and goes through the same stabilization
windows and step limits as any other (steps 5-7), so a pool at 20 with fallback 2 steps down
only after the scale-down window and by at most ``scaleDown``'s step per decision.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from worker_runtime.brokers import base
from workerfleet_operator import api

ScalingMode = Literal["builtin", "keda", "disabled"]
MetricFailurePolicy = Literal["hold", "fallback"]

_X = "\N{MULTIPLICATION SIGN}"  # reasons read "backlog 530 over 6 times 100" with the sign

# A float signal of 5.000000001 replicas must not become 6 because of binary rounding.
_CEIL_TOLERANCE = 1e-9

# pod-deletion-cost bands: pods without a heartbeat, draining, idle, then busy (kept longest).
COST_NO_HEARTBEAT = -1000
COST_DRAINING = -500
COST_IDLE = -100
# Busy: the oldest job's age in tenths of a second, then the number of jobs held (below 100).
_COST_PER_TENTH = 100
_COST_MAX_JOBS = 99
_COST_MAX_TENTHS = 20_000_000  # 23 days; keeps the cost inside the annotation's int32 range


@dataclass(frozen=True, slots=True)
class StepPolicy:
    """How fast one direction may move: ``spec.autoscaling.scaleUp`` or ``scaleDown``."""

    stabilization_window_seconds: float = 0.0
    max_step_percent: float | None = None
    max_step_pods: int | None = None


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """Every knob of ``spec.autoscaling`` (plus the pool's concurrency), in internal units."""

    min_replicas: int = 0
    max_replicas: int = 10
    concurrency: int = 8
    target_backlog_per_replica: float | None = 100.0
    target_utilization: float | None = 0.8
    target_oldest_job_age_seconds: float | None = None
    activation_backlog: int = 1
    polling_interval_seconds: float = 5.0
    scale_up: StepPolicy = StepPolicy(0.0, 100.0, 4)
    scale_down: StepPolicy = StepPolicy(120.0, 50.0, None)
    on_metric_failure: MetricFailurePolicy = "hold"
    fallback_replicas: int | None = None
    mode: ScalingMode = "builtin"
    dry_run: bool = False
    # The fixed count of ``mode: disabled`` (``spec.autoscaling.replicas``).
    replicas: int | None = None
    # How far back arrival and service rates look; at least three polling intervals are used.
    rate_window_seconds: float = 15.0
    # Consecutive failed polls before ``fallback`` acts (before that the replicas hold).
    failure_threshold: int = 3
    # A signal within this fraction of the current count keeps the current count (HPA: 0.1).
    tolerance: float = 0.1

    def __post_init__(self) -> None:
        problems = find_policy_problems(self)
        if problems:
            raise ValueError("invalid ScalingPolicy: " + "; ".join(problems))


def find_policy_problems(policy: ScalingPolicy) -> list[str]:
    """Return what is inconsistent in a policy (empty when it is usable)."""
    problems: list[str] = []
    if policy.min_replicas < 0:
        problems.append("minReplicas must be >= 0")
    if policy.max_replicas < max(policy.min_replicas, 1):
        problems.append("maxReplicas must be >= max(minReplicas, 1)")
    if policy.concurrency < 1:
        problems.append("concurrency must be >= 1")
    if policy.target_backlog_per_replica is not None and policy.target_backlog_per_replica <= 0:
        problems.append("targetBacklogPerReplica must be > 0")
    if policy.target_utilization is not None and not 0 < policy.target_utilization <= 1:
        problems.append("targetUtilization must be in (0, 1]")
    age = policy.target_oldest_job_age_seconds
    if age is not None and age <= 0:
        problems.append("targetOldestJobAgeSeconds must be > 0")
    if (
        policy.target_backlog_per_replica is None
        and policy.target_utilization is None
        and policy.target_oldest_job_age_seconds is None
    ):
        problems.append("at least one signal target must be set")
    if policy.activation_backlog < 0:
        problems.append("activationBacklog must be >= 0")
    if policy.polling_interval_seconds <= 0:
        problems.append("pollingIntervalSeconds must be > 0")
    for name, step in (("scaleUp", policy.scale_up), ("scaleDown", policy.scale_down)):
        if step.stabilization_window_seconds < 0:
            problems.append(f"{name}.stabilizationWindowSeconds must be >= 0")
        if step.max_step_percent is not None and step.max_step_percent <= 0:
            problems.append(f"{name}.maxStepPercent must be > 0")
        if step.max_step_pods is not None and step.max_step_pods < 1:
            problems.append(f"{name}.maxStepPods must be >= 1")
    if policy.on_metric_failure == "fallback" and policy.fallback_replicas is None:
        problems.append("onMetricFailure: fallback needs fallbackReplicas")
    if policy.replicas is not None and policy.replicas < 0:
        problems.append("replicas must be >= 0")
    if policy.fallback_replicas is not None and policy.fallback_replicas < 0:
        problems.append("fallbackReplicas must be >= 0")
    if policy.failure_threshold < 1:
        problems.append("failureThreshold must be >= 1")
    if not 0 <= policy.tolerance < 1:
        problems.append("tolerance must be in [0, 1)")
    return problems


@dataclass(frozen=True, slots=True)
class Observation:
    """One poll of the queue: its stats, or why they could not be read.

    ``age_unavailable`` says why the stats carry no oldest-job age (the broker does not report
    one, ``Capabilities.oldest_job_age``): the latency signal then keeps its rate-based part
    and drops the oldest-age reaction, and the decision lists it in ``unavailable``.
    """

    stats: base.QueueStats | None
    error: str | None = None
    age_unavailable: str | None = None


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A shaped-but-unstabilized replica count at one moment (the windows look at these)."""

    at: float
    replicas: int


@dataclass(frozen=True, slots=True)
class WorkerSample:
    """One worker's monotonic counters at one sample, to measure the service rate."""

    worker_id: str
    processed: int
    busy_seconds: float


@dataclass(frozen=True, slots=True)
class StatsSample:
    """The counters of one QueueStats reading, to measure arrival and completion rates (a
    counter the broker does not keep is None, and so is the rate it would give).

    ``cancelled_total`` is not sampled. Arrivals count every enqueued job, a later-cancelled one
    too: a cancel takes back jobs enqueued at any time before, so subtracting it would read a
    backlog cancelled in bulk as arrivals below zero, scaling a pool down while real jobs still
    arrive; a cancelled job leaves the backlog at once, which the backlog and capacity signals
    already see. The
    service rate reads completions only, which is what workers did. A queue whose every job
    was cancelled is not "never used" (its enqueued total is above 0): it is idle, and the
    idle rule (no backlog, nothing in flight) scales it to 0 as any other idle queue."""

    at: float
    enqueued_total: int | None
    completed_total: int | None
    backlog: int
    workers: tuple[WorkerSample, ...] = ()
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class ScalerState:
    """What the loop carries between calls; start with ``ScalerState()``."""

    recommendations: tuple[Recommendation, ...] = ()
    samples: tuple[StatsSample, ...] = ()
    idle_since: float | None = None
    last_scale_time: float | None = None
    # Consecutive polls that could not read the queue (0 after a good one).
    failures: int = 0
    # The last decision's ``scaling_limited``: once set it holds while pinned at maxReplicas
    # with signals above it, whether the backlog grew over the latest window or not.
    scaling_limited: bool = False


@dataclass(frozen=True, slots=True)
class Rates:
    """Rates measured over the carried history; ``None`` until two samples exist."""

    arrival: float | None = None
    completion: float | None = None
    service_per_replica: float | None = None
    backlog_growing: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one :func:`decide` call, with everything needed to explain it."""

    desired: int
    current: int
    signals: Mapping[str, float | None]
    raw_desired: int
    clamped_by: str | None
    reason: str
    changed: bool
    state: ScalerState
    chosen: str | None = None
    clamps: tuple[str, ...] = ()
    scaling_limited: bool = False
    queue_reachable: bool = True
    dry_run: bool = False
    rates: Rates = field(default_factory=Rates)
    unavailable: Mapping[str, str] = field(default_factory=dict)
    """Signal parts the policy turns on that could not be measured: signal -> why."""


def build_scaling_policy(spec: api.WorkerPoolSpec) -> ScalingPolicy:
    """The autoscaler's policy for a pool (the CRD's defaults are already in ``spec``).

    The one place that maps CRD field names onto the autoscaler's units; called once per spec
    change by the operator's pool controller and the local fleet.
    """
    a = spec.autoscaling
    return ScalingPolicy(
        min_replicas=a.min_replicas,
        max_replicas=a.max_replicas,
        concurrency=spec.concurrency,
        target_backlog_per_replica=_signal_target(a.target_backlog_per_replica),
        target_utilization=_signal_target(a.target_utilization),
        target_oldest_job_age_seconds=_signal_target(a.target_oldest_job_age_seconds),
        activation_backlog=a.activation_backlog,
        polling_interval_seconds=a.polling_interval_seconds,
        scale_up=StepPolicy(
            stabilization_window_seconds=a.scale_up.stabilization_window_seconds,
            max_step_percent=a.scale_up.max_step_percent,
            max_step_pods=a.scale_up.max_step_pods,
        ),
        scale_down=StepPolicy(
            stabilization_window_seconds=a.scale_down.stabilization_window_seconds,
            max_step_percent=a.scale_down.max_step_percent,
            max_step_pods=a.scale_down.max_step_pods,
        ),
        on_metric_failure=a.on_metric_failure,
        fallback_replicas=a.fallback_replicas,
        failure_threshold=a.failure_threshold,
        tolerance=a.tolerance,
        mode=a.mode,
        dry_run=a.dry_run,
        replicas=a.replicas,
    )


def _signal_target(value: float) -> float | None:
    # The CRD spells "signal off" as 0 (a null would be pruned and defaulted back by the API
    # server); the autoscaler spells it None.
    return value if value > 0 else None


def decide(
    policy: ScalingPolicy,
    observation: Observation,
    current_replicas: int,
    state: ScalerState,
    now: float,
) -> Decision:
    """Return the replica count the pool should have now, and why.

    ``now`` is the caller's clock for the stabilization windows; rates use the Redis server
    time carried in the stats. The caller applies ``desired`` unless ``policy.dry_run``.
    """
    current = max(0, current_replicas)
    if policy.mode != "builtin":
        return _build_unmanaged(policy, current, state)
    if _is_history_lost(policy, state, now):
        # Seed: behave as if the current count had been recommended until now.
        state = dataclasses.replace(state, recommendations=(Recommendation(now, current),))
    if observation.stats is None:
        return _build_metric_failure(policy, observation, current, state, now)
    return _build_decision(
        policy, observation.stats, current, state, now, age_unavailable=observation.age_unavailable
    )


def hold_paused(
    decision: Decision, before: ScalerState, replicas: int | None, now: float
) -> Decision:
    """A paused pool's decision: the signals as :func:`decide` measured them, the replicas held.

    ``replicas`` None holds the current count; a number sets it (``paused-replicas``). The
    history (samples, recommendations) keeps what was measured, so rates are ready at resume;
    only a real change of the count moves ``last_scale_time``.
    """
    current = decision.current
    desired = current if replicas is None else max(0, replicas)
    changed = desired != current
    if changed:
        reason = f"{_describe_change(current, desired)}: paused at {desired} replicas"
    else:
        reason = f"Paused at {current}: the signals want {decision.raw_desired}, nothing scales"
    state = dataclasses.replace(
        decision.state,
        last_scale_time=now if changed and not decision.dry_run else before.last_scale_time,
    )
    return dataclasses.replace(
        decision,
        desired=desired,
        reason=reason,
        changed=changed,
        state=state,
        clamped_by="paused",
        clamps=(*decision.clamps, "paused"),
        scaling_limited=False,
    )


def keep_last_scale_time(decision: Decision, before: ScalerState) -> Decision:
    """The decision as it stands when its replicas were not written (the caller held them: a
    live HPA, a queue another pool scales, a Deployment changed twice in a row): everything
    measured is kept (the windows, the rates), but ``last_scale_time`` stays where the last
    real scale put it. A pool held back decides the same change on every poll, and each moved
    the time of a scale that never happened."""
    if decision.state.last_scale_time == before.last_scale_time:
        return decision
    state = dataclasses.replace(decision.state, last_scale_time=before.last_scale_time)
    return dataclasses.replace(decision, state=state)


def _build_unmanaged(policy: ScalingPolicy, current: int, state: ScalerState) -> Decision:
    """keda mode: KEDA owns the count, keep it; disabled mode: the fixed ``replicas``."""
    if policy.mode == "disabled" and policy.replicas is not None:
        desired = policy.replicas
        reason = (
            f"{_describe_change(current, desired)}: autoscaling disabled, fixed replicas {desired}"
        )
    else:
        desired = current
        reason = f"NotManaged: autoscaling mode {policy.mode}, replicas left at {current}"
    return Decision(
        desired=desired,
        current=current,
        signals={"backlog": None, "capacity": None, "latency": None},
        raw_desired=desired,
        clamped_by=None,
        reason=reason,
        changed=desired != current,
        state=state,
        dry_run=policy.dry_run,
    )


def _build_metric_failure(
    policy: ScalingPolicy,
    observation: Observation,
    current: int,
    state: ScalerState,
    now: float,
) -> Decision:
    why = observation.error or "queue stats unavailable"
    failures = state.failures + 1
    fallback = policy.on_metric_failure == "fallback" and policy.fallback_replicas is not None
    if fallback and failures >= policy.failure_threshold:
        assert policy.fallback_replicas is not None
        target = policy.fallback_replicas
        shaping = _Shaping(current, target, ["fallback"])
        what = f"going to fallbackReplicas {target}"
    else:
        target = current
        shaping = _Shaping(current, current, ["metricFailureHold"])
        what = f"holding {current} replicas"
        if fallback:
            what += f" (failure {failures} of {policy.failure_threshold} before fallback)"
    shaping.clamp("minReplicas", max(shaping.value, policy.min_replicas))
    shaping.clamp("maxReplicas", min(shaping.value, policy.max_replicas))
    history = _build_history(state.recommendations, Recommendation(now, shaping.value), policy, now)
    # No stats, so no idea whether the queue is idle: the 1 -> 0 idle rule cannot be checked
    # and is not applied; the windows and steps are.
    _shape_steps(policy, shaping, history, now, idle_since=None, idle_known=False)
    desired = shaping.value
    changed = desired != current
    new_state = ScalerState(
        recommendations=history,
        samples=state.samples,
        idle_since=None,
        last_scale_time=now if changed and not policy.dry_run else state.last_scale_time,
        failures=failures,
        scaling_limited=state.scaling_limited,  # unknown now: the next read goes on from it
    )
    reason = f"{_describe_change(current, desired)}: queue unreadable ({why}); {what}"
    clamps = tuple(shaping.clamps)
    return Decision(
        desired=desired,
        current=current,
        signals={"backlog": None, "capacity": None, "latency": None},
        raw_desired=target,
        clamped_by=clamps[-1],
        reason=reason,
        changed=changed,
        state=new_state,
        clamps=clamps,
        queue_reachable=False,
        dry_run=policy.dry_run,
    )


@dataclass
class _Shaping:
    """The replica count being shaped by steps 2-7, and the names of the steps that changed it."""

    current: int
    value: int
    clamps: list[str] = field(default_factory=list)

    def clamp(self, name: str, new_value: int) -> None:
        if new_value != self.value:
            self.clamps.append(name)
            self.value = new_value


def _shape_steps(
    policy: ScalingPolicy,
    shaping: _Shaping,
    history: tuple[Recommendation, ...],
    now: float,
    *,
    idle_since: float | None,
    idle_known: bool = True,
) -> None:
    """Steps 5-7 on a recommendation already recorded as ``history[-1]``."""
    current = shaping.current
    recommended = history[-1].replicas
    # The seed of a scaler without history counts here too, as the HPA's initial
    # recommendation does: left out, a restarted scaler followed a short peak at its first
    # poll past the scale-up window meant to ignore it, and came back down a window later.
    up_floor = min([r.replicas for r in _in_window(history, now, policy.scale_up)] + [recommended])
    down_ceiling = max(
        [r.replicas for r in _in_window(history, now, policy.scale_down)] + [recommended]
    )
    if shaping.value > current:
        shaping.clamp("scaleUpStabilization", max(current, up_floor))
    elif shaping.value < current:
        shaping.clamp("scaleDownStabilization", min(current, down_ceiling))
    window = policy.scale_down.stabilization_window_seconds
    if (
        idle_known
        and shaping.value == 0
        and current > 0
        and (idle_since is None or now - idle_since < window)
    ):
        shaping.clamp("scaleDownStabilization", 1)
    if shaping.value > current:
        shaping.clamp(
            "scaleUpStep", min(shaping.value, current + _build_step(policy.scale_up, current))
        )
    elif shaping.value < current:
        shaping.clamp(
            "scaleDownStep", max(shaping.value, current - _build_step(policy.scale_down, current))
        )
    shaping.clamp("minReplicas", max(shaping.value, policy.min_replicas))
    shaping.clamp("maxReplicas", min(shaping.value, policy.max_replicas))


def _build_decision(
    policy: ScalingPolicy,
    queue: base.QueueStats,
    current: int,
    state: ScalerState,
    now: float,
    *,
    age_unavailable: str | None = None,
) -> Decision:
    samples = _build_samples(state.samples, queue, policy)
    rates = _measure_rates(samples, queue, policy)
    signals, chosen, explanation = _build_signals(
        policy, queue, rates, current, age_known=age_unavailable is None
    )
    unavailable: dict[str, str] = {}
    if age_unavailable is not None and policy.target_oldest_job_age_seconds is not None:
        unavailable["latency"] = (
            f"{age_unavailable}: the latency signal scales on arrival and service rates only, "
            "never on the age of the oldest waiting job"
        )
    present = [value for value in signals.values() if value is not None]
    raw = _ceil(max(present)) if present else 0
    shaping = _Shaping(current, raw)
    # 1b. Tolerance: a signal close to the current count keeps it (never from or to zero).
    if current > 0 and present and _within_tolerance(max(present), current, policy.tolerance):
        shaping.clamp("tolerance", current)
    # 2. Activation (0 -> 1 only with enough backlog).
    if current == 0 and shaping.value > 0 and queue.backlog < policy.activation_backlog:
        shaping.clamp("activation", 0)
    # 3. In-flight floor: running jobs keep their workers.
    if current > 0:
        floor = min(current, _in_flight_floor(policy, queue))
        shaping.clamp("inFlightWork", max(shaping.value, floor))
    # 4. Hard limits.
    shaping.clamp("minReplicas", max(shaping.value, policy.min_replicas))
    shaping.clamp("maxReplicas", min(shaping.value, policy.max_replicas))
    # 5-7. Stabilization windows (one model for every step), step limits, hard limits again.
    history = _build_history(state.recommendations, Recommendation(now, shaping.value), policy, now)
    idle = queue.backlog == 0 and queue.in_flight == 0
    idle_since = min(state.idle_since, now) if idle and state.idle_since is not None else None
    idle_since = now if idle and idle_since is None else idle_since
    _shape_steps(policy, shaping, history, now, idle_since=idle_since)

    desired = shaping.value
    clamps = shaping.clamps
    changed = desired != current
    # Entered when the backlog grew, left only when the signals fit (or replicas were freed):
    # a backlog that moves up and down by some noise at the maximum flipped it at every turn,
    # a Warning Event each time it came back.
    limited = (
        current >= policy.max_replicas
        and raw > policy.max_replicas
        and (rates.backlog_growing or state.scaling_limited)
    )
    new_state = ScalerState(
        recommendations=history,
        samples=samples,
        idle_since=idle_since,
        last_scale_time=now if changed and not policy.dry_run else state.last_scale_time,
        scaling_limited=limited,
    )
    reason = f"{_describe_change(current, desired)}: {explanation}"
    if clamps and desired != raw:
        reason += f" (wanted {raw}, limited by {clamps[-1]})"
    return Decision(
        desired=desired,
        current=current,
        signals=signals,
        raw_desired=raw,
        clamped_by=clamps[-1] if clamps else None,
        reason=reason,
        changed=changed,
        state=new_state,
        chosen=chosen,
        clamps=tuple(clamps),
        scaling_limited=limited,
        dry_run=policy.dry_run,
        rates=rates,
        unavailable=unavailable,
    )


def _within_tolerance(signal: float, current: int, tolerance: float) -> bool:
    # The HPA's rule, |signal / current - 1| <= tolerance, with room for binary rounding.
    return abs(signal / current - 1.0) <= tolerance + _CEIL_TOLERANCE


def _ceil(value: float) -> int:
    return max(0, math.ceil(value - _CEIL_TOLERANCE))


def _describe_change(current: int, desired: int) -> str:
    if desired > current:
        return f"ScaledUp {current}→{desired}"
    if desired < current:
        return f"ScaledDown {current}→{desired}"
    return f"Steady at {current}"


def _in_flight_floor(policy: ScalingPolicy, queue: base.QueueStats) -> int:
    busy_workers = sum(1 for w in queue.workers if w.in_flight > 0 and not w.draining)
    # Heartbeats are up to lease/3 old; the queue's in-flight count is exact. A busy worker
    # holds at least one job, so no more workers than jobs in flight can be busy.
    return max(_ceil(queue.in_flight / policy.concurrency), min(busy_workers, queue.in_flight))


def _build_step(step: StepPolicy, current: int) -> int:
    """The most pods one decision may add or remove (at least one)."""
    allowed: list[int] = []
    if step.max_step_percent is not None:
        allowed.append(math.floor(current * step.max_step_percent / 100.0 + _CEIL_TOLERANCE))
    if step.max_step_pods is not None:
        allowed.append(step.max_step_pods)
    if not allowed:
        return 1 << 30
    return max(1, *allowed)


def _build_history(
    history: tuple[Recommendation, ...],
    latest: Recommendation,
    policy: ScalingPolicy,
    now: float,
) -> tuple[Recommendation, ...]:
    keep = _history_span(policy)
    # A clock that stepped back would leave entries "in the future", inside every window for
    # as long as the step; treat them as recorded now (conservative: the window restarts).
    kept = (dataclasses.replace(r, at=min(r.at, now)) for r in history if r.at > now - keep)
    return (*kept, latest)


def _is_history_lost(policy: ScalingPolicy, state: ScalerState, now: float) -> bool:
    """No history (a new or restarted scaler), or none since longer than the windows and the
    polls' own cadence: the pool comes back to ``builtin`` from ``keda`` or ``disabled`` mode
    (decide() leaves the history alone there), or from polls that never ran, its replicas set
    by someone else meanwhile. An empty window then let it scale down at once (10 -> 0 in 20 s).
    """
    if not state.recommendations:
        return True
    latest = max(r.at for r in state.recommendations)
    return now - latest > max(_history_span(policy), 2 * policy.polling_interval_seconds)


def _history_span(policy: ScalingPolicy) -> float:
    """How far back the recommendations matter: the longer stabilization window."""
    return max(
        policy.scale_up.stabilization_window_seconds,
        policy.scale_down.stabilization_window_seconds,
    )


def _in_window(
    history: tuple[Recommendation, ...], now: float, step: StepPolicy
) -> list[Recommendation]:
    # Strictly inside the window: a 0 s window sees only the latest recommendation.
    return [r for r in history if r.at > now - step.stabilization_window_seconds]


def _build_samples(
    samples: tuple[StatsSample, ...], queue: base.QueueStats, policy: ScalingPolicy
) -> tuple[StatsSample, ...]:
    latest = StatsSample(
        at=queue.now,
        enqueued_total=queue.enqueued_total,
        completed_total=queue.completed_total,
        backlog=queue.backlog,
        in_flight=queue.in_flight,
        workers=tuple(
            WorkerSample(w.worker_id, w.processed, w.busy_seconds) for w in queue.workers
        ),
    )
    previous = [s for s in samples if s.at < latest.at]
    if previous and (
        _went_back(previous[-1].enqueued_total, latest.enqueued_total)
        or _went_back(previous[-1].completed_total, latest.completed_total)
    ):
        previous = []  # counters went backwards: Redis lost its data, start over
    window = max(policy.rate_window_seconds, 3 * policy.polling_interval_seconds)
    kept = [s for s in previous if s.at >= latest.at - window]
    if not kept and previous:
        kept = [previous[-1]]  # polls further apart than the window: use the last one
    return (*kept, latest)


def _measure_rates(
    samples: tuple[StatsSample, ...], queue: base.QueueStats, policy: ScalingPolicy
) -> Rates:
    if not samples:
        return Rates()
    first, last = samples[0], samples[-1]
    elapsed = last.at - first.at
    growing = last.backlog > first.backlog
    if elapsed < 2 * policy.polling_interval_seconds:
        # One interval of counts is noise, not a rate; but an empty queue whose counters are
        # both still 0 has never had a job: nothing arrived or finished, whatever the window.
        # Said from the first read, a new pool on an idle queue does not write its status a
        # second time just because its rates appeared (a third of the status writes of 2,000
        # new pools on the real API server).
        never_used = last.enqueued_total == 0 and last.completed_total == 0
        if never_used and last.backlog == 0 and last.in_flight == 0:
            return Rates(arrival=0.0, completion=0.0, backlog_growing=growing)
        return Rates(backlog_growing=growing)
    arrival = _rate(first.enqueued_total, last.enqueued_total, elapsed)
    completion = _rate(first.completed_total, last.completed_total, elapsed)
    return Rates(
        arrival=arrival,
        completion=completion,
        service_per_replica=_service_rate(samples, policy, completion),
        backlog_growing=growing,
    )


def _went_back(before: int | None, after: int | None) -> bool:
    return before is not None and after is not None and after < before


def _rate(before: int | None, after: int | None, elapsed: float) -> float | None:
    """Per second, or None where the broker keeps no such counter (SQS: no rate, never 0)."""
    return None if before is None or after is None else (after - before) / elapsed


def _service_rate(
    samples: tuple[StatsSample, ...], policy: ScalingPolicy, completion: float | None
) -> float | None:
    """Jobs per second one replica finishes when busy.

    Preferred: the heartbeats' processed jobs per busy slot-second times concurrency. Busy
    seconds are wall time, so CPU-bound jobs sharing one process slow each other down and the
    rate stays honest. Without heartbeat deltas (workers just started): Little's law on the
    jobs in service — the mean time in service is mean in-flight / completion rate, so one
    replica finishes ``concurrency x completion / mean in-flight`` jobs per second.
    """
    first, last = samples[0], samples[-1]
    before = {w.worker_id: w for w in first.workers}
    jobs = 0
    busy = 0.0
    for worker in last.workers:
        old = before.get(worker.worker_id)
        if (
            old is None
            or worker.processed < old.processed
            or worker.busy_seconds < old.busy_seconds
        ):
            continue
        jobs += worker.processed - old.processed
        busy += worker.busy_seconds - old.busy_seconds
    if jobs > 0 and busy > 0:
        return jobs / busy * policy.concurrency
    if completion is None or last.completed_total is None or first.completed_total is None:
        return None  # no completions counted (SQS): no Little's law either
    mean_in_flight = sum(s.in_flight for s in samples) / len(samples)
    finished = last.completed_total - first.completed_total
    # A handful of completions right after start-up says little about the time in service.
    if finished >= max(3, policy.concurrency) and mean_in_flight > 0:
        return policy.concurrency * completion / mean_in_flight
    return None


def _build_signals(
    policy: ScalingPolicy,
    queue: base.QueueStats,
    rates: Rates,
    current: int,
    *,
    age_known: bool = True,
) -> tuple[dict[str, float | None], str | None, str]:
    """Every signal in replicas, the one that dominates, and a sentence explaining it."""
    backlog, in_flight = queue.backlog, queue.in_flight
    signals: dict[str, float | None] = {"backlog": None, "capacity": None, "latency": None}
    words: dict[str, str] = {}
    if policy.target_backlog_per_replica is not None:
        target = policy.target_backlog_per_replica
        signals["backlog"] = backlog / target
        words["backlog"] = f"backlog {backlog} over {_ceil(backlog / target)}{_X}{target:g}"
    if policy.target_utilization is not None:
        per_replica = policy.concurrency * policy.target_utilization
        value = (backlog + in_flight) / per_replica
        signals["capacity"] = value
        words["capacity"] = (
            f"{backlog} queued + {in_flight} in flight over "
            f"{_ceil(value)}{_X}{policy.concurrency}{_X}{policy.target_utilization:g}"
        )
    if policy.target_oldest_job_age_seconds is not None:
        latency, sentence = _latency_signal(policy, queue, rates, current, age_known=age_known)
        signals["latency"] = latency
        if sentence:
            words["latency"] = sentence
    present = {name: value for name, value in signals.items() if value is not None}
    if not present or max(present.values()) <= 0:
        if backlog == 0 and in_flight == 0:
            return signals, None, "no backlog and nothing in flight"
        return signals, None, f"backlog {backlog}, {in_flight} in flight"
    chosen = max(present, key=lambda name: present[name])
    return signals, chosen, words[chosen]


def _latency_signal(
    policy: ScalingPolicy,
    queue: base.QueueStats,
    rates: Rates,
    current: int,
    *,
    age_known: bool = True,
) -> tuple[float | None, str]:
    assert policy.target_oldest_job_age_seconds is not None
    target = policy.target_oldest_job_age_seconds
    utilization = policy.target_utilization or 1.0
    candidates: list[tuple[float, str]] = []
    mu = rates.service_per_replica
    if rates.arrival is not None and mu is not None and mu > 0:
        value = (rates.arrival / utilization + queue.backlog / target) / mu
        candidates.append(
            (
                value,
                f"arrivals {rates.arrival:.1f}/s + backlog {queue.backlog} need "
                f"{_ceil(value)}{_X}{mu:.2f}/s to start jobs within {target:g}s",
            )
        )
    age = queue.oldest_job_age_seconds
    # A broker without the age reports 0: no reaction on it (the decision says so instead).
    if age_known and age > target:
        # Weighed against the replicas that work (heartbeat), not those asked for: the age
        # keeps growing while new pods start, and counting them compounded every poll.
        serving = max(min(current, _count_serving(queue)), 1)
        value = serving * age / target
        candidates.append(
            (value, f"oldest job {age:.0f}s over target {target:g}s at {serving} serving replicas")
        )
    if not candidates:
        return None, ""
    return max(candidates, key=lambda c: c[0])


def _count_serving(queue: base.QueueStats) -> int:
    """Workers that heartbeat and are not draining (one worker per pod)."""
    return sum(1 for w in queue.workers if not w.draining)


def deletion_costs_for(
    workers: Sequence[base.WorkerHeartbeat], pod_names: Sequence[str], now: float
) -> dict[str, int]:
    """Return ``controller.kubernetes.io/pod-deletion-cost`` per pod (lower is removed first).

    - no heartbeat: -1000 — the pod has not started its worker yet, or it is dead; removing it
      loses nothing;
    - draining: -500 — it is leaving anyway;
    - idle (nothing in flight): -100;
    - busy: 1 + age of its oldest running job in tenths of a second x 100 + jobs held (capped
      at 99), so the pods holding the oldest work, then the most jobs, are kept longest. Age
      comes first: a removed pod's quick jobs finish within its drain budget whatever their
      number, while a long job is the one that outlasts the budget and starts over elsewhere;
      and a beat taken during a burst of quick jobs may still be the pod's latest.
    When several heartbeats name the same pod (a restarted container), the latest one counts.
    """
    latest: dict[str, base.WorkerHeartbeat] = {}
    for worker in workers:
        seen = latest.get(worker.pod_name)
        if seen is None or worker.last_seen > seen.last_seen:
            latest[worker.pod_name] = worker
    return {pod: _deletion_cost(latest.get(pod), now) for pod in pod_names}


def _deletion_cost(worker: base.WorkerHeartbeat | None, now: float) -> int:
    if worker is None:
        return COST_NO_HEARTBEAT
    if worker.draining:
        return COST_DRAINING
    if worker.in_flight <= 0:
        return COST_IDLE
    started = worker.oldest_job_started_at
    tenths = 0 if started is None else int(max(0.0, now - started) * 10)
    jobs = min(worker.in_flight, _COST_MAX_JOBS)
    return 1 + min(tenths, _COST_MAX_TENTHS) * _COST_PER_TENTH + jobs


def explain_decision(decision: Decision) -> str:
    """One line for an Event message or ``status.autoscaling``: reason, signals, clamps, rates."""
    parts = [decision.reason]
    signal_words = ", ".join(
        f"{name}={'off' if value is None else f'{value:.2f}'}"
        for name, value in decision.signals.items()
    )
    parts.append(f"signals {signal_words}")
    if decision.chosen is not None:
        parts.append(f"chosen {decision.chosen} → {decision.raw_desired}")
    if decision.clamps:
        parts.append("shaped by " + " → ".join(decision.clamps))
    rates = decision.rates
    if rates.arrival is not None:
        parts.append(f"arrival {rates.arrival:.2f}/s")
    if rates.completion is not None:
        parts.append(f"completion {rates.completion:.2f}/s")
    if rates.service_per_replica is not None:
        parts.append(f"service {rates.service_per_replica:.2f}/s per replica")
    if decision.scaling_limited:
        parts.append("ScalingLimited: pinned at maxReplicas, the backlog grew past it")
    if decision.dry_run:
        parts.append("dry run: not applied")
    for name, why in decision.unavailable.items():
        parts.append(f"{name} unavailable: {why}")
    return "; ".join(parts)
