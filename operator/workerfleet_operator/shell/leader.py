"""Leader election on a ``coordination.k8s.io/v1`` Lease: one replica reconciles, the others wait.

Wired by ``shell.main`` when ``WORKERFLEET_OPERATOR_LEADER_ELECTION`` is true (the chart runs two
replicas so). Every replica runs kopf and keeps its watches warm; only the leader starts pool
loops, and :meth:`LeaderElector.may_write` is the fence ``shell.kube.KubeClient`` asks before
every write, so a replica that cannot renew stops writing by itself, even mid-reconcile.

The protocol is client-go's ``leaderelection`` with kubebuilder's defaults (lease 15 s, renew
deadline 10 s, retry period 2 s):

- a standby reads the Lease every half retry period; it takes it over (a PUT on the
  resourceVersion it read, so one of two racing standbys wins) only after the record has not
  changed for the lease duration *the record names* (the holder's, whose renew deadline is
  shorter; a replica of another rollout may have other timings) by its *own* monotonic clock,
  counted from when it saw the last change: no trust in the other replica's wall clock;
- the leader renews every retry period; a write is allowed only while the last successful renewal
  was *sent* less than ``renew_deadline`` ago. Since renew_deadline < lease_duration, the old
  leader's last write is always before a standby can take over (the margin absorbs a request in
  flight);
- a leader that misses its renew deadline, or reads another holder in its Lease, stops for good:
  the process exits (status 1) and the pod restarts as a standby, as kubebuilder managers do;
- a Lease found deleted is created by its leader, or by a standby only once the holder it last
  saw has not renewed for the lease duration (creating it at once made a second leader);
- on a clean stop (SIGTERM) the leader stops writing, then releases the Lease (holder emptied),
  so a standby takes over within one retry period instead of a whole lease duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from workerfleet_operator.shell import context as context_mod
from workerfleet_operator.shell import credentials, kube

logger = logging.getLogger("workerfleet.operator.leader")

# A standby's tries are spread by up to 10 % (see LeaderElector.standby_delay).
JITTER = 0.1


@dataclass(frozen=True)
class LeaseTiming:
    """kubebuilder's defaults; ``retry < renew_deadline < lease_duration`` (checked by config)."""

    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0


def build_identity() -> str:
    """This replica's holder identity: the pod name (hostname) and a random suffix, so a
    restarted pod never mistakes its predecessor's Lease for its own."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def find_lease_namespace(service_account_dir: str) -> str:
    """The pod's own namespace (from its service account), else ``default``."""
    path = os.path.join(service_account_dir, "namespace")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip() or "default"
    return "default"


def format_micro_time(seconds: float) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquire, renew and release one Lease; say whether this replica may write now."""

    def __init__(
        self,
        client: kube.KubeClient,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming,
        *,
        on_started_leading: Callable[[], Awaitable[None]] | None = None,
        on_stopped_leading: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.ref = kube.build_ref("Lease", namespace, name)
        self.identity = identity
        self.timing = timing
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._clock = clock
        self._wall = wall_clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._leading = False
        self._renewed_at = float("-inf")  # when the last successful renewal was sent
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = float("-inf")
        # The lease duration the observed record names (its holder's), else our own.
        self._observed_duration = timing.lease_duration_seconds
        self.lost = False
        self.transitions = 0

    # ------------------------------------------------------------------ the fence

    @property
    def leading(self) -> bool:
        return self._leading

    def may_write(self) -> bool:
        """True only while this replica holds the Lease and renewed it within the deadline."""
        if not self._leading:
            return False
        if self._clock() - self._renewed_at < self.timing.renew_deadline_seconds:
            return True
        self._leading = False  # past the deadline: fenced from now on, whatever comes back
        return False

    # ------------------------------------------------------------------ the loop

    def standby_delay(self) -> float:
        """How long a standby waits before its next try.

        Safety needs only that a standby counts the lease duration from a moment at or after
        the leader's last renewal (when it *saw* the record move, on its own clock). Speed needs
        that moment close to the renewal and a try right when the duration has passed: so a
        standby reads the Lease every half retry period (+0-10 % jitter; a small GET) instead
        of client-go's retry period + 0-120 %, and sleeps no longer than until the expiry.
        """
        poll = self.timing.retry_period_seconds / 2 * self._rng.uniform(1.0, 1.0 + JITTER)
        until_expiry = self._observed_at + self._observed_duration - self._clock()
        if until_expiry > 0:
            return max(0.01, min(poll, until_expiry + 0.01))
        return poll

    async def run(self) -> None:
        """Wait for the Lease, then renew it until the deadline is missed (returns: lost)."""
        while not await self.try_acquire_or_renew():
            await self._sleep(self.standby_delay())
        logger.info("became the leader (Lease %s/%s)", self.ref.namespace, self.ref.name)
        if self._on_started is not None:
            await self._on_started()
        while True:
            await self._sleep(self.timing.retry_period_seconds)
            if not self.may_write():
                break
            with contextlib.suppress(Exception):
                await self.try_acquire_or_renew()
            if not self.may_write():
                break
        self.lost = True
        logger.error(
            "lost the Lease %s/%s (not renewed within %.1fs, or held by another): stopping",
            self.ref.namespace,
            self.ref.name,
            self.timing.renew_deadline_seconds,
        )
        if self._on_stopped is not None:
            await self._on_stopped()

    async def try_acquire_or_renew(self) -> bool:
        """One round of client-go's tryAcquireOrRenew; True when this replica holds the Lease."""
        sent_at = self._clock()
        now = format_micro_time(self._wall())
        # Rounded up: a standby reading a shorter duration would take over before our deadline.
        duration = max(1, math.ceil(self.timing.lease_duration_seconds))
        try:
            lease = await kube.fetch_object(self.client, self.ref)
        except Exception as exc:
            logger.warning("reading the Lease failed: %s", exc)
            return False
        if lease is None:
            if self._holds_elsewhere():
                # Deleted under a live leader (kubectl delete, a namespace clean-up): creating
                # it now made a second leader while the first still wrote. Its leader creates
                # it again at its next renewal; if none does, it is ours after the duration.
                return False
            body = self._build_lease(None, now, duration, acquire_time=now, transitions=0)
            return await self._write("POST", body, sent_at)
        spec: Mapping[str, Any] = lease.get("spec") or {}
        record = (
            spec.get("holderIdentity"),
            spec.get("renewTime"),
            spec.get("acquireTime"),
            spec.get("leaseTransitions"),
        )
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()
        self._observed_duration = _duration_of(spec, self.timing)
        holder = spec.get("holderIdentity") or ""
        # The holder's own duration, not ours: a leader of an older rollout (lease 30 s, renew
        # deadline 25 s) was taken over by a standby of 15 s while it still wrote.
        expired = self._clock() >= self._observed_at + self._observed_duration
        if holder and holder != self.identity and self._leading:
            # Someone else holds our Lease (it was edited, or deleted and created again): stop
            # writing now, not at the renew deadline, seconds of two writers later.
            self._leading = False
            logger.error(
                "the Lease %s/%s names %s: no longer leading",
                self.ref.namespace,
                self.ref.name,
                holder,
            )
            return False
        if holder and holder != self.identity and not expired:
            return False  # someone else holds a live Lease
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            body = self._build_lease(
                lease, now, duration, acquire_time=spec.get("acquireTime") or now,
                transitions=transitions,
            )  # fmt: skip
        else:
            body = self._build_lease(
                lease, now, duration, acquire_time=now, transitions=transitions + 1
            )
        return await self._write("PUT", body, sent_at)

    def _holds_elsewhere(self) -> bool:
        """Another replica held the Lease when we last read it, and may still lead."""
        holder = self._observed[0] if self._observed is not None else None
        live = self._clock() < self._observed_at + self._observed_duration
        return bool(holder) and holder != self.identity and live

    def _build_lease(
        self,
        current: Mapping[str, Any] | None,
        now: str,
        duration: int,
        *,
        acquire_time: str,
        transitions: int,
    ) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": self.ref.name, "namespace": self.ref.namespace}
        if current is not None:
            metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
        return {
            "apiVersion": self.ref.api_version,
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": duration,
                "acquireTime": acquire_time,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }

    async def _write(self, method: str, body: dict[str, Any], sent_at: float) -> bool:
        try:
            if method == "POST":
                written = await kube.create_object(self.client, body)
            else:
                written = await kube.update_object(self.client, body)
        except kube.ApiError as exc:
            if exc.status not in (409, 404):  # 409: another replica wrote first
                logger.warning("writing the Lease failed: %s", exc)
            return False
        except Exception as exc:
            logger.warning("writing the Lease failed: %s", exc)
            return False
        spec = written.get("spec") or {}
        self._observed = (
            spec.get("holderIdentity"),
            spec.get("renewTime"),
            spec.get("acquireTime"),
            spec.get("leaseTransitions"),
        )
        self._observed_at = self._clock()
        self._observed_duration = _duration_of(spec, self.timing)
        if not self._leading:
            self.transitions = int(spec.get("leaseTransitions") or 0)
        self._leading = True
        self._renewed_at = sent_at
        return True

    async def release(self) -> None:
        """Stop writing at once, then hand the Lease back (holder emptied) if we still hold it."""
        was_leading = self._leading and not self.lost
        self._leading = False
        if not was_leading:
            return
        try:
            lease = await kube.fetch_object(self.client, self.ref)
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.identity:
                return
            now = format_micro_time(self._wall())
            released = {
                "apiVersion": self.ref.api_version,
                "kind": "Lease",
                "metadata": {
                    "name": self.ref.name,
                    "namespace": self.ref.namespace,
                    "resourceVersion": lease["metadata"]["resourceVersion"],
                },
                "spec": {
                    **spec,
                    "holderIdentity": "",
                    "leaseDurationSeconds": 1,
                    "renewTime": now,
                },
            }
            await kube.update_object(self.client, released)
            logger.info("released the Lease %s/%s", self.ref.namespace, self.ref.name)
        except Exception as exc:  # a standby then waits one lease duration: slower, still safe
            logger.warning("releasing the Lease failed: %s", exc)


def _duration_of(spec: Mapping[str, Any], timing: LeaseTiming) -> float:
    """The lease duration a Lease's record names (its holder's timing), else ``timing``'s."""
    named = spec.get("leaseDurationSeconds")
    if isinstance(named, int) and not isinstance(named, bool) and named > 0:
        return float(named)
    return timing.lease_duration_seconds


def build_elector(ctx: context_mod.OperatorContext, stop: Callable[[], None]) -> LeaderElector:
    """The operator's elector, wired into ``ctx``: its fence guards every write of ctx's client;
    becoming leader starts every pool loop; losing the Lease calls ``stop`` (the process exits).

    Its own client shares the login but not the request budget (a renewal must never queue
    behind a thousand pools' reads) and tries each request once (the next try is a retry period
    away, and the deadline must not be spent waiting on one request).
    """
    cfg = ctx.config
    if ctx.credentials is None:
        raise RuntimeError("credentials must be set before the elector is built")
    timing = LeaseTiming(
        cfg.lease_duration_seconds, cfg.renew_deadline_seconds, cfg.retry_period_seconds
    )
    client = kube.KubeClient(
        ctx.credentials,
        timeout=max(1.0, timing.renew_deadline_seconds / 2),
        retry=kube.RetryPolicy(attempts=1),
    )
    namespace = cfg.lease_namespace or find_lease_namespace(credentials.SERVICE_ACCOUNT_DIR)

    async def started() -> None:
        for controller in list(ctx.pools.values()):
            controller.start()

    async def stopped() -> None:
        stop()

    elector = LeaderElector(
        client,
        namespace,
        cfg.lease_name,
        cfg.leader_identity or build_identity(),
        timing,
        on_started_leading=started,
        on_stopped_leading=stopped,
    )
    ctx.fence = elector.may_write
    return elector


def register(registry: kopf.OperatorRegistry, elector: LeaderElector) -> None:
    """Run the elector alongside kopf: started with the operator, released on a clean stop."""
    tasks: list[asyncio.Task[None]] = []

    @kopf.on.startup(registry=registry)
    async def start_election(**_: Any) -> None:
        tasks.append(asyncio.create_task(elector.run(), name="leader-election"))

    @kopf.on.cleanup(registry=registry)
    async def release_lease(**_: Any) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await elector.release()
        await elector.client.close()
