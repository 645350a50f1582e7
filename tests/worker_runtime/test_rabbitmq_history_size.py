"""A RabbitMQ job's failure history always fits the header frame RabbitMQ accepts.

The history travels in a message header (``wf-history``), and AMQP sends a message's headers in
one frame of at most the connection's ``frame_max`` (131,072 bytes by default). Each failure
keeps up to 2,000 characters of message and 4,000 of traceback, and JSON escapes every
character outside ASCII as six bytes: a job whose errors are not in English overflowed that
frame at its fourth retry, and RabbitMQ closed the whole connection (FRAME_ERROR), sending back
every job the worker held. Runs on the session's private rabbitmq-server; judged by what is
handed out and what lands in the DLQ.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.worker_runtime import test_rabbitmq_broker
from worker_runtime import envelope
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker

pytestmark = pytest.mark.slow

FAILURES = base.FAILURE_HISTORY_KEEP + 2
"""More than the history keeps (``HISTORY_KEEP``), each as large as ``build_failure`` keeps."""


@pytest.fixture
async def rq(rabbitmq_server: Any) -> AsyncIterator[rabbitmq_broker.RabbitMQBroker]:
    b = rabbitmq_broker.RabbitMQBroker(
        rabbitmq_server.url,
        f"t{uuid.uuid4().hex[:12]}",
        base.QueueOptions(max_deliveries=3),
        prefetch=10,
    )
    try:
        yield b
    finally:
        await b.close()


def failure_in_french(n: int) -> base.Failure:
    """A failure as large as ``build_failure`` keeps, every character outside ASCII."""
    message = f"échec n°{n} " + "é" * base.TRACEBACK_KEEP
    traceback = f"Traceback n°{n}\n" + "ü" * base.TRACEBACK_KEEP
    return base.Failure(
        "ValueError",
        message[:2000],
        traceback=traceback[: base.TRACEBACK_KEEP],
        worker_id="w1",
    )


async def test_a_job_failing_with_long_non_ascii_errors_is_retried_and_dead_lettered_whole(
    rq: rabbitmq_broker.RabbitMQBroker,
) -> None:
    # Given a job whose every run fails with a long French error, and another job held by the
    # same worker the whole time
    await rq.enqueue(base.EnqueueRequest(envelope.build_envelope("t", {}, job_id="bystander")))
    [bystander] = await rq.fetch("w1", 1, block=10)
    await rq.enqueue(base.EnqueueRequest(envelope.build_envelope("t", {}, job_id="fr")))
    # When it is retried after each of its first failures and dead-lettered after the last
    for n in range(1, FAILURES):
        [delivery] = await rq.fetch("w1", 1, block=10)
        assert (delivery.id, delivery.attempts, delivery.lost) == ("fr", n - 1, 0)
        assert await rq.retry(delivery, failure_in_french(n), delay_seconds=0) is True
    [last] = await rq.fetch("w1", 1, block=10)
    assert (last.id, last.attempts, last.lost) == ("fr", FAILURES - 1, 0)
    assert await rq.dead_letter(last, "max_attempts", failure=failure_in_french(FAILURES))
    # Then the worker's connection lived through it: the job it held is still its own to ack
    assert await rq.ack(bystander) is True
    # And the dead letter holds the job with its newest failures, the newest one whole
    [dead] = await test_rabbitmq_broker.dead_letters(rq._url, rq.queue)
    record = rabbitmq_broker.decode_dead_letter(dead)
    assert (record.job_id, record.reason, record.attempts) == ("fr", "max_attempts", FAILURES)
    newest = failure_in_french(FAILURES)
    assert (record.history[-1].message, record.history[-1].traceback) == (
        newest.message,
        newest.traceback,
    )
    attempts = [h.attempt for h in record.history]
    assert attempts == list(range(FAILURES - len(attempts) + 1, FAILURES + 1))
    assert len(attempts) > 1


def redis_history_keep() -> int:
    """The failures Redis' scripts keep in a job's history (``HISTORY_KEEP`` of the prelude)."""
    prelude = (
        importlib.resources.files("worker_runtime.brokers.redis")
        .joinpath("lua", "_prelude.lua")
        .read_text(encoding="utf-8")
    )
    found = re.search(r"^local HISTORY_KEEP = (\d+)$", prelude, re.MULTILINE)
    assert found is not None, "the Redis prelude no longer sets HISTORY_KEEP"
    return int(found.group(1))


def test_a_job_keeps_as_many_failures_on_rabbitmq_as_on_redis() -> None:
    # Given a job that failed 40 times with short errors (far below the frame's byte bound)
    failures = [
        {"error_type": "ValueError", "message": f"failure {n}", "traceback": "", "attempt": n}
        for n in range(1, 41)
    ]
    # When its history is written into the copy's header
    kept = json.loads(rabbitmq_broker.encode_history(failures))
    # Then it keeps its newest failures, as many as Redis keeps: the count both share
    keep = redis_history_keep()
    assert [record["attempt"] for record in kept] == list(range(41 - keep, 41))
    assert keep == base.FAILURE_HISTORY_KEEP
