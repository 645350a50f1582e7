"""The pool's status and Events as the API server gets them: written only when they change,
posted only on transitions, exported as metrics every time.

Called by the reconcile (``shell.reconcile``), the autoscaler poll (``shell.scaler``) and the
pool controller's loop (a reconcile that raised). What to write is decided by ``plan``; this
module decides only *whether* a write is due (telemetry waits for ``status_refresh_seconds``)
and redacts every Event text with ``queue.redact``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from workerfleet_operator import api
from workerfleet_operator import plan as plan_mod
from workerfleet_operator.shell import drift, kube, queue

if TYPE_CHECKING:
    from workerfleet_operator.shell import pool as pool_mod

logger = logging.getLogger("workerfleet.operator")


# ------------------------------------------------------------------ status and events


async def apply_status(
    controller: pool_mod.PoolController,
    status_model: api.WorkerPoolStatus,
    events: Sequence[plan_mod.Event],
) -> bool:
    """Write the status only if the merge would change it; post the plan's Events.

    Returns False when a change was held back for the refresh interval (nothing else waits).
    """
    body = controller.body
    if body is None:
        return True
    _export_conditions(controller, status_model)
    stored = api.parse_status(body.get("status"))
    stored_patch = api.build_status_patch(stored) if stored is not None else {}
    status = api.build_status_patch(status_model, stored_patch)
    base = _without_observed_time(stored_patch)
    merged = drift.merge(base, _without_observed_time(status))
    now = controller.ctx.clock()
    # Numbers that move on every poll of a busy pool (an ageing backlog) wait for the
    # refresh interval; anything else (conditions, replicas, generation) goes at once.
    waits = (
        _without_telemetry(merged) == _without_telemetry(base)
        and now - controller.status_written_at < controller.ctx.config.status_refresh_seconds
    )
    if merged != base and not waits:
        controller.status_written_at = now
        # An autoscaler poll skips planning when its inputs equal those of its own last plan;
        # a status written by anyone else (the reconcile) may differ from that plan, so the
        # next poll must plan again (the poll sets its signature back once its write is done).
        # Without this, a QueueConflict the reconcile wrote outlived the other pool's deletion.
        controller.scaling.poll_signature = None
        ref = kube.build_ref("WorkerPool", controller.namespace, controller.name)
        uid = controller.pool_facts.uid
        try:
            updated = await kube.apply_status(controller.ctx.kube_client(), ref, status)
        except kube.ApiError as exc:
            if not exc.is_not_found:
                raise
            # The pool is gone, and its DELETED event may never come (kopf sends none for a
            # pool deleted while its watch was gone): stop this loop now, unless a new pool of
            # that name was seen meanwhile (``OperatorContext.forget_pool_if_gone``).
            if controller.pool_facts.uid == uid:
                controller.ctx.forget_pool(controller)
            return True
        if drift.is_newer(updated, controller.body):
            controller.body = kube.strip_managed_fields(updated)
    for event in events:
        await post_event(controller, event.type, event.reason, event.message)
    return merged == base or not waits


def _export_conditions(
    controller: pool_mod.PoolController, status_model: api.WorkerPoolStatus
) -> None:
    """Every status we write is exported too: a held pool (its Secret gone, its spec invalid)
    never polls, and its series must not freeze at the last good values."""
    conditions = list(status_model.conditions or ())
    series = controller.bound_series()
    series.record_conditions((c.type, c.status, c.reason) for c in conditions)
    paused = api.find_condition(conditions, api.PAUSED)
    series.record_paused(paused is not None and paused.status == "True")
    reachable = api.find_condition(conditions, api.QUEUE_REACHABLE)
    if reachable is not None:
        series.record_queue_reachable(reachable.status == "True", reachable.reason)


async def apply_failure(controller: pool_mod.PoolController, error: str) -> None:
    """Report a reconcile that raised (``error``: its type and redacted message), as planned by
    ``plan.plan_failure``: Degraded=True ReconcileFailed, a Warning on the transition."""
    body = controller.body
    if body is None:
        return
    report = plan_mod.plan_failure(
        int(body["metadata"].get("generation", 1)),
        api.parse_status(body.get("status")),
        error,
        dt.datetime.now(dt.UTC),
    )
    await apply_status(controller, report.status, report.events)


async def post_event(
    controller: pool_mod.PoolController, event_type: str, reason: str, message: str
) -> None:
    if controller.body is None:
        return
    try:
        await kube.apply_event(
            controller.ctx.kube_client(),
            controller.body,
            event_type=event_type,
            reason=reason,
            message=queue.redact(message, controller.secret),
        )
    except kube.ApiError as exc:  # an Event is best-effort; never fail a reconcile for it
        if exc.retry_after is not None:
            # Not posted again after the wait the server asked for: nobody waits it.
            controller.ctx.metrics.observe_retry_after(exc.retry_after, "dropped")
        logger.info(
            "could not post Event %s for %s/%s: %s",
            reason,
            controller.namespace,
            controller.name,
            exc.reason,
        )


def _without_observed_time(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status minus ``queue.observedTime``, which changes on every poll by design."""
    result = dict(status)
    if isinstance(result.get("queue"), dict):
        result["queue"] = {k: v for k, v in result["queue"].items() if k != "observedTime"}
    return result


_TELEMETRY_AUTOSCALING_FIELDS = frozenset(
    {"signals", "reason", "rawDesired", "chosen", "clampedBy"}
)


def _without_telemetry(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status minus what a busy pool changes on every poll (``queue``, the signals and the
    explanation of a decision): what is left changes only when something happened."""
    result = {k: v for k, v in status.items() if k != "queue"}
    if isinstance(result.get("autoscaling"), dict):
        result["autoscaling"] = {
            k: v for k, v in result["autoscaling"].items() if k not in _TELEMETRY_AUTOSCALING_FIELDS
        }
    return result
