"""RedisBroker: the ``Broker``, ``QueueProbe`` and ``DeadLetters`` protocols over the Redis engine.

Opened by :func:`worker_runtime.brokers.open_broker` for the Redis schemes (through
:func:`open_from_url`) or built around a client the caller already has. Each call goes to the
engine that was there before the seam (:class:`~worker_runtime.brokers.redis.queue.QueueClient`,
:mod:`~worker_runtime.brokers.redis.stats`, :mod:`~worker_runtime.brokers.redis.dlq`): this
module only translates. A ``Delivery``'s receipt is the engine's fencing token; redis-py's
exceptions become :mod:`worker_runtime.errors` ones here and nowhere else — a connection
error or timeout is :class:`~worker_runtime.errors.BrokerUnavailable` (the script may have
run), an error reply (READONLY, a script error) :class:`~worker_runtime.errors.BrokerRejected`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
from collections.abc import AsyncIterator, Collection, Container, Sequence
from typing import Any, NoReturn

import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.exceptions

from worker_runtime import errors
from worker_runtime.brokers import base
from worker_runtime.brokers.redis import connection, idempotency, stats
from worker_runtime.brokers.redis import keys as keys_mod
from worker_runtime.brokers.redis import queue as queue_mod

# The dead-letter, topic and in-flight modules are imported by the methods that use them, not
# here: a worker's job loop needs none of them (cold start).

CAPABILITIES = base.FULL_CONTRACT
"""Everything the contract describes: the engine was the model the seam was cut from."""

UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    TimeoutError,
)
"""No reply came: the call may have been applied (redis-py's connection and timeout errors)."""


def raise_mapped(exc: BaseException, operation: str) -> NoReturn:
    """Re-raise a redis-py (or socket) error as the taxonomy's class; anything else unchanged.

    An error reply (``ResponseError``: READONLY after a failover, a script error, NOPERM) is an
    answer, so the call was not applied, as is a refused login (wrong password or user); every
    other Redis error (connection, timeout, a cluster that is re-sharding) left it unknown.
    """
    if isinstance(exc, redis.exceptions.ResponseError):
        raise errors.BrokerRejected(
            f"redis refused {operation}: {exc}", operation=operation
        ) from exc
    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError):
        # redis-py files these under ConnectionError, but they are an answer: the server
        # refused the URL's user or password before the command was sent, so nothing was
        # applied, and no retry helps until the credentials change.
        raise errors.BrokerRejected(
            f"redis refused {operation}: it did not accept the user or password of the URL "
            f"({errors.describe_error(exc)})",
            operation=operation,
        ) from exc
    if isinstance(exc, redis.exceptions.RedisClusterException):
        # raised while the client maps the cluster, before any command is sent (not a
        # RedisError: it used to escape unmapped, a traceback in the CLI)
        text = errors.describe_error(exc)
        if "Cluster mode is not enabled" in text or "cluster support disabled" in text:
            raise errors.BrokerRejected(
                f"redis refused {operation}: the server at the URL is not a Redis Cluster node "
                f"(redis+cluster:// needs one; a single server is redis://) ({text})",
                operation=operation,
            ) from exc
        raise errors.BrokerUnavailable(
            f"no connection to redis for {operation}: {text}", operation=operation, sent=False
        ) from exc
    if _connecting_failed(exc):
        raise errors.BrokerUnavailable(
            f"no connection to redis for {operation}: {_short(exc)}",
            operation=operation,
            sent=False,
        ) from exc
    if isinstance(exc, redis.exceptions.RedisError | OSError | TimeoutError):
        raise errors.BrokerUnavailable(
            f"no reply from redis to {operation}: {errors.describe_error(exc)}",
            operation=operation,
        ) from exc
    raise exc


def _connecting_failed(exc: BaseException) -> bool:
    # redis-py opens a pooled connection before it writes a command and words a failure to
    # open one as "Error 111 connecting to HOST:PORT. ..." ("... connecting to unix socket:")
    # or "Timeout connecting to server"; behind Sentinel it first asks for the master's
    # address (MasterNotFoundError): the command was never written, so never applied.
    if isinstance(exc, redis.asyncio.sentinel.MasterNotFoundError):
        return True
    if not isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return False
    text = str(exc)
    return " connecting to " in text or text.startswith("Timeout connecting to ")


def _short(exc: BaseException) -> str:
    # MasterNotFoundError's message appends the repr of every sentinel client it asked (a
    # screenful of connection settings): keep what it says before them
    text = errors.describe_error(exc)
    if isinstance(exc, redis.asyncio.sentinel.MasterNotFoundError) and " : <" in text:
        return text.split(" : <", 1)[0] + " (no sentinel of the URL answered with it)"
    return text


class RedisBroker:
    """One queue on Redis (single, Sentinel or Cluster), through the Lua engine."""

    capabilities = CAPABILITIES

    def __init__(
        self,
        client: queue_mod.AsyncClient,
        queue: str,
        options: base.QueueOptions | None = None,
        *,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.queue: str = keys_mod.build_queue_name(queue)
        self.options: base.QueueOptions = options if options is not None else base.QueueOptions()
        self._owns_client = owns_client
        if isinstance(client, redis.asyncio.cluster.RedisCluster):
            # a publish writes several queues' hash tags in one script: one slot cannot hold them
            self.capabilities = dataclasses.replace(CAPABILITIES, topics=False)

    @functools.cached_property
    def engine(self) -> queue_mod.QueueClient:
        """The queue's engine, built on first use: a broker that only reads statistics (the
        operator holds one per pool) never needs its encoded keys and batchers."""
        return queue_mod.QueueClient(self.client, self.queue, self.options)

    @property
    def dead_lettered_by_fetch(self) -> collections.Counter[str]:
        """Jobs this broker's fetches sent to the DLQ, by reason (see ``QueueClient``)."""
        return self.engine.dead_lettered_by_fetch

    # -- Broker --------------------------------------------------------------------------------

    async def enqueue(self, request: base.EnqueueRequest) -> base.EnqueueResult:
        try:
            return await self.engine.enqueue(request)
        except Exception as exc:
            raise_mapped(exc, "enqueue")

    async def enqueue_many(
        self, requests: Sequence[base.EnqueueRequest]
    ) -> list[base.EnqueueResult]:
        try:
            return await self.engine.enqueue_many(requests)
        except Exception as exc:
            raise_mapped(exc, "enqueue")

    async def fetch(
        self,
        worker_id: str,
        count: int,
        *,
        block: float = 0.0,
        wake: asyncio.Event | None = None,
        holding: Container[tuple[str, base.Receipt]] = (),
    ) -> list[base.Delivery]:
        try:
            jobs = await self.engine.fetch(
                worker_id, count, block=block, wake=wake, holding=holding
            )
        except Exception as exc:
            raise_mapped(exc, "fetch")
        return list(jobs)

    async def ack_and_fetch(
        self,
        deliveries: Sequence[base.Delivery],
        worker_id: str,
        count: int,
        *,
        block: float = 0.0,
        wake: asyncio.Event | None = None,
        holding: Container[tuple[str, base.Receipt]] = (),
    ) -> tuple[list[bool], list[base.Delivery]]:
        try:
            flags, jobs = await self.engine.ack_and_fetch(
                deliveries,
                worker_id,
                count,
                block=block,
                wake=wake,
                holding=holding,
            )
        except Exception as exc:
            raise_mapped(exc, "ack_and_fetch")
        return flags, list(jobs)

    async def ack(
        self,
        delivery: base.Delivery,
        *,
        done_key: str | None = None,
        done_ttl_seconds: float | None = None,
    ) -> bool:
        try:
            return await self.engine.ack(
                delivery, done_key=done_key, done_ttl_seconds=done_ttl_seconds
            )
        except Exception as exc:
            raise_mapped(exc, "ack")

    async def retry(
        self, delivery: base.Delivery, failure: base.Failure, *, delay_seconds: float
    ) -> bool:
        try:
            return await self.engine.retry(delivery, failure, delay_seconds=delay_seconds)
        except Exception as exc:
            raise_mapped(exc, "retry")

    async def dead_letter(
        self,
        delivery: base.Delivery,
        reason: str,
        *,
        failure: base.Failure | None = None,
        attempt: bool = True,
    ) -> bool:
        try:
            return await self.engine.dead_letter(delivery, reason, failure=failure, attempt=attempt)
        except Exception as exc:
            raise_mapped(exc, "dead_letter")

    async def release(self, delivery: base.Delivery) -> bool:
        try:
            return await self.engine.release(delivery)
        except Exception as exc:
            raise_mapped(exc, "release")

    async def renew(
        self,
        worker_id: str,
        deliveries: Sequence[base.Delivery],
        *,
        heartbeat: base.WorkerBeat | None = None,
    ) -> base.LeaseRenewal:
        try:
            result = await self.engine.renew(worker_id, deliveries, heartbeat=heartbeat)
        except Exception as exc:
            raise_mapped(exc, "renew")
        # the engine returns the very delivery objects it was given
        return base.LeaseRenewal(kept=result.renewed_jobs, lost=result.lost_jobs)

    async def recover(
        self, worker_id: str, held: Collection[tuple[str, base.Receipt]] = ()
    ) -> list[base.Delivery]:
        try:
            jobs = await self.engine.adopt(worker_id, held)
        except Exception as exc:
            raise_mapped(exc, "recover")
        return list(jobs)

    async def fetch_previous_delay(self, job_id: str) -> float | None:
        try:
            return await self.engine.fetch_previous_delay(job_id)
        except Exception as exc:
            raise_mapped(exc, "fetch_previous_delay")

    async def fetch_delivery_fate(self, delivery: base.Delivery) -> base.DeliveryFate:
        try:
            return await self.engine.fetch_delivery_fate(delivery)
        except Exception as exc:
            raise_mapped(exc, "fetch_delivery_fate")

    async def fetch_is_done(self, done_key: str) -> bool:
        try:
            return await idempotency.fetch_is_done(self.client, self.queue, done_key)
        except Exception as exc:
            raise_mapped(exc, "fetch_is_done")

    async def deregister(self, worker_id: str) -> None:
        try:
            await self.engine.deregister(worker_id)
        except Exception as exc:
            raise_mapped(exc, "deregister")

    async def close(self) -> None:
        try:
            if "engine" in self.__dict__:  # built: its batched settle calls may be on their way
                await self.engine.aclose()
        except Exception as exc:
            raise_mapped(exc, "close")
        finally:
            if self._owns_client:
                self._owns_client = False
                await self.client.aclose()

    # -- Cancelling ----------------------------------------------------------------------------

    async def cancel_jobs(self, job_ids: Sequence[str]) -> list[base.CancelOutcome]:
        try:
            return await self.engine.cancel_jobs(job_ids)
        except Exception as exc:
            raise_mapped(exc, "cancel")

    # -- JobLookup -----------------------------------------------------------------------------

    async def fetch_job_status(self, job_ids: Sequence[str]) -> list[base.JobStatus]:
        from worker_runtime.brokers.redis import status  # deferred for cold start

        try:
            return await status.fetch_job_statuses(self.client, self.queue, job_ids)
        except Exception as exc:
            raise_mapped(exc, "status")

    # -- Topics --------------------------------------------------------------------------------

    def _check_topics(self) -> None:
        if not self.capabilities.topics:
            raise errors.CapabilityMissing(
                "topics need a single Redis (or Sentinel): a publish spans several queues' "
                "hash tags, which Redis Cluster cannot write in one script",
                operation="publish",
            )

    async def subscribe(self, topic: str, group: str) -> str:
        from worker_runtime.brokers.redis import topics  # deferred for cold start

        self._check_topics()
        try:
            return await topics.apply_subscribe(self.client, topic, group)
        except Exception as exc:
            raise_mapped(exc, "subscribe")

    async def unsubscribe(self, topic: str, group: str) -> bool:
        from worker_runtime.brokers.redis import topics  # deferred for cold start

        self._check_topics()
        try:
            return await topics.apply_unsubscribe(self.client, topic, group)
        except Exception as exc:
            raise_mapped(exc, "unsubscribe")

    async def list_subscriptions(self, topic: str) -> list[str]:
        from worker_runtime.brokers.redis import topics  # deferred for cold start

        self._check_topics()
        try:
            return await topics.fetch_subscriptions(self.client, topic)
        except Exception as exc:
            raise_mapped(exc, "list_subscriptions")

    async def publish(self, request: base.PublishRequest) -> base.PublishResult:
        from worker_runtime.brokers.redis import topics  # deferred for cold start

        self._check_topics()
        try:
            return await topics.apply_publish(
                self.client, request, dedup_seconds=self.options.enqueue_dedup_seconds
            )
        except Exception as exc:
            raise_mapped(exc, "publish")

    async def fetch_topic_lag(self, topic: str) -> list[base.SubscriptionLag]:
        from worker_runtime.brokers.redis import topics  # deferred for cold start

        self._check_topics()
        try:
            return await topics.fetch_topic_lag(self.client, topic)
        except Exception as exc:
            raise_mapped(exc, "topic lag")

    async def record_trace(self, correlation_id: str, entry: base.TraceEntry) -> None:
        from worker_runtime.brokers.redis import topics  # deferred for cold start

        try:
            await topics.apply_trace_entry(self.client, correlation_id, entry)
        except Exception as exc:
            raise_mapped(exc, "trace")

    async def fetch_trace(self, correlation_id: str) -> list[base.TraceEntry]:
        from worker_runtime.brokers.redis import topics  # deferred for cold start

        try:
            return await topics.fetch_trace(self.client, correlation_id)
        except Exception as exc:
            raise_mapped(exc, "trace")

    # -- QueueProbe ----------------------------------------------------------------------------

    async def fetch_stats(self) -> base.QueueStats:
        try:
            return await stats.fetch_queue_stats(self.client, self.queue)
        except Exception as exc:
            raise_mapped(exc, "stats")

    # -- DeadLetters ---------------------------------------------------------------------------

    async def count_dead_letters(self) -> int:
        from worker_runtime.brokers.redis import dlq  # deferred for cold start

        try:
            return await dlq.fetch_dead_letter_count(self.client, self.queue)
        except Exception as exc:
            raise_mapped(exc, "dlq count")

    async def list_dead_letters(self, *, offset: int = 0, limit: int = 50) -> list[base.DeadLetter]:
        from worker_runtime.brokers.redis import dlq  # deferred for cold start

        try:
            return await dlq.fetch_dead_letters(self.client, self.queue, offset=offset, limit=limit)
        except Exception as exc:
            raise_mapped(exc, "dlq list")

    async def show_dead_letter(self, job_id: str) -> base.DeadLetter | None:
        from worker_runtime.brokers.redis import dlq  # deferred for cold start

        try:
            return await dlq.fetch_dead_letter(self.client, self.queue, job_id)
        except Exception as exc:
            raise_mapped(exc, "dlq show")

    async def replay_dead_letters(
        self,
        *,
        job_ids: Sequence[str] | None = None,
        limit: int | None = None,
        reset_attempts: bool = False,
        rate_per_second: float = 100.0,
    ) -> list[str]:
        from worker_runtime.brokers.redis import dlq  # deferred for cold start

        try:
            return await dlq.apply_replay(
                self.client,
                self.queue,
                job_ids=job_ids,
                limit=limit,
                reset_attempts=reset_attempts,
                rate_per_second=rate_per_second,
            )
        except Exception as exc:
            raise_mapped(exc, "dlq replay")

    async def purge_dead_letters(
        self,
        *,
        job_ids: Sequence[str] | None = None,
        older_than_seconds: float | None = None,
        everything: bool = False,
    ) -> int:
        from worker_runtime.brokers.redis import dlq  # deferred for cold start

        try:
            return await dlq.delete_dead_letters(
                self.client,
                self.queue,
                job_ids=job_ids,
                older_than_seconds=older_than_seconds,
                everything=everything,
            )
        except Exception as exc:
            raise_mapped(exc, "dlq purge")

    # -- InFlightJobs, DeadLetterSteps (the CLI's and the console's extras) ---------------------

    async def list_in_flight_jobs(self, *, limit: int = 200) -> list[base.InFlightJob]:
        from worker_runtime.brokers.redis import inflight  # deferred for cold start

        try:
            return await inflight.fetch_in_flight_jobs(self.client, self.queue, limit=limit)
        except Exception as exc:
            raise_mapped(exc, "in-flight jobs")

    async def list_queues(self, *, limit: int = 1000) -> list[str]:
        names: set[str] = set()
        try:
            # SCAN, never KEYS: bounded steps on a server that also serves the workers (a
            # cluster client scans every primary)
            async for key in self.client.scan_iter(match=keys_mod.COUNTERS_PATTERN, count=1000):
                text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
                name = keys_mod.queue_of_counters_key(text)
                if name is not None:
                    names.add(name)
                if len(names) >= limit:
                    break
        except Exception as exc:
            raise_mapped(exc, "queue list")
        return sorted(names)

    async def purge_dead_letters_in_steps(
        self,
        *,
        job_ids: Sequence[str] | None = None,
        older_than_seconds: float | None = None,
        everything: bool = False,
    ) -> AsyncIterator[int]:
        from worker_runtime.brokers.redis import dlq  # deferred for cold start

        steps = dlq.delete_dead_letters_in_chunks(
            self.client,
            self.queue,
            job_ids=job_ids,
            older_than_seconds=older_than_seconds,
            everything=everything,
        )
        while True:
            try:
                n = await anext(steps)
            except StopAsyncIteration:
                return
            except Exception as exc:
                raise_mapped(exc, "dlq purge")
            yield n

    async def count_dead_letters_older_than(self, older_than_seconds: float) -> int:
        from worker_runtime.brokers.redis import dlq  # deferred for cold start

        try:
            return await dlq.fetch_dead_letter_count_older_than(
                self.client, self.queue, older_than_seconds
            )
        except Exception as exc:
            raise_mapped(exc, "dlq count")


async def open_from_url(
    url: str,
    queue: str,
    *,
    options: base.QueueOptions,
    role: base.QueueRole = base.QueueRole.CONSUMER,
    **settings: Any,
) -> RedisBroker:
    """A RedisBroker with its own client for ``url`` (closed by ``close``).

    ``role`` is accepted and unused: the keys keep no queue settings (each opener holds its
    options, and keys are made by the first write). ``settings`` go to
    :func:`~worker_runtime.brokers.redis.connection.build_client`
    (``socket_timeout``, ``health_check_interval``, ``retries``: 0 for a worker's job loop,
    whose fetch script must not be re-sent blindly).
    """
    client = connection.build_client(url, **settings)
    return RedisBroker(client, queue, options, owns_client=True)
