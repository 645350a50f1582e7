"""TEMPORARY mirror of the ``worker_runtime.stats`` dataclasses from docs/architecture.md.

Used by scaling_fixtures.py only until worker_runtime/stats.py is committed; then deleted.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WorkerHeartbeat:
    worker_id: str
    pod_name: str
    concurrency: int
    in_flight: int
    processed: int
    busy_seconds: float
    started_at: float
    last_seen: float
    oldest_job_started_at: float | None
    draining: bool


@dataclass(frozen=True)
class QueueStats:
    queue: str
    now: float
    backlog: int
    due_delayed: int
    future_delayed: int
    in_flight: int
    dead_letter: int
    oldest_job_age_seconds: float
    enqueued_total: int
    completed_total: int
    failed_total: int
    retried_total: int
    dead_lettered_total: int
    workers_lost_total: int
    workers: tuple[WorkerHeartbeat, ...]
