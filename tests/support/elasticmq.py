"""Private ElasticMQ servers (an SQS-compatible server on the JVM) for the SQS broker's tests.

Used by the ``elasticmq_server`` / ``elasticmq_factory`` fixtures of tests/conftest.py. Each
server is the local fleet's embedded ElasticMQ (``workerfleet_operator.local.embedded_elasticmq``:
SQS REST and statistics ports bound to 127.0.0.1 on free ports, the jars that
scripts/ensure-elasticmq.sh caches, stopped by its PID), so the tests exercise the process
handling ``workerfleet demo --broker sqs`` uses. With ``persistent=True`` queues and messages live
in a data directory that a ``kill()`` + ``start()`` keeps (the server-restart fault scenario).

:class:`WholeSecondContract` is the contract suite's harness for SQS (see there).

A missing ``java`` or missing jars FAIL the run with the command that installs them: the SQS
tests never skip for want of a server.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from workerfleet_operator.local import embedded, embedded_elasticmq

from tests.support import brokers

ELASTICMQ_VERSION = embedded_elasticmq.ELASTICMQ_VERSION


class ElasticMQServer(embedded_elasticmq.EmbeddedElasticMQ):
    """One ElasticMQ process of ours; ``kill()`` is SIGKILL, ``start()`` reuses ports and data."""

    def __init__(self, *, persistent: bool = False) -> None:
        try:
            super().__init__(persistent=persistent)
        except embedded.EmbeddedServerError as exc:
            pytest.fail(f"{exc} (the SQS tests need a real ElasticMQ)")


SQS_TIME_STRETCH = 2.5
"""How much longer the contract suite's waits last on SQS (see :class:`WholeSecondContract`)."""


@dataclasses.dataclass
class WholeSecondContract(brokers.Contract):
    """The contract suite's harness on SQS, whose visibility timeouts and delays are whole
    seconds: the suite's 0.4 s lease and 0.5 s delays last 1 s there, so every wait is
    stretched by :data:`SQS_TIME_STRETCH` (0.6 s after a 0.4 s lease becomes 1.5 s after SQS's
    1 s, a renew at 0.24 s becomes 0.6 s, still inside it). The assertions are unchanged."""

    async def advance(self, seconds: float) -> None:
        await asyncio.sleep(seconds * SQS_TIME_STRETCH)


async def enqueue_jobs(url: str, queue: str, task: str, count: int) -> None:
    """Enqueue ``count`` jobs of ``task`` (empty payloads) on the SQS queue at ``url``, as a
    producer would (its broker creates the queues when they are missing)."""
    from worker_runtime import brokers as runtime_brokers
    from worker_runtime import envelope as envelope_mod
    from worker_runtime.brokers import base

    producer = await runtime_brokers.open_broker(url, queue)
    try:
        await producer.enqueue_many(
            [
                base.EnqueueRequest(envelope=envelope_mod.build_envelope(task, {"n": n}))
                for n in range(count)
            ]
        )
    finally:
        await producer.close()


async def fetch_queue_settings(url: str, queue: str) -> tuple[str, int]:
    """(VisibilityTimeout, redrive maxReceiveCount) of ``queue``'s normal-priority SQS queue at
    ``url``, read through a reader's broker (which changes neither)."""
    import json

    from worker_runtime import brokers as runtime_brokers
    from worker_runtime import envelope as envelope_mod

    reader: Any = await runtime_brokers.open_broker(url, queue, role="reader")
    try:
        reply = await reader._client.get_queue_attributes(
            QueueUrl=reader._url(envelope_mod.Priority.NORMAL), AttributeNames=["All"]
        )
    finally:
        await reader.close()
    a = reply["Attributes"]
    return a["VisibilityTimeout"], int(json.loads(a["RedrivePolicy"])["maxReceiveCount"])
