"""Idempotent handlers: check a "done" marker before side effects, record it with the ack.

A handler (via ``JobContext``) calls :func:`fetch_is_done` before doing something it must not
repeat, and the worker passes the same key to ``QueueClient.ack(job, done_key=...)``, whose
script sets ``{wf:Q}:done:<key>`` atomically with the acknowledgement: either both happen or
neither. The enqueue-side dedup (``idempotency_key=`` on enqueue) is separate and lives in the
enqueue script.
"""

from __future__ import annotations

from worker_runtime.brokers.redis import keys, queue

DEFAULT_TTL_SECONDS = 7 * 86_400.0
"""How long a "done" marker is kept unless the caller says otherwise."""


def build_done_key(queue_name: str, key: str) -> str:
    """The Redis key of the "done" marker for ``key`` on ``queue_name``."""
    return keys.build_keys(queue_name).done(key)


async def fetch_is_done(client: queue.AsyncClient, queue_name: str, key: str) -> bool:
    """True when a job with this idempotency key was already acknowledged as done."""
    return bool(await client.exists(build_done_key(queue_name, key)))


async def apply_done(
    engine: queue.QueueClient,
    job: queue.Job,
    key: str,
    *,
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
) -> bool:
    """Acknowledge ``job`` and record ``key`` as done in the same script call."""
    return await engine.ack(job, done_key=key, done_ttl_seconds=ttl_seconds)
