"""Each workerfleet queue on RabbitMQ reads its own RabbitMQ queues and no other queue's.

Queue names may hold dots, and every RabbitMQ name of queue ``Q`` starts ``wf.Q.``: the queues of
a queue named ``Q.delay`` (``wf.Q.delay.high``, ``wf.Q.delay.dead``) start like ``Q``'s delay
buckets (``wf.Q.delay.<level>.<ms>``). No two queues share a RabbitMQ queue (the suffixes
``high``, ``normal``, ``low``, ``dead`` and ``delay.<level>.<ms>`` never end in another
suffix), so no name is refused; but ``Q``'s stats read ``^wf\\.Q\\.`` through the management
API, which the API applies caseless, and counted every queue under that prefix as a delay bucket
of ``Q``. Judged on the session's real rabbitmq-server by what each queue's stats report.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import pytest

from worker_runtime import envelope
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker
from worker_runtime.brokers.rabbitmq import topology

QUEUE = "orders"
OTHER_QUEUES = (
    "orders.delay",
    "orders.delay.high",
    "orders.delay.normal.25",
    "orders.dead",
    "Orders",
)
"""Queues whose RabbitMQ names start like (or differ only in case from) those of ``orders``."""


def rabbitmq_names(queue: str) -> list[str]:
    """Every RabbitMQ queue ``queue`` can have: its work queues, DLQ and delay buckets."""
    names = [topology.work_queue(queue, level) for level in topology.LEVELS]
    names.append(topology.dead_queue(queue))
    for level in topology.LEVELS:
        names += [
            topology.delay_queue(queue, level, 25 << k)
            for k in range(topology.BUCKET_MAX_EXPONENT + 1)
        ]
    return names


def test_no_two_queue_names_share_a_rabbitmq_queue() -> None:
    # Given the RabbitMQ names of a queue and of queues named like its RabbitMQ queues' parts
    mine = rabbitmq_names(QUEUE)
    theirs = [name for other in OTHER_QUEUES for name in rabbitmq_names(other)]
    # Then none of them is used twice (no name needs refusing on RabbitMQ)
    assert len(set(mine + theirs)) == len(mine) + len(theirs)


def test_a_queues_stats_filter_matches_its_own_rabbitmq_queues_and_no_other_queues() -> None:
    # Given the filter the stats send to the management API (which applies it caseless)
    pattern = re.compile(topology.queue_name_pattern(QUEUE), re.IGNORECASE)
    # Then it matches every RabbitMQ queue of the queue, and none of the other queues'
    assert all(pattern.match(name) for name in rabbitmq_names(QUEUE))
    strays = [
        name
        for other in OTHER_QUEUES
        for name in rabbitmq_names(other)
        if pattern.match(name) or topology.owns(QUEUE, name)
    ]
    assert strays == []


def job(job_id: str) -> base.EnqueueRequest:
    return base.EnqueueRequest(envelope.build_envelope("t", {"n": 1}, job_id=job_id))


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_queues_stats_leave_out_the_jobs_of_a_queue_named_like_its_delay_buckets(
    rabbitmq_server: Any,
) -> None:
    # Given a queue Q with one job delayed a minute (waiting in a delay bucket), and a queue
    # named Q.delay with two jobs waiting in its work queue
    queue = f"t{uuid.uuid4().hex[:10]}"
    url = rabbitmq_server.url
    mine = rabbitmq_broker.RabbitMQBroker(
        url, queue, management_port=rabbitmq_server.management_port
    )
    other = rabbitmq_broker.RabbitMQBroker(
        url, f"{queue}.delay", management_port=rabbitmq_server.management_port
    )
    try:
        await mine.enqueue(base.EnqueueRequest(job("later").envelope, delay_seconds=60.0))
        await other.enqueue_many([job("a"), job("b")])
        # When both queues' stats are read once RabbitMQ has sampled both
        deadline = time.monotonic() + 60
        while True:
            stats, other_stats = await mine.fetch_stats(), await other.fetch_stats()
            if (stats.future_delayed >= 1 and other_stats.backlog == 2) or (
                time.monotonic() > deadline
            ):
                break
            await asyncio.sleep(0.5)
        # Then Q counts its own delayed job only, and Q.delay its own two waiting jobs
        assert (stats.backlog, stats.future_delayed, stats.dead_letter) == (0, 1, 0)
        assert (other_stats.backlog, other_stats.future_delayed) == (2, 0)
    finally:
        await mine.close()
        await other.close()
