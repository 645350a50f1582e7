"""The local fleet's broker: which embedded server serves a kind, and a blocking queue handle.

Called by ``workerfleet run`` and ``workerfleet demo`` (:mod:`workerfleet_operator.local.cli`,
:mod:`workerfleet_operator.local.demo`) and by :mod:`workerfleet_operator.local.runner`. The
fleet reaches its queue only through the runtime's broker seam (``worker_runtime.brokers.
open_broker``): the autoscaler reads depth through the broker's ``QueueProbe``, the demo's load
enqueues through ``Broker.enqueue_many`` and reads the dead letters through ``DeadLetters``, on
Redis, RabbitMQ or SQS alike. :class:`SyncQueue` runs those coroutines on an event loop of its
own, so the fleet's control loop stays a plain blocking loop.

RabbitMQ's and SQS's numbers are samples, not one consistent snapshot (docs/brokers.md: the
management API samples, SQS's counts are approximate); the autoscaler copes (it decides every
poll again), and nothing that judges an outcome reads them: the demo proves ``lost=0`` from its
history (:mod:`workerfleet_operator.local.history`), in which only the ids the broker still
holds (:meth:`SyncQueue.list_held_job_ids`) excuse a job that neither completed nor was
dead-lettered.
"""

from __future__ import annotations

import asyncio
import pathlib
import urllib.parse
from collections.abc import Coroutine, Sequence
from typing import Any, Literal, TypeVar, cast

from worker_runtime import brokers as runtime_brokers
from worker_runtime.brokers import base
from workerfleet_operator import manifests
from workerfleet_operator.api import spec as spec_mod
from workerfleet_operator.local import embedded

BrokerKind = Literal["redis", "rabbitmq", "sqs"]
BROKER_KINDS: tuple[BrokerKind, ...] = ("redis", "rabbitmq", "sqs")
T = TypeVar("T")
DEAD_LETTER_READ_LIMIT = 100_000
"""The most dead letters one history read lists (a local queue holds far fewer)."""


def kind_of_url(url: str) -> BrokerKind:
    """Which embedded server could stand in for ``url`` (by its scheme; ConfigError if none)."""
    scheme = runtime_brokers.scheme_of(url)
    if scheme in ("amqp", "amqps"):
        return "rabbitmq"
    if scheme == "sqs":
        return "sqs"
    return "redis"


def kind_of_pool(spec: spec_mod.WorkerPoolSpec) -> BrokerKind:
    """The broker the pool's ``spec.queue`` block names (ConfigError-free: the spec is valid)."""
    block = spec.queue.broker
    for kind in BROKER_KINDS:
        if kind == block:
            return kind
    raise embedded.EmbeddedServerError(f"no embedded server for a spec.queue.{block} pool")


def fetch_unreachable(url: str, queue: str, options: base.QueueOptions) -> str | None:
    """``None`` if the broker at ``url`` answers a stats read for ``queue``, else why not."""
    try:
        target = SyncQueue(url, queue, options, timeout=2.0)
    except Exception as exc:  # any failure to open is "not reachable", said with its reason
        return f"{type(exc).__name__}: {exc}"
    try:
        target.fetch_stats()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        target.close()
    return None


def build_pool_url(server: embedded.EmbeddedServer, spec: spec_mod.WorkerPoolSpec) -> str:
    """The URL the pool's workers open on an embedded server: the server's own, with the queue
    set a ``spec.queue.sqs`` block chooses (fifo, priorities, prefix) on ElasticMQ, composed as
    the operator composes it for the pods (``manifests.encode_sqs_url``)."""
    sqs = spec.queue.sqs
    if sqs is None or not server.broker_url.startswith("sqs://"):
        return server.broker_url
    endpoint = "http://" + server.broker_url.removeprefix("sqs://").split("?", 1)[0]
    local = sqs.model_copy(update={"endpoint": endpoint, "region": embedded_region(server)})
    return manifests.encode_sqs_url(local)


def embedded_region(server: embedded.EmbeddedServer) -> str:
    """The region an embedded SQS server answers for (any name works; its queue URLs use it)."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(server.broker_url).query)
    return query.get("region", ["us-east-1"])[0]


def start_server(kind: BrokerKind, data_dir: pathlib.Path | None) -> embedded.EmbeddedServer:
    """Start the embedded server of ``kind`` (loopback, private data) and return it, running.

    Raises :class:`embedded.EmbeddedServerError` naming the make target when the server is not
    installed. A server that fails to start is closed first (no process or temporary directory
    is left). Only the module of the kind asked for is imported.
    """
    if kind == "rabbitmq":
        from workerfleet_operator.local import embedded_rabbitmq

        return embedded.start_or_close(embedded_rabbitmq.EmbeddedRabbitMQ(data_dir))
    if kind == "sqs":
        from workerfleet_operator.local import embedded_elasticmq

        return embedded.start_or_close(embedded_elasticmq.EmbeddedElasticMQ(data_dir))
    from workerfleet_operator.local import embedded_redis

    return embedded.start_or_close(embedded_redis.EmbeddedRedis(data_dir))


def build_queue_options(spec: spec_mod.WorkerPoolSpec) -> base.QueueOptions:
    """The queue settings the pool's workers open their queue with (WorkerSettings from the
    pool's env): every other opener must agree, RabbitMQ refuses a queue re-declared with other
    arguments and SQS re-applies its visibility timeout and redrive policy."""
    rate = None
    if spec.rate_limit is not None:
        rate = base.RateLimit(jobs=spec.rate_limit.jobs, per_seconds=spec.rate_limit.per_seconds)
    return base.QueueOptions(
        lease_seconds=spec.lease_seconds,
        max_deliveries=spec.retry.max_deliveries,
        dlq_max_length=spec.dead_letter.max_length,
        dlq_retention_seconds=spec.dead_letter.retention_seconds,
        rate_limit=rate,
    )


class SyncQueue:
    """One queue opened with ``open_broker``, driven from one thread by blocking calls.

    Each call runs on this object's own event loop, bounded by ``timeout`` seconds; errors are
    the runtime's (``worker_runtime.errors``) or ``TimeoutError``. Use from the thread that made
    it; end with :meth:`close`.
    """

    def __init__(
        self, url: str, queue: str, options: base.QueueOptions, *, timeout: float = 5.0
    ) -> None:
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        try:
            self.broker = self._loop.run_until_complete(
                runtime_brokers.open_broker(url, queue, options=options, socket_timeout=timeout)
            )
        except BaseException:
            self._loop.close()
            raise
        # every backend's broker object is also its QueueProbe and its DeadLetters
        self.probe = cast(base.QueueProbe, self.broker)
        self.dead_letters = cast(base.DeadLetters, self.broker)

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(self.timeout):
                return await coroutine

        return self._loop.run_until_complete(bounded())

    def fetch_stats(self) -> base.QueueStats:
        """The queue's numbers (one read; a sample on RabbitMQ and SQS)."""
        return self._call(self.probe.fetch_stats())

    def enqueue_many(self, requests: Sequence[base.EnqueueRequest]) -> list[base.EnqueueResult]:
        """Enqueue, answered by the broker (publisher confirms on RabbitMQ)."""
        return self._call(self.broker.enqueue_many(requests))

    def list_dead_letter_ids(self) -> set[str]:
        """The job ids in the DLQ now (read from the DLQ itself, not from a counter)."""
        letters = self._call(self.dead_letters.list_dead_letters(limit=DEAD_LETTER_READ_LIMIT))
        return {letter.job_id for letter in letters}

    def list_held_job_ids(self) -> set[str] | None:
        """The ids of every job the queue still holds (ready, delayed or in flight), or None
        when this broker cannot list them.

        The broker seam lists no ready or delayed jobs (``base.InFlightJobs`` only lists the ones
        in flight, on Redis and memory), so this reads the Redis engine's own record: its
        ``state`` hash has an entry for every live job (``worker_runtime.brokers.redis.keys``),
        read with HSCAN. RabbitMQ and SQS cannot list a queue's messages without taking them.
        """
        from worker_runtime.brokers.redis import broker as redis_broker
        from worker_runtime.brokers.redis import keys

        if not isinstance(self.broker, redis_broker.RedisBroker):
            return None
        client, state = self.broker.client, keys.build_keys(self.broker.queue).state

        async def scan() -> set[str]:
            found: set[str] = set()
            async for job_id, _ in client.hscan_iter(state, count=500):
                found.add(job_id.decode() if isinstance(job_id, bytes) else str(job_id))
            return found

        return self._call(scan())

    def close(self) -> None:
        """Close the broker, then end what its client left running on the loop (AMQP
        readers, heartbeats) before the loop closes, as ``asyncio.run`` does."""
        try:
            self._loop.run_until_complete(self.broker.close())
        except Exception:  # closing a broker that is already gone changes nothing
            pass
        finally:
            left = asyncio.all_tasks(self._loop)
            for task in left:
                task.cancel()
            if left:
                self._loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            self._loop.close()
