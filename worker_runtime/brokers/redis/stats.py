"""READ-ONLY queue statistics in one round trip: the operator's, the CLI's and the metrics' input.

:func:`fetch_queue_stats` runs one read-only Lua script (``lua/stats.lua``, flag ``no-writes``)
that needs no worker running. The dataclasses are the contract in docs/architecture.md
("Runtime ↔ operator: the read-only stats API"); change them there first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from worker_runtime.brokers import base
from worker_runtime.brokers.redis import eviction, keys, scripts

WorkerHeartbeat = base.WorkerHeartbeat
QueueStats = base.QueueStats


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def build_worker_heartbeat(raw: str | bytes) -> WorkerHeartbeat | None:
    """Parse one heartbeat record; None if it is not a usable record."""
    try:
        data = json.loads(raw)
        return WorkerHeartbeat(
            worker_id=str(data["worker_id"]),
            pod_name=str(data.get("pod_name", "")),
            concurrency=int(data.get("concurrency", 0)),
            in_flight=int(data.get("in_flight", 0)),
            processed=int(data.get("processed", 0)),
            busy_seconds=float(data.get("busy_seconds", 0.0)),
            started_at=float(data.get("started_at", 0.0)),
            last_seen=float(data.get("last_seen", 0.0)),
            oldest_job_started_at=_opt_float(data.get("oldest_job_started_at")),
            draining=bool(data.get("draining", False)),
        )
    except (ValueError, KeyError, TypeError):
        return None


def build_queue_stats(queue: str, raw: Sequence[Any]) -> QueueStats:
    """Turn the stats script's reply into :class:`QueueStats` (pure)."""
    head, policy = raw[:10], (_text(raw[10]) if len(raw) > 10 else "")
    dlq_oldest_ms = int(raw[11]) if len(raw) > 11 else -1
    now_ms, entries, leases, due, future, dlq, oldest_ms, counters_flat, workers_raw, expired = head
    counters = {
        _text(counters_flat[i]): int(counters_flat[i + 1]) for i in range(0, len(counters_flat), 2)
    }
    in_flight = int(leases)
    due_delayed = int(due)
    backlog = max(0, int(entries) - in_flight) + due_delayed
    age = _age_seconds(int(now_ms), int(oldest_ms))
    beats = tuple(b for b in (build_worker_heartbeat(w) for w in workers_raw) if b is not None)
    return QueueStats(
        queue=queue,
        now=int(now_ms) / 1000.0,
        backlog=backlog,
        due_delayed=due_delayed,
        future_delayed=int(future),
        in_flight=in_flight,
        dead_letter=int(dlq),
        oldest_job_age_seconds=age,
        enqueued_total=counters.get("enqueued", 0),
        completed_total=counters.get("completed", 0),
        failed_total=counters.get("failed", 0),
        retried_total=counters.get("retried", 0),
        dead_lettered_total=counters.get("dead_lettered", 0),
        cancelled_total=counters.get("cancelled", 0),
        # Only Redis' own counter: a reaped worker stays counted. An expired heartbeat not yet
        # reaped is a separate gauge, since its worker may still renew (a stall, not a kill).
        workers_lost_total=counters.get("workers_lost", 0),
        workers_expired=int(expired),
        workers=tuple(sorted(beats, key=lambda b: b.worker_id)),
        maxmemory_policy=policy or None,
        oldest_dead_letter_age_seconds=_age_seconds(int(now_ms), dlq_oldest_ms),
    )


EVICTION_SAFE_POLICY = eviction.EVICTION_SAFE_POLICY
build_eviction_warning = eviction.build_eviction_warning


def format_age(seconds: float | None) -> str:
    """An age for people: ``4.2s``, ``3.0m``, ``1.5h``, ``2.0d`` (``-`` when unknown)."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _age_seconds(now_ms: int, since_ms: int) -> float:
    # -1 = nothing there; a clock that stepped back never makes an age negative
    return max(0.0, (now_ms - since_ms) / 1000.0) if since_ms >= 0 else 0.0


async def fetch_queue_stats(
    client: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster, queue: str
) -> QueueStats:
    """The queue's stats in one read-only round trip (works with no worker running)."""
    raw = await scripts.STATS(client, keys.build_keys(queue).script_keys(), [])
    return build_queue_stats(queue, raw)


def fetch_queue_stats_sync(
    client: redis.Redis | redis.cluster.RedisCluster, queue: str
) -> QueueStats:
    """Blocking twin of :func:`fetch_queue_stats`."""
    raw = scripts.STATS.call_sync(client, keys.build_keys(queue).script_keys(), [])
    return build_queue_stats(queue, raw)
