"""What one run of the operator shares: config, metrics, Redis readers, the Kubernetes client,
the Secret cache and every pool's controller.

Built by ``shell.main`` (or the tests) with :func:`build_context`, handed to
``shell.handlers.register``; every :class:`~workerfleet_operator.shell.pool.PoolController`
holds it.

The Redis URL is read from the referenced Secret into memory only (cached per Secret
resourceVersion, re-read every ``secret_cache_seconds``); pools that share a Secret share one
read, and a stopped pool's value is forgotten (:meth:`OperatorContext.release_unused`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from workerfleet_operator import plan as plan_mod
from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import credentials as credentials_module
from workerfleet_operator.shell import kube, metrics, queue

if TYPE_CHECKING:
    from workerfleet_operator.shell.pool import PoolController

logger = logging.getLogger("workerfleet.operator")

Body = dict[str, Any]
PoolKey = tuple[str, str]


@dataclass
class QueueReaders:
    """Which pool reads which queue: pool -> (where its queue lives, its creationTimestamp),
    and each queue's readers beside it, so finding a pool's co-readers costs the size of its
    group, not of the fleet (a scan of every pool per poll and per plan made converging N
    pools cost N² steps: minutes of CPU at 10,000 pools)."""

    _by_pool: dict[PoolKey, tuple[str, str]] = field(default_factory=dict)
    _by_queue: dict[str, dict[PoolKey, str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._by_pool)

    def record(self, key: PoolKey, where: str, created: str) -> None:
        """``key`` reads the queue ``where`` (an identity from ``queue.identify_queue``)."""
        if self._by_pool.get(key) == (where, created):
            return
        self.discard(key)
        self._by_pool[key] = (where, created)
        self._by_queue.setdefault(where, {})[key] = created

    def discard(self, key: PoolKey) -> None:
        """``key`` reads no queue any more (stopped, or its Secret is unreadable)."""
        before = self._by_pool.pop(key, None)
        if before is None:
            return
        group = self._by_queue.get(before[0], {})
        group.pop(key, None)
        if not group:
            self._by_queue.pop(before[0], None)

    def find_sharing(self, key: PoolKey) -> plan_mod.QueueSharing | None:
        """Which other pools read the same queue on the same Redis; None before ``key`` read it.

        The pool created first (then by namespace/name) scales; the others hold their replicas.
        """
        mine = self._by_pool.get(key)
        if mine is None:
            return None
        sharing = sorted((created, k) for k, created in self._by_queue[mine[0]].items())
        first = sharing[0][1]
        return plan_mod.QueueSharing(
            others=tuple(sorted(f"{k[0]}/{k[1]}" for _, k in sharing if k != key)),
            first=f"{first[0]}/{first[1]}",
            holds=first != key,
        )


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
    # The current login (kopf's login handler and every KubeClient share it; see credentials).
    credentials: credentials_module.Credentials | None = None
    # The leader elector's "may I write now?" (None: standalone, always).
    fence: Callable[[], bool] | None = None
    client: kube.KubeClient | None = None
    pools: dict[PoolKey, PoolController] = field(default_factory=dict)
    # (namespace, secret, key) -> the read on its way, awaited by every pool that asks meanwhile.
    _secret_reads: dict[tuple[str, str, str], asyncio.Future[tuple[float, kube.SecretValue]]] = (
        field(default_factory=dict)
    )
    # (namespace, secret, key) -> (read at, value): pools sharing a Secret share one read.
    secrets: dict[tuple[str, str, str], tuple[float, kube.SecretValue]] = field(
        default_factory=dict
    )
    # Pools on one queue are found here (see QueueReaders).
    queue_readers: QueueReaders = field(default_factory=QueueReaders)
    # Reconciles running at once (config.max_concurrent_reconciles); set in __post_init__.
    reconcile_slots: asyncio.Semaphore = field(init=False)
    # Forgotten pools whose controllers are being stopped (see forget_pool): held here so the
    # tasks are not collected midway, and awaited by the operator's cleanup.
    pool_stops: set[asyncio.Task[None]] = field(default_factory=set)
    # release_unused's sweeps (see there): the request the next sweep answers, the task that
    # runs them, and when the last one ended (time.monotonic()).
    _release_next: asyncio.Future[None] | None = None
    _release_sweeps: asyncio.Task[None] | None = None
    _release_last: float = -math.inf

    def __post_init__(self) -> None:
        self.reconcile_slots = asyncio.Semaphore(self.config.max_concurrent_reconciles)

    def find_queue_sharing(self, key: PoolKey) -> plan_mod.QueueSharing | None:
        """Which other pools read ``key``'s queue (:meth:`QueueReaders.find_sharing`)."""
        return self.queue_readers.find_sharing(key)

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
        # One read at a time per Secret: pools asking while it is on its way wait for it
        # (10,000 new pools sharing a Secret sent 13,452 GETs of it to a busy API server).
        pending = self._secret_reads.get((namespace, name, key))
        if pending is None:
            pending = asyncio.ensure_future(self._read_secret(namespace, name, key, now))
            self._secret_reads[(namespace, name, key)] = pending
        return await asyncio.shield(pending)

    async def _read_secret(
        self, namespace: str, name: str, key: str, now: float
    ) -> tuple[float, kube.SecretValue]:
        try:
            value = await kube.fetch_secret_value(self.kube_client(), namespace, name, key)
        except kube.SecretNotFoundError:
            self.secrets.pop((namespace, name, key), None)
            raise
        finally:
            self._secret_reads.pop((namespace, name, key), None)
        self.secrets[(namespace, name, key)] = (now, value)
        return now, value

    async def release_unused(self) -> None:
        """Forget Secret values, and close queue probes and Redis clients, that no running
        pool uses any more; return once a sweep that began after this call has ended.

        Called when a pool stops: a deleted pool's decoded URL must not stay in memory, nor
        its probe or connection pool open, for the rest of the operator's life.

        A sweep walks every running pool and every probe, so the calls made meanwhile share
        the next one, and sweeps start at most every ``RELEASE_SWEEP_INTERVAL_SECONDS``:
        one sweep per stopped pool made deleting 10,000 pools cost 84 CPU-seconds
        (quadratic in the pools), with the event loop busy for all of it.
        """
        request = self._release_next
        if request is None:
            request = self._release_next = asyncio.get_running_loop().create_future()
        if self._release_sweeps is None or self._release_sweeps.done():
            self._release_sweeps = asyncio.ensure_future(self._run_release_sweeps())
        await asyncio.shield(request)

    async def _run_release_sweeps(self) -> None:
        """Answer the pending request with one sweep, then the next one if calls came in
        meanwhile, each no sooner than the interval after the previous one ended."""
        while (request := self._release_next) is not None:
            wait = self._release_last + RELEASE_SWEEP_INTERVAL_SECONDS - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._release_next = None  # calls from now on wait for the next sweep
            try:
                await self._sweep_unused()
            except asyncio.CancelledError:
                request.cancel()
                raise
            except Exception as exc:  # every caller of this sweep sees its failure
                request.set_exception(exc)
            else:
                request.set_result(None)
            finally:
                self._release_last = time.monotonic()

    async def _sweep_unused(self) -> None:
        probes = {
            (p.secret_key, p.pool_facts.queue_name)
            for p in self.pools.values()
            if p.secret_key is not None
        }
        in_use = {(k.namespace, k.secret, k.key) for k, _ in probes}
        for cached in [c for c in self.secrets if c not in in_use]:
            del self.secrets[cached]
        await self.queues.close_unused(probes)

    def forget_pool(self, controller: PoolController) -> asyncio.Task[None] | None:
        """Forget ``controller``'s pool now; stop the controller and release what no running
        pool uses any more (:meth:`release_unused`) in a task of its own, returned.

        Forgotten at once, so that an event of a new pool of that name gets a new controller;
        stopped in another task, since the caller may be the pool's own loop, which ``stop``
        cancels and awaits. None when ``controller`` is no longer the pool's (forgotten before).
        """
        key = (controller.namespace, controller.name)
        if self.pools.get(key) is not controller:
            return None
        del self.pools[key]
        task = asyncio.get_running_loop().create_task(
            self._stop_pool(controller), name=f"stop workerpool/{key[0]}/{key[1]}"
        )
        self.pool_stops.add(task)
        task.add_done_callback(self.pool_stops.discard)
        return task

    async def _stop_pool(self, controller: PoolController) -> None:
        await controller.stop()
        await self.release_unused()

    async def forget_pool_if_gone(self, controller: PoolController) -> bool:
        """Read ``controller``'s WorkerPool; forget the controller (:meth:`forget_pool`) if the
        pool no longer exists, or exists under another uid (deleted and created again). True
        when forgotten.

        kopf sends no DELETED event for a pool deleted while its watch was gone: after a 410 it
        lists again, and a pool missing from the list is simply not mentioned. Its controller
        then ran on: each time garbage collection deleted the pool's Deployment, the reconcile
        created it again (owned by the dead uid, its workers taking jobs until the next
        collection), and the pool held its queue against any other pool reading it.
        """
        uid = controller.pool_facts.uid
        ref = kube.build_ref("WorkerPool", controller.namespace, controller.name)
        live = await kube.fetch_object(self.kube_client(), ref)
        if uid is None or controller.pool_facts.uid != uid:
            return False  # a body came meanwhile: its events know better than this read
        if live is not None and str((live.get("metadata") or {}).get("uid")) == uid:
            return False
        return self.forget_pool(controller) is not None

    def kube_client(self) -> kube.KubeClient:
        """The operator's API client, made on first use (after the login)."""
        if self.client is None:
            if self.credentials is None or self.credentials.current is None:
                raise RuntimeError("the operator has not logged in yet")
            budget = kube.RequestBudget(self.config.api_qps, self.config.api_burst)
            retry = kube.RetryPolicy(
                attempts=self.config.api_retry_attempts,
                max_seconds=self.config.api_retry_max_seconds,
                retry_after_max_seconds=self.config.api_retry_after_max_seconds,
            )
            self.client = kube.KubeClient(
                self.credentials,
                budget=budget,
                retry=retry,
                fence=self.fence,
                max_in_flight=self.config.api_max_in_flight,
                on_retry_after=self.metrics.observe_slept_retry_after,
            )
        return self.client


RESYNC_JITTER = 0.1
# Sweeps of what no pool uses start at most this often (OperatorContext.release_unused).
RELEASE_SWEEP_INTERVAL_SECONDS = 0.25


def jittered_delay(seconds: float, rng: random.Random) -> float:
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
