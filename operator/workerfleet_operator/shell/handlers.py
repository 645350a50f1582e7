"""The operator's control loops: kopf watches WorkerPools and their Deployments; one loop per pool.

``shell.main`` (and the tests) call :func:`register` on a fresh ``kopf.OperatorRegistry``.

Design (controller-runtime style, on kopf's watches):

- kopf's ``on.event`` handlers only *observe*: a WorkerPool event stores the latest body in the
  pool's :class:`PoolController` and wakes it; an owned Deployment event (edited, deleted, its
  status moved) does the same for its owner. Events never write, so they cannot race.
- Each pool has ONE asyncio task, the only writer for that pool. It runs a level-triggered,
  idempotent reconcile whenever it is woken, on a failure retry (capped exponential backoff, so a
  bad pool never storms the API server), and every ``resync_seconds`` (jittered by ±10 % per
  pool and per round, so pools created together do not resync in lockstep); and, in between, the
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
- Worker pods read the URL only at start, so the Secret's ``<uid>/<resourceVersion>`` (not a
  hash of its value) is a pod-template annotation: the autoscaler poll re-reads the Secret
  (``get`` only; a watch would need list/watch on every Secret) and a new version marks the pool
  dirty, so the reconcile rolls the pods within ``secret_cache_seconds`` + one poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from workerfleet_operator import api, autoscaling, manifests, quantity
from workerfleet_operator import plan as plan_mod
from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import kube, metrics, queue

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
    # Timers and the autoscaler's windows: monotonic, so a wall-clock step (NTP, a VM resumed)
    # neither skips nor stretches a scale-down window.
    clock: Callable[[], float] = time.monotonic
    # Only for times shown to people (status.autoscaling.lastScaleTime).
    wall_clock: Callable[[], float] = time.time
    # Jitter of the resync delays (seedable in tests).
    rng: random.Random = field(default_factory=random.Random)
    login: kopf.ConnectionInfo | None = None
    client: kube.KubeClient | None = None
    pools: dict[PoolKey, PoolController] = field(default_factory=dict)
    # (namespace, secret, key) -> (read at, value): pools sharing a Secret share one read.
    secrets: dict[tuple[str, str, str], tuple[float, kube.SecretValue]] = field(
        default_factory=dict
    )
    # pool -> (where its queue lives, its creationTimestamp): pools on one queue are found here.
    queue_readers: dict[PoolKey, tuple[str, str]] = field(default_factory=dict)

    def find_queue_sharing(self, key: PoolKey) -> plan_mod.QueueSharing | None:
        """Which other pools read the same queue on the same Redis; None before ``key`` read it.

        The pool created first (then by namespace/name) scales; the others hold their replicas.
        """
        mine = self.queue_readers.get(key)
        if mine is None:
            return None
        sharing = sorted(
            (created, k) for k, (where, created) in self.queue_readers.items() if where == mine[0]
        )
        first = sharing[0][1]
        return plan_mod.QueueSharing(
            others=tuple(sorted(f"{k[0]}/{k[1]}" for _, k in sharing if k != key)),
            first=f"{first[0]}/{first[1]}",
            holds=first != key,
        )

    async def fetch_secret(
        self, namespace: str, name: str, key: str
    ) -> tuple[float, kube.SecretValue]:
        """(when it was read, the Secret's value), re-read at most every ``secret_cache_seconds``.

        The read time lets a pool's own cache expire with this one, so a rotated Secret is seen
        within ``secret_cache_seconds``, not twice that.
        """
        cached = self.secrets.get((namespace, name, key))
        now = self.clock()
        if cached is not None and now - cached[0] < self.config.secret_cache_seconds:
            return cached
        try:
            value = await kube.fetch_secret_value(self.fetch_client(), namespace, name, key)
        except kube.SecretNotFoundError:
            self.secrets.pop((namespace, name, key), None)
            raise
        self.secrets[(namespace, name, key)] = (now, value)
        return now, value

    async def release_unused(self) -> None:
        """Forget Secret values and close Redis clients that no running pool uses any more.

        Called when a pool stops: a deleted pool's decoded URL must not stay in memory, nor
        its connection pool open, for the rest of the operator's life.
        """
        keys = {p.secret_key for p in self.pools.values() if p.secret_key is not None}
        in_use = {(k.namespace, k.secret, k.key) for k in keys}
        for cached in [c for c in self.secrets if c not in in_use]:
            del self.secrets[cached]
        await self.queues.close_unused(keys)

    def fetch_client(self) -> kube.KubeClient:
        if self.client is None:
            if self.login is None:
                raise RuntimeError("the operator has not logged in yet")
            budget = kube.RequestBudget(self.config.api_qps, self.config.api_burst)
            self.client = kube.KubeClient(self.login, budget=budget)
        return self.client


RESYNC_JITTER = 0.1


def build_resync_delay(seconds: float, rng: random.Random) -> float:
    """``seconds`` ±10 %: a thousand pools created together spread their resyncs over 60 s."""
    return seconds * rng.uniform(1.0 - RESYNC_JITTER, 1.0 + RESYNC_JITTER)


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
    # The API server parses timeoutSeconds as an integer and answers 400 to "300.0".
    settings.watching.server_timeout = max(1, math.ceil(cfg.watch_server_timeout_seconds))
    settings.watching.client_timeout = cfg.watch_client_timeout_seconds
    settings.watching.connect_timeout = 10
    settings.peering.standalone = cfg.peering is None
    if cfg.peering is not None:
        settings.peering.name = cfg.peering
    # Only Deployments carrying the pool label, filtered by the API server: the operator never
    # receives (nor decodes) the other Deployments of the namespaces it watches.
    settings.watching.label_selectors["apps", "deployments"] = manifests.POOL_LABEL
    # The CRD is installed before the operator; no need to watch CRDs or list namespaces.
    settings.scanning.disabled = True
    settings.networking.request_timeout = 60
    return settings


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
    # When (ctx.clock) the status was last written: telemetry-only changes wait for the refresh.
    status_written_at: float = -math.inf
    next_poll: float = 0.0
    reconciled_generation: int | None = None
    # A generation whose children the API server refused (422): retried with backoff, not on
    # every event of the pool (our own status writes would turn that into a storm).
    rejected_generation: int | None = None
    apply_problem: str | None = None
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
    drift_reference: Body | None = None
    secret: kube.SecretValue | None = None
    secret_key: queue.ClientKey | None = None
    secret_read_at: float = -1e9
    scaler_state: autoscaling.ScalerState = field(default_factory=autoscaling.ScalerState)
    last_observation: autoscaling.Observation | None = None
    last_decision: autoscaling.Decision | None = None
    last_scale_wall_time: float | None = None  # wall-clock time of the last scale, for status
    replicas_blocked_by: tuple[str, ...] = ()
    last_dry_run_desired: int | None = None
    problem_logged: str | None = None
    parsed: api.Pool | api.InvalidPool | None = None
    parsed_key: tuple[Any, ...] | None = None
    policy: autoscaling.ScalingPolicy | None = None
    poll_signature: tuple[Any, ...] | None = None
    series: metrics.PoolSeries | None = None
    series_labels: tuple[str, str, str] | None = None
    cleaned_generation: int | None = None
    next_full_apply: float = 0.0
    spec_problem: SpecProblemError | None = None
    task: asyncio.Task[None] | None = None
    stopped: bool = False

    # ------------------------------------------------------------------ observation (from kopf)

    @property
    def labels(self) -> tuple[str, str, str]:
        q = ((self.body or {}).get("spec") or {}).get("queue") or {}
        return (self.namespace, self.name, str(q.get("name", "")))

    @property
    def terminating(self) -> bool:
        return bool(((self.body or {}).get("metadata") or {}).get("deletionTimestamp"))

    def observe(self, body: Body) -> None:
        generation = body.get("metadata", {}).get("generation")
        if self.body is None or generation not in (
            self.reconciled_generation,
            self.rejected_generation,
        ):
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
            if not self._is_ours(body):
                self.dirty = True  # a Deployment of that name someone else controls: report it
                self.wake.set()
                return
            if _newer(body, self.deployment):
                self.deployment = body
            if self.drift_reference is not None and not _is_subset(self.drift_reference, body):
                self.dirty = True  # someone else changed what we own: restore it
        self.wake.set()

    def _is_ours(self, child: Mapping[str, Any]) -> bool:
        """Controlled by this pool (its uid, not just its name: a pool deleted and created
        again under the same name owns nothing of the old one's)."""
        uid = ((self.body or {}).get("metadata") or {}).get("uid")
        return uid is not None and kube.build_controller_uid(child) == uid

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(
                self.run(), name=f"workerpool/{self.namespace}/{self.name}"
            )

    async def stop(self) -> None:
        self.stopped = True
        self.ctx.queue_readers.pop((self.namespace, self.name), None)
        self.wake.set()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.series_labels is not None:
            self.ctx.metrics.forget_pool(self.series_labels, self.series)
        else:
            self.ctx.metrics.forget_pool(self.labels)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        cfg = self.ctx.config
        while not self.stopped:
            if self.terminating:
                # Someone else's finalizer holds the pool: write nothing while it goes away.
                self.wake.clear()
                await self.wake.wait()
                continue
            now = self.ctx.clock()
            if self.body is not None and (self.dirty or now >= self.next_reconcile):
                self.dirty = False
                ok = await self._reconcile_once()
                if ok:
                    self.failures = 0
                    self.next_reconcile = self.ctx.clock() + build_resync_delay(
                        cfg.resync_seconds, self.ctx.rng
                    )
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
                # A bad spec waits for its next change; a Secret problem is retried (backoff).
                return self.spec_problem.reason == plan_mod.INVALID_SPEC
            if self.apply_problem is not None:
                result = "invalid"
                return False  # retried with backoff: a LimitRange or webhook may change
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            result = "error"
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
            self.ctx.metrics.count_reconcile(self.namespace, self.name, result)
            self.ctx.metrics.reconcile_duration.observe(time.perf_counter() - started)

    # ------------------------------------------------------------------ reconcile

    def _spec(self) -> Mapping[str, Any]:
        return (self.body or {}).get("spec") or {}

    def _parsed(self) -> api.Pool | api.InvalidPool:
        """The parsed pool, cached per (uid, generation, labels): parsing is the costly part."""
        meta = (self.body or {}).get("metadata") or {}
        key = (meta.get("uid"), meta.get("generation"), str(meta.get("labels")))
        if self.parsed_key != key or self.parsed is None:
            self.parsed = api.parse_pool(self.body or {})
            self.parsed_key = key
            try:
                self.policy = (
                    api.build_scaling_policy(self.parsed.spec)
                    if isinstance(self.parsed, api.Pool)
                    else None
                )
            except ValueError:
                self.policy = None
        return self.parsed

    def _pool(self) -> api.Pool:
        parsed = self._parsed()
        if isinstance(parsed, api.InvalidPool):
            raise SpecProblemError(plan_mod.INVALID_SPEC, parsed.message)
        return parsed

    def _policy(self) -> autoscaling.ScalingPolicy | None:
        self._parsed()
        return self.policy

    async def _read_secret(self, pool: api.Pool) -> plan_mod.SecretCheck:
        """Check the Secret behind urlSecretRef; keep its value in memory only."""
        ref = pool.spec.queue.redis.url_secret_ref
        secret_name, secret_key = ref.name, ref.key
        now = self.ctx.clock()
        key = self.secret_key
        fresh = now - self.secret_read_at < self.ctx.config.secret_cache_seconds
        same = key is not None and (key.secret, key.key) == (secret_name, secret_key)
        if self.secret is not None and same and fresh:
            return plan_mod.SecretCheck("ok", version=self.secret.version)
        try:
            read_at, value = await self.ctx.fetch_secret(self.namespace, secret_name, secret_key)
        except kube.SecretNotFoundError as exc:
            self.secret = None
            return plan_mod.SecretCheck("key_missing" if exc.key_missing else "missing", str(exc))
        try:
            queue.check_redis_url(value.value)
        except queue.InvalidRedisUrlError as exc:
            self.secret = None
            message = f'key "{secret_key}" of Secret "{secret_name}": {exc}'
            return plan_mod.SecretCheck("invalid_url", message)
        self.secret = value
        self.secret_key = queue.ClientKey(
            self.namespace, secret_name, secret_key, value.resource_version
        )
        self.secret_read_at = read_at
        if key is not None and not same:
            await self.ctx.release_unused()  # the pool moved to another Secret (or key)
        return plan_mod.SecretCheck("ok", version=value.version)

    def _observed(self, secret: plan_mod.SecretCheck, **more: Any) -> plan_mod.Observed:
        body = self.body or {}
        previous = api.parse_status(body.get("status"))
        applied = self.reconciled_generation
        if applied is None and previous is not None:
            applied = previous.observed_generation  # not applied by this run yet: as stored
        deployment = None
        if self.deployment is not None:
            deployment = dataclasses.replace(
                plan_mod.build_deployment_state(self.deployment),
                rollout_generation=self.rollout_generation,
            )
        return plan_mod.Observed(
            now=dt.datetime.now(dt.UTC),
            secret=secret,
            deployment=deployment,
            previous=previous,
            applied_generation=applied,
            apply_problem=self.apply_problem,
            missing_apis=self.missing_apis,
            not_owned=self.not_owned,
            queue_sharing=self.ctx.find_queue_sharing((self.namespace, self.name)),
            **more,
        )

    async def reconcile(self) -> None:
        """Level-triggered and idempotent: compare, apply what differs, report."""
        body = self.body
        if body is None:
            return
        client = self.ctx.fetch_client()
        parsed = self._parsed()
        if isinstance(parsed, api.InvalidPool):
            secret = plan_mod.SecretCheck("ok")
        else:
            secret = await self._read_secret(parsed)
        foreign_deployment = False
        if self.deployment is None or self.deployment_gone:
            fetched = await kube.fetch_object(
                client, kube.build_ref("Deployment", self.namespace, self.name)
            )
            self.deployment_gone = False
            # Someone else's Deployment of this name is neither adopted, applied over nor
            # scaled: the pool reports it and runs nothing until it is renamed or deleted.
            foreign_deployment = fetched is not None and not self._is_ours(fetched)
            self.deployment = None if foreign_deployment else fetched
        the_plan = plan_mod.plan(parsed, self._observed(secret))
        if the_plan.hold:
            # Bad input: nothing applied, nothing deleted; explain, and retry a Secret slowly.
            self.spec_problem = SpecProblemError(
                secret.state if secret.state != "ok" else plan_mod.INVALID_SPEC,
                the_plan.problem or "",
            )
            await self._write_plan_status(the_plan.status, the_plan.events)
            if self.problem_logged != the_plan.problem:
                self.problem_logged = the_plan.problem
                logger.warning("WorkerPool %s/%s: %s", self.namespace, self.name, the_plan.problem)
            return
        self.spec_problem = None
        self.problem_logged = None
        assert isinstance(parsed, api.Pool)
        await self._apply_children(parsed, the_plan, foreign_deployment=foreign_deployment)
        if self.apply_problem is None:
            self.reconciled_generation = parsed.generation
            self.rejected_generation = None
        else:
            self.rejected_generation = parsed.generation
        # The status from what the writes returned (a plan on the fresh Deployment state).
        final = plan_mod.plan(parsed, self._observed(secret))
        events = tuple(e for e in final.events if e.reason not in ("Creating",))
        await self._write_plan_status(final.status, events)

    async def _apply_children(
        self, pool: api.Pool, the_plan: plan_mod.Plan, *, foreign_deployment: bool = False
    ) -> None:
        client = self.ctx.fetch_client()
        deployment = self.deployment
        name_taken = f"Deployment {self.name}"
        others = tuple(n for n in self.not_owned if n != name_taken)
        if foreign_deployment:
            self.not_owned = (name_taken, *others)
            if await self._apply_optional_children(pool, the_plan.children[1:]):
                await self._delete_obsolete(pool, the_plan.obsolete)
            return
        self.not_owned = others
        creating = deployment is None
        children = list(the_plan.children)
        desired_hash = hashlib.sha256(
            json.dumps(children, sort_keys=True, default=str).encode()
        ).hexdigest()
        resync = self.ctx.clock() >= self.next_full_apply
        main = children[0]
        reference = _build_drift_reference(main, pool)
        drifted = deployment is not None and not _is_subset(reference, deployment)
        # Drift is someone else's edit: what we would send is what we last sent, and the live
        # object differs from it. A new spec (or Secret version) differs too, but is no drift.
        announce_drift = drifted and reference == self.drift_reference
        if creating or drifted or resync or desired_hash != self.applied_hash:
            try:
                if deployment is not None:
                    deployment = await self._hand_over_replicas(main, deployment)
                applied = await kube.apply_object(client, main)
            except kube.ApiError as exc:
                if self._refused(main, exc):
                    return
                raise
            self.drift_reference = reference
            self.rollout_generation = _build_rollout_generation(
                self.rollout_generation, self.deployment, applied
            )
            if _newer(applied, self.deployment):
                self.deployment = applied
            # The other children only when they may have changed (a Deployment drift alone
            # re-applies the Deployment alone).
            every_child = resync or desired_hash != self.applied_hash or creating
            if every_child and not await self._apply_optional_children(pool, children[1:]):
                return
            self.apply_problem = None
            if (
                creating
                and the_plan.replicas is not None
                and pool.spec.autoscaling.mode == "builtin"
            ):
                # The autoscaler's manager co-owns the initial count from the start.
                with contextlib.suppress(kube.ApiError):
                    self.deployment = await kube.apply_replicas(
                        client, self.namespace, self.name, the_plan.replicas
                    )
                if self.deployment is not None and not _is_subset(reference, self.deployment):
                    self.dirty = True  # edited between our two writes: go round again
            self.applied_hash = desired_hash
            self.next_full_apply = self.ctx.clock() + build_resync_delay(
                self.ctx.config.resync_seconds, self.ctx.rng
            )
            if announce_drift:
                await self._event(
                    "Normal",
                    "DriftCorrected",
                    f"Deployment {self.name} restored to the pool's spec",
                )
        else:
            self.drift_reference = reference
        await self._delete_obsolete(pool, the_plan.obsolete)

    def _refused(self, child: Mapping[str, Any], exc: kube.ApiError) -> bool:
        """A child refused as written (400/422: validation, admission): the spec must change.
        Recorded for the status (ApplyRejected); True when ``exc`` is such a refusal."""
        if exc.status not in (400, 422):
            return False
        kind, name = child["kind"], child["metadata"]["name"]
        self.apply_problem = f"{kind} {name} refused: {exc.message}"
        return True

    async def _apply_optional_children(
        self, pool: api.Pool, children: Sequence[Mapping[str, Any]]
    ) -> bool:
        """Apply the children besides the Deployment; False when one was refused (422).

        A child whose kind is not served is skipped (``missing_apis``); one of that name that
        someone else controls is left alone, never adopted (``not_owned``).
        """
        client = self.ctx.fetch_client()
        missing: list[str] = []
        taken: list[str] = [n for n in self.not_owned if n == f"Deployment {self.name}"]
        for child in children:
            kind, name = str(child["kind"]), str(child["metadata"]["name"])
            try:
                existing = await kube.fetch_object(client, kube.build_ref_of(child))
                if existing is not None and not self._is_ours(existing):
                    taken.append(f"{kind} {name}")
                    continue
                await kube.apply_object(client, dict(child))
            except kube.ApiError as exc:
                if exc.is_not_found:
                    missing.append(kind)  # its CRD is not installed: go on
                    continue
                if self._refused(child, exc):
                    return False
                raise
        self.missing_apis = tuple(dict.fromkeys(missing))
        self.not_owned = tuple(taken)
        return True

    async def _hand_over_replicas(self, main: Body, deployment: Body) -> Body:
        """Before an apply that stops sending ``spec.replicas`` (leaving ``disabled``), give the
        current count to the autoscaler's manager: a field its last manager releases is reset
        to the API default (1), which would drop a pool of 4 to 1 at once."""
        replicas = (deployment.get("spec") or {}).get("replicas")
        owners = kube.build_owner_of_replicas(deployment)
        releasing = "replicas" not in (main.get("spec") or {}) and kube.FIELD_MANAGER in owners
        if not releasing or replicas is None or kube.REPLICAS_FIELD_MANAGER in owners:
            return deployment  # nothing released, or the autoscaler co-owns it already
        handed = await kube.apply_replicas(
            self.ctx.fetch_client(), self.namespace, self.name, int(replicas)
        )
        logger.info(
            "%s/%s: spec.replicas (%s) handed to the autoscaler's field manager",
            self.namespace,
            self.name,
            replicas,
        )
        if _newer(handed, self.deployment):
            self.deployment = handed
        return handed

    async def _delete_obsolete(
        self, pool: api.Pool, obsolete: tuple[plan_mod.ChildRef, ...]
    ) -> None:
        # Deleting is only needed when the spec changed since a reconcile of ours (or while we
        # were down); a converged pool does not cost five DELETEs per resync.
        stored = api.parse_status((self.body or {}).get("status"))
        stored_generation = stored.observed_generation if stored is not None else None
        if (
            pool.generation == self.cleaned_generation
            or stored_generation is None  # never reconciled: nothing of ours can exist yet
            or (self.cleaned_generation is None and stored_generation == pool.generation)
        ):
            self.cleaned_generation = pool.generation
            return
        client = self.ctx.fetch_client()
        for ref in obsolete:
            kind = kube.KINDS.get(ref.kind)
            plural = kind[1] if kind else ref.kind.lower() + "s"
            where = kube.ObjectRef(ref.api_version, plural, ref.namespace, ref.name)
            try:
                existing = await kube.fetch_object(client, where)
                if existing is None or not self._is_ours(existing):
                    continue  # absent, or someone else's of the same name: never ours to delete
                # Only the object just checked: one recreated since (another uid) answers 409.
                uid = str(existing["metadata"]["uid"])
                await kube.delete_object(client, where, uid=uid)
            except kube.ApiError as exc:
                if exc.status not in (404, 405, 409):
                    raise
        self.cleaned_generation = pool.generation

    # ------------------------------------------------------------------ status and events

    async def _write_plan_status(
        self, status_model: api.WorkerPoolStatus, events: Sequence[plan_mod.Event]
    ) -> bool:
        """Write the status only if the merge would change it; post the plan's Events.

        Returns False when a change was held back for the refresh interval (nothing else waits).
        """
        body = self.body
        if body is None:
            return True
        self._export_conditions(status_model)
        stored = api.parse_status(body.get("status"))
        stored_patch = api.build_status_patch(stored) if stored is not None else {}
        status = api.build_status_patch(status_model, stored_patch)
        base = _without_observed_time(stored_patch)
        merged = _merge(base, _without_observed_time(status))
        now = self.ctx.clock()
        # Numbers that move on every poll of a busy pool (an ageing backlog) wait for the
        # refresh interval; anything else (conditions, replicas, generation) goes at once.
        waits = (
            _without_telemetry(merged) == _without_telemetry(base)
            and now - self.status_written_at < self.ctx.config.status_refresh_seconds
        )
        if merged != base and not waits:
            self.status_written_at = now
            ref = kube.build_ref("WorkerPool", self.namespace, self.name)
            try:
                updated = await kube.apply_status(self.ctx.fetch_client(), ref, status)
            except kube.ApiError as exc:
                if exc.is_not_found:
                    return True  # deleted meanwhile; the DELETED event stops this loop
                raise
            if _newer(updated, self.body):
                self.body = updated
        for event in events:
            await self._event(event.type, event.reason, event.message)
        return merged == base or not waits

    def _export_conditions(self, status_model: api.WorkerPoolStatus) -> None:
        """Every status we write is exported too: a held pool (its Secret gone, its spec invalid)
        never polls, and its series must not freeze at the last good values."""
        conditions = list(status_model.conditions or ())
        series = self._bound_series()
        series.record_conditions((c.type, c.status, c.reason) for c in conditions)
        reachable = api.find_condition(conditions, api.QUEUE_REACHABLE)
        if reachable is not None:
            series.record_queue_reachable(reachable.status == "True", reachable.reason)

    async def _write_status(
        self, wanted: Mapping[str, tuple[api.ConditionStatus, str, str]]
    ) -> None:
        """Set a few conditions on the stored status (used when a reconcile raised)."""
        body = self.body
        if body is None:
            return
        stored = api.parse_status(body.get("status")) or api.WorkerPoolStatus()
        generation = int(body["metadata"].get("generation", 1))
        now = dt.datetime.now(dt.UTC)
        previous = list(stored.conditions or ())
        conditions = {c.type: c for c in previous}
        events = []
        for ctype, (status, reason, message) in wanted.items():
            before = conditions.get(ctype)
            conditions[ctype] = api.build_condition(
                ctype, status, reason, message, generation=generation, now=now, previous=previous
            )
            transitioned = before is None or (before.status, before.reason) != (status, reason)
            if transitioned and status == "True" and ctype in (api.DEGRADED, api.SCALING_LIMITED):
                events.append(plan_mod.Event("Warning", reason, message))
        order = {t: i for i, t in enumerate(api.CONDITION_TYPES)}
        merged = sorted(conditions.values(), key=lambda c: order.get(c.type, len(order)))
        await self._write_plan_status(stored.model_copy(update={"conditions": merged}), events)

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
        pool = self._pool()
        # A rotated (or deleted) Secret is noticed within secret_cache_seconds, not at resync.
        before = self.secret.version
        check = await self._read_secret(pool)
        if check.state != "ok" or self.secret is None or self.secret_key is None:
            self.ctx.queue_readers.pop((self.namespace, self.name), None)
            self.dirty = True  # the reconcile reports it (Ready=False) and holds
            return
        if check.version != before:
            self.dirty = True  # a new pod-template annotation rolls the pods onto the new URL
        created = str(((self.body or {}).get("metadata") or {}).get("creationTimestamp") or "")
        where = queue.identify_queue(self.secret.value, pool.spec.queue.name)
        self.ctx.queue_readers[(self.namespace, self.name)] = (where, created)
        sharing = self.ctx.find_queue_sharing((self.namespace, self.name))
        observation = await self.ctx.queues.fetch_observation(
            self.secret_key,
            self.secret,
            pool.spec.queue.name,
            deadline_seconds=self.ctx.config.redis_timeout_seconds,
        )
        self.last_observation = observation
        if self.terminating or self.stopped:
            return  # deleted while Redis was read: write nothing (another finalizer may hold it)
        deployment = self.deployment
        current = int((deployment or {}).get("spec", {}).get("replicas", 0)) if deployment else 0
        # decide() runs on the monotonic clock (its windows survive wall-clock steps); the time
        # of each scale is recorded on the wall clock for status.autoscaling.lastScaleTime.
        decision = autoscaling.decide(
            policy, observation, current, self.scaler_state, self.ctx.clock()
        )
        if decision.state.last_scale_time != self.scaler_state.last_scale_time:
            self.last_scale_wall_time = self.ctx.wall_clock()
        self.scaler_state = decision.state
        self.last_decision = decision
        applied = True
        if policy.mode == "builtin" and deployment is not None and decision.desired != current:
            if sharing is not None and sharing.holds:
                applied = False  # another pool scales for this queue (QueueConflict)
            elif policy.dry_run:
                applied = self.last_dry_run_desired != decision.desired  # one Event per change
                self.last_dry_run_desired = decision.desired
            else:
                applied = await self._scale(deployment, current, decision, observation)
        # An unchanged poll (an idle pool) costs no plan and no write: only the metrics.
        signature = (
            *_poll_signature(observation, decision, self.deployment, self.body),
            sharing,
        )
        if signature == self.poll_signature and applied and not self.replicas_blocked_by:
            self._export(policy, observation, decision)
            return
        self.poll_signature = signature
        the_plan = plan_mod.plan(
            pool,
            self._observed(
                check,
                stats=observation.stats,
                stats_error=observation.error,
                decision=_with_scale_time(decision, self.last_scale_wall_time),
            ),
        )
        status = the_plan.status
        events = list(the_plan.events)
        if not applied:
            events = [e for e in events if e.message != plan_mod.build_redacted(decision.reason)]
        if self.replicas_blocked_by:
            status, blocked_event = self._blocked_condition(status)
            events = [e for e in events if e.reason != "WithinLimits"]
            if blocked_event is not None:
                events.append(blocked_event)
        if not await self._write_plan_status(status, events):
            self.poll_signature = None  # deferred: the next poll writes it once the refresh is due
        self._export(policy, observation, decision)

    def _blocked_condition(
        self, status: api.WorkerPoolStatus
    ) -> tuple[api.WorkerPoolStatus, plan_mod.Event | None]:
        owners = ", ".join(self.replicas_blocked_by)
        message = (
            f"spec.replicas is driven by {owners}; the autoscaler holds instead of fighting. "
            "Delete it to hand the replicas back (or set autoscaling.mode: disabled or keda)"
        )
        previous = list(status.conditions or ())
        stored = api.parse_status((self.body or {}).get("status"))
        before = api.find_condition(stored.conditions if stored else None, api.SCALING_LIMITED)
        condition = api.build_condition(
            api.SCALING_LIMITED,
            "True",
            "ReplicasOwnedElsewhere",
            message,
            generation=int((self.body or {})["metadata"].get("generation", 1)),
            now=dt.datetime.now(dt.UTC),
            previous=list(stored.conditions or ()) if stored else [],
        )
        merged = [condition if c.type == api.SCALING_LIMITED else c for c in previous]
        event = None
        if before is None or (before.status, before.reason) != ("True", "ReplicasOwnedElsewhere"):
            event = plan_mod.Event("Warning", "ReplicasOwnedElsewhere", message)
        return status.model_copy(update={"conditions": merged}), event

    async def _scale(
        self,
        deployment: Mapping[str, Any],
        current: int,
        decision: autoscaling.Decision,
        observation: autoscaling.Observation,
    ) -> bool:
        """Write the decided replicas; False when held because another manager owns them."""
        client = self.ctx.fetch_client()
        for attempt in range(2):
            # Decided on live autoscalers, not managedFields: one `kubectl scale` (or an HPA
            # deleted since) stays listed there for good and would hold the pool forever.
            controllers = await kube.fetch_replicas_controllers(client, self.namespace, self.name)
            if controllers:
                self._block_replicas(tuple(controllers))
                return False
            # Costs rank pods by their heartbeats: without stats (a fallback during an outage)
            # every pod would look dead, so none is marked and the ReplicaSet picks.
            if decision.desired < current and attempt == 0 and observation.stats is not None:
                await self._mark_deletion_costs(deployment, observation)
            try:
                # Forced only against our own managers (the creation apply co-owns the field),
                # and only on the version whose managers were just checked.
                self.deployment = await kube.apply_replicas(
                    client,
                    self.namespace,
                    self.name,
                    decision.desired,
                    force=True,
                    resource_version=deployment.get("metadata", {}).get("resourceVersion"),
                )
                break
            except kube.ApiError as exc:
                if not exc.is_conflict:
                    raise
            # Changed since our watch saw it (maybe someone else scaled it): check it again.
            fresh = await kube.fetch_object(
                client, kube.build_ref("Deployment", self.namespace, self.name)
            )
            if fresh is None:
                self.dirty = True  # deleted: the reconcile recreates it
                return False
            self.deployment = deployment = fresh
        else:
            return False  # changed twice in a row: the next poll decides again
        if self.drift_reference is not None and not _is_subset(
            self.drift_reference, self.deployment
        ):
            self.dirty = True  # edited by someone between our writes
        self.replicas_blocked_by = ()
        return True

    def _block_replicas(self, owners: tuple[str, ...]) -> None:
        if owners != self.replicas_blocked_by:
            logger.warning(
                "%s/%s: spec.replicas is driven by %s; the autoscaler holds instead of fighting",
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
        assert observation.stats is not None
        costs = autoscaling.build_deletion_costs(
            observation.stats.workers, names, observation.stats.now
        )
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
        series = self._bound_series()
        spec = self._pool().spec
        series.record_poll(
            observation.stats,
            desired=decision.desired,
            max_replicas=policy.max_replicas,
            alert_threshold=spec.dead_letter.alert_threshold,
            oldest_job_age_target=spec.autoscaling.target_oldest_job_age_seconds,
        )
        if self.deployment is not None:
            replicas = int(self.deployment.get("spec", {}).get("replicas", 0))
            ready = int((self.deployment.get("status") or {}).get("readyReplicas", 0))
            series.replicas_current.set(replicas)
            series.replicas_ready.set(ready)

    def _bound_series(self) -> metrics.PoolSeries:
        """The pool's series, bound again when its queue (a label) changed."""
        labels = self.labels
        if self.series is None or self.series_labels != labels:
            if self.series_labels is not None:
                self.ctx.metrics.forget_pool(self.series_labels, self.series)
            self.series = self.ctx.metrics.bind_pool(labels)
            self.series_labels = labels
        return self.series


def _with_scale_time(
    decision: autoscaling.Decision, wall_time: float | None
) -> autoscaling.Decision:
    """The decision as plan() shows it: ``last_scale_time`` in wall-clock unix seconds."""
    state = dataclasses.replace(decision.state, last_scale_time=wall_time)
    return dataclasses.replace(decision, state=state)


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


def _poll_signature(
    observation: autoscaling.Observation,
    decision: autoscaling.Decision,
    deployment: Mapping[str, Any] | None,
    pool: Mapping[str, Any] | None,
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
    dep = deployment or {}
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
        (dep.get("spec") or {}).get("replicas"),
        json.dumps(dep.get("status"), sort_keys=True),
        _generation(pool or {}),
    )


def _generation(body: Mapping[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("generation") or 0)


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


def _build_rollout_generation(
    known: int | None, before: Mapping[str, Any] | None, after: Mapping[str, Any]
) -> int | None:
    """The Deployment generation at which its pod template last changed, as far as we know.

    Our write changed the template: its generation. Otherwise, a controller that has caught up
    (observedGeneration == generation) has seen every template: its generation bounds it.
    """
    generation = int((after.get("metadata") or {}).get("generation") or 0)
    template = (after.get("spec") or {}).get("template")
    if before is None or (before.get("spec") or {}).get("template") != template:
        return generation
    if known is None and int((after.get("status") or {}).get("observedGeneration") or 0) == (
        generation
    ):
        return generation
    return known


def _build_drift_reference(deployment: Body, pool: api.Pool) -> Body:
    """Our applied Deployment minus spec.replicas when the autoscaler (or KEDA) owns it."""
    if pool.spec.autoscaling.mode == "disabled":
        return deployment
    spec = {k: v for k, v in (deployment.get("spec") or {}).items() if k != "replicas"}
    return {**deployment, "spec": spec}


# Quantities the API server re-spells (0.5 -> 500m, 1024Mi -> 1Gi): compared by amount.
_QUANTITY_MAPS = frozenset({"requests", "limits"})  # container resources: each value a quantity
_QUANTITY_FIELDS = frozenset({"sizeLimit"})  # emptyDir


def _is_subset(wanted: Any, actual: Any, *, is_quantity: bool = False) -> bool:
    """True if every field we apply is present with the same value (our drift check)."""
    if isinstance(wanted, dict):
        if not isinstance(actual, dict):
            return False
        for key, value in wanted.items():
            if key in _QUANTITY_MAPS and isinstance(value, dict):
                same = _is_subset_of_quantities(value, actual.get(key))
            else:
                same = _is_subset(value, actual.get(key), is_quantity=key in _QUANTITY_FIELDS)
            if not same:
                return False
        return True
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(wanted) == len(actual)
            and all(_is_subset(w, a) for w, a in zip(wanted, actual, strict=True))
        )
    if is_quantity:
        return quantity.equal_quantities(wanted, actual)
    return bool(wanted == actual)


def _is_subset_of_quantities(wanted: Mapping[str, Any], actual: Any) -> bool:
    return isinstance(actual, dict) and all(
        _is_subset(amount, actual.get(name), is_quantity=True) for name, amount in wanted.items()
    )


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
        elif (info := kopf.login_with_service_account(**kwargs)) is not None:
            # kopf names the API server https://kubernetes.default.svc, which only cluster DNS
            # resolves; the kubelet hands every pod the address itself, as client-go reads it.
            server = build_in_cluster_server(os.environ)
            if server is not None:
                info = dataclasses.replace(info, server=server)
        else:
            info = kopf.login_with_kubeconfig(**kwargs)
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
                await ctx.release_unused()
            return
        controller = ctx.pools.get(key)
        if controller is None:
            controller = ctx.pools[key] = PoolController(ctx, key[0], key[1])
        controller.observe(dict(raw))  # read-only: we replace bodies, never mutate them
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
        controller.observe_deployment(dict(raw), deleted=event.get("type") == "DELETED")

    @kopf.on.probe(registry=registry, id="pools")
    async def pools_probe(**_: Any) -> int:
        return len(ctx.pools)


def build_in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """The API server URL from KUBERNETES_SERVICE_HOST/PORT (set in every pod); None without."""
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


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
