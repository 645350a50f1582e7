"""SQS keeps no totals, and its stats say so: ``QueueStats``' ``*_total`` are None, never 0.

SQS counts what each queue holds now, never what was sent, deleted or moved, so the SQS
broker's totals read 0 whatever happened, indistinguishable from a real 0: the operator
exported them, WorkerPoolDeadLetterGrowing could never fire on SQS and the autoscaler's rates
read 0/s. Likewise the oldest dead letter's age, which SQS cannot tell (no peek): it read 0, so
WorkerPoolDeadLetterStale never fired. What the operator makes of None is
tests/workerfleet_operator/test_unkept_totals.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid

from tests.support import elasticmq
from tests.support.cli import run_cli
from worker_runtime import envelope as envelope_mod
from worker_runtime.brokers import base
from worker_runtime.brokers.sqs import broker as sqs_broker

TOTALS = (
    "enqueued_total",
    "completed_total",
    "failed_total",
    "retried_total",
    "dead_lettered_total",
    "cancelled_total",
    "workers_lost_total",
)


async def _run_three_jobs(url: str, queue: str) -> None:
    """Three jobs enqueued: one acked, one dead-lettered, one left waiting."""
    worker = await sqs_broker.open_sqs_broker(url, queue)
    try:
        await worker.enqueue_many(
            [base.EnqueueRequest(envelope_mod.build_envelope("t", {"n": n})) for n in range(3)]
        )
        got: list[base.Delivery] = []
        for _ in range(20):  # bounded: SQS's short polls may sample an empty server
            got += await worker.fetch("w1", 2 - len(got), block=1.0)
            if len(got) == 2:
                break
        done, doomed = got
        assert await worker.ack(done)
        assert await worker.dead_letter(doomed, "non_retryable")
    finally:
        await worker.close()


async def _read_stats(url: str, queue: str) -> base.QueueStats:
    probe = await sqs_broker.open_sqs_broker(url, queue, role=base.QueueRole.READER)
    try:
        return await probe.fetch_stats()
    finally:
        await probe.close()


def _stats_after_three_jobs(url: str, queue: str) -> base.QueueStats:
    """:func:`_run_three_jobs` on ``queue``, then its stats as the operator's probe reads them."""
    asyncio.run(_run_three_jobs(url, queue))
    return asyncio.run(_read_stats(url, queue))


def test_sqs_stats_say_the_totals_are_unknown_while_the_queues_hold_their_counts(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given a queue that enqueued three jobs, completed one and dead-lettered one
    url, queue = elasticmq_server.url, f"t-{uuid.uuid4().hex[:12]}"
    # When the operator's read-only probe reads its stats
    stats = _stats_after_three_jobs(url, queue)
    # Then the DLQ's length and the waiting job are there, and every total is unknown: None,
    # not a 0 that would say nothing was enqueued, completed or dead-lettered
    assert (stats.dead_letter, stats.backlog + stats.in_flight) == (1, 1)
    assert {name: getattr(stats, name) for name in TOTALS} == dict.fromkeys(TOTALS)
    # And `queue stats` says they are not kept, as text and as JSON nulls
    flags = ("--broker-url", url, "-q", queue)
    shown = run_cli("queue", "stats", *flags)
    assert shown.returncode == 0, shown.stderr
    for label in ("enqueued total", "completed total", "dead-lettered total", "cancelled total"):
        [line] = [row for row in shown.stdout.splitlines() if label in row]
        assert "not kept by this broker" in line, line
    as_json = run_cli("queue", "stats", "--json", *flags)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert {name: data[name] for name in TOTALS} == dict.fromkeys(TOTALS)


def test_sqs_stats_say_the_oldest_dead_letters_age_is_unknown(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given a queue that dead-lettered one of its jobs
    url, queue = elasticmq_server.url, f"t-{uuid.uuid4().hex[:12]}"
    # When the operator's read-only probe reads its stats
    stats = _stats_after_three_jobs(url, queue)
    # Then the DLQ holds the letter and its age is unknown: None, not a 0 that would keep
    # WorkerPoolDeadLetterStale quiet however long it waits (SQS has no peek at the DLQ)
    assert stats.dead_letter == 1
    assert stats.oldest_dead_letter_age_seconds is None
