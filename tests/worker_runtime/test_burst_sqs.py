"""A burst on SQS runs a job its handler enqueued: the last look waits for the long polls out.

With two slots the worker's fetch long-polls while one job runs; when that job's ack frees
the worker, the wait is cut short but the polls stay out, and a job the handler enqueued is
caught by one of them. The burst's last "anything ready?" fetch must see it, on the suite's
ElasticMQ.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.support import elasticmq
from worker_runtime import App
from worker_runtime.brokers.sqs import broker as sqs_broker
from worker_runtime.testing import run_burst

REPLY_SECONDS = 0.5
"""How long a long poll's reply takes to come back here (a real network's, made visible)."""


def test_a_burst_on_sqs_runs_the_follow_up_job_a_handler_enqueued(
    elasticmq_server: elasticmq.ElasticMQServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given long polls whose replies take a moment to arrive, so a poll that received a job
    # may still be out when the worker's wait ends
    receive = sqs_broker.SqsBroker._receive

    async def slow_reply(self: sqs_broker.SqsBroker, url: str, count: int, wait: int) -> Any:
        messages = await receive(self, url, count, wait)
        if wait > 0 and messages:
            await asyncio.sleep(REPLY_SECONDS)
        return messages

    monkeypatch.setattr(sqs_broker.SqsBroker, "_receive", slow_reply)
    # And a queue on ElasticMQ with one job whose handler enqueues a follow-up job
    app = App(f"burst-{uuid.uuid4().hex[:10]}", redis_url=elasticmq_server.url)
    ran: list[str] = []

    @app.task("first")
    async def first(payload: dict[str, str]) -> None:
        ran.append("first")
        await asyncio.sleep(0.3)  # works a moment: the worker's fetch is long-polling by now
        await app.enqueue("follow-up", {})

    @app.task("follow-up")
    async def follow_up(payload: dict[str, str]) -> None:
        ran.append("follow-up")

    async def enqueue() -> None:
        await app.enqueue("first", {})

    asyncio.run(enqueue())

    # When a burst worker with two slots runs
    result = run_burst(app, concurrency=2, timeout_seconds=60.0)

    # Then both jobs ran in the burst, and none is left in the queue
    assert ran == ["first", "follow-up"]
    assert (result.completed, result.still_queued) == (2, 0)
