"""A RabbitMQ queue's DLQ is bounded: its length and retention apply, and a read keeps a page.

Each test runs on the session's private rabbitmq-server (tests/support/rabbitmq_server.py) with
a queue of its own; what the DLQ holds is read back through AMQP, not through counters the
broker keeps itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from worker_runtime import envelope
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker
from worker_runtime.brokers.rabbitmq import topology

pytestmark = pytest.mark.slow

LOGGER = "workerfleet.brokers.rabbitmq"


@pytest.fixture
def rq_queue() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def channel(rabbitmq_server: Any) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain AMQP channel of the test's own (publisher confirms on)."""
    connection = await aio_pika.connect(rabbitmq_server.url)
    try:
        yield await connection.channel(publisher_confirms=True)
    finally:
        await connection.close()


async def dead_letter_jobs(b: rabbitmq_broker.RabbitMQBroker, job_ids: list[str]) -> None:
    """Enqueue ``job_ids`` and dead-letter each, one after the other, in that order."""
    await b.enqueue_many(
        [base.EnqueueRequest(envelope.build_envelope("t", {}, job_id=j)) for j in job_ids]
    )
    got: list[base.Delivery] = []
    deadline = time.monotonic() + 20
    while len(got) < len(job_ids) and time.monotonic() < deadline:
        got += await b.fetch("w", len(job_ids) - len(got), block=1)
    for d in sorted(got, key=lambda d: job_ids.index(d.id)):
        failure = base.Failure("ValueError", "boom", worker_id="w")
        assert await b.dead_letter(d, "non_retryable", failure=failure) is True


async def letters_in(channel: aio_pika.abc.AbstractChannel, queue: str) -> list[str]:
    """The job ids of the DLQ's messages, head first (taken unacked, then given back)."""
    dlq = await channel.declare_queue(topology.dead_queue(queue), passive=True)
    messages = []
    while (message := await dlq.get(no_ack=False, fail=False, timeout=5)) is not None:
        messages.append(message)
    for message in messages:
        await message.nack(requeue=True)
    return [m.message_id or "" for m in messages]


async def test_the_dlq_keeps_the_newest_dead_letters_up_to_the_queues_max_length(
    rabbitmq_server: Any, rq_queue: str, channel: aio_pika.abc.AbstractChannel
) -> None:
    # Given a queue whose dead-letter length is 2
    options = base.QueueOptions(max_deliveries=3, dlq_max_length=2)
    b = rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, rq_queue, options, prefetch=10)
    try:
        # When three jobs are dead-lettered, j0 first
        await dead_letter_jobs(b, ["j0", "j1", "j2"])
        # Then the DLQ holds the two newest: the oldest made room
        assert await letters_in(channel, rq_queue) == ["j1", "j2"]
    finally:
        await b.close()


@pytest.mark.timeout(60)
async def test_a_dead_letter_older_than_the_queues_retention_leaves_the_dlq(
    rabbitmq_server: Any, rq_queue: str
) -> None:
    # Given a queue that keeps dead letters 1 s (RabbitMQ's own clock runs it: no fake here)
    options = base.QueueOptions(max_deliveries=3, dlq_retention_seconds=1.0)
    b = rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, rq_queue, options, prefetch=10)
    try:
        # When a job is dead-lettered
        await dead_letter_jobs(b, ["old"])
        assert await b.count_dead_letters() == 1
        # Then RabbitMQ drops it once its retention is over
        count = 1
        deadline = time.monotonic() + 20
        while count and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            count = await b.count_dead_letters()
        assert count == 0
    finally:
        await b.close()


async def test_a_worker_says_once_that_an_existing_dlq_with_other_bounds_keeps_them(
    rabbitmq_server: Any,
    rq_queue: str,
    channel: aio_pika.abc.AbstractChannel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a DLQ declared with no bounds (as versions before them did)
    await channel.declare_queue(
        topology.dead_queue(rq_queue), durable=True, arguments={"x-queue-type": "quorum"}
    )
    # When a producer and then a worker open the queue
    producer = rabbitmq_broker.RabbitMQBroker(
        rabbitmq_server.url, rq_queue, role=base.QueueRole.PRODUCER
    )
    worker = rabbitmq_broker.RabbitMQBroker(
        rabbitmq_server.url, rq_queue, base.QueueOptions(max_deliveries=3), prefetch=10
    )
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            await producer.count_dead_letters()
            assert caplog.records == []  # a producer has no bounds of its own to speak for
            await dead_letter_jobs(worker, ["j0"])
            await worker.count_dead_letters()
        # Then the worker says once which queue keeps other bounds, what RabbitMQ answered,
        # and how to bound it
        [record] = caplog.records
        assert record.__dict__["queue"] == topology.dead_queue(rq_queue)
        assert "x-max-length" in record.__dict__["rabbitmq"]
        assert record.__dict__["wanted"] == {
            "x-max-length": 100_000,
            "x-message-ttl": 604_800_000,
            "x-delivery-limit": 2**31 - 1,
        }
        assert "policy" in record.__dict__["hint"]
        # And the DLQ still takes the worker's dead letters
        assert await letters_in(channel, rq_queue) == ["j0"]
    finally:
        await producer.close()
        await worker.close()


@pytest.mark.timeout(120)
async def test_listing_a_page_of_a_large_dlq_keeps_only_that_page_in_memory(
    rabbitmq_server: Any, rq_queue: str, channel: aio_pika.abc.AbstractChannel
) -> None:
    # Given a DLQ of 40 dead letters of 100 KB each (4 MB), dead-lettered one after the other
    b = rabbitmq_broker.RabbitMQBroker(
        rabbitmq_server.url, rq_queue, base.QueueOptions(), role=base.QueueRole.READER
    )
    await channel.declare_queue(
        topology.dead_queue(rq_queue), durable=True, arguments={"x-queue-type": "quorum"}
    )
    now = time.time()
    for i in range(40):
        body = envelope.encode_envelope(
            envelope.build_envelope("t", {"pad": "x" * 100_000}, job_id=f"d{i}")
        )
        headers = {topology.H_REASON: "non_retryable", topology.H_DEAD_AT: repr(now + i)}
        await channel.default_exchange.publish(
            aio_pika.Message(body, headers=headers, message_id=f"d{i}"),
            routing_key=topology.dead_queue(rq_queue),
        )
    try:
        # When the second and third newest are listed
        tracemalloc.start()
        try:
            page = await b.list_dead_letters(offset=1, limit=2)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # Then those two come back, and the read never held much more than them
        assert [d.job_id for d in page] == ["d38", "d37"]
        assert peak < 2_000_000, peak
        # And every dead letter is still in the DLQ
        assert await b.count_dead_letters() == 40
    finally:
        await b.close()
