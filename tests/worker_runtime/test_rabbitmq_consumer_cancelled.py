"""A RabbitMQ worker whose work queue was deleted under it consumes the queue declared again.

Deleting a queue cancels its consumers (RabbitMQ sends ``basic.cancel``), and the AMQP client
only forgets the consumer: the worker's connection and channel live on. docs/brokers.md tells
an operator to delete a queue a node crash left without a leader (the workers "declare it
again"), and a subscription's queue to give it the worker's delivery limit; a running worker
went on serving its other levels and never again took a job of that one, however long its
backlog grew. Runs on the session's private rabbitmq-server.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.worker_runtime import test_rabbitmq_broker, test_rabbitmq_deleted_queue
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker
from worker_runtime.brokers.rabbitmq import topology

pytestmark = pytest.mark.slow


async def test_a_worker_takes_the_jobs_of_its_work_queue_deleted_and_declared_again(
    rabbitmq_server: Any,
) -> None:
    queue = f"t{uuid.uuid4().hex[:12]}"
    worker = rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, queue, prefetch=4)
    producer = rabbitmq_broker.RabbitMQBroker(
        rabbitmq_server.url, queue, role=base.QueueRole.PRODUCER
    )
    try:
        # Given a worker that ran a job of its normal level
        await producer.enqueue(test_rabbitmq_broker.job(job_id="before"))
        [first] = await worker.fetch("w1", 1, block=10)
        assert await worker.ack(first) is True
        # And the operator deleted that work queue, RabbitMQ cancelled the worker's consumer of
        # it (basic.cancel, seen by the client: bounded wait), and a producer sent a job to it
        await test_rabbitmq_deleted_queue.delete_queue(
            rabbitmq_server.url, topology.work_queue(queue, "normal")
        )
        for _ in range(200):  # bounded: 10 s
            if any(tag not in channel.consumers for channel, tag in worker._consumers):
                break
            await asyncio.sleep(0.05)
        await producer.enqueue(test_rabbitmq_broker.job(job_id="after"))
        # When the worker fetches, as its fetch loop does (again after an empty answer: the
        # server's basic.cancel may arrive while a fetch already waits)
        got: list[base.Delivery] = []
        for _ in range(20):  # bounded: 20 fetches of at most 1 s
            got = await worker.fetch("w1", 1, block=1.0)
            if got:
                break
        # Then it gets that job
        assert [d.id for d in got] == ["after"]
        assert await worker.ack(got[0]) is True
    finally:
        await producer.close()
        await worker.close()
