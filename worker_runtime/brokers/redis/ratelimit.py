"""A global rate limit shared by every worker of a queue: a token bucket kept in Redis.

The engine applies the queue's limit inside ``fetch`` (``QueueOptions.rate_limit``); handlers that
call a rate-limited service can take tokens from a named bucket of their own with
:func:`apply_acquire`. The bucket lives under the queue's hash tag (``{wf:Q}:ratelimit[:name]``).
"""

from __future__ import annotations

import asyncio
import time

from worker_runtime.brokers.redis import keys, queue, scripts

RateLimit = queue.RateLimit


def build_bucket_key(queue_name: str, name: str | None = None) -> str:
    """The Redis key of a bucket: the queue's own (name None) or a named one."""
    base = keys.build_keys(queue_name).ratelimit
    return base if name is None else f"{base}:{name}"


async def apply_acquire(
    client: queue.AsyncClient,
    queue_name: str,
    limit: RateLimit,
    n: int = 1,
    *,
    name: str | None = None,
) -> tuple[int, float]:
    """Take up to ``n`` tokens now; returns (granted, seconds until the next token)."""
    k = [*keys.build_keys(queue_name).script_keys(), build_bucket_key(queue_name, name)]
    granted, wait_ms = await scripts.RATELIMIT(
        client, k, [limit.jobs, int(limit.per_seconds * 1000), n]
    )
    return int(granted), int(wait_ms) / 1000.0


async def apply_wait(
    client: queue.AsyncClient,
    queue_name: str,
    limit: RateLimit,
    *,
    name: str | None = None,
    within_seconds: float = 60.0,
) -> bool:
    """Wait until one token is granted (True) or ``within_seconds`` pass (False)."""
    deadline = time.monotonic() + within_seconds
    while True:
        granted, wait = await apply_acquire(client, queue_name, limit, 1, name=name)
        if granted:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(max(wait, 0.001), left))
