"""What RabbitMQ's stats call "in flight": every delivered, unacked job, prefetched ones too.

RabbitMQ counts a message delivered to a consumer and not yet acked as unacknowledged, whether
the worker handed it to a handler or holds it in its prefetch buffer, and it keeps no record of
which: so ``in_flight`` (``messages_unacknowledged``) counts a worker's prefetched jobs, and
``backlog`` (``messages_ready``) leaves them out. What the autoscaler's capacity signal sums,
``backlog + in_flight``, is every job not finished, each once, wherever it waits; a drain's
give-back moves the prefetched jobs back to the backlog. docs/brokers.md ("Autoscaling signal")
says what this means for each reader. On the session's real rabbitmq-server; the management API
samples every 500 ms there, so the stats are read until they settle (bounded).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from worker_runtime import envelope
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker

pytestmark = pytest.mark.slow


def job(job_id: str, priority: str) -> base.EnqueueRequest:
    return base.EnqueueRequest(envelope.build_envelope("t", {}, job_id=job_id, priority=priority))


async def stats_once_sampled(
    probe: rabbitmq_broker.RabbitMQBroker, backlog: int, in_flight: int
) -> base.QueueStats:
    """The queue's stats once RabbitMQ's sampling shows ``backlog`` and ``in_flight`` (or the
    last read, after 20 s)."""
    stats = await probe.fetch_stats()
    for _ in range(40):
        if (stats.backlog, stats.in_flight) == (backlog, in_flight):
            break
        await asyncio.sleep(0.5)
        stats = await probe.fetch_stats()
    return stats


@pytest.mark.timeout(120)
async def test_prefetched_jobs_count_in_flight_and_every_unfinished_job_counts_once(
    rabbitmq_server: Any,
) -> None:
    queue = f"t{uuid.uuid4().hex[:12]}"
    worker = rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, queue, prefetch=3)
    probe = rabbitmq_broker.RabbitMQBroker(
        rabbitmq_server.url,
        queue,
        role=base.QueueRole.READER,
        management_port=rabbitmq_server.management_port,
    )
    try:
        # Given four high and four normal jobs, and a worker with prefetch 3 (per level) that
        # took one high job to run
        await worker.enqueue_many([job(f"h{n}", "high") for n in range(4)])
        await worker.enqueue_many([job(f"n{n}", "normal") for n in range(4)])
        [running] = await worker.fetch("w1", 1, block=10)
        assert running.id == "h0"
        # When the stats are read
        stats = await stats_once_sampled(probe, backlog=2, in_flight=6)
        # Then the five jobs it prefetched count in flight beside the one it runs, and only
        # the two no consumer took are backlog: together every unfinished job, once each
        assert (stats.backlog, stats.in_flight) == (2, 6)
        # And when the worker drains (its prefetched jobs go back to their queues)
        await worker.stop_prefetching()
        stats = await stats_once_sampled(probe, backlog=7, in_flight=1)
        # Then only the job it runs is in flight
        assert (stats.backlog, stats.in_flight) == (7, 1)
        assert await worker.ack(running) is True
    finally:
        await worker.close()
        await probe.close()
