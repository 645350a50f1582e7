"""Where the web console reads pools from: a Redis URL with named queues, or WorkerPools.

Called by :mod:`workerfleet_operator.console.app`. A source lists pools (one row per queue with
its numbers, and for a WorkerPool its replicas, conditions and last scaling decision from the
status the operator wrote) and hands out a Redis client for a pool's queue. Queue numbers come
only from the runtime's read-only APIs (:mod:`worker_runtime.brokers.redis.stats`). Redis URLs
stay inside the source: pages show :func:`build_display_target` (no user, no password).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from worker_runtime.brokers.redis import connection, stats


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
    """``queue`` (Redis source) or ``namespace/name`` (WorkerPool source); the pages' handle."""
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
    """What the console reads from (a Redis URL, or the cluster's WorkerPools)."""

    async def fetch_pools(self) -> list[PoolView]: ...

    async def fetch_queue_client(self, key: str) -> tuple[Any, str]: ...

    async def close(self) -> None: ...


def build_display_target(url: str) -> str:
    """``scheme://host:port/db`` of a Redis URL: never its user or password."""
    try:
        parsed = connection.parse_redis_url(url)
    except connection.InvalidRedisURL:
        return "(unusable Redis URL)"
    scheme = url.partition("://")[0].lower()
    if parsed.kind == "unix":
        return f"{scheme}://{parsed.socket_path}"
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in parsed.hosts)
    tail = f"/{parsed.service_name}" if parsed.service_name else ""
    return f"{scheme}://{hosts}{tail}/{parsed.db}"


def build_pool_from_stats(base: PoolView, s: stats.QueueStats) -> PoolView:
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


class RedisSource:
    """Queues named on the command line, all on one Redis URL."""

    def __init__(self, url: str, queues: Sequence[str]) -> None:
        connection.parse_redis_url(url)  # refuse an unusable URL at start, not per page
        self._url = url
        self._queues = list(dict.fromkeys(queues))
        self._client: Any = None

    def _fetch_client(self) -> Any:
        if self._client is None:
            self._client = connection.fetch_client(self._url)
        return self._client

    async def fetch_pools(self) -> list[PoolView]:
        client = self._fetch_client()
        target = build_display_target(self._url)
        out: list[PoolView] = []
        for queue in self._queues:
            base = PoolView(key=queue, name=queue, namespace=None, queue=queue, target=target)
            out.append(
                await _with_stats(base, functools.partial(stats.fetch_queue_stats, client, queue))
            )
        return out

    async def fetch_queue_client(self, key: str) -> tuple[Any, str]:
        if key not in self._queues:
            raise PoolNotFoundError(key)
        return self._fetch_client(), key

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


async def _with_stats(base: PoolView, read: Callable[[], Awaitable[stats.QueueStats]]) -> PoolView:
    import dataclasses

    import redis.exceptions

    try:
        s = await asyncio.wait_for(read(), timeout=10.0)
    except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
        # the reason, never the URL (an error text may quote it)
        return dataclasses.replace(base, error=f"queue unreachable: {type(exc).__name__}")
    return build_pool_from_stats(base, s)


@dataclass
class RateSample:
    """The counters of one earlier read, to turn totals into per-second rates."""

    at: float
    enqueued: int
    completed: int
    failed: int


class RateTracker:
    """Per-queue rates from consecutive reads (the console has no history of its own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, RateSample] = {}

    def observe(self, key: str, s: stats.QueueStats) -> dict[str, float] | None:
        """Rates since the previous read of ``key`` (None on the first read or a reset)."""
        now = self._clock()
        sample = RateSample(now, s.enqueued_total, s.completed_total, s.failed_total)
        prev = self._last.get(key)
        self._last[key] = sample
        if prev is None or now - prev.at < 0.5 or sample.enqueued < prev.enqueued:
            return None
        span = now - prev.at
        return {
            "enqueued": (sample.enqueued - prev.enqueued) / span,
            "completed": (sample.completed - prev.completed) / span,
            "failed": (sample.failed - prev.failed) / span,
        }


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
        self._clients: dict[str, Any] = {}

    async def fetch_pools(self) -> list[PoolView]:
        from workerfleet_operator.shell import inventory

        scopes: Sequence[str | None] = self._namespaces or (None,)
        listed = await asyncio.gather(
            *(inventory.fetch_workerpools(self._login.client, ns) for ns in scopes)
        )
        return [inventory.build_pool_view(b) for bodies in listed for b in bodies]

    async def fetch_queue_client(self, key: str) -> tuple[Any, str]:
        from workerfleet_operator.shell import inventory

        namespace, _, name = key.partition("/")
        if not name or (self._namespaces and namespace not in self._namespaces):
            raise PoolNotFoundError(key)
        try:
            body = await inventory.fetch_workerpool(self._login.client, namespace, name)
            url, queue = await inventory.fetch_queue_target(self._login.client, body)
        except inventory.InventoryError as exc:
            raise PoolNotFoundError(key) from exc
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = connection.fetch_client(url)
        return client, queue

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
        await self._login.client.close()
