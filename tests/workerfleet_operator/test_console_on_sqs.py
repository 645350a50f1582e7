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


async def test_the_console_replays_a_dead_letter_and_creates_no_queue_it_is_only_shown(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given an SQS queue with one dead letter, and a console also showing a mistyped name
    url, queue = elasticmq_server.url, f"con-{uuid.uuid4().hex[:10]}"
    typo = f"{queue}x"
    worker = await brokers.open_broker(url, queue, options=base.QueueOptions(lease_seconds=7))
    try:
        env = envelope_mod.build_envelope("resize", {"w": 1})
        await worker.enqueue(base.EnqueueRequest(envelope=env))
        delivered: list[base.Delivery] = []
        for _ in range(20):  # bounded: SQS long-polls
            delivered = await worker.fetch("w", 1, block=1.0)
            if delivered:
                break
        assert delivered, "the job was never delivered"
        failure = base.Failure("ValueError", "bad", worker_id="w")
        assert await worker.dead_letter(delivered[0], "max_attempts", failure=failure)
    finally:
        await worker.close()
    source = sources.URLSource(url, [queue, typo])
    try:
        # When both queue pages are opened and the dead letter is replayed from the console
        await source.fetch_pools()
        broker, _ = await source.fetch_queue_broker(queue)
        replayed = await broker.replay_dead_letters(job_ids=[env.id])
        shown, _ = await source.fetch_queue_broker(typo)
        typo_letters = await shown.list_dead_letters()
    finally:
        await source.close()
    # Then the job is back in its queue, and the mistyped queue reads empty and was not made
    assert replayed == [env.id] and typo_letters == []
    reader = await brokers.open_broker(url, "con-list", role="reader")
    try:
        assert isinstance(reader, base.QueueListing)
        listed = await reader.list_queues()
    finally:
        await reader.close()
    assert queue in listed and typo not in listed
