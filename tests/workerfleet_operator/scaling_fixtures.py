"""Builders and a fake-clock driver for the autoscaler's table-driven tests.

Used by tests/workerfleet_operator/test_autoscaling_*.py. Queue stats are built as the runtime's
real ``worker_runtime.brokers.base`` dataclasses, so the tests prove the decision function reads the
contract's fields.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from workerfleet_operator import api, autoscaling

from worker_runtime.brokers.redis import stats

WorkerHeartbeat = stats.WorkerHeartbeat
POLL = 5.0  # seconds between decisions in every scenario unless it says otherwise


def heartbeat(
    pod: str,
    *,
    in_flight: int = 0,
    processed: int = 0,
    busy_seconds: float = 0.0,
    last_seen: float = 0.0,
    oldest_job_started_at: float | None = None,
    draining: bool = False,
    concurrency: int = 8,
    worker_id: str | None = None,
) -> stats.WorkerHeartbeat:
    return stats.WorkerHeartbeat(
        worker_id=worker_id or f"w-{pod}",
        pod_name=pod,
        concurrency=concurrency,
        in_flight=in_flight,
        processed=processed,
        busy_seconds=busy_seconds,
        started_at=0.0,
        last_seen=last_seen,
        oldest_job_started_at=oldest_job_started_at,
        draining=draining,
    )


def queue_stats(
    now: float,
    *,
    backlog: int = 0,
    in_flight: int = 0,
    future_delayed: int = 0,
    dead_letter: int = 0,
    oldest_job_age_seconds: float = 0.0,
    enqueued_total: int = 0,
    completed_total: int = 0,
    workers: Sequence[stats.WorkerHeartbeat] = (),
) -> stats.QueueStats:
    return stats.QueueStats(
        queue="emails",
        now=now,
        backlog=backlog,
        due_delayed=0,
        future_delayed=future_delayed,
        in_flight=in_flight,
        dead_letter=dead_letter,
        oldest_job_age_seconds=oldest_job_age_seconds,
        enqueued_total=enqueued_total,
        completed_total=completed_total,
        failed_total=0,
        retried_total=0,
        dead_lettered_total=0,
        cancelled_total=0,
        workers_lost_total=0,
        workers_expired=0,
        workers=tuple(workers),
    )


@dataclass(frozen=True)
class Poll:
    """One tick of the fake clock: what the queue looked like (None = Redis unreachable)."""

    at: float
    stats: stats.QueueStats | None
    error: str | None = None


def polls(start: float, count: int, **fields: int | float) -> list[Poll]:
    """`count` polls POLL seconds apart, all seeing the same queue."""
    return [
        Poll(at, queue_stats(at, **fields))  # type: ignore[arg-type]
        for at in (start + i * POLL for i in range(count))
    ]


def outage(start: float, count: int, error: str = "ConnectionError: refused") -> list[Poll]:
    return [Poll(start + i * POLL, None, error) for i in range(count)]


def run(
    policy: autoscaling.ScalingPolicy,
    timeline: Iterable[Poll],
    current: int,
    state: autoscaling.ScalerState | None = None,
) -> list[autoscaling.Decision]:
    """Drive decide() over a timeline, applying each decision as a real loop would."""
    decisions: list[autoscaling.Decision] = []
    carried = state or autoscaling.ScalerState()
    for poll in timeline:
        decision = autoscaling.decide(
            policy, autoscaling.Observation(poll.stats, poll.error), current, carried, poll.at
        )
        decisions.append(decision)
        carried = decision.state
        if not policy.dry_run:
            current = decision.desired
    return decisions


def desired(decisions: Sequence[autoscaling.Decision]) -> list[int]:
    return [d.desired for d in decisions]


def direction_changes(values: Sequence[int]) -> int:
    """How often the replica count turned around (up then down, or down then up)."""
    moves = [b - a for a, b in itertools.pairwise(values) if b != a]
    return sum(1 for a, b in itertools.pairwise(moves) if (a > 0) != (b > 0))


def pool_policy(**autoscaling_fields: object) -> autoscaling.ScalingPolicy:
    """The policy of a WorkerPool with the given ``spec.autoscaling`` (CRD names)."""
    spec = api.WorkerPoolSpec.model_validate(
        {
            "image": "registry.example/worker:1",
            "app": "emails.tasks:app",
            "queue": {"name": "emails", "redis": {"urlSecretRef": {"name": "r", "key": "url"}}},
            "autoscaling": {"maxReplicas": 50, **autoscaling_fields},
        }
    )
    return autoscaling.build_scaling_policy(spec)
