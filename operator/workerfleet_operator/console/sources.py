"""Where the web console reads pools from: a broker URL with named queues, or WorkerPools.

Called by :mod:`workerfleet_operator.console.app`. A source lists pools (one row per queue with
its numbers, and for a WorkerPool its replicas, conditions and last scaling decision from the
status the operator wrote) and hands out the broker of a pool's queue, opened with
:func:`worker_runtime.brokers.open_broker`, so every broker the runtime serves (Redis, RabbitMQ,
SQS, memory) works. The console reads and writes only through the broker's protocols
(``QueueProbe``, ``DeadLetters``, ``InFlightJobs`` when it has it). Broker URLs stay inside the
source: pages show :func:`worker_runtime.brokers.describe_target` (no user, no password).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from worker_runtime import brokers, errors
from worker_runtime.brokers import base as broker_base


@dataclass(frozen=True)
class ConditionView:
    """One status condition as a page shows it."""

    type: str
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class PoolView:
    """One pool's row: identity, replicas, queue numbers, conditions, last decision."""

    key: str
    """``queue`` (URL source) or ``namespace/name`` (WorkerPool source); the pages' handle."""
    name: str
    namespace: str | None
    queue: str
    target: str
    replicas: int | None = None
    desired: int | None = None
    backlog: int | None = None
    in_flight: int | None = None
    oldest_age_seconds: float | None = None
    dead_letter: int | None = None
    workers: int | None = None
    conditions: tuple[ConditionView, ...] = ()
    decision: str | None = None
    decision_time: str | None = None
    error: str | None = None


class PoolNotFoundError(LookupError):
    """The page names a pool the source does not know."""


class Source(Protocol):
    """What the console reads from (a broker URL, or the cluster's WorkerPools)."""

    async def fetch_pools(self) -> list[PoolView]: ...

    async def fetch_queue_broker(self, key: str) -> tuple[Any, str]:
        """The open broker of the pool ``key`` and its queue name (the source closes it)."""
        ...

    async def close(self) -> None: ...


def build_pool_from_stats(base: PoolView, s: broker_base.QueueStats) -> PoolView:
    """``base`` with the queue's live numbers (pure)."""
    import dataclasses

    return dataclasses.replace(
        base,
        backlog=s.backlog,
        in_flight=s.in_flight,
        oldest_age_seconds=s.oldest_job_age_seconds,
        dead_letter=s.dead_letter,
        workers=len(s.workers),
    )


class BrokerCache:
    """Open brokers by (URL, queue), opened on first use and closed together."""

    def __init__(self) -> None:
        self._brokers: dict[tuple[str, str], Any] = {}

    async def fetch(self, url: str, queue: str) -> Any:
        broker = self._brokers.get((url, queue))
        if broker is None:
            # a reader, never the consumer: it must leave the workers' queue settings (SQS
            # visibility and redrive limit) as they are, and a page of a queue that does not
            # exist must not create it (a producer declared RabbitMQ's four queues, SQS's
            # two); a replay sends to the queues the dead letters came from, which exist
            broker = self._brokers[(url, queue)] = await brokers.open_broker(
                url, queue, role=broker_base.QueueRole.READER
            )
        return broker

    async def close(self) -> None:
        opened, self._brokers = list(self._brokers.values()), {}
        for broker in opened:
            await broker.close()


class URLSource:
    """Queues named on the command line, all on one broker URL (any scheme)."""

    def __init__(self, url: str, queues: Sequence[str]) -> None:
        brokers.scheme_of(url)  # refuse an unusable URL at start, not per page
        if url.partition("://")[0].lower() in brokers.REDIS_SCHEMES:
            from worker_runtime.brokers.redis import connection

            connection.parse_redis_url(url)
        self._url = url
        self._queues = list(dict.fromkeys(queues))
        self._brokers = BrokerCache()

    async def fetch_pools(self) -> list[PoolView]:
        target = brokers.describe_target(self._url)
        out: list[PoolView] = []
        for queue in self._queues:
            base = PoolView(key=queue, name=queue, namespace=None, queue=queue, target=target)
            out.append(await _with_stats(base, functools.partial(self._fetch_stats, queue)))
        return out

    async def _fetch_stats(self, queue: str) -> broker_base.QueueStats:
        broker = await self._brokers.fetch(self._url, queue)
        if not isinstance(broker, broker_base.QueueProbe):
            raise errors.CapabilityMissing("this broker reports no queue statistics")
        return await broker.fetch_stats()

    async def fetch_queue_broker(self, key: str) -> tuple[Any, str]:
        if key not in self._queues:
            raise PoolNotFoundError(key)
        return await self._brokers.fetch(self._url, key), key

    async def close(self) -> None:
        await self._brokers.close()


RedisSource = URLSource
"""The name this source had when only Redis was served."""


async def _with_stats(
    base: PoolView, read: Callable[[], Awaitable[broker_base.QueueStats]]
) -> PoolView:
    import dataclasses

    try:
        s = await asyncio.wait_for(read(), timeout=10.0)
    except (errors.BrokerError, errors.ConfigError, OSError, TimeoutError) as exc:
        # the reason, never the URL (an error text may quote it)
        return dataclasses.replace(base, error=f"queue unreachable: {type(exc).__name__}")
    return build_pool_from_stats(base, s)


@dataclass
class RateSample:
    """The counters of one earlier read, to turn totals into per-second rates."""

    at: float
    enqueued: int
    completed: int
    failed: int | None  # None: the broker keeps no failed total (RabbitMQ)


class RateTracker:
    """Per-queue rates from consecutive reads (the console has no history of its own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, RateSample] = {}

    def observe(self, key: str, s: broker_base.QueueStats) -> dict[str, float] | None:
        """Rates since the previous read of ``key`` (None on the first read, a reset, or a
        broker that keeps no totals); no ``failed`` rate where the broker keeps no failed
        total (RabbitMQ keeps the enqueued and completed ones)."""
        now = self._clock()
        if s.enqueued_total is None or s.completed_total is None:
            return None  # SQS keeps no totals: no rates, never a rate of 0
        sample = RateSample(now, s.enqueued_total, s.completed_total, s.failed_total)
        prev = self._last.get(key)
        self._last[key] = sample
        if prev is None or now - prev.at < 0.5 or sample.enqueued < prev.enqueued:
            return None
        span = now - prev.at
        rates = {
            "enqueued": (sample.enqueued - prev.enqueued) / span,
            "completed": (sample.completed - prev.completed) / span,
        }
        if sample.failed is not None and prev.failed is not None:
            rates["failed"] = (sample.failed - prev.failed) / span
        return rates


class KubeSource:
    """The WorkerPools of one namespace (or all) through the user's kubeconfig.

    Pool rows come from each WorkerPool's status (replicas, conditions, the last scaling
    decision, the queue numbers the operator measured); a pool's queue page reads the queue
    itself, with the URL from the pool's Secret, kept in memory only.
    """

    def __init__(self, kubeconfig: str | None, namespaces: Sequence[str] = ()) -> None:
        from workerfleet_operator.shell import inventory

        self._login = inventory.build_login(kubeconfig)
        # Empty: every namespace (a cluster-wide list); else only these, one list each (what a
        # namespaced install's Roles allow).
        self._namespaces = tuple(dict.fromkeys(namespaces))
        self._brokers = BrokerCache()

    async def fetch_pools(self) -> list[PoolView]:
        from workerfleet_operator.shell import inventory

        scopes: Sequence[str | None] = self._namespaces or (None,)
        listed = await asyncio.gather(
            *(inventory.fetch_workerpools(self._login.client, ns) for ns in scopes)
        )
        return [inventory.build_pool_view(b) for bodies in listed for b in bodies]

    async def fetch_queue_broker(self, key: str) -> tuple[Any, str]:
        from workerfleet_operator.shell import inventory

        namespace, _, name = key.partition("/")
        if not name or (self._namespaces and namespace not in self._namespaces):
            raise PoolNotFoundError(key)
        try:
            body = await inventory.fetch_workerpool(self._login.client, namespace, name)
            url, queue = await inventory.fetch_queue_target(self._login.client, body)
        except inventory.InventoryError as exc:
            raise PoolNotFoundError(key) from exc
        return await self._brokers.fetch(url, queue), queue

    async def close(self) -> None:
        await self._brokers.close()
        await self._login.client.close()
