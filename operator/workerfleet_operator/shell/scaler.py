"""The autoscaler poll of one WorkerPool: read its queue, decide, write the replicas, report.

Called by the pool controller's loop (``shell.pool``) every ``pollingIntervalSeconds`` between
reconciles. The decision is ``autoscaling.decide`` (pure); this module does the I/O around it:

- The poll re-reads the Secret (``get`` only; a watch would need list/watch on every Secret):
  a new version marks the pool dirty, so the reconcile rolls the pods within
  ``secret_cache_seconds`` + one poll.
- Replicas are written by the autoscaler's own field manager, and only after checking that no
  live autoscaler (an HPA, a ScaledObject) drives them: another owner is reported
  (``ReplicasOwnedElsewhere``), not fought.
- Pods are ranked for a scale-down by their heartbeats (the pod-deletion-cost annotation);
  the reconcile takes the annotations off again when the pool leaves ``builtin`` mode
  (:func:`remove_deletion_costs`).
- An unchanged poll costs no plan and no write: only the metrics.
- A pool serving an event subscription (``spec.queue.subscription``) has it registered in the
  broker before its queue is read, on its first poll and again every
  :data:`SUBSCRIPTION_RECHECK_SECONDS` (idempotent: a subscription removed by hand, or lost
  with a Redis that kept no data, comes back). Until it is registered the poll reads no stats
  and reports why (the queue is unobserved: the scaler holds, status says so).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workerfleet_operator import autoscaling, manifests
from workerfleet_operator import plan as plan_mod
from workerfleet_operator.shell import drift, kube, queue, report

if TYPE_CHECKING:
    from workerfleet_operator.shell import pool as pool_mod

logger = logging.getLogger("workerfleet.operator")

SUBSCRIPTION_RECHECK_SECONDS = 300.0
"""How often a pool's registered subscription is registered again (one idempotent SADD)."""


@dataclass(slots=True)
class ScalerMemory:
    """What the autoscaler remembers between polls."""

    scaler_state: autoscaling.ScalerState = field(default_factory=autoscaling.ScalerState)
    last_observation: autoscaling.Observation | None = None
    last_decision: autoscaling.Decision | None = None
    last_scale_wall_time: float | None = None  # wall-clock time of the last scale, for status
    replicas_blocked_by: tuple[str, ...] = ()
    last_dry_run_desired: int | None = None
    poll_signature: tuple[Any, ...] | None = None
    # A reconcile left its status for the poll due right after it (``PoolController.
    # defer_status_to_poll``); cleared once the poll's status write returned.
    status_deferred: bool = False
    # (Secret version, topic, group) last registered, and when (monotonic clock)
    subscription_registered: tuple[Any, ...] | None = None
    subscription_registered_at: float = 0.0
    subscription_problem: str | None = None
    # Deletion costs a scale-in wrote whose replicas write then raised (and whose take-back
    # raised too): taken off by the next poll before it decides to write anything.
    unwritten_marks: Mapping[str, str | None] = field(default_factory=dict)


# ------------------------------------------------------------------ autoscaler


async def poll_queue(
    controller: pool_mod.PoolController, policy: autoscaling.ScalingPolicy | None
) -> None:
    if (
        policy is None
        or controller.secret is None
        or controller.secret_key is None
        or not controller.has_body
    ):
        return
    spec = controller.valid_poll_spec()  # an unchanged pool is not parsed again
    # A rotated (or deleted) Secret is noticed within secret_cache_seconds, not at resync.
    before = controller.secret.version
    check = await controller.read_secret(spec)
    if check.state != "ok" or controller.secret is None or controller.secret_key is None:
        controller.ctx.queue_readers.discard((controller.namespace, controller.name))
        controller.dirty = True  # the reconcile reports it (Ready=False) and holds
        return
    if check.version != before:
        controller.dirty = True  # a new pod-template annotation rolls the pods onto the new URL
    where = queue.identify_queue(controller.secret.value, spec.queue_name)
    controller.ctx.queue_readers.record(
        (controller.namespace, controller.name), where, controller.pool_facts.created
    )
    sharing = controller.find_queue_sharing()
    problem = await _ensure_subscription(controller, spec)
    if problem is not None:
        observation = autoscaling.Observation(stats=None, error=problem)
    else:
        observation = await controller.ctx.queues.fetch_observation(
            controller.secret_key,
            controller.secret,
            spec.queue_name,
            deadline_seconds=controller.ctx.config.redis_timeout_seconds,
        )
    controller.scaling.last_observation = observation
    if controller.terminating or controller.stopped:
        return  # deleted while the queue was read: write nothing (another finalizer may hold it)
    # Read off the facts kept with the Deployment: an unchanged poll unpacks no body.
    current = controller.deployment_facts.replicas
    # decide() runs on the monotonic clock (its windows survive wall-clock steps); the time
    # of each scale is recorded on the wall clock for status.autoscaling.lastScaleTime.
    now = controller.ctx.clock()
    decision = autoscaling.decide(
        policy, observation, current, controller.scaling.scaler_state, now
    )
    if spec.pause is not None and policy.mode == "builtin":
        # Paused: the signals are still read and shown; the replicas are held (or set to the
        # paused-replicas count) by the autoscaler's own manager, as any scale.
        decision = autoscaling.hold_paused(
            decision, controller.scaling.scaler_state, spec.pause.replicas, now
        )
    state_before = controller.scaling.scaler_state
    # Kept before the write, so one that raises keeps what this poll measured; kept as a scale
    # that has not happened: only a write moves lastScaleTime (below).
    unapplied = autoscaling.keep_last_scale_time(decision, state_before)
    controller.scaling.scaler_state = unapplied.state
    controller.scaling.last_decision = unapplied
    applied = True
    if decision.desired == current:
        # Back to no change: the next change a dry run wants is a new one, announced again
        # (it stayed "already announced", so 0 -> 4, idle, 0 -> 4 said nothing the second time).
        controller.scaling.last_dry_run_desired = None
    if controller.scaling.unwritten_marks:
        # Level-triggered: a scale-in that raised left its ranking on the pods; a new
        # scale-in ranks them again from the heartbeats of now.
        await _take_back_marks(controller)
    if policy.mode == "builtin" and decision.desired != current:
        if not controller.has_deployment:
            applied = False  # nothing to scale yet: the reconcile creates it
        elif sharing is not None and sharing.holds and decision.desired > current:
            # Another pool scales for this queue (QueueConflict): this one never scales up,
            # but may come down (it may have scaled for the whole backlog before the first
            # pool recorded itself, after a restart, and would stay there for good).
            applied = False
        elif policy.dry_run:
            applied = (
                controller.scaling.last_dry_run_desired != decision.desired
            )  # one Event per change
            controller.scaling.last_dry_run_desired = decision.desired
        else:
            deployment = controller.deployment
            assert deployment is not None
            applied = await _taking_back_marks_on_error(
                controller, _scale(controller, deployment, current, decision, observation)
            )
    if applied:
        if decision.state.last_scale_time != state_before.last_scale_time:
            controller.scaling.last_scale_wall_time = controller.ctx.wall_clock()
        controller.scaling.scaler_state = decision.state
        controller.scaling.last_decision = decision
    else:
        # Held (or not written): lastScaleTime, the signature and the status stay as they were,
        # not rewritten on every poll of a pool that cannot scale.
        decision = unapplied
    # An unchanged poll (an idle pool) costs no plan and no write: only the metrics.
    signature = (
        *_poll_signature(
            observation, decision, controller.deployment_facts, controller.pool_facts.generation
        ),
        sharing,
        spec.pause,
    )
    if (
        signature == controller.scaling.poll_signature
        and applied
        and not controller.scaling.replicas_blocked_by
    ):
        _export(controller, policy, observation, decision)
        return
    the_plan = plan_mod.plan(
        controller.valid_pool(),
        controller.observed(
            check,
            # the sharing read before the queue was, the one the signature keeps: read again
            # here, a pool recorded meanwhile would be planned but not remembered, and the
            # conflict reported for it would outlive that pool
            sharing,
            stats=observation.stats,
            stats_error=observation.error,
            age_unavailable=observation.age_unavailable,
            decision=_with_scale_time(decision, controller.scaling.last_scale_wall_time),
            scale_applied=applied,
        ),
    )
    # Remembered only once its status is written: a write that raised, or one held back for
    # the refresh interval, leaves the next poll to plan again (apply_status forgets the
    # signature whenever any writer changes the status).
    written = await report.apply_status(controller, the_plan.status, the_plan.events)
    controller.scaling.poll_signature = signature if written else None
    # Only now: a write that raised leaves it set, and the pool's loop reconciles at once.
    controller.scaling.status_deferred = False
    _export(controller, policy, observation, decision)


async def _ensure_subscription(
    controller: pool_mod.PoolController, spec: pool_mod.PollSpec
) -> str | None:
    """Register the pool's subscription when due; None when registered (or none is asked
    for), else why it is not (the poll's observation error)."""
    subscription = spec.subscription
    memory = controller.scaling
    if subscription is None or controller.secret is None or controller.secret_key is None:
        memory.subscription_registered = None
        return None
    topic, group = subscription
    wanted = (controller.secret_key, topic, group)
    now = controller.ctx.clock()
    if (
        memory.subscription_registered == wanted
        and now - memory.subscription_registered_at < SUBSCRIPTION_RECHECK_SECONDS
    ):
        return None
    failure = await controller.ctx.queues.ensure_subscription(
        controller.secret_key,
        controller.secret,
        spec.queue_name,
        topic,
        group,
        deadline_seconds=controller.ctx.config.redis_timeout_seconds,
    )
    name = f"{topic}:{group}"
    if failure is None:
        if memory.subscription_registered != wanted:
            logger.info(
                "subscription %s of %s/%s is registered",
                name,
                controller.namespace,
                controller.name,
            )
        memory.subscription_registered, memory.subscription_registered_at = wanted, now
        memory.subscription_problem = None
        return None
    memory.subscription_registered = None
    problem = f"subscription {name} is not registered: {failure}"
    if problem != memory.subscription_problem:
        logger.warning("%s/%s: %s", controller.namespace, controller.name, problem)
    memory.subscription_problem = problem
    return problem


async def _taking_back_marks_on_error(
    controller: pool_mod.PoolController, scale: Awaitable[bool]
) -> bool:
    """Await ``scale`` (:func:`_scale`); if it raises, take back the deletion costs it wrote."""
    try:
        return await scale
    except Exception:
        # Raised (an API error, a webhook's denial): nothing was scaled, so the ranking made
        # for it must not steer a later scale-in made for other reasons. Remembered before
        # it was written, so a take-back that raises too is retried by the next poll.
        try:
            await _take_back_marks(controller)
        except Exception as exc:
            logger.warning(
                "%s/%s: deletion costs of a failed scale-in not removed yet: %s",
                controller.namespace,
                controller.name,
                exc,
            )
        raise


async def _scale(
    controller: pool_mod.PoolController,
    deployment: Mapping[str, Any],
    current: int,
    decision: autoscaling.Decision,
    observation: autoscaling.Observation,
) -> bool:
    """Write the decided replicas; False when held because another manager owns them.

    The deletion costs a scale-in writes are kept in ``ScalerMemory.unwritten_marks`` (the
    poll took back any left there before) until the replicas are written or the scale-in is
    given up."""
    client = controller.ctx.kube_client()
    for attempt in range(2):
        # Decided on live autoscalers, not managedFields: one `kubectl scale` (or an HPA
        # deleted since) stays listed there for good and would hold the pool forever.
        controllers = await kube.fetch_replicas_controllers(
            client, controller.namespace, controller.name
        )
        if controllers:
            _block_replicas(controller, tuple(controllers))
            return await _give_up(controller)
        # Costs rank pods by their heartbeats: without stats (a fallback during an outage)
        # every pod would look dead, so none is marked and the ReplicaSet picks.
        if decision.desired < current and attempt == 0 and observation.stats is not None:
            await _mark_deletion_costs(controller, deployment, observation)
        try:
            # Forced only against our own managers (the creation apply co-owns the field),
            # and only on the version whose managers were just checked.
            controller.keep_deployment(
                await kube.apply_replicas(
                    client,
                    controller.namespace,
                    controller.name,
                    decision.desired,
                    force=True,
                    resource_version=deployment.get("metadata", {}).get("resourceVersion"),
                )
            )
            break
        except kube.ApiError as exc:
            if not exc.is_conflict:
                raise
        # Changed since our watch saw it (maybe someone else scaled it): check it again.
        fresh = await kube.fetch_object(
            client, kube.build_ref("Deployment", controller.namespace, controller.name)
        )
        if fresh is None:
            controller.dirty = True  # deleted: the reconcile recreates it
            return await _give_up(controller)
        controller.keep_deployment(fresh)
        deployment = fresh
    else:
        # changed twice in a row: the next poll decides again
        return await _give_up(controller)
    if controller.applied.drift_reference is not None and not drift.is_subset(
        controller.applied.drift_reference, controller.deployment
    ):
        controller.dirty = True  # edited by someone between our writes
    controller.scaling.replicas_blocked_by = ()
    controller.scaling.unwritten_marks = {}  # acted on by the write: they stay
    return True


async def _give_up(controller: pool_mod.PoolController) -> bool:
    """A scale-in given up (another owner, a Deployment changed twice) takes back the
    deletion costs written for it: left on the pods, they would steer the next scale-in
    someone else makes (an HPA, KEDA after a switch to keda mode) by what the pods were doing
    back then. Returns False (not written)."""
    await _take_back_marks(controller)
    return False


async def _take_back_marks(controller: pool_mod.PoolController) -> None:
    """Remove the deletion costs of ``ScalerMemory.unwritten_marks`` (pod -> value written) by
    a scale-in that wrote no replicas, and forget them; idempotent (a removal sent again
    changes nothing; a pod gone is skipped)."""
    marked = controller.scaling.unwritten_marks
    if marked:
        client = controller.ctx.kube_client()
        await kube.apply_pod_deletion_costs(
            client, controller.namespace, dict.fromkeys(marked), marked
        )
    controller.scaling.unwritten_marks = {}


def _block_replicas(controller: pool_mod.PoolController, owners: tuple[str, ...]) -> None:
    if owners != controller.scaling.replicas_blocked_by:
        logger.warning(
            "%s/%s: spec.replicas is driven by %s; the autoscaler holds instead of fighting",
            controller.namespace,
            controller.name,
            ", ".join(owners),
        )
    controller.scaling.replicas_blocked_by = owners


async def _mark_deletion_costs(
    controller: pool_mod.PoolController,
    deployment: Mapping[str, Any],
    observation: autoscaling.Observation,
) -> None:
    """Rank the live pods for a scale-in; remember the cost each now carries
    (``ScalerMemory.unwritten_marks``) until the replicas are written."""
    selector = deployment.get("spec", {}).get("selector", {}).get("matchLabels") or {}
    if not selector:
        return
    client = controller.ctx.kube_client()
    label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    pods = await kube.fetch_objects(
        client, kube.build_ref("Pod", controller.namespace), label_selector=label_selector
    )
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    names = [p["metadata"]["name"] for p in live]
    assert observation.stats is not None
    costs = autoscaling.deletion_costs_for(observation.stats.workers, names, observation.stats.now)
    current = kube.deletion_costs_of(live)
    marked = {pod: str(cost) for pod, cost in costs.items()}
    # Remembered before the writes: one that raises halfway leaves the rest to take back.
    controller.scaling.unwritten_marks = marked
    await kube.apply_pod_deletion_costs(client, controller.namespace, costs, current)


async def remove_deletion_costs(controller: pool_mod.PoolController) -> int:
    """Take the pod-deletion-cost annotations off the pool's pods; return how many pods had one.

    Called by the reconcile when the pool leaves ``builtin`` mode: the costs ranked the pods
    for the builtin autoscaler's scale-ins, and left behind they keep steering the ReplicaSet
    controller's choice in every scale-in KEDA, an HPA or a fixed count makes afterwards, by
    what the pods were doing back then. Idempotent: a pod without one is not written.
    """
    client = controller.ctx.kube_client()
    pods = await kube.fetch_objects(
        client,
        kube.build_ref("Pod", controller.namespace),
        label_selector=manifests.build_selector(controller.name),
    )
    current = kube.deletion_costs_of(pods)
    marked = {pod: value for pod, value in current.items() if value is not None}
    if marked:
        await kube.apply_pod_deletion_costs(
            client,
            controller.namespace,
            dict.fromkeys(marked),
            marked,
            field_manager=kube.FIELD_MANAGER,  # the reconcile's own write
        )
        logger.info(
            "%s/%s: pod-deletion-cost removed from %d pods (the pool left builtin mode)",
            controller.namespace,
            controller.name,
            len(marked),
        )
    return len(marked)


def _export(
    controller: pool_mod.PoolController,
    policy: autoscaling.ScalingPolicy,
    observation: autoscaling.Observation,
    decision: autoscaling.Decision,
) -> None:
    series = controller.bound_series()
    spec = controller.valid_poll_spec()
    series.record_poll(
        observation.stats,
        desired=decision.desired,
        max_replicas=policy.max_replicas,
        alert_threshold=spec.alert_threshold,
        oldest_job_age_target=spec.oldest_job_age_target,
        oldest_age_measured=observation.age_unavailable is None,
    )
    if controller.has_deployment:
        facts = controller.deployment_facts
        series.record_replicas(facts.replicas, facts.ready_replicas)


def _with_scale_time(
    decision: autoscaling.Decision, wall_time: float | None
) -> autoscaling.Decision:
    """The decision as plan() shows it: ``last_scale_time`` in wall-clock unix seconds."""
    state = dataclasses.replace(decision.state, last_scale_time=wall_time)
    return dataclasses.replace(decision, state=state)


def _poll_signature(
    observation: autoscaling.Observation,
    decision: autoscaling.Decision,
    deployment: pool_mod.DeploymentFacts,
    generation: int,
) -> tuple[Any, ...]:
    """Everything a poll's status depends on; equal signatures give equal statuses."""
    s = observation.stats
    stats_part = (
        None
        if s is None
        else (
            s.backlog,
            s.in_flight,
            s.future_delayed,
            s.dead_letter,
            round(float(s.oldest_job_age_seconds), 3),
            len(s.workers),
        )
    )
    rates = decision.rates
    return (
        stats_part,
        observation.error,
        decision.desired,
        decision.raw_desired,
        decision.clamped_by,
        decision.chosen,
        decision.reason,
        decision.scaling_limited,
        decision.dry_run,
        None if rates.arrival is None else round(rates.arrival, 4),
        None if rates.completion is None else round(rates.completion, 4),
        decision.state.last_scale_time,
        deployment.spec_replicas,
        deployment.status_key,
        generation,
    )
