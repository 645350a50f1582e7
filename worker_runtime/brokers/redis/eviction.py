"""What a Redis ``maxmemory-policy`` risks for a queue: pure, no client library imported.

Read by the operator's pure core (``plan.py`` turns a warning into the pool's condition), the
worker's periodic check and ``workerfleet stats``; the policy itself is read by the stats script
(:mod:`worker_runtime.brokers.redis.stats`).
"""

from __future__ import annotations

EVICTION_SAFE_POLICY = "noeviction"
"""The only ``maxmemory-policy`` under which Redis never drops a queue's keys."""


def build_eviction_warning(policy: str | None) -> str | None:
    """What a ``maxmemory-policy`` other than noeviction risks, or None (safe, or unknown).

    ``allkeys-*`` may evict any key: job hashes, streams, leases, the DLQ (jobs vanish);
    ``volatile-*`` the keys with a TTL: idempotency and done markers (duplicates slip through).
    """
    if policy is None or policy == EVICTION_SAFE_POLICY:
        return None
    if policy.startswith("volatile"):
        risk = "idempotency and done markers (keys with a TTL), so duplicates slip through"
    else:
        risk = "any key, so queued jobs, leases and dead letters can vanish"
    return (
        f"Redis maxmemory-policy is {policy}: under memory pressure it may evict {risk}; "
        f"set maxmemory-policy {EVICTION_SAFE_POLICY}"
    )
