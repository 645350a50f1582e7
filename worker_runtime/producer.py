"""The public enqueue API, async (:class:`Producer`) and blocking (:class:`SyncProducer`).

Application code and ``App.enqueue`` (:mod:`worker_runtime.app`) call it; ``workerfleet enqueue``
too. Each call is one Lua script call (``enqueue_many`` batches up to 500 jobs per call), so an
accepted job is in Redis, with its idempotency key, when the call returns. ``cancel`` removes a
job that has not started (``workerfleet job cancel`` calls it) and ``status`` says where a job is
(``workerfleet job show``), on brokers that can.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypedDict, Unpack

import pydantic
import pydantic_core
import redis
import redis.cluster

from worker_runtime import envelope, expiry
from worker_runtime.brokers import base
from worker_runtime.brokers.redis import keys, queue, scripts

Payload = pydantic.BaseModel | Mapping[str, Any] | None


@dataclass(frozen=True, init=False)
class JobSpec:
    """One job for :meth:`Producer.enqueue_many` (same meaning as ``enqueue``'s arguments)."""

    task: str
    payload: Payload = None
    delay: float | None = None
    eta: datetime | float | None = None
    priority: envelope.Priority | str = envelope.Priority.NORMAL
    idempotency_key: str | None = None
    idempotency_ttl: float = 86_400.0
    correlation_id: str | None = None
    max_attempts: int | None = None
    job_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    ttl: float | None = None
    expires_at: datetime | float | None = None

    def __init__(
        self,
        task: str,
        payload: Payload = None,
        delay: float | None = None,
        eta: datetime | float | None = None,
        priority: envelope.Priority | str = envelope.Priority.NORMAL,
        idempotency_key: str | None = None,
        idempotency_ttl: float = 86_400.0,
        correlation_id: str | None = None,
        max_attempts: int | None = None,
        job_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        ttl: float | None = None,
        expires_at: datetime | float | None = None,
    ) -> None:
        # The generated __init__ of a frozen dataclass sets each of the 13 fields through
        # object.__setattr__: 4 us of the producer's ~18 per job. One update of the instance's
        # dict sets the same fields (tests/worker_runtime/test_producer_job_spec.py holds this
        # signature to the fields).
        self.__dict__.update(
            task=task,
            payload=payload,
            delay=delay,
            eta=eta,
            priority=priority,
            idempotency_key=idempotency_key,
            idempotency_ttl=idempotency_ttl,
            correlation_id=correlation_id,
            max_attempts=max_attempts,
            job_id=job_id,
            headers={} if headers is None else headers,
            ttl=ttl,
            expires_at=expires_at,
        )


class EnqueueOptions(TypedDict, total=False):
    """The keyword options of every enqueue call (Producer, SyncProducer, App): JobSpec's fields."""

    delay: float | None
    eta: datetime | float | None
    priority: envelope.Priority | str
    idempotency_key: str | None
    idempotency_ttl: float
    correlation_id: str | None
    max_attempts: int | None
    job_id: str | None
    headers: Mapping[str, str]
    ttl: float | None
    expires_at: datetime | float | None


MAX_WAIT_SECONDS = envelope.MAX_WAIT_SECONDS


def delay_seconds_for(delay: float | None, eta: datetime | float | None, now: float) -> float:
    """Seconds from ``now`` until the job is due (``delay`` and ``eta`` are exclusive; an
    ``eta`` that is a naive datetime is refused: :func:`expiry.epoch_seconds_of`)."""
    if delay is not None and eta is not None:
        raise ValueError("give either delay or eta, not both")
    if delay is not None:
        # NaN passed a plain `< 0` check and made a job due at once; infinity crashed the send
        if not math.isfinite(delay) or delay < 0:
            raise ValueError("delay must be a finite number of seconds >= 0")
        if delay > MAX_WAIT_SECONDS:
            raise ValueError(f"delay must be at most {MAX_WAIT_SECONDS:.0f} seconds (3,650 days)")
        return float(delay)
    if eta is None:
        return 0.0
    when = expiry.epoch_seconds_of(eta, "eta")
    if not math.isfinite(when):
        raise ValueError("eta must be a finite time")
    if when - now > MAX_WAIT_SECONDS:
        raise ValueError("eta must be at most 3,650 days ahead")
    return max(0.0, when - now)


def validate_keys(spec: JobSpec) -> None:
    """Refuse an empty idempotency key or correlation id, and an unusable idempotency window.

    An empty key is what ``--idempotency-key "$KEY"`` sends when ``KEY`` is unset: taken as a
    key, every such job after the first was dropped as a duplicate of it. Leave it out instead.
    """
    if spec.idempotency_key is not None and not spec.idempotency_key.strip():
        raise ValueError("idempotency_key must not be empty or blank (leave it out for none)")
    if spec.correlation_id is not None and not spec.correlation_id.strip():
        raise ValueError("correlation_id must not be empty or blank (leave it out for none)")
    ttl = spec.idempotency_ttl
    if not math.isfinite(ttl) or ttl <= 0 or ttl > MAX_WAIT_SECONDS:
        raise ValueError("idempotency_ttl must be a number of seconds > 0, at most 3,650 days")


def build_request(spec: JobSpec, *, now: float | None = None) -> queue.EnqueueRequest:
    """A validated engine request from a job spec (pure apart from the id and clock)."""
    current = time.time() if now is None else now
    validate_keys(spec)
    delay = delay_seconds_for(spec.delay, spec.eta, current)
    expires_at = expiry.expires_at_for(spec.ttl, spec.expires_at, current)
    if expires_at is not None and expires_at <= current + delay:
        # It could never start: refuse it here rather than dead-letter it later.
        raise ValueError("the job would expire before it is due (ttl/expires_at vs delay/eta)")
    env = envelope.build_envelope(
        spec.task,
        spec.payload,
        priority=spec.priority,
        max_attempts=spec.max_attempts,
        correlation_id=spec.correlation_id,
        idempotency_key=spec.idempotency_key,
        job_id=spec.job_id,
        headers=spec.headers,
        now=current,
        expires_at=expires_at,
    )
    try:
        # Encoded here, per job: a job that cannot be stored fails its own enqueue call, not
        # the batch it would have shared with other callers' jobs (concurrent enqueues share
        # one script call), and the broker sends these bytes instead of encoding again.
        encoded = envelope.encode_envelope(env)
    except pydantic_core.PydanticSerializationError as exc:
        detail = str(exc).removeprefix("Error serializing to JSON: ")
        raise ValueError(f"the job cannot be stored as JSON: {detail}") from None
    return queue.EnqueueRequest(
        envelope=env,
        delay_seconds=delay,
        # The key's window counts from when the job is due, not from this call: counted from
        # now, a job delayed longer than its window could be enqueued again while it waits.
        idempotency_ttl_seconds=spec.idempotency_ttl + delay,
        encoded=encoded,
    )


class Producer:
    """Enqueue jobs on one queue over an asyncio Redis or Redis Cluster client."""

    def __init__(self, client: queue.AsyncClient, queue_name: str) -> None:
        self._engine: queue.QueueClient | base.Broker = queue.QueueClient(client, queue_name)
        self.queue = self._engine.queue

    @classmethod
    def on_broker(cls, broker: base.Broker) -> Producer:
        """A producer that enqueues through ``broker`` (any backend; the worker passes its own)."""
        producer = cls.__new__(cls)
        producer._engine = broker
        producer.queue = broker.queue
        return producer

    async def enqueue(
        self, task: str, payload: Payload = None, **options: Unpack[EnqueueOptions]
    ) -> queue.EnqueueResult:
        """Enqueue one job; a repeated idempotency key inside its TTL returns the first id."""
        return await self._engine.enqueue(build_request(JobSpec(task, payload, **options)))

    async def enqueue_many(self, jobs: Iterable[JobSpec]) -> list[queue.EnqueueResult]:
        """Enqueue many jobs, ≤ 500 per script call, results in input order."""
        now = time.time()
        return await self._engine.enqueue_many([build_request(s, now=now) for s in jobs])

    async def cancel(self, job_id: str) -> base.CancelOutcome:
        """Cancel one job that has not started (waiting, scheduled or waiting out a retry's
        backoff): CANCELLED, or why not (RUNNING, DEAD_LETTERED, UNKNOWN; see
        :class:`~worker_runtime.brokers.base.CancelOutcome`). A broker that cannot cancel by
        id (RabbitMQ, SQS) raises :class:`~worker_runtime.errors.CapabilityMissing`."""
        (outcome,) = await self.cancel_many([job_id])
        return outcome

    async def cancel_many(self, job_ids: Sequence[str]) -> list[base.CancelOutcome]:
        """:meth:`cancel` for many ids, ≤ 500 per script call; one outcome per id, in order."""
        if isinstance(self._engine, queue.QueueClient):
            return await self._engine.cancel_jobs(job_ids)
        return await base.cancel_jobs(self._engine, job_ids)

    async def status(self, job_id: str) -> base.JobStatus:
        """Where one job is: waiting, scheduled (when due; a retry?), running (which worker,
        until when), dead-lettered, or unknown (finished, cancelled, never enqueued), with its
        attempts and last failure (see :class:`~worker_runtime.brokers.base.JobStatus`).
        Read-only. A broker that cannot look jobs up by id (RabbitMQ, SQS) raises
        :class:`~worker_runtime.errors.CapabilityMissing`."""
        (found,) = await self.status_many([job_id])
        return found

    async def status_many(self, job_ids: Sequence[str]) -> list[base.JobStatus]:
        """:meth:`status` for many ids, ≤ 500 per script call (each one consistent snapshot);
        one status per id, in order."""
        if isinstance(self._engine, queue.QueueClient):
            from worker_runtime.brokers.redis import status  # deferred: enqueue never needs it

            return await status.fetch_job_statuses(self._engine.client, self.queue, job_ids)
        return await base.fetch_job_status(self._engine, job_ids)


class SyncProducer:
    """Blocking twin of :class:`Producer` over ``redis.Redis`` or ``redis.cluster.RedisCluster``."""

    def __init__(self, client: redis.Redis | redis.cluster.RedisCluster, queue_name: str) -> None:
        self._client = client
        self.queue = keys.build_queue_name(queue_name)
        self._keys = keys.build_keys(queue_name)

    def enqueue(
        self, task: str, payload: Payload = None, **options: Unpack[EnqueueOptions]
    ) -> queue.EnqueueResult:
        """Enqueue one job (see :meth:`Producer.enqueue`)."""
        return self.enqueue_many([JobSpec(task, payload, **options)])[0]

    def enqueue_many(self, jobs: Iterable[JobSpec]) -> list[queue.EnqueueResult]:
        """Enqueue many jobs (see :meth:`Producer.enqueue_many`)."""
        now = time.time()
        requests: Sequence[queue.EnqueueRequest] = [build_request(s, now=now) for s in jobs]
        out: list[queue.EnqueueResult] = []
        for start in range(0, len(requests), queue.MAX_BATCH):
            k, args = queue.build_enqueue_call(
                self._keys, requests[start : start + queue.MAX_BATCH]
            )
            out.extend(
                queue.build_enqueue_results(scripts.ENQUEUE.call_sync(self._client, k, args))
            )
        return out

    def cancel(self, job_id: str) -> base.CancelOutcome:
        """Cancel one job that has not started (see :meth:`Producer.cancel`)."""
        (outcome,) = self.cancel_many([job_id])
        return outcome

    def cancel_many(self, job_ids: Sequence[str]) -> list[base.CancelOutcome]:
        """Cancel many jobs (see :meth:`Producer.cancel_many`)."""
        keys_list = self._keys.script_keys()
        out: list[base.CancelOutcome] = []
        for start in range(0, len(job_ids), queue.MAX_BATCH):
            chunk = list(job_ids[start : start + queue.MAX_BATCH])
            raw = scripts.CANCEL.call_sync(self._client, keys_list, queue.encode_job_ids(chunk))
            out.extend(queue.build_cancel_outcomes(raw))
        return out

    def status(self, job_id: str) -> base.JobStatus:
        """Where one job is (see :meth:`Producer.status`)."""
        (found,) = self.status_many([job_id])
        return found

    def status_many(self, job_ids: Sequence[str]) -> list[base.JobStatus]:
        """Where many jobs are (see :meth:`Producer.status_many`)."""
        from worker_runtime.brokers.redis import status  # deferred: enqueue never needs it

        return status.fetch_job_statuses_sync(self._client, self.queue, job_ids)
