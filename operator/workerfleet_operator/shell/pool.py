"""The pool controller: the one writer for one WorkerPool, its observed state and its loop.

Created by the kopf wiring (``shell.handlers``) on a pool's first event; the reconcile
(``shell.reconcile``) and the autoscaler poll (``shell.scaler``) run inside its task and report
through ``shell.report``.

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
- What the controller remembers between rounds is split by who writes it: the reconcile's
  :class:`~workerfleet_operator.shell.reconcile.AppliedState`, the autoscaler's
  :class:`~workerfleet_operator.shell.scaler.ScalerMemory`; the rest (bodies, Secret, timers,
  the parsed spec) is the loop's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime as dt
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workerfleet_operator import api, autoscaling, manifests
from workerfleet_operator import plan as plan_mod
from workerfleet_operator.shell import (
    context,
    drift,
    kube,
    metrics,
    queue,
    reconcile,
    report,
    scaler,
)

logger = logging.getLogger("workerfleet.operator")
# A reconcile that meets 409 reads again and decides again this many times in all.
CONFLICT_ATTEMPTS = 3

Body = dict[str, Any]


class Wake:
    """``asyncio.Event``'s set/clear/wait for the one waiter it has: the pool's loop.

    An ``asyncio.Event`` per pool carried a deque and an instance dict (~0.8 KB); this is two
    slots. ``set`` may be called any number of times, from any task of the event loop.
    """

    __slots__ = ("_is_set", "_waiter")

    def __init__(self) -> None:
        self._is_set = False
        self._waiter: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._is_set = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def clear(self) -> None:
        self._is_set = False

    def is_set(self) -> bool:
        return self._is_set

    async def wait(self) -> None:
        if self._is_set:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class Kept:
    """A body the pool controller keeps between rounds: packed (``drift.PackedJSON``), and
    the view a round unpacked from it, until ``forget`` (the loop, before it waits).

    Nothing changes a view in place: a new body is always kept whole.
    """

    __slots__ = ("packed", "view")

    def __init__(self) -> None:
        self.packed: drift.PackedJSON | None = None
        self.view: Body | None = None

    def read(self) -> Body | None:
        if self.view is None and self.packed is not None:
            self.view = self.packed.unpack()
        return self.view

    def keep(self, value: Body | None) -> None:
        self.view = value
        self.packed = None if value is None else drift.PackedJSON(value)

    def forget(self) -> None:
        self.view = None


def _labels_and_pause(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of a pool's metadata its children depend on besides the spec: labels, pause."""
    meta = body.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return (
        meta.get("labels"),
        annotations.get(api.PAUSED_ANNOTATION),
        annotations.get(api.PAUSED_REPLICAS_ANNOTATION),
    )


def _is_ready(body: Mapping[str, Any] | None) -> bool:
    conditions = ((body or {}).get("status") or {}).get("conditions") or ()
    return any(c.get("type") == api.READY and c.get("status") == "True" for c in conditions)


@dataclass(frozen=True, slots=True)
class PoolFacts:
    """What every round reads of the WorkerPool, taken when a body is kept: a waking loop and
    an unchanged autoscaler poll read these, not the unpacked body."""

    parse_key: tuple[Any, ...]  # uid, generation, labels and pause: a new parse when it moves
    queue_name: str
    broker: str
    created: str
    generation: int
    terminating: bool
    # what a watch event compares with the kept body (observe reads these, never the body)
    uid: str | None
    resource_version: str
    labels_and_pause: str
    ready: bool  # its Ready condition is True


def read_pool_facts(body: Mapping[str, Any]) -> PoolFacts:
    meta = body.get("metadata") or {}
    q = (body.get("spec") or {}).get("queue") or {}
    labels_and_pause = str(_labels_and_pause(body))
    uid = meta.get("uid")
    return PoolFacts(
        parse_key=(uid, meta.get("generation"), labels_and_pause),
        queue_name=str(q.get("name", "")),
        broker=next((name for name in api.BROKER_FIELDS if q.get(name) is not None), "redis"),
        created=str(meta.get("creationTimestamp") or ""),
        generation=int(meta.get("generation") or 0),
        terminating=bool(meta.get("deletionTimestamp")),
        uid=None if uid is None else str(uid),
        resource_version=drift.read_resource_version(body),
        labels_and_pause=labels_and_pause,
        ready=_is_ready(body),
    )


NO_POOL_FACTS = read_pool_facts({})


@dataclass(frozen=True, slots=True)
class DeploymentFacts:
    """What an autoscaler poll reads of the Deployment, taken when one is kept (unpacking a
    worker Deployment costs ~60 µs; a thousand pools poll every 5 s)."""

    spec_replicas: Any  # as written (None when absent)
    ready_replicas: int
    status_key: str  # the status as sorted JSON: part of the poll's signature
    # what a watch event compares with the kept Deployment (None: no Deployment kept)
    resource_version: str | None
    rollout: tuple[Any, ...] | None  # _summarize_rollout of it

    @property
    def replicas(self) -> int:
        """spec.replicas as a count (0 when absent, as with no Deployment)."""
        return int(self.spec_replicas or 0)


def read_deployment_facts(deployment: Mapping[str, Any] | None) -> DeploymentFacts:
    dep = deployment or {}
    status = dep.get("status")
    return DeploymentFacts(
        spec_replicas=(dep.get("spec") or {}).get("replicas"),
        ready_replicas=int((status or {}).get("readyReplicas", 0)),
        status_key=json.dumps(status, sort_keys=True),
        resource_version=None if deployment is None else drift.read_resource_version(deployment),
        rollout=None if deployment is None else _summarize_rollout(deployment),
    )


NO_DEPLOYMENT_FACTS = read_deployment_facts(None)


@dataclass(frozen=True, slots=True)
class PollSpec:
    """What the Secret check and the autoscaler poll read of the parsed spec, kept with the
    scaling policy (per uid, generation, labels and pause): an unchanged poll parses nothing
    (~50 µs a pool), and between rounds a pool keeps these few fields, not the ~7.5 KB of
    models (the reason the parsed spec is dropped)."""

    queue_name: str
    broker: str
    url_secret: tuple[str, str] | None  # urlSecretRef (name, key); None for SQS
    sqs: api.SqsSpec | None
    subscription: tuple[str, str] | None  # (topic, group) of an event subscription
    pause: api.Pause | None
    alert_threshold: int
    oldest_job_age_target: float


def read_poll_spec(pool: api.Pool) -> PollSpec:
    q = pool.spec.queue
    ref = q.url_secret_ref
    sub = q.subscription
    return PollSpec(
        queue_name=q.name,
        broker=q.broker,
        url_secret=None if ref is None else (ref.name, ref.key),
        sqs=q.sqs,
        subscription=None if sub is None else (sub.topic, sub.group),
        pause=pool.pause,
        alert_threshold=pool.spec.dead_letter.alert_threshold,
        oldest_job_age_target=pool.spec.autoscaling.target_oldest_job_age_seconds,
    )


@dataclass(slots=True)
class PoolController:
    """The one writer for one WorkerPool: reconcile + autoscaler poll in a single task."""

    ctx: context.OperatorContext
    namespace: str
    name: str
    # The pool and its Deployment as last seen (see ``body``/``deployment``).
    kept_body: Kept = field(default_factory=lambda: Kept())
    kept_deployment: Kept = field(default_factory=lambda: Kept())
    # Read off each body as it is kept (see ``body``/``deployment``).
    pool_facts: PoolFacts = NO_POOL_FACTS
    deployment_facts: DeploymentFacts = NO_DEPLOYMENT_FACTS
    deployment_gone: bool = False
    wake: Wake = field(default_factory=lambda: Wake())
    dirty: bool = True
    failures: int = 0
    next_reconcile: float = 0.0
    # What the API server asked the last failed reconcile to wait (Retry-After), 0 if nothing.
    server_wait: float = 0.0
    # Until when (ctx.clock) the API server asked this pool's reconcile or poll to wait: no
    # reconcile starts before, whatever wakes the loop meanwhile (a watch event, our own poll).
    server_wait_until: float = -math.inf
    # When (ctx.clock) the status was last written: telemetry-only changes wait for the refresh.
    status_written_at: float = -math.inf
    next_poll: float = 0.0
    secret: kube.SecretValue | None = None
    secret_key: queue.ClientKey | None = None
    secret_read_at: float = -1e9
    problem_logged: str | None = None
    parsed: api.Pool | api.InvalidPool | None = None
    parsed_key: tuple[Any, ...] | None = None
    policy: autoscaling.ScalingPolicy | None = None
    poll_spec: PollSpec | None = None  # None: the spec is invalid (kept like ``policy``)
    series: metrics.PoolSeries | None = None
    series_labels: tuple[str, str, str] | None = None
    series_broker: str | None = None
    spec_problem: reconcile.SpecProblemError | None = None
    applied: reconcile.AppliedState = field(default_factory=lambda: reconcile.AppliedState())
    scaling: scaler.ScalerMemory = field(default_factory=lambda: scaler.ScalerMemory())
    task: asyncio.Task[None] | None = None
    stopped: bool = False

    # ------------------------------------------------------------------ what is kept

    # Between rounds a pool keeps its WorkerPool and its Deployment packed (``Kept``) and
    # nothing parsed: as dicts they were ~20 KB of small objects per pool, long-lived ones
    # interleaved with each round's garbage, so the allocator could hand little back (2,000
    # pools on the real API server: 102 MB of free blocks held in arenas). A round unpacks what
    # it reads, once (a decompression and ``json.loads`` of some 40 µs), and
    # ``forget_round_state`` drops the unpacked views when the loop goes back to waiting.

    @property
    def body(self) -> Body | None:
        """The pool's WorkerPool as last seen (read-only: assign a new one to change it)."""
        return self.kept_body.read()

    @body.setter
    def body(self, value: Body | None) -> None:
        self.kept_body.keep(value)
        self.pool_facts = NO_POOL_FACTS if value is None else read_pool_facts(value)

    @property
    def has_body(self) -> bool:
        """A WorkerPool was seen (without unpacking it)."""
        return self.kept_body.packed is not None

    @property
    def deployment(self) -> Body | None:
        """The pool's Deployment as last seen (read-only: ``keep_deployment`` changes it)."""
        return self.kept_deployment.read()

    @deployment.setter
    def deployment(self, value: Body | None) -> None:
        self.kept_deployment.keep(value)
        self.deployment_facts = read_deployment_facts(value)

    @property
    def has_deployment(self) -> bool:
        """Its Deployment was seen (without unpacking it)."""
        return self.kept_deployment.packed is not None

    def forget_round_state(self) -> None:
        """Drop what a round unpacked or parsed: the views of the kept bodies, the parsed
        spec (see :meth:`parse`); called by ``run`` before it waits."""
        self.parsed = None
        self.kept_body.forget()
        self.kept_deployment.forget()

    # ------------------------------------------------------------------ observation (from kopf)

    @property
    def labels(self) -> tuple[str, str, str]:
        return (self.namespace, self.name, self.pool_facts.queue_name)

    @property
    def terminating(self) -> bool:
        return self.pool_facts.terminating

    # A watch event is compared with what is kept through the facts taken when it was kept
    # (resourceVersion, uid, labels and pause, Ready, the rollout's summary): unpacking the
    # kept body or Deployment per event cost a decompression and a json.loads each, about a
    # twentieth of the operator's CPU while 2,000 pools converged (py-spy).

    def observe(self, body: Body) -> None:
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        if not self.has_body or generation != self.applied.attempted_generation:
            # A generation the reconcile has not run on. One it ran on comes back with every
            # status write of ours: a failing reconcile waits for its backoff.
            self.dirty = True
        if self.has_body and self.pool_facts.labels_and_pause != str(_labels_and_pause(body)):
            self.dirty = True  # neither bumps the generation
        if not self.has_body or drift.is_newer_version(
            drift.read_resource_version(body), self.pool_facts.resource_version
        ):
            # never step back to a stale body (our own status writes are newer)
            self.body = kube.strip_managed_fields(body)
        self.notify()

    def observe_deployment(self, body: Body, deleted: bool) -> None:
        if deleted:
            self.deployment = None
            self.deployment_gone = True
            self.dirty = True
        else:
            if not self.is_ours(body):
                self.dirty = True  # a Deployment of that name someone else controls: report it
                self.notify()
                return
            kept = self.deployment_facts
            if kept.resource_version is None or drift.is_newer_version(
                drift.read_resource_version(body), kept.resource_version
            ):
                if not self.pool_facts.ready and (
                    kept.rollout is None or _summarize_rollout(body) != kept.rollout
                ):
                    # A pool not Ready whose rollout finished, started or failed: report it
                    # now, not at the next poll (minutes away for a slow-polling pool). Counts
                    # moving on the way, and a Ready pool's scaling steps, wait for the poll
                    # (whose plan knows a step from a rollout), so a scale of ten pods is
                    # neither ten status writes nor Ready flipping.
                    self.dirty = True
                self.keep_deployment(body)
            if self.applied.drift_reference is not None and not drift.is_subset(
                self.applied.drift_reference, body
            ):
                self.dirty = True  # someone else changed what we own: restore it
        self.notify()

    def notify(self) -> None:
        """Wake the pool's loop after an event. A pool whose loop is not running (a standby
        operator keeps every body until it leads) drops what the event unpacked at once."""
        self.wake.set()
        if self.task is None:
            self.forget_round_state()

    def keep_deployment(self, body: Body | None) -> None:
        """Remember ``body`` (a watch event or an answer) as the pool's Deployment, without
        the managedFields nobody reads."""
        self.deployment = None if body is None else kube.strip_managed_fields(body)

    def is_ours(self, child: Mapping[str, Any]) -> bool:
        """Controlled by this pool (its uid, not just its name: a pool deleted and created
        again under the same name owns nothing of the old one's)."""
        uid = self.pool_facts.uid
        return uid is not None and kube.controller_uid_of(child) == uid

    def start(self) -> None:
        if self.task is None:
            # In a context of its own: started from kopf's event handler, the task would copy
            # kopf's context variables, and with them keep that first event alive as long as
            # the pool lives (its whole body with managedFields, its cause, patch and logger:
            # ~35 KB per pool, measured at 2,000 pools on the real API server).
            self.task = asyncio.create_task(
                self.run(),
                name=f"workerpool/{self.namespace}/{self.name}",
                context=contextvars.Context(),
            )

    async def stop(self) -> None:
        self.stopped = True
        self.ctx.queue_readers.discard((self.namespace, self.name))
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
                self.forget_round_state()
                self.wake.clear()
                await self.wake.wait()
                continue
            now = self.ctx.clock()
            if (
                self.has_body
                and now >= self.server_wait_until
                and (self.dirty or now >= self.next_reconcile)
            ):
                if self.ctx.reconcile_slots.locked():
                    # A burst (an operator start, thousands of new pools) waits for a slot
                    # holding nothing unpacked: its peak memory is that of the slots, not of
                    # every pool.
                    self.forget_round_state()
                async with self.ctx.reconcile_slots:
                    if self.stopped or self.terminating:
                        continue  # it changed while waiting: the loop's checks come first
                    self.dirty = False
                    ok = await self.reconcile_once()
                if ok:
                    self.failures = 0
                    self.next_reconcile = self.ctx.clock() + context.jittered_delay(
                        cfg.resync_seconds, self.ctx.rng
                    )
                else:
                    self.failures += 1
                    delay = min(
                        cfg.retry_max_seconds, cfg.retry_base_seconds * 2 ** (self.failures - 1)
                    )
                    # A longer wait the API server asked for is waited here, outside the
                    # reconcile slot: the other pools' reconciles go on meanwhile.
                    self.next_reconcile = self.ctx.clock() + max(delay, self.server_wait)
                    if self.server_wait > 0:
                        self._wait_for_server(self.server_wait)
            now = self.ctx.clock()
            poll_wait = 0.0  # what the API server asked a failed poll to wait (Retry-After)
            if self.is_poll_due(now):
                policy = self.scaling_policy()
                self.next_poll = now + (policy.polling_interval_seconds if policy else 5.0)
                try:
                    await scaler.poll_queue(self, policy)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.warning(
                        "autoscaler poll failed for %s/%s: %s",
                        self.namespace,
                        self.name,
                        queue.redact(str(exc), self.secret),
                    )
                    poll_wait = _find_server_wait(exc)
                    if poll_wait > 0:
                        self.next_poll = max(self.next_poll, self.ctx.clock() + poll_wait)
                        self._wait_for_server(poll_wait)
            if self.scaling.status_deferred:
                # The poll did not get to write what the reconcile left it (it failed, or
                # its Secret went away): the reconcile runs again and writes it itself, now,
                # or once the wait the API server asked the poll for is over (run now, it
                # sent its reads and writes straight after the server said to wait).
                self.scaling.status_deferred = False
                if poll_wait > 0:
                    self.next_reconcile = min(self.next_reconcile, self.ctx.clock() + poll_wait)
                else:
                    self.dirty = True
            now = self.ctx.clock()
            # Dirty: due now, unless the API server asked for a wait that is not over (then
            # at its end; the round's own writes would answer "wait" with more requests).
            reconcile_at = max(self.server_wait_until, now if self.dirty else self.next_reconcile)
            if self.dirty and reconcile_at <= now:
                continue
            # The poll's time only while a poll may come (``is_poll_due``): a pool held for its
            # spec keeps the Secret value it had, and its past poll time woke the loop at once,
            # round after round (a valid pool edited into an invalid one spun its loop).
            polls = self.secret is not None and self.spec_problem is None
            deadline = min(reconcile_at, self.next_poll) if polls else reconcile_at
            timeout = max(0.0, deadline - now)
            self.forget_round_state()
            self.wake.clear()
            # A timer that sets ``wake``, not ``asyncio.wait_for``: on Python 3.11 that wraps
            # the wait in a Task of its own, one more per waiting pool.
            timer = asyncio.get_running_loop().call_later(timeout, self.wake.set)
            try:
                await self.wake.wait()
            finally:
                timer.cancel()

    def _wait_for_server(self, seconds: float) -> None:
        """Honour a wait of ``seconds`` the API server asked a request of this pool for (handed
        back by the client, not slept): no reconcile starts before it is over, and it is
        counted as the pool's wait."""
        self.server_wait_until = max(self.server_wait_until, self.ctx.clock() + seconds)
        self.ctx.metrics.observe_retry_after(seconds, "pool")

    async def reconcile_once(self) -> bool:
        started = time.perf_counter()
        result = "success"
        self.server_wait = 0.0
        try:
            await self._reconcile_through_conflicts()
            if self.spec_problem is not None:
                result = "invalid"
                # A bad spec waits for its next change; a Secret problem is retried (backoff).
                return self.spec_problem.reason == api.Reason.INVALID_SPEC
            if self.applied.apply_problem is not None:
                result = "invalid"
                return False  # retried with backoff: a LimitRange or webhook may change
            return True
        except asyncio.CancelledError:
            raise
        except kube.FencedError as exc:
            # Leadership lost: nothing may be written, not even Degraded; the process stops.
            result = "error"
            logger.warning("reconcile of %s/%s stopped: %s", self.namespace, self.name, exc)
            return False
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
            self.server_wait = _find_server_wait(exc)
            if self.server_wait > 0:
                logger.info(
                    "reconcile of %s/%s waits %.1fs before its next try, as the API server asked",
                    self.namespace,
                    self.name,
                    self.server_wait,
                )
                if self.failures == 0:
                    # Throttled once (the server asked to wait): nothing is wrong with the pool,
                    # and a failure report is one more write (and a Warning) at a server that
                    # just asked for none. One that lasts past the wait is reported.
                    return False
            # Kept until a reconcile gets through: the polls in between plan it too, so
            # Degraded stays ReconcileFailed (one Warning, not one per poll).
            self.applied.reconcile_error = f"{type(exc).__name__}: {text}"
            with contextlib.suppress(Exception):
                await report.apply_failure(self, self.applied.reconcile_error)
            return False
        finally:
            self.ctx.metrics.count_reconcile(self.namespace, self.name, result)
            self.ctx.metrics.reconcile_duration.observe(time.perf_counter() - started)

    async def _reconcile_through_conflicts(self) -> None:
        """Reconcile; on 409 (an object changed between our read and our write) read every
        object again and decide again, up to :data:`CONFLICT_ATTEMPTS` times, before the
        reconcile counts as failed. 429/5xx/timeouts are retried by the client itself."""
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                await reconcile.reconcile(self)
                return
            except kube.ApiError as exc:
                if not exc.is_conflict or attempt == CONFLICT_ATTEMPTS:
                    raise
                logger.info(
                    "reconcile of %s/%s met a conflict; reading again: %s",
                    self.namespace,
                    self.name,
                    exc,
                )
                self.deployment = None  # fetched again by the next reconcile
                self.applied.applied_hash = None  # and every child applied again

    # ------------------------------------------------------------------ reconcile

    def parse(self) -> api.Pool | api.InvalidPool:
        """The parsed pool, kept for the round under way only (``forget_round_state``).

        ~9 KB of pydantic models per pool (10,000 pools: ~90 MB) against some 30 µs to parse
        again: each round (a reconcile, a poll) parses once; the scaling policy, read by every
        round, is kept per (uid, generation, labels).
        """
        key = self._parse_key()
        if self.parsed_key != key or self.parsed is None:
            parsed = api.parse_pool(self.body or {})
            if self.parsed_key != key:
                self.policy = _build_policy(parsed)
                self.poll_spec = read_poll_spec(parsed) if isinstance(parsed, api.Pool) else None
                self.parsed_key = key
            self.parsed = parsed
        return self.parsed

    def _parse_key(self) -> tuple[Any, ...]:
        return self.pool_facts.parse_key

    def valid_pool(self) -> api.Pool:
        parsed = self.parse()
        if isinstance(parsed, api.InvalidPool):
            raise reconcile.SpecProblemError(api.Reason.INVALID_SPEC, parsed.message)
        return parsed

    def valid_poll_spec(self) -> PollSpec:
        """The kept :class:`PollSpec`, parsing only when the pool changed since."""
        if self.parsed_key != self._parse_key() or self.poll_spec is None:
            self.valid_pool()  # raises for an invalid spec; keeps the poll spec of a valid one
        assert self.poll_spec is not None
        return self.poll_spec

    def is_poll_due(self, now: float) -> bool:
        """Whether ``run`` polls the queue now (the deferral below relies on the same test)."""
        return (
            self.has_body
            and self.spec_problem is None
            and self.secret is not None
            and now >= self.next_poll
        )

    def defer_status_to_poll(self) -> bool:
        """True when the autoscaler poll due right after this reconcile will plan and write
        the pool's status (with the queue's numbers in it): a new pool's first status is then
        one write, not the reconcile's and the poll's (a third of the status writes of 1,000
        new pools on the real API server). Its signature is forgotten, so it plans whatever it
        reads; if it does not get to write, ``run`` reconciles again at once."""
        if not self.is_poll_due(self.ctx.clock()) or self.scaling_policy() is None:
            return False
        self.scaling.poll_signature = None
        self.scaling.status_deferred = True
        return True

    def scaling_policy(self) -> autoscaling.ScalingPolicy | None:
        if self.parsed_key != self._parse_key():
            self.parse()
        return self.policy

    async def read_secret(self, spec: PollSpec) -> plan_mod.SecretCheck:
        """Check the Secret behind urlSecretRef; keep its value in memory only. An SQS pool
        has no Secret: its URL, composed from the spec, stands in for the Secret's value."""
        if spec.sqs is not None:
            return await self._compose_sqs_url(spec.sqs)
        assert spec.url_secret is not None  # every broker block but sqs names its URL's Secret
        secret_name, secret_key = spec.url_secret
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
            queue.check_broker_url(value.value, spec.broker)
        except queue.InvalidBrokerUrlError as exc:
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

    async def _compose_sqs_url(self, sqs: api.SqsSpec) -> plan_mod.SecretCheck:
        # No Secret is read: the key names the pool (":" is no Secret-key character, so it
        # never meets a real Secret's) and the URL is its "version", so a changed spec gets a
        # new probe and the old one is closed.
        url = manifests.encode_sqs_url(sqs)
        before = self.secret_key
        self.secret = kube.SecretValue(resource_version=url, value=url)
        self.secret_key = queue.ClientKey(self.namespace, "", f"sqs:{self.name}", url)
        self.secret_read_at = self.ctx.clock()
        if before is not None and before != self.secret_key:
            await self.ctx.release_unused()
        return plan_mod.SecretCheck("ok")

    def observed(
        self,
        secret: plan_mod.SecretCheck,
        queue_sharing: plan_mod.QueueSharing | None,
        **more: Any,
    ) -> plan_mod.Observed:
        """What the plan reads. The caller passes the queue sharing it read (an autoscaler
        poll: the one it decided with and keeps in its signature)."""
        body = self.body or {}
        previous = api.parse_status(body.get("status"))
        applied = self.applied.reconciled_generation
        if applied is None and previous is not None:
            applied = previous.observed_generation  # not applied by this run yet: as stored
        deployment = None
        if self.deployment is not None:
            deployment = dataclasses.replace(
                plan_mod.read_deployment_state(self.deployment),
                rollout_generation=self.applied.rollout_generation,
            )
        return plan_mod.Observed(
            now=dt.datetime.now(dt.UTC),
            secret=secret,
            deployment=deployment,
            previous=previous,
            applied_generation=applied,
            apply_problem=self.applied.apply_problem,
            reconcile_error=self.applied.reconcile_error,
            missing_apis=self.applied.missing_apis,
            not_owned=self.applied.not_owned,
            replicas_owned_by=self.scaling.replicas_blocked_by,
            queue_sharing=queue_sharing,
            builtin_costs_pending=self._may_carry_builtin_costs(),
            **more,
        )

    def _may_carry_builtin_costs(self) -> bool:
        parsed = self.parse()
        if isinstance(parsed, api.InvalidPool):
            return False
        return reconcile.may_carry_builtin_costs(self, parsed.spec.autoscaling.mode)

    def find_queue_sharing(self) -> plan_mod.QueueSharing | None:
        """Which other pools read this pool's queue, as last recorded (None: not read yet)."""
        return self.ctx.find_queue_sharing((self.namespace, self.name))

    @property
    def broker(self) -> str:
        """The pool's broker block (``redis``, ``rabbitmq``, ``sqs``), read off the raw spec."""
        return self.pool_facts.broker

    def bound_series(self) -> metrics.PoolSeries:
        """The pool's series, bound again when its queue (a label) or its broker changed."""
        labels = self.labels
        broker = self.broker
        if self.series is None or self.series_labels != labels or self.series_broker != broker:
            if self.series_labels is not None:
                self.ctx.metrics.forget_pool(self.series_labels, self.series)
            self.series = self.ctx.metrics.bind_pool(labels, broker=broker)
            self.series_labels = labels
            self.series_broker = broker
        return self.series


def _find_server_wait(exc: BaseException) -> float:
    """The wait the API server asked for with the request that failed (Retry-After, bounded
    by the client), 0 when it asked for none."""
    if isinstance(exc, kube.ApiError) and exc.retry_after is not None:
        return exc.retry_after
    return 0.0


def _build_policy(parsed: api.Pool | api.InvalidPool) -> autoscaling.ScalingPolicy | None:
    if isinstance(parsed, api.InvalidPool):
        return None
    try:
        return autoscaling.build_scaling_policy(parsed.spec)
    except ValueError:
        return None


def _summarize_rollout(deployment: Mapping[str, Any]) -> tuple[Any, ...]:
    """Where a Deployment's rollout stands, without the counts moving on the way: the
    controller has seen its spec, all pods are updated, available, ready; it failed."""
    state = plan_mod.read_deployment_state(deployment)
    want = state.spec_replicas
    return (
        state.observed_generation >= state.generation,
        state.updated_replicas >= want,
        state.available_replicas >= want,
        state.ready_replicas >= want,
        state.replicas > want,  # old pods still terminating
        state.progress_deadline_exceeded,
        state.replica_failure,
    )
