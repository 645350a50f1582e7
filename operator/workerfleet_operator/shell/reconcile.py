"""One reconcile of one WorkerPool: read its Secret, plan, apply the children, delete the
obsolete ones, report.

Called by the pool controller's loop (``shell.pool``) whenever it is woken or a resync is due.

- Children are written by server-side apply (field manager ``workerfleet``, forced: we own those
  fields) and only when what we would send changed or the Deployment drifted; an unchanged pool
  writes nothing, so resourceVersions stay stable after convergence. Every ``resync_seconds`` a
  converged pool reads its children (the Deployment is watched; the others are not) and writes
  only one that was deleted or edited. ``spec.replicas`` is sent by
  the main apply only in ``disabled`` mode and at creation; in ``builtin`` mode it is written by
  the autoscaler's own manager, never forced, so another owner (an HPA) is reported, not fought.
  The autoscaler's manager takes the initial count over at its first scale, or just before the
  next apply (:func:`_hand_over_replicas`), not in a second write at creation: creating a pool
  costs one write of its Deployment (and a Deployment deleted between two creation writes
  came back without its owner, from the second).
- No finalizers: garbage collection removes the children through their ownerReferences.
- Worker pods read the Redis URL only at start, so the Secret's ``<uid>/<resourceVersion>``
  (not a hash of its value) is a pod-template annotation: a new version rolls the pods.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workerfleet_operator import api
from workerfleet_operator import plan as plan_mod
from workerfleet_operator.shell import context, drift, kube, report, scaler

if TYPE_CHECKING:
    from workerfleet_operator.shell import pool as pool_mod

logger = logging.getLogger("workerfleet.operator")

Body = dict[str, Any]


class SpecProblemError(Exception):
    """Bad input the CRD cannot catch: reported as Ready=False with ``reason``; retried slowly."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(slots=True)
class AppliedState:
    """What the reconcile remembers of its own writes between rounds."""

    reconciled_generation: int | None = None
    # The generation the last reconcile ran on, whatever came of it (applied, refused, held,
    # raised): only a watch event of another generation wakes the reconcile at once. A refused
    # or failing one is retried with backoff, not on every event of the pool: our own status
    # writes (each poll's among them) would turn that into a storm.
    attempted_generation: int | None = None
    apply_problem: str | None = None
    # The last reconcile raised this (its type and redacted message); None once one got
    # through. Every status planned meanwhile keeps Degraded=True ReconcileFailed.
    reconcile_error: str | None = None
    # Kinds whose API is not served (no KEDA, no Prometheus Operator): Degraded, not an Event
    # per apply.
    missing_apis: tuple[str, ...] = ()
    # Children of ours by name that exist but are controlled by something else ("<Kind>
    # <name>"): never applied over (adopted) nor deleted, reported in status.
    not_owned: tuple[str, ...] = ()
    # The Deployment generation at which we last changed its pod template (see plan.py).
    rollout_generation: int | None = None
    applied_hash: str | None = None
    # The Deployment fields we own, as last applied (spec.replicas left out unless we own it):
    # any observed Deployment that is not a superset of this has drifted.
    drift_reference: drift.PackedJSON | None = None
    cleaned_generation: int | None = None
    next_full_apply: float = 0.0
    # The autoscaling mode of the last reconcile that got past its checks (None: none yet in
    # this process), and whether pods may still carry the builtin autoscaler's deletion costs.
    reconciled_mode: str | None = None
    deletion_costs_pending: bool = False


async def reconcile(controller: pool_mod.PoolController) -> None:
    """Level-triggered and idempotent: compare, apply what differs, report."""
    body = controller.body
    if body is None:
        return
    client = controller.ctx.kube_client()
    controller.applied.attempted_generation = controller.pool_facts.generation
    parsed = controller.parse()
    if isinstance(parsed, api.InvalidPool):
        secret = plan_mod.SecretCheck("ok")
    else:
        secret = await controller.read_secret(controller.valid_poll_spec())
    foreign_deployment = False
    if controller.deployment is None or controller.deployment_gone:
        fetched = await kube.fetch_object(
            client, kube.build_ref("Deployment", controller.namespace, controller.name)
        )
        controller.deployment_gone = False
        # Someone else's Deployment of this name is neither adopted, applied over nor
        # scaled: the pool reports it and runs nothing until it is renamed or deleted.
        foreign_deployment = fetched is not None and not controller.is_ours(fetched)
        controller.keep_deployment(None if foreign_deployment else fetched)
    the_plan = plan_mod.plan(parsed, controller.observed(secret, controller.find_queue_sharing()))
    if the_plan.hold:
        # Bad input: nothing applied, nothing deleted; explain, and retry a Secret slowly.
        controller.spec_problem = SpecProblemError(
            secret.state if secret.state != "ok" else api.Reason.INVALID_SPEC,
            the_plan.problem or "",
        )
        controller.applied.reconcile_error = None
        await report.apply_status(controller, the_plan.status, the_plan.events)
        if controller.problem_logged != the_plan.problem:
            controller.problem_logged = the_plan.problem
            logger.warning(
                "WorkerPool %s/%s: %s", controller.namespace, controller.name, the_plan.problem
            )
        return
    controller.spec_problem = None
    controller.problem_logged = None
    assert isinstance(parsed, api.Pool)
    # Before the children: the Deployment's fixed count (disabled) or the ScaledObject (keda)
    # hands the replicas to their next owner, whose first scale-in must not be steered by
    # what the pods were doing at the last builtin one.
    await _leave_builtin_mode(controller, parsed)
    await _apply_children(controller, parsed, the_plan, foreign_deployment=foreign_deployment)
    controller.applied.reconcile_error = None
    if controller.applied.apply_problem is None:
        controller.applied.reconciled_generation = parsed.generation
    if controller.defer_status_to_poll():
        return  # the poll due now plans this status with the queue's numbers: one write
    # The status from what the writes returned (a plan on the fresh Deployment state).
    final = plan_mod.plan(parsed, controller.observed(secret, controller.find_queue_sharing()))
    await report.apply_status(controller, final.status, final.events)


async def _apply_children(
    controller: pool_mod.PoolController,
    pool: api.Pool,
    the_plan: plan_mod.Plan,
    *,
    foreign_deployment: bool = False,
) -> None:
    client = controller.ctx.kube_client()
    deployment = controller.deployment
    name_taken = f"Deployment {controller.name}"
    others = tuple(n for n in controller.applied.not_owned if n != name_taken)
    if foreign_deployment:
        controller.applied.not_owned = (name_taken, *others)
        if await _apply_optional_children(controller, pool, the_plan.children[1:]):
            await _delete_obsolete(controller, pool, the_plan.obsolete)
        return
    controller.applied.not_owned = others
    creating = deployment is None
    children = list(the_plan.children)
    resync = controller.ctx.clock() >= controller.applied.next_full_apply
    main = children[0]
    # The children besides the Deployment and the ServiceAccount (applied before it).
    rest = [c for c in children[1:] if c["kind"] != "ServiceAccount"]
    reference = drift.build_drift_reference(main, pool)
    kept = drift.PackedJSON(reference)  # as kept between rounds; its bytes are hashed too
    # Hashed without the initial spec.replicas an autoscaled pool's creation apply sends (the
    # reference leaves it out): the next reconcile plans no count, and must not take that
    # for a change to apply (two more writes per new pool, with the hand-over).
    other_children = json.dumps(children[1:], sort_keys=True, default=str)
    desired_hash = hashlib.sha256(kept.packed + other_children.encode()).hexdigest()
    if resync and not creating and desired_hash == controller.applied.applied_hash:
        # Nothing to send: the watch keeps the Deployment current, and a read (not a write)
        # confirms it, should the watch have missed its deletion. A converged fleet's resyncs
        # cost one GET per pool and child, and write nothing.
        fresh = await kube.fetch_object(
            client, kube.build_ref("Deployment", controller.namespace, controller.name)
        )
        if fresh is None or not controller.is_ours(fresh):
            # Gone, or someone else's now: the next round reads it again and plans from what
            # it finds (a new Deployment starts at the pool's minimum, not at the API's 1).
            controller.deployment_gone = True
            controller.dirty = True
            return
        if drift.is_newer(fresh, deployment):
            controller.keep_deployment(fresh)
            deployment = controller.deployment
    drifted = deployment is not None and not drift.is_subset(reference, deployment)
    # Drift is someone else's edit: what we would send is what we last sent, and the live
    # object differs from it. A new spec (or Secret version) differs too, but is no drift.
    announce_drift = drifted and kept == controller.applied.drift_reference
    if creating or drifted or desired_hash != controller.applied.applied_hash:
        if not await _apply_worker_identity(controller, children[1:]):
            return
        try:
            if deployment is not None:
                deployment = await _hand_over_replicas(controller, main, deployment)
            applied = await kube.apply_object(client, main)
        except kube.ApiError as exc:
            if _refused(controller, main, exc):
                return
            raise
        controller.applied.drift_reference = kept
        # Compared with the Deployment as it was BEFORE this apply, not controller.deployment:
        # the watch event of our own write can arrive while the apply is awaited (a loaded API
        # server), and would hide the template change, leaving the rollout generation unknown
        # and every later scale step looking like a rollout until the next resync.
        controller.applied.rollout_generation = drift.track_rollout_generation(
            controller.applied.rollout_generation, deployment, applied
        )
        if drift.is_newer(applied, controller.deployment):
            controller.keep_deployment(applied)
        # The other children only when they may have changed (a Deployment drift alone
        # re-applies the Deployment alone); at a resync, those that differ.
        every_child = desired_hash != controller.applied.applied_hash or creating
        if (every_child or resync) and not await _apply_optional_children(
            controller, pool, rest, only_differing=not every_child
        ):
            return
        controller.applied.apply_problem = None
        controller.applied.applied_hash = desired_hash
        _schedule_resync(controller)
        if announce_drift:
            await report.post_event(
                controller,
                "Normal",
                plan_mod.EventReason.DRIFT_CORRECTED,
                f"Deployment {controller.name} restored to the pool's spec",
            )
    else:
        controller.applied.drift_reference = kept
        if resync:
            # The children nobody watches: read, and applied again only if deleted or edited.
            if not await _apply_worker_identity(controller, children[1:], only_differing=True):
                return
            if not await _apply_optional_children(controller, pool, rest, only_differing=True):
                return
            _schedule_resync(controller)
    await _delete_obsolete(controller, pool, the_plan.obsolete)


async def _leave_builtin_mode(controller: pool_mod.PoolController, pool: api.Pool) -> None:
    """A pool that left ``builtin`` mode loses the deletion costs its autoscaler put on pods.

    Left when this process reconciled it in ``builtin`` mode last, or (after a restart) when
    the stored status still names ``builtin``; a removal that raised is tried again at the
    next reconcile. Called before the children are applied: the apply hands the replicas to
    their next owner. A pool that stays in one mode lists no pods.
    """
    applied = controller.applied
    mode = pool.spec.autoscaling.mode
    applied.deletion_costs_pending = may_carry_builtin_costs(controller, mode)
    applied.reconciled_mode = mode
    if applied.deletion_costs_pending:
        await scaler.remove_deletion_costs(controller)
        applied.deletion_costs_pending = False


def may_carry_builtin_costs(controller: pool_mod.PoolController, mode: str) -> bool:
    """Whether the pods of a pool now in ``mode`` may still carry the builtin autoscaler's
    deletion costs: it left builtin mode (as this process reconciled it last or, after a
    restart, as its stored status says) and they were not removed since."""
    if mode == "builtin":
        return False
    applied = controller.applied
    if applied.deletion_costs_pending:
        return True
    before = applied.reconciled_mode
    if before is None:
        stored = api.parse_status((controller.body or {}).get("status"))
        before = stored.autoscaling.mode if stored and stored.autoscaling else None
    return before == "builtin"


def _schedule_resync(controller: pool_mod.PoolController) -> None:
    controller.applied.next_full_apply = controller.ctx.clock() + context.jittered_delay(
        controller.ctx.config.resync_seconds, controller.ctx.rng
    )


def _is_admission_denial(exc: kube.ApiError) -> bool:
    """A 403 from an admission webhook that denied the object (a policy engine refusing the
    image, the labels...): the spec must change, as for a 422. A 403 of RBAC is no denial."""
    message = exc.message.lower()
    return exc.status == 403 and "admission webhook" in message and "denied the request" in message


CRD_TERMINATING = "while custom resource definition is terminating"


def _is_crd_terminating(exc: kube.ApiError) -> bool:
    """The API server's refusal to create an object whose CRD is being deleted (a 403 that
    says "create not allowed while custom resource definition is terminating"): its kind is on
    its way out of the API, as good as not installed. A 403 of RBAC ("User ... cannot create
    resource ...") is none."""
    return exc.status == 403 and CRD_TERMINATING in exc.message


def _refused(
    controller: pool_mod.PoolController, child: Mapping[str, Any], exc: kube.ApiError
) -> bool:
    """A child refused as written (400/422: validation, admission; a webhook's 403 denial):
    the spec must change. Recorded for the status (ApplyRejected); True when ``exc`` is such
    a refusal."""
    if exc.status not in (400, 422) and not _is_admission_denial(exc):
        return False
    kind, name = child["kind"], child["metadata"]["name"]
    controller.applied.apply_problem = f"{kind} {name} refused: {exc.message}"
    return True


async def _apply_worker_identity(
    controller: pool_mod.PoolController,
    children: Sequence[Mapping[str, Any]],
    *,
    only_differing: bool = False,
) -> bool:
    """Apply the pool's own ServiceAccount (SQS pools) BEFORE the Deployment that names it.

    A ServiceAccount of that name that this pool does not own is never used: its pods would run
    under someone else's identity (and IAM role), which the spec must never allow. The pool
    then reports ApplyRejected and nothing is applied (False). True otherwise. With
    ``only_differing`` (a resync) one that exists as we would write it is not written again.
    """
    client = controller.ctx.kube_client()
    for child in children:
        if child["kind"] != "ServiceAccount":
            continue
        name = str(child["metadata"]["name"])
        existing = await kube.fetch_object(client, kube.build_ref_of(child))
        if existing is not None and not controller.is_ours(existing):
            controller.applied.apply_problem = (
                f"ServiceAccount {name} exists and is not this pool's: its workers would run "
                "under another identity (delete that ServiceAccount or name the pool otherwise)"
            )
            return False
        if only_differing and existing is not None and drift.is_subset(child, existing):
            continue
        try:
            await kube.apply_object(client, dict(child))
        except kube.ApiError as exc:
            if _refused(controller, child, exc):
                return False
            raise
    return True


async def _apply_optional_children(
    controller: pool_mod.PoolController,
    pool: api.Pool,
    children: Sequence[Mapping[str, Any]],
    *,
    only_differing: bool = False,
) -> bool:
    """Apply the children besides the Deployment; False when one was refused (422).

    A child whose kind is not served, or whose CRD is being deleted, is skipped
    (``missing_apis``); one of that name that
    someone else controls is left alone, never adopted (``not_owned``). With
    ``only_differing`` (a resync) one that exists as we would write it is not written again.
    """
    client = controller.ctx.kube_client()
    missing: list[str] = []
    taken: list[str] = [
        n for n in controller.applied.not_owned if n == f"Deployment {controller.name}"
    ]
    for child in children:
        kind, name = str(child["kind"]), str(child["metadata"]["name"])
        try:
            existing = await kube.fetch_object(client, kube.build_ref_of(child))
            if existing is not None and not controller.is_ours(existing):
                taken.append(f"{kind} {name}")
                continue
            if only_differing and existing is not None and drift.is_subset(child, existing):
                continue
            await kube.apply_object(client, dict(child))
        except kube.ApiError as exc:
            if exc.is_not_found or _is_crd_terminating(exc):
                # Its CRD is not installed, or being deleted: go on; applied again at the next
                # resync, which finds it served once the CRD is (re)installed.
                missing.append(kind)
                continue
            if _refused(controller, child, exc):
                return False
            raise
    controller.applied.missing_apis = tuple(dict.fromkeys(missing))
    controller.applied.not_owned = tuple(taken)
    return True


async def _hand_over_replicas(
    controller: pool_mod.PoolController, main: Body, deployment: Body
) -> Body:
    """Before an apply that stops sending ``spec.replicas`` (leaving ``disabled``, or the first
    apply after the creation's), give the current count to the autoscaler's manager: a field
    its last manager releases is reset to the API default (1), which would drop a pool of 4 to
    1 at once."""
    replicas = (deployment.get("spec") or {}).get("replicas")
    owners = kube.owners_of_replicas(deployment)
    releasing = "replicas" not in (main.get("spec") or {}) and kube.FIELD_MANAGER in owners
    if not releasing or replicas is None or kube.REPLICAS_FIELD_MANAGER in owners:
        return deployment  # nothing released, or the autoscaler co-owns it already
    handed = await kube.apply_replicas(
        controller.ctx.kube_client(), controller.namespace, controller.name, int(replicas)
    )
    logger.info(
        "%s/%s: spec.replicas (%s) handed to the autoscaler's field manager",
        controller.namespace,
        controller.name,
        replicas,
    )
    if drift.is_newer(handed, controller.deployment):
        controller.keep_deployment(handed)
    return handed


async def _delete_obsolete(
    controller: pool_mod.PoolController, pool: api.Pool, obsolete: tuple[plan_mod.ChildRef, ...]
) -> None:
    # Deleting is only needed when the spec changed since a reconcile of ours (or while we
    # were down); a converged pool does not cost five DELETEs per resync, nor eight GETs per
    # operator start. After a start, the stored status tells whether this generation was
    # reconciled, unless a held plan wrote it (bad input: it observes a generation it applied
    # nothing of): a keda pool switched to builtin while its Secret was missing kept its
    # ScaledObject for good once the operator restarted before the Secret was fixed.
    stored = api.parse_status((controller.body or {}).get("status"))
    if (
        pool.generation == controller.applied.cleaned_generation
        # never reconciled: nothing of ours can exist yet
        or stored is None
        or stored.observed_generation is None
        or (
            controller.applied.cleaned_generation is None
            and stored.observed_generation == pool.generation
            and not plan_mod.is_held(stored)
        )
    ):
        controller.applied.cleaned_generation = pool.generation
        return
    client = controller.ctx.kube_client()
    for ref in obsolete:
        kind = kube.KINDS.get(ref.kind)
        plural = kind[1] if kind else ref.kind.lower() + "s"
        where = kube.ObjectRef(ref.api_version, plural, ref.namespace, ref.name)
        try:
            existing = await kube.fetch_object(client, where)
            if existing is None or not controller.is_ours(existing):
                continue  # absent, or someone else's of the same name: never ours to delete
            # Only the object just checked: one recreated since (another uid) answers 409.
            uid = str(existing["metadata"]["uid"])
            await kube.delete_object(client, where, uid=uid)
        except kube.ApiError as exc:
            if exc.status not in (404, 405, 409):
                raise
    controller.applied.cleaned_generation = pool.generation
