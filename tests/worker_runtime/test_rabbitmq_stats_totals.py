"""RabbitMQ's stats carry only the numbers RabbitMQ keeps; the others are None, never a fake 0.

RabbitMQ's management API counts what was published to and acked from each queue: the work
queues' publishes and acks are the enqueued and completed totals, the DLQ's publishes the
dead-lettered total. It counts no failed attempt (a retry is an ack and a publish like any
other) and workerfleet keeps no heartbeats on RabbitMQ, so failed, retried and workers-lost
totals were reported as 0 whatever happened: WorkerPoolHighFailureRate read "no failures" and
WorkerPoolDrainKilled "no worker killed". Nor can RabbitMQ tell the oldest dead letter's age
(quorum queues report no head message's time): it was 0, so WorkerPoolDeadLetterStale never
fired. On the session's real rabbitmq-server.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from tests.support.cli import run_cli
from worker_runtime import brokers, envelope
from worker_runtime.brokers import base

pytestmark = pytest.mark.slow

UNKEPT = ("failed_total", "retried_total", "cancelled_total", "workers_lost_total")


def job(job_id: str) -> base.EnqueueRequest:
    return base.EnqueueRequest(envelope.build_envelope("t", {"n": 1}, job_id=job_id))


async def _run_jobs(b: base.Broker) -> None:
    """Three jobs: one failed once and retried, then completed; one dead-lettered; one
    completed."""
    await b.enqueue_many([job(f"j{n}") for n in range(3)])
    got = sorted(await b.fetch("w1", 3, block=5), key=lambda d: d.id)
    assert [d.id for d in got] == ["j0", "j1", "j2"]
    failure = base.Failure("RuntimeError", "boom", worker_id="w1")
    assert await b.retry(got[0], failure, delay_seconds=0.1)
    assert await b.dead_letter(got[1], "non_retryable", failure=failure)
    assert await b.ack(got[2])
    [again] = await b.fetch("w1", 1, block=10)
    assert (again.id, again.attempts) == ("j0", 1)
    assert await b.ack(again)


def _management_url(server: Any) -> str:
    return f"{server.url}?management_port={server.management_port}"


async def _run_and_read_stats(url: str, queue: str) -> base.QueueStats:
    """:func:`_run_jobs` on ``queue``, then its stats once RabbitMQ's sampling shows them."""
    b = await brokers.open_broker(url, queue, options=base.QueueOptions())
    try:
        await _run_jobs(b)
        return await _settled_stats(b)
    finally:
        await b.close()


async def _settled_stats(b: base.QueueProbe) -> base.QueueStats:
    """The stats once RabbitMQ's sampling (every 500 ms on the test node) shows the run."""
    stats = await b.fetch_stats()
    for _ in range(40):
        # the DLQ's message count is sampled too: wait for it as well as for the totals
        if (
            stats.dead_lettered_total == 1
            and (stats.completed_total or 0) >= 3
            and stats.dead_letter == 1
        ):
            break
        await asyncio.sleep(0.5)
        stats = await b.fetch_stats()
    return stats


async def test_rabbitmq_stats_report_the_totals_it_does_not_keep_as_unknown_and_count_the_others(
    rabbitmq_server: Any,
) -> None:
    # Given a queue whose job failed once, was retried and completed, with one job
    # dead-lettered and one completed
    url, queue = _management_url(rabbitmq_server), f"t{uuid.uuid4().hex[:12]}"
    # When the probe reads the queue's stats
    stats = await _run_and_read_stats(url, queue)
    # Then the totals RabbitMQ keeps count what happened (every publish to the work queues,
    # the retry's copy too; every ack, the retried delivery's too; the one dead letter)
    assert stats.enqueued_total is not None and stats.enqueued_total >= 3
    assert stats.completed_total is not None and stats.completed_total >= 3
    assert stats.dead_lettered_total == 1
    # And failed, retried, cancelled (RabbitMQ cannot cancel) and workers lost are unknown:
    # None, not a 0 that says the failure and the retry never happened
    assert {name: getattr(stats, name) for name in UNKEPT} == dict.fromkeys(UNKEPT)
    # And `queue stats` says they are not kept, as text and as JSON nulls
    shown = run_cli("queue", "stats", "--broker-url", url, "-q", queue)
    assert shown.returncode == 0, shown.stderr
    for label in ("failed total", "retried total", "cancelled total", "workers lost total"):
        [line] = [row for row in shown.stdout.splitlines() if label in row]
        assert "not kept by this broker" in line, line
    as_json = run_cli("queue", "stats", "--json", "--broker-url", url, "-q", queue)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert {name: data[name] for name in UNKEPT} == dict.fromkeys(UNKEPT)
    assert data["dead_lettered_total"] == 1


async def test_rabbitmq_stats_say_the_oldest_dead_letters_age_is_unknown(
    rabbitmq_server: Any,
) -> None:
    # Given a queue that dead-lettered one of its jobs
    url, queue = _management_url(rabbitmq_server), f"t{uuid.uuid4().hex[:12]}"
    # When the probe reads the queue's stats
    stats = await _run_and_read_stats(url, queue)
    # Then the DLQ holds the letter and its age is unknown: None, not a 0 that would keep
    # WorkerPoolDeadLetterStale quiet (quorum queues report no head message's time)
    assert stats.dead_letter == 1
    assert stats.oldest_dead_letter_age_seconds is None
