"""READ-ONLY list of the jobs running now: which worker holds each and for how long.

Called by the web console's queue page and ``workerfleet queue jobs --in-flight``. Reads the
``inflight`` hash (job → ``token|prio|stream entry id|worker``), each ready stream's pending
entries (XPENDING: time since delivery), the jobs' states (deliveries) and envelopes (task
name), with keys from :mod:`worker_runtime.brokers.redis.keys`. Several reads, not one script:
a job finishing between them is simply left out (the list is a view, nothing acts on it), and
no write ever happens here.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions

from worker_runtime.brokers import base
from worker_runtime.brokers.redis import keys

AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

LIST_LIMIT = 1000
"""Most in-flight jobs one call lists (a view for people, bounded like every read)."""


InFlightJob = base.InFlightJob
"""The record every broker lists (defined on the seam)."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _task_of(raw: Any) -> str | None:
    try:
        task = json.loads(raw).get("task") if raw is not None else None
    except (ValueError, AttributeError):
        return None
    return task if isinstance(task, str) else None


async def fetch_in_flight_jobs(
    client: AsyncClient, queue: str, *, limit: int = 200
) -> list[InFlightJob]:
    """The jobs running now, longest-running first (read-only; at most ``limit``)."""
    k = keys.build_keys(queue)
    limit = max(0, min(limit, LIST_LIMIT))
    # (priority, stream entry id) → (job id, worker): entry ids are unique per stream only (one
    # enqueue script call can give the same id in the high and the normal stream)
    holders: dict[tuple[str, str], tuple[str, str]] = {}
    async for job_id, value in client.hscan_iter(k.inflight, count=200):
        parts = _text(value).split("|")
        if len(parts) >= 4:
            holders[(parts[1], parts[2])] = (_text(job_id), "|".join(parts[3:]))
        if len(holders) >= LIST_LIMIT:
            break
    if not holders:
        return []
    pending: dict[tuple[str, str], tuple[float, int]] = {}  # → (ms since delivery, deliveries)
    for prio, stream in zip(keys.PRIORITIES, k.ready, strict=True):
        try:
            rows = await client.xpending_range(stream, keys.GROUP, "-", "+", LIST_LIMIT)
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            continue  # a priority never used yet has no stream (or no group): nothing pending
        for row in rows:
            pending[(prio, _text(row["message_id"]))] = (
                float(row["time_since_delivered"]),
                int(row["times_delivered"]),
            )
    now_ms = _now_ms(await client.time())
    ids = [job_id for job_id, _worker in holders.values()]
    envelopes = await client.hmget(k.env, ids)
    expiries = await client.zmscore(k.leases, ids)
    # the engine's own count (state prio|attempts|deliveries|lost): XPENDING's counts a
    # reclaim's XCLAIM JUSTID as no delivery, so a reclaimed job read as its first
    counted = {
        job_id: _deliveries_of(raw)
        for job_id, raw in zip(ids, await client.hmget(k.state, ids), strict=True)
    }
    tasks = {job_id: _task_of(raw) for job_id, raw in zip(ids, envelopes, strict=True)}
    lease = dict(zip(ids, expiries, strict=True))
    jobs = []
    for (prio, entry), (job_id, worker) in holders.items():
        idle_ms, deliveries = pending.get((prio, entry), (0.0, 0))
        deliveries = counted.get(job_id) or deliveries
        expiry = lease.get(job_id)
        jobs.append(
            InFlightJob(
                job_id=job_id,
                task=tasks.get(job_id),
                priority=prio,
                worker_id=worker,
                running_seconds=idle_ms / 1000.0,
                deliveries=deliveries,
                lease_expires_in_seconds=None
                if expiry is None
                else max(0.0, (float(expiry) - now_ms) / 1000.0),
            )
        )
    jobs.sort(key=lambda j: (-j.running_seconds, j.job_id))
    return jobs[:limit]


def _deliveries_of(raw: Any) -> int | None:
    parts = _text(raw).split("|") if raw is not None else []
    return int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None


def _now_ms(reply: Any) -> float:
    # the server's clock (TIME): lease expiries are server milliseconds
    seconds, micros = reply
    return int(seconds) * 1000.0 + int(micros) / 1000.0
