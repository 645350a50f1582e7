"""Helpers of the Redis queue-engine tests: building engines and jobs on a test's queue."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import redis.asyncio
import redis.asyncio.connection

from tests.support import brokers
from worker_runtime import envelope
from worker_runtime.brokers.redis import queue


class CountingConnection(redis.asyncio.connection.Connection):
    """Counts every command this connection sends (handshake included)."""

    sent: list[str] = []

    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        CountingConnection.sent.append(str(args[0]))
        await super().send_command(*args, **kwargs)


def build_counting_client(port: int) -> redis.asyncio.Redis:
    """A client whose every command is recorded in ``CountingConnection.sent``."""
    pool = redis.asyncio.ConnectionPool(
        port=port, decode_responses=True, connection_class=CountingConnection
    )
    return redis.asyncio.Redis(connection_pool=pool)


def make_engine(client: Any, queue_name: str, **options: Any) -> queue.QueueClient:
    return queue.QueueClient(client, queue_name, queue.QueueOptions(**options))


beat = brokers.beat


def request(
    task: str = "t",
    payload: dict[str, Any] | None = None,
    *,
    delay: float = 0.0,
    priority: str = "normal",
    idempotency_key: str | None = None,
    idempotency_ttl: float | None = None,
    correlation_id: str | None = None,
) -> queue.EnqueueRequest:
    env = envelope.build_envelope(
        task,
        payload or {},
        priority=priority,
        idempotency_key=idempotency_key,
        correlation_id=correlation_id,
    )
    return queue.EnqueueRequest(
        envelope=env, delay_seconds=delay, idempotency_ttl_seconds=idempotency_ttl
    )


async def fetch_all(
    engine: queue.QueueClient, worker: str, *, want: int, within: float = 5.0
) -> list[queue.Job]:
    """Fetch until ``want`` jobs arrived or ``within`` seconds passed (bounded)."""
    got: list[queue.Job] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while len(got) < want and loop.time() < deadline:
        got += await engine.fetch(worker, want - len(got), block=0.2)
    return got


def failure(message: str = "boom", worker: str = "w1") -> queue.Failure:
    return queue.Failure(
        error_type="RuntimeError", message=message, traceback="tb", worker_id=worker
    )


async def enqueue_again(engine: queue.QueueClient, env: envelope.JobEnvelope) -> None:
    """Enqueue a job id that was used before (e.g. one now in the DLQ) as a new job.

    Inside ``queue.ENQUEUE_DEDUP_SECONDS`` that would be a no-op (a re-send), so this goes
    through an engine without the window: what a producer sees once the window has passed.
    """
    options = dataclasses.replace(engine.options, enqueue_dedup_seconds=0.0)
    without_window = queue.QueueClient(engine.client, engine.queue, options)
    [res] = await without_window.enqueue_many([queue.EnqueueRequest(envelope=env)])
    assert res.created and res.job_id == env.id
