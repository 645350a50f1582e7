"""Which errors of a queue call the worker survives by retrying with backoff.

Imported by every room that talks to the queue (fetch loop, settler, drain, control thread).
"""

from __future__ import annotations

import redis.exceptions

# Errors of a Redis call that the worker survives by retrying with backoff: the connection
# dropped or stalled, a restarted server still loading, a replica promoted (READONLY), or any
# error reply. A persistent one turns /healthz red (no successful round trip) instead of
# crashing the pod in a loop.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    OSError,
    TimeoutError,
)
