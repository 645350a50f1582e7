"""The operator's control loops: kopf watches WorkerPools and their Deployments; one loop per pool.

``shell.main`` (and the tests) call :func:`register` on a fresh ``kopf.OperatorRegistry``.

Design (controller-runtime style, on kopf's watches):

- kopf's ``on.event`` handlers only *observe*: a WorkerPool event stores the latest body in the
  pool's :class:`PoolController` and wakes it; an owned Deployment event (edited, deleted, its
  status moved) does the same for its owner. Events never write, so they cannot race.
- Each pool has ONE asyncio task, the only writer for that pool. It runs a level-triggered,
  idempotent reconcile whenever it is woken, on a failure retry (capped exponential backoff, so a
  bad pool never storms the API server), and every ``resync_seconds``; and, in between, the
  autoscaler poll every ``pollingIntervalSeconds``. Serializing both in one task means the
  reconcile and the scaler never write the same Deployment concurrently.
- Children are written by server-side apply (field manager ``workerfleet``, forced: we own those
  fields) and only when what we would send changed or the Deployment drifted; an unchanged pool
  writes nothing, so resourceVersions stay stable after convergence. ``spec.replicas`` is sent by
  the main apply only in ``disabled`` mode and at creation; in ``builtin`` mode it is written by
  the autoscaler's own manager, never forced, so another owner (an HPA) is reported, not fought.
- No finalizers: kopf's timers/daemons would add one, and a pool then hangs Terminating whenever
  the operator is not running (e.g. during ``helm uninstall``). Garbage collection removes the
  children through their ownerReferences; the loop stops on the DELETED event.
- kopf's own state: ``on.event`` handlers keep no progress or diff-base annotations at all, and
  posting of kopf's own Events is off (we post ours, on transitions only). The settings still
  name ``workerfleet.io`` storages so nothing of kopf's ever lands under kopf's default keys.
- The Redis URL is read from the referenced Secret into memory only (cached per Secret
  resourceVersion, re-read every ``secret_cache_seconds``); every error text that could carry it
  goes through ``queue.redact`` before it reaches a log, a status or an Event.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from workerfleet_operator import api, autoscaling
from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import interim, kube, metrics, queue

GROUP = "workerfleet.io"
VERSION = "v1alpha1"
PLURAL = "workerpools"

logger = logging.getLogger("workerfleet.operator")

Body = dict[str, Any]
PoolKey = tuple[str, str]


@dataclass
class OperatorContext:
    """State shared by every handler and pool loop of one operator run."""

    config: config_module.OperatorConfig
    metrics: metrics.OperatorMetrics
    queues: queue.QueueReader
    clock: Callable[[], float] = time.monotonic
    login: kopf.ConnectionInfo | None = None
    client: kube.KubeClient | None = None
    pools: dict[PoolKey, PoolController] = field(default_factory=dict)

    def fetch_client(self) -> kube.KubeClient:
        if self.client is None:
            if self.login is None:
                raise RuntimeError("the operator has not logged in yet")
            self.client = kube.KubeClient(self.login)
        return self.client


def build_context(
    cfg: config_module.OperatorConfig, registry: metrics.OperatorMetrics | None = None
) -> OperatorContext:
    return OperatorContext(
        config=cfg,
        metrics=registry if registry is not None else metrics.OperatorMetrics(),
        queues=queue.QueueReader(socket_timeout=cfg.redis_timeout_seconds),
    )


def build_settings(cfg: config_module.OperatorConfig) -> kopf.OperatorSettings:
    """kopf's settings for workerfleet (see the module docstring for the why of each)."""
    settings = kopf.OperatorSettings()
    settings.posting.enabled = False
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.watching.server_timeout = cfg.watch_server_timeout_seconds
    settings.watching.client_timeout = cfg.watch_client_timeout_seconds
    settings.watching.connect_timeout = 10
    settings.peering.standalone = cfg.peering is None
    if cfg.peering is not None:
        settings.peering.name = cfg.peering
    # The CRD is installed before the operator; no need to watch CRDs or list namespaces.
    settings.scanning.disabled = True
    settings.networking.request_timeout = 60
    return settings


# ------------------------------------------------------------------------------------ conditions

CONDITION_TYPES = ("Ready", "Progressing", "Degraded", "QueueReachable", "ScalingLimited")


def _now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def build_conditions(
    previous: list[Mapping[str, Any]], wanted: Mapping[str, tuple[str, str, str]], generation: int
) -> tuple[list[Body], list[tuple[str, str, str, str]]]:
    """Merge wanted (type -> status, reason, message) into previous; keep transition times.

    Returns the new list and the transitions (type, status, reason, message).
    """
    old = {str(c.get("type")): c for c in previous}
    result: list[Body] = []
    transitions: list[tuple[str, str, str, str]] = []
    for ctype in CONDITION_TYPES:
        if ctype not in wanted:
            if ctype in old:
                result.append(dict(old[ctype]))
            continue
        status, reason, message = wanted[ctype]
        prior = old.get(ctype)
        changed = prior is None or prior.get("status") != status
        if prior is None or changed or prior.get("reason") != reason:
            transitions.append((ctype, status, reason, message))
        result.append(
            {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": _now_rfc3339()
                if changed
                else prior.get("lastTransitionTime"),
            }
        )
    return result, transitions


# ------------------------------------------------------------------------------------ pool loop


class SpecProblemError(Exception):
    """Bad input the CRD cannot catch: reported as Ready=False with ``reason``; retried slowly."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class PoolController:
    """The one writer for one WorkerPool: reconcile + autoscaler poll in a single task."""

    ctx: OperatorContext
    namespace: str
    name: str
    body: Body | None = None
    deployment: Body | None = None
    deployment_gone: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dirty: bool = True
    failures: int = 0
    next_reconcile: float = 0.0
    next_poll: float = 0.0
    reconciled_generation: int | None = None
    applied_hash: str | None = None
    applied_deployment_generation: int | None = None
    secret: kube.SecretValue | None = None
    secret_key: queue.ClientKey | None = None
    secret_read_at: float = -1e9
    scaler_state: autoscaling.ScalerState = field(default_factory=autoscaling.ScalerState)
    last_observation: autoscaling.Observation | None = None
    last_decision: autoscaling.Decision | None = None
    replicas_blocked_by: tuple[str, ...] = ()
    last_dry_run_desired: int | None = None
    last_scale_time: str | None = None
    spec_problem: SpecProblemError | None = None
    task: asyncio.Task[None] | None = None
    stopped: bool = False

    # ------------------------------------------------------------------ observation (from kopf)

    @property
    def labels(self) -> tuple[str, str, str]:
        q = ((self.body or {}).get("spec") or {}).get("queue") or {}
        return (self.namespace, self.name, str(q.get("name", "")))

    def observe(self, body: Body) -> None:
        generation = body.get("metadata", {}).get("generation")
        if self.body is None or generation != self.reconciled_generation:
            self.dirty = True
        if self.body is not None and self.body.get("metadata", {}).get("labels") != body.get(
            "metadata", {}
        ).get("labels"):
            self.dirty = True
        if _newer(body, self.body):
            self.body = body  # never step back to a stale body (our own status writes are newer)
        self.wake.set()

    def observe_deployment(self, body: Body, deleted: bool) -> None:
        if deleted:
            self.deployment = None
            self.deployment_gone = True
            self.dirty = True
        else:
            if _newer(body, self.deployment):
                self.deployment = body
            generation = body.get("metadata", {}).get("generation")
            if (
                self.applied_deployment_generation is not None
                and generation != self.applied_deployment_generation
            ):
                self.dirty = True  # someone else changed the spec: check for drift
        self.wake.set()

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(
                self.run(), name=f"workerpool/{self.namespace}/{self.name}"
            )

    async def stop(self) -> None:
        self.stopped = True
        self.wake.set()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        self.ctx.metrics.forget_pool(self.labels)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        cfg = self.ctx.config
        while not self.stopped:
            now = self.ctx.clock()
            if self.body is not None and (self.dirty or now >= self.next_reconcile):
                self.dirty = False
                ok = await self._reconcile_once()
                if ok:
                    self.failures = 0
                    self.next_reconcile = self.ctx.clock() + cfg.resync_seconds
                else:
                    self.failures += 1
                    delay = min(
                        cfg.retry_max_seconds, cfg.retry_base_seconds * 2 ** (self.failures - 1)
                    )
                    self.next_reconcile = self.ctx.clock() + delay
            now = self.ctx.clock()
            if (
                self.body is not None
                and self.spec_problem is None
                and self.secret is not None
                and now >= self.next_poll
            ):
                policy = self._policy()
                self.next_poll = now + (policy.polling_interval_seconds if policy else 5.0)
                try:
                    await self._poll_queue(policy)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.warning(
                        "autoscaler poll failed for %s/%s: %s",
                        self.namespace,
                        self.name,
                        queue.redact(str(exc), self.secret),
                    )
            deadline = min(
                self.next_reconcile,
                self.next_poll if self.secret is not None else self.next_reconcile,
            )
            timeout = max(0.0, deadline - self.ctx.clock())
            if self.dirty:
                continue
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)

    async def _reconcile_once(self) -> bool:
        started = time.perf_counter()
        result = "success"
        try:
            await self.reconcile()
            if self.spec_problem is not None:
                result = "invalid"
                return False
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            result = "error"
            self.ctx.metrics.reconcile_errors.inc()
            text = queue.redact(str(exc), self.secret)
            if isinstance(exc, kube.ApiError) and exc.status in (409, 422, 429, 500, 503):
                logger.info(
                    "reconcile of %s/%s will be retried: %s", self.namespace, self.name, text
                )
            else:
                logger.error(
                    "reconcile of %s/%s failed: %s: %s",
                    self.namespace,
                    self.name,
                    type(exc).__name__,
                    text,
                )
            with contextlib.suppress(Exception):
                await self._write_status(
                    {"Degraded": ("True", "ReconcileFailed", f"{type(exc).__name__}: {text}"[:512])}
                )
            return False
        finally:
            self.ctx.metrics.reconcile_total.labels(result).inc()
            self.ctx.metrics.reconcile_duration.observe(time.perf_counter() - started)

    # ------------------------------------------------------------------ reconcile

    def _spec(self) -> Mapping[str, Any]:
        return (self.body or {}).get("spec") or {}

    def _pool(self) -> api.Pool:
        parsed = api.parse_pool(self.body or {})
        if isinstance(parsed, api.InvalidPool):
            raise SpecProblemError("InvalidSpec", parsed.message)
        return parsed

    def _policy(self) -> autoscaling.ScalingPolicy | None:
        try:
            return api.build_scaling_policy(self._pool().spec)
        except (SpecProblemError, ValueError):
            return None

    async def _read_secret(self) -> kube.SecretValue:
        ref = self._pool().spec.queue.redis.url_secret_ref
        secret_name, secret_key = ref.name, ref.key
        now = self.ctx.clock()
        key = self.secret_key
        fresh = now - self.secret_read_at < self.ctx.config.secret_cache_seconds
        if (
            self.secret is not None
            and key is not None
            and (key.secret, key.key) == (secret_name, secret_key)
            and fresh
        ):
            return self.secret
        client = self.ctx.fetch_client()
        try:
            value = await kube.fetch_secret_value(client, self.namespace, secret_name, secret_key)
        except kube.SecretNotFoundError as exc:
            self.secret = None
            reason = "SecretKeyNotFound" if exc.key_missing else "SecretNotFound"
            raise SpecProblemError(reason, str(exc)) from None
        try:
            queue.check_redis_url(value.value)
        except queue.InvalidRedisUrlError as exc:
            self.secret = None
            raise SpecProblemError(
                "InvalidRedisURL", f'key "{secret_key}" of Secret "{secret_name}": {exc}'
            ) from None
        self.secret = value
        self.secret_key = queue.ClientKey(
            self.namespace, secret_name, secret_key, value.resource_version
        )
        self.secret_read_at = now
        return value

    async def reconcile(self) -> None:
        body = self.body
        if body is None:
            return
        client = self.ctx.fetch_client()
        generation = int(body["metadata"].get("generation", 1))
        try:
            pool = self._pool()
            try:
                policy = api.build_scaling_policy(pool.spec)
            except ValueError as exc:
                raise SpecProblemError("InvalidSpec", str(exc)) from None
            await self._read_secret()
        except SpecProblemError as problem:
            first = self.spec_problem is None or self.spec_problem.reason != problem.reason
            self.spec_problem = problem
            await self._write_status(
                {
                    "Ready": ("False", problem.reason, problem.message),
                    "Degraded": ("True", problem.reason, problem.message),
                },
                observed_generation=generation,
            )
            if first:
                logger.warning(
                    "WorkerPool %s/%s: %s: %s",
                    self.namespace,
                    self.name,
                    problem.reason,
                    problem.message,
                )
            return
        self.spec_problem = None

        mode = policy.mode
        deployment = self.deployment
        if deployment is None or self.deployment_gone:
            deployment = await kube.fetch_object(
                client, kube.build_ref("Deployment", self.namespace, self.name)
            )
            self.deployment_gone = False
        creating = deployment is None
        replicas: int | None = None
        if mode == "disabled":
            replicas = int(
                pool.spec.autoscaling.replicas
                if pool.spec.autoscaling.replicas is not None
                else policy.min_replicas
            )
        elif mode == "builtin" and creating:
            replicas = max(policy.min_replicas, 0)
        desired = interim.build_deployment(body, replicas)
        desired_hash = hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()
        drifted = deployment is not None and not _is_subset(desired, deployment)
        if creating or drifted or desired_hash != self.applied_hash:
            applied = await kube.apply_object(client, desired)
            self.applied_hash = desired_hash
            self.applied_deployment_generation = int(applied["metadata"].get("generation", 1))
            if _newer(applied, self.deployment) or self.deployment is None:
                self.deployment = applied
            deployment = applied
            if creating and mode == "builtin":
                # Hand the initial count to the autoscaler's manager (same value: shared ownership)
                with contextlib.suppress(kube.ApiError):
                    self.deployment = await kube.apply_replicas(
                        client, self.namespace, self.name, replicas or 0
                    )
                    deployment = self.deployment
            if drifted:
                await self._event(
                    "Normal",
                    "DriftCorrected",
                    f"Deployment {self.name} restored to the pool's spec",
                )
        else:
            self.applied_deployment_generation = int(deployment["metadata"].get("generation", 1))  # type: ignore[index]
        self.reconciled_generation = generation
        await self._write_status(
            self._rollout_conditions(deployment), observed_generation=generation
        )

    def _rollout_conditions(
        self, deployment: Mapping[str, Any] | None
    ) -> dict[str, tuple[str, str, str]]:
        if deployment is None:
            return {"Ready": ("False", "DeploymentMissing", "the Deployment does not exist yet")}
        spec_replicas = int(deployment.get("spec", {}).get("replicas", 1))
        status = deployment.get("status") or {}
        gen = int(deployment.get("metadata", {}).get("generation", 1))
        observed = int(status.get("observedGeneration", 0))
        updated = int(status.get("updatedReplicas", 0))
        available = int(status.get("availableReplicas", 0))
        if observed < gen or updated < spec_replicas:
            rolling = ("True", "RollingOut", f"{updated}/{spec_replicas} replicas updated")
            return {
                "Ready": (
                    "False",
                    "RolloutInProgress",
                    f"{updated}/{spec_replicas} replicas updated",
                ),
                "Progressing": rolling,
                "Degraded": ("False", "AsExpected", "no errors"),
            }
        if available < spec_replicas:
            return {
                "Ready": (
                    "False",
                    "ReplicasUnavailable",
                    f"{available}/{spec_replicas} replicas available",
                ),
                "Progressing": (
                    "True",
                    "WaitingForReplicas",
                    f"{available}/{spec_replicas} replicas available",
                ),
                "Degraded": ("False", "AsExpected", "no errors"),
            }
        return {
            "Ready": ("True", "Available", f"{available}/{spec_replicas} replicas available"),
            "Progressing": ("False", "RolloutComplete", "the Deployment is up to date"),
            "Degraded": ("False", "AsExpected", "no errors"),
        }

    # ------------------------------------------------------------------ status and events

    async def _write_status(
        self,
        wanted: Mapping[str, tuple[str, str, str]],
        *,
        observed_generation: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        body = self.body
        if body is None:
            return
        current = body.get("status") or {}
        generation = int(body["metadata"].get("generation", 1))
        conditions, transitions = build_conditions(
            current.get("conditions") or [], wanted, generation
        )
        status: Body = {"conditions": conditions}
        if observed_generation is not None:
            status["observedGeneration"] = observed_generation
        deployment = self.deployment
        if deployment is not None:
            dstatus = deployment.get("status") or {}
            status["replicas"] = int(deployment.get("spec", {}).get("replicas", 0))
            status["readyReplicas"] = int(dstatus.get("readyReplicas", 0))
        if self.last_decision is not None:
            status["desiredReplicas"] = self.last_decision.desired
        elif "replicas" in status:
            status["desiredReplicas"] = status["replicas"]
        if extra:
            status.update(extra)
        # Normalize through the API's status model: only schema fields, in the stored shape, so
        # that "unchanged" compares equal to what the API server kept (it prunes unknown fields).
        status = api.build_status_patch(api.WorkerPoolStatus.model_validate(status))
        stored = api.parse_status(current)
        stored_patch = api.build_status_patch(stored) if stored is not None else {}
        if _merge(stored_patch, status) == stored_patch:
            return  # the merge patch would change nothing: keep the resourceVersion
        ref = kube.build_ref("WorkerPool", self.namespace, self.name)
        try:
            updated = await kube.apply_status(self.ctx.fetch_client(), ref, status)
        except kube.ApiError as exc:
            if exc.is_not_found:
                return  # deleted meanwhile; the DELETED event stops this loop
            raise
        if _newer(updated, self.body):
            self.body = updated
        for ctype, cstatus, reason, message in transitions:
            if ctype in ("Ready", "QueueReachable") and cstatus == "False":
                await self._event("Warning", reason, message)
            elif ctype == "Ready" and cstatus == "True":
                await self._event("Normal", "Ready", message)
            elif ctype == "ScalingLimited" and cstatus == "True":
                await self._event("Warning", reason, message)

    async def _event(self, event_type: str, reason: str, message: str) -> None:
        if self.body is None:
            return
        try:
            await kube.apply_event(
                self.ctx.fetch_client(),
                self.body,
                event_type=event_type,
                reason=reason,
                message=queue.redact(message, self.secret),
            )
        except kube.ApiError as exc:  # an Event is best-effort; never fail a reconcile for it
            logger.info(
                "could not post Event %s for %s/%s: %s",
                reason,
                self.namespace,
                self.name,
                exc.reason,
            )

    # ------------------------------------------------------------------ autoscaler

    async def _poll_queue(self, policy: autoscaling.ScalingPolicy | None) -> None:
        if policy is None or self.secret is None or self.secret_key is None or self.body is None:
            return
        queue_name = self._pool().spec.queue.name
        observation = await self.ctx.queues.fetch_observation(
            self.secret_key, self.secret, queue_name, timeout=self.ctx.config.redis_timeout_seconds
        )
        self.last_observation = observation
        deployment = self.deployment
        current = int((deployment or {}).get("spec", {}).get("replicas", 0)) if deployment else 0
        decision = autoscaling.decide(
            policy, observation, current, self.scaler_state, self.ctx.clock()
        )
        self.scaler_state = decision.state
        self.last_decision = decision
        explanation = autoscaling.build_explanation(decision)
        wanted: dict[str, tuple[str, str, str]] = {}
        if observation.stats is None:
            wanted["QueueReachable"] = (
                "False",
                "QueueUnreachable",
                observation.error or "stats read failed",
            )
        else:
            wanted["QueueReachable"] = ("True", "StatsRead", f"queue {queue_name} read")
        if policy.mode == "builtin" and deployment is not None and decision.desired != current:
            if policy.dry_run:
                if self.last_dry_run_desired != decision.desired:
                    self.last_dry_run_desired = decision.desired
                    await self._event(
                        "Normal",
                        "DryRunScale",
                        f"would scale {current}→{decision.desired}: {explanation}",
                    )
            else:
                await self._scale(deployment, current, decision, explanation, observation)
        if self.replicas_blocked_by:
            owners = ", ".join(self.replicas_blocked_by)
            wanted["ScalingLimited"] = (
                "True",
                "ReplicasOwnedElsewhere",
                f"spec.replicas is owned by {owners}",
            )
        elif decision.scaling_limited:
            wanted["ScalingLimited"] = (
                "True",
                "MaxReplicas",
                "pinned at maxReplicas while the backlog grows",
            )
        elif policy.mode == "builtin":
            wanted["ScalingLimited"] = ("False", "WithinLimits", "the autoscaler is not limited")
        # Rates live in status.queue; the stored reason leaves them out so that a restarted
        # operator (no rate history yet) does not rewrite an unchanged pool's status.
        steady = autoscaling.build_explanation(
            dataclasses.replace(decision, rates=autoscaling.Rates())
        )
        extra: Body = {
            "autoscaling": _build_autoscaling_status(policy, decision, steady, self.last_scale_time)
        }
        if observation.stats is not None:
            extra["queue"] = _build_queue_status(observation.stats, decision)
        await self._write_status(wanted, extra=extra)
        self._export(policy, observation, decision)

    async def _scale(
        self,
        deployment: Mapping[str, Any],
        current: int,
        decision: autoscaling.Decision,
        explanation: str,
        observation: autoscaling.Observation,
    ) -> None:
        client = self.ctx.fetch_client()
        foreign = tuple(kube.build_foreign_replicas_owners(deployment))
        if foreign:
            self._block_replicas(foreign)
            return
        if decision.desired < current:
            await self._mark_deletion_costs(deployment, observation)
        try:
            # Forced only against our own managers (the creation apply co-owns the field).
            self.deployment = await kube.apply_replicas(
                client, self.namespace, self.name, decision.desired, force=True
            )
        except kube.ApiError as exc:
            if not exc.is_conflict:
                raise
            self._block_replicas(("another field manager",))
            return
        self.replicas_blocked_by = ()
        self.last_scale_time = _now_rfc3339()
        verb = "ScaledUp" if decision.desired > current else "ScaledDown"
        await self._event("Normal", verb, f"{verb} {current}→{decision.desired}: {explanation}")

    def _block_replicas(self, owners: tuple[str, ...]) -> None:
        if owners != self.replicas_blocked_by:
            logger.warning(
                "%s/%s: spec.replicas is owned by %s; the autoscaler holds instead of fighting",
                self.namespace,
                self.name,
                ", ".join(owners),
            )
        self.replicas_blocked_by = owners

    async def _mark_deletion_costs(
        self, deployment: Mapping[str, Any], observation: autoscaling.Observation
    ) -> None:
        selector = deployment.get("spec", {}).get("selector", {}).get("matchLabels") or {}
        if not selector:
            return
        client = self.ctx.fetch_client()
        label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        pods = await kube.fetch_objects(
            client, kube.build_ref("Pod", self.namespace), label_selector=label_selector
        )
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        names = [p["metadata"]["name"] for p in live]
        workers = observation.stats.workers if observation.stats is not None else ()
        now = observation.stats.now if observation.stats is not None else time.time()
        costs = autoscaling.build_deletion_costs(workers, names, now)
        current = {
            p["metadata"]["name"]: (p["metadata"].get("annotations") or {}).get(
                kube.DELETION_COST_ANNOTATION
            )
            for p in live
        }
        await kube.apply_pod_deletion_costs(client, self.namespace, costs, current)

    def _export(
        self,
        policy: autoscaling.ScalingPolicy,
        observation: autoscaling.Observation,
        decision: autoscaling.Decision,
    ) -> None:
        m = self.ctx.metrics
        labels = self.labels
        pool = self._pool()
        m.queue_reachable.labels(*labels).set(1 if observation.stats is not None else 0)
        m.replicas_desired.labels(*labels).set(decision.desired)
        m.replicas_max.labels(*labels).set(policy.max_replicas)
        threshold = pool.spec.dead_letter.alert_threshold
        m.dead_letter_alert_threshold.labels(*labels).set(float(threshold))
        if self.deployment is not None:
            m.replicas_current.labels(*labels).set(
                int(self.deployment.get("spec", {}).get("replicas", 0))
            )
            m.replicas_ready.labels(*labels).set(
                int((self.deployment.get("status") or {}).get("readyReplicas", 0))
            )
        s = observation.stats
        if s is None:
            return
        m.backlog.labels(*labels).set(s.backlog)
        m.in_flight.labels(*labels).set(s.in_flight)
        m.delayed.labels(*labels).set(getattr(s, "future_delayed", 0))
        m.dead_letter.labels(*labels).set(getattr(s, "dead_letter", 0))
        m.oldest_job_age.labels(*labels).set(s.oldest_job_age_seconds)
        m.jobs_enqueued.set(labels, s.enqueued_total)
        m.jobs_completed.set(labels, s.completed_total)
        m.jobs_failed.set(labels, getattr(s, "failed_total", 0))
        m.jobs_dead_lettered.set(labels, getattr(s, "dead_lettered_total", 0))
        m.workers_killed.set(labels, getattr(s, "workers_lost_total", 0))


def _build_queue_status(s: Any, decision: autoscaling.Decision) -> Body:
    rates = decision.rates
    return {
        "backlog": int(s.backlog),
        "inFlight": int(s.in_flight),
        "delayed": int(getattr(s, "future_delayed", 0)),
        "deadLetter": int(getattr(s, "dead_letter", 0)),
        # whole seconds and 2-decimal rates: an idle pool's status must not change every poll
        "oldestJobAgeSeconds": float(round(float(s.oldest_job_age_seconds))),
        "arrivalRate": None if rates.arrival is None else round(rates.arrival, 2),
        "completionRate": None if rates.completion is None else round(rates.completion, 2),
        "workers": len(getattr(s, "workers", ())),
    }


def _build_autoscaling_status(
    policy: autoscaling.ScalingPolicy,
    decision: autoscaling.Decision,
    explanation: str,
    last_scale_time: str | None,
) -> Body:
    return {
        "mode": policy.mode,
        "signals": {k: (None if v is None else round(v, 2)) for k, v in decision.signals.items()},
        "chosen": decision.chosen,
        "rawDesired": decision.raw_desired,
        "clampedBy": decision.clamped_by,
        "reason": explanation[:1024],
        "dryRun": decision.dry_run,
        "lastScaleTime": last_scale_time,
    }


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 merge of ``patch`` into ``target`` (what the API server will store)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def _newer(candidate: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> bool:
    if candidate is None:
        return False
    if current is None:
        return True
    a = str(candidate.get("metadata", {}).get("resourceVersion", ""))
    b = str(current.get("metadata", {}).get("resourceVersion", ""))
    if a.isdigit() and b.isdigit():
        return int(a) >= int(b)
    return True


def _is_subset(wanted: Any, actual: Any) -> bool:
    """True if every field we apply is present with the same value (our drift check)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            _is_subset(v, actual.get(k)) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(wanted) == len(actual)
            and all(_is_subset(w, a) for w, a in zip(wanted, actual, strict=True))
        )
    return bool(wanted == actual)


def _owner_pool(body: Mapping[str, Any]) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == "WorkerPool" and str(ref.get("apiVersion", "")).startswith(
            f"{GROUP}/"
        ):
            return str(ref.get("name"))
    return None


# ------------------------------------------------------------------------------------ kopf wiring


def register(registry: kopf.OperatorRegistry, ctx: OperatorContext) -> None:
    """Register every handler of the operator into ``registry``."""

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> kopf.ConnectionInfo:
        # Explicit, so the tests and the operator log in the same way: the configured kubeconfig,
        # else the pod's service account, else the default kubeconfig.
        info: kopf.ConnectionInfo | None
        if ctx.config.kubeconfig:
            info = build_connection_info(ctx.config.kubeconfig)
        else:
            info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        if info is None:
            raise kopf.LoginError(
                "no credentials: set WORKERFLEET_OPERATOR_KUBECONFIG or run in a pod"
            )
        ctx.login = info
        return info

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        pools = list(ctx.pools.values())
        ctx.pools.clear()
        await asyncio.gather(*(p.stop() for p in pools), return_exceptions=True)
        await ctx.queues.close()
        if ctx.client is not None:
            await ctx.client.close()
            ctx.client = None

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def workerpool_event(event: Mapping[str, Any], **_: Any) -> None:
        raw = event.get("object") or {}
        meta = raw.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if event.get("type") == "DELETED":
            controller = ctx.pools.pop(key, None)
            if controller is not None:
                await controller.stop()
            return
        controller = ctx.pools.get(key)
        if controller is None:
            controller = ctx.pools[key] = PoolController(ctx, key[0], key[1])
        controller.observe(copy.deepcopy(dict(raw)))
        controller.start()

    def owned_by_a_pool(body: kopf.Body, **_: Any) -> bool:
        return _owner_pool(body) is not None

    @kopf.on.event("apps", "v1", "deployments", registry=registry, when=owned_by_a_pool)
    async def deployment_event(event: Mapping[str, Any], **_: Any) -> None:
        raw = event.get("object") or {}
        pool = _owner_pool(raw)
        namespace = str((raw.get("metadata") or {}).get("namespace", ""))
        controller = ctx.pools.get((namespace, pool or ""))
        if controller is None:
            return  # the pool is gone or not seen yet; its own event will reconcile
        controller.observe_deployment(
            copy.deepcopy(dict(raw)), deleted=event.get("type") == "DELETED"
        )

    @kopf.on.probe(registry=registry, id="pools")
    async def pools_probe(**_: Any) -> int:
        return len(ctx.pools)


def build_connection_info(path: str) -> kopf.ConnectionInfo:
    """kopf credentials from one kubeconfig file (its current context)."""
    import yaml

    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    context_name = config.get("current-context")
    contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
    context = contexts[context_name] if context_name else next(iter(contexts.values()))
    clusters = {c["name"]: c["cluster"] for c in config.get("clusters", [])}
    users = {u["name"]: u.get("user") or {} for u in config.get("users", [])}
    cluster = clusters[context["cluster"]]
    user = users.get(context.get("user", ""), {})
    return kopf.ConnectionInfo(
        server=cluster["server"],
        ca_path=cluster.get("certificate-authority"),
        ca_data=_b64(cluster.get("certificate-authority-data")),
        insecure=cluster.get("insecure-skip-tls-verify"),
        username=user.get("username"),
        password=user.get("password"),
        scheme="Bearer" if user.get("token") else None,
        token=user.get("token"),
        certificate_path=user.get("client-certificate"),
        certificate_data=_b64(user.get("client-certificate-data")),
        private_key_path=user.get("client-key"),
        private_key_data=_b64(user.get("client-key-data")),
        default_namespace=context.get("namespace"),
    )


def _b64(value: str | None) -> bytes | None:
    import base64

    return base64.b64decode(value) if value else None
