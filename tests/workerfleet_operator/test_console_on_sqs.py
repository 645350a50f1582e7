"""The console's queue page on SQS (a private ElasticMQ) reads a worker's queue as it is.

The console opens its own broker per queue (``sources.URLSource``); opened as the queue's worker
would open it, it reset the worker's visibility timeout and redrive limit to the defaults.
"""

from __future__ import annotations

import uuid

from workerfleet_operator.console import sources

from tests.support import elasticmq
from worker_runtime import brokers
from worker_runtime import envelope as envelope_mod
from worker_runtime.brokers import base


async def test_the_console_reads_a_workers_sqs_queue_without_changing_its_settings(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given an SQS queue a worker opened with its lease (7 s) and poison limit (3 receives)
    url, queue = elasticmq_server.url, f"con-{uuid.uuid4().hex[:10]}"
    options = base.QueueOptions(lease_seconds=7, max_deliveries=2)
    worker = await brokers.open_broker(url, queue, options=options)
    try:
        await worker.enqueue(
            base.EnqueueRequest(envelope=envelope_mod.build_envelope("resize", {"w": 1}))
        )
    finally:
        await worker.close()
    # When the console shows the queue, and its queue page opens the queue's broker
    source = sources.URLSource(url, [queue])
    try:
        [pool] = await source.fetch_pools()
        broker, _ = await source.fetch_queue_broker(queue)
        letters = await broker.list_dead_letters()
    finally:
        await source.close()
    # Then it shows the job and the worker's settings are still the queue's
    assert (pool.error, pool.backlog, letters) == (None, 1, [])
    assert await elasticmq.fetch_queue_settings(url, queue) == ("7", 3)
