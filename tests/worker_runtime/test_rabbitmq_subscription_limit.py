"""A RabbitMQ subscription's queues, created by a publisher, never dead-letter a job before its
worker's ``max_deliveries``.

The publisher's ``subscribe`` created the subscription's work queues with the default options,
so their ``x-delivery-limit`` was 5; RabbitMQ never changes an existing queue's arguments, so a
subscription worker with ``max_deliveries`` 8 ran on that queue and RabbitMQ dead-lettered its
job at its own limit first, after 6 lost deliveries. On the session's real rabbitmq-server;
judged by what the worker is handed and what lands in the DLQ.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker

pytestmark = pytest.mark.slow

MAX_DELIVERIES = 8


@pytest.mark.timeout(180)
async def test_a_worker_keeps_its_event_through_its_own_max_deliveries_on_a_publishers_queues(
    rabbitmq_server: Any,
) -> None:
    # Given a subscription whose queues the publisher created (subscribe before any worker ran)
    topic, group = f"t{uuid.uuid4().hex[:10]}", "mailer"
    publisher = rabbitmq_broker.RabbitMQBroker(
        rabbitmq_server.url, "pub", management_port=rabbitmq_server.management_port
    )
    try:
        queue = await publisher.subscribe(topic, group)
        # And an event published to it
        await publisher.publish(base.PublishRequest(topic, "e1", {"n": 1}))
    finally:
        await publisher.close()
    options = base.QueueOptions(max_deliveries=MAX_DELIVERIES)

    def open_worker() -> rabbitmq_broker.RabbitMQBroker:
        return rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, queue, options, prefetch=1)

    # When workers with max_deliveries 8 die holding it 7 times (connection closed, no ack)
    handed = []
    for _ in range(MAX_DELIVERIES - 1):
        worker = open_worker()
        got = await worker.fetch("w", 1, block=10)
        handed += [(d.id, d.lost) for d in got]
        assert worker._connection is not None
        await worker._connection.close()
        if not got:
            break
    # Then it was handed out each time, one more lost delivery each
    assert handed == [("e1", lost) for lost in range(MAX_DELIVERIES - 1)]
    # And the eighth delivery still hands it out (7 lost, below 8) and it completes, with
    # nothing dead-lettered (before: RabbitMQ's limit of 5 dead-lettered it after 6 losses)
    worker = open_worker()
    try:
        [last] = await worker.fetch("w", 1, block=10)
        assert (last.id, last.lost) == ("e1", MAX_DELIVERIES - 1)
        assert await worker.ack(last)
        assert await worker.list_dead_letters() == []
    finally:
        await worker.close()
