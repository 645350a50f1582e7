"""What ``App.enqueue`` and ``App.enqueue_many`` refuse before a job is sent.

An App that registers a task validates a payload for it at the caller, where the mistake is,
instead of letting a worker dead-letter the job later. ``enqueue_many`` skipped the check
``enqueue`` made. Each test reads what reached a real redis-server: refused calls send nothing.
"""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
import redis.asyncio

from worker_runtime import App, producer
from worker_runtime.brokers.redis import stats


class Email(pydantic.BaseModel):
    to: str


def _email_app(queue_name: str, redis_url: str) -> App:
    app = App(queue=queue_name, redis_url=redis_url)

    @app.task("send-email")
    async def send_email(payload: Email) -> None:
        return None

    return app


async def _backlog(client: redis.asyncio.Redis, queue_name: str) -> int:
    return (await stats.fetch_queue_stats(client, queue_name)).backlog


async def test_enqueue_many_refuses_an_invalid_payload_as_enqueue_does_and_sends_no_job(
    redis_server: Any, redis_client: redis.asyncio.Redis, queue_name: str
) -> None:
    # Given an App that registers send-email with its payload model
    app = _email_app(queue_name, redis_server.url)
    bad = {"subject": "no recipient"}
    # When a batch holds one valid job and one whose payload lacks the model's field
    batch = [producer.JobSpec("send-email", {"to": "a@b"}), producer.JobSpec("send-email", bad)]
    with pytest.raises(pydantic.ValidationError) as many:
        await app.enqueue_many(batch)
    # Then the batch is refused with the error enqueue gives for that payload
    with pytest.raises(pydantic.ValidationError) as one:
        await app.enqueue("send-email", bad)
    assert many.value.errors() == one.value.errors()
    # And no job of the batch reached the queue
    assert await _backlog(redis_client, queue_name) == 0
    # And valid jobs (a dict, a model) still go in
    ok = [
        producer.JobSpec("send-email", {"to": "a@b"}),
        producer.JobSpec("send-email", Email(to="c@d")),
    ]
    assert [r.created for r in await app.enqueue_many(ok)] == [True, True]
    assert await _backlog(redis_client, queue_name) == 2
    await app.aclose()
