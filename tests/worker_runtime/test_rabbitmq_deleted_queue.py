"""A RabbitMQ queue deleted under running workers and producers is declared again, and no copy
sent to it is lost.

docs/brokers.md tells an operator to delete a workerfleet queue in two cases: a DLQ to give it
new bounds ("empty it and delete it; the next worker declares it with its bounds"), and a queue
a node crash left without a leader. Workers and producers that run meanwhile keep their
connection, and with it what they know: which queues they declared, and which queues their
consuming channel's transactions publish to. A transaction publishes without ``mandatory`` (a
return is not reported there), so a dead letter sent that way to the deleted DLQ was dropped by
RabbitMQ while its ack committed: the job was gone. Runs on the session's private
rabbitmq-server; judged by what the RabbitMQ queues hold afterwards.
"""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
import pytest

from tests.worker_runtime import test_rabbitmq_broker
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker
from worker_runtime.brokers.rabbitmq import topology

pytestmark = pytest.mark.slow


async def delete_queue(url: str, name: str) -> None:
    """What an operator does (``rabbitmqctl delete_queue``): the queue and its messages go."""
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        await channel.queue_delete(name)


async def test_a_dead_letter_sent_after_the_dlq_was_deleted_lands_in_the_dlq_declared_again(
    rabbitmq_server: Any,
) -> None:
    queue = f"t{uuid.uuid4().hex[:12]}"
    worker = rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, queue, prefetch=10)
    try:
        # Given a worker holding two jobs that dead-lettered the first one
        await worker.enqueue_many(
            [test_rabbitmq_broker.job(job_id="d1"), test_rabbitmq_broker.job(job_id="d2")]
        )
        first, second = await worker.fetch("w1", 2, block=10)
        assert await worker.dead_letter(first, "non_retryable") is True
        # And the operator emptied the DLQ and deleted it, as docs/brokers.md says, to bound
        # it anew
        [taken] = await test_rabbitmq_broker.dead_letters(rabbitmq_server.url, queue)
        assert taken.message_id == "d1"
        await delete_queue(rabbitmq_server.url, topology.dead_queue(queue))
        # When the worker dead-letters its second job
        assert await worker.dead_letter(second, "non_retryable") is True
        assert await worker.fetch("w1", 1, block=1) == []
    finally:
        await worker.close()
    # Then that job is in the DLQ, declared again
    [dead] = await test_rabbitmq_broker.dead_letters(rabbitmq_server.url, queue)
    assert dead.message_id == "d2"


async def test_an_enqueue_after_its_work_queue_was_deleted_declares_it_again_and_is_stored(
    rabbitmq_server: Any,
) -> None:
    rq_queue = f"t{uuid.uuid4().hex[:12]}"
    # Given a producer that enqueued a job, and the work queue deleted since (a queue a crash
    # left without a leader is repaired that way)
    producer = rabbitmq_broker.RabbitMQBroker(
        rabbitmq_server.url, rq_queue, role=base.QueueRole.PRODUCER
    )
    try:
        await producer.enqueue(test_rabbitmq_broker.job(job_id="e1"))
        await delete_queue(rabbitmq_server.url, topology.work_queue(rq_queue, "normal"))
        # When it enqueues another job of that level
        result = await producer.enqueue(test_rabbitmq_broker.job(job_id="e2"))
    finally:
        await producer.close()
    # Then the job is stored in the work queue, declared again
    assert result == base.EnqueueResult("e2", True)
    stored = await test_rabbitmq_broker.messages_in(
        rabbitmq_server.url, topology.work_queue(rq_queue, "normal")
    )
    assert [m.message_id for m in stored] == ["e2"]
