"""What ``App.enqueue`` and ``App.enqueue_many`` refuse before a job is sent.

An App that registers a task validates a payload for it at the caller, where the mistake is,
instead of letting a worker dead-letter the job later. ``enqueue_many`` skipped the check
``enqueue`` made. Each test reads what reached a real redis-server: refused calls send nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pydantic
import pytest
import redis.asyncio

from worker_runtime import App, errors, producer
from worker_runtime.brokers.redis import stats

T = TypeVar("T")


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


async def test_a_misspelt_task_name_is_refused_naming_the_apps_tasks_and_the_closest_one(
    redis_server: Any, redis_client: redis.asyncio.Redis, queue_name: str
) -> None:
    # Given an App that registers send-email (and send-sms) for its queue
    app = _email_app(queue_name, redis_server.url)

    @app.task("send-sms")
    async def send_sms(payload: dict[str, str]) -> None:
        return None

    # When a job names a task it does not register, by enqueue, enqueue_sync or enqueue_many
    calls = [
        lambda: app.enqueue("send-emial", {"to": "a@b"}),
        lambda: _awaitable(app.enqueue_sync, "send-emial", {"to": "a@b"}),
        lambda: app.enqueue_many([producer.JobSpec("send-emial", {"to": "a@b"})]),
    ]
    for call in calls:
        with pytest.raises(errors.UnknownTask) as refused:
            await call()
        # Then each is refused naming the App's tasks and the one it probably meant
        assert refused.value.known == ("send-email", "send-sms")
        assert refused.value.suggestion == "send-email"
        assert "did you mean 'send-email'?" in str(refused.value)
        assert "allow_unregistered=True" in str(refused.value)
    # And nothing reached the queue (it used to be created, then dead-lettered as unknown_task)
    assert await _backlog(redis_client, queue_name) == 0
    app.enqueue_sync("send-email", {"to": "a@b"})  # a registered name still goes in
    assert await _backlog(redis_client, queue_name) == 1
    await app.aclose()


async def _awaitable(call: Callable[..., T], *args: Any) -> T:
    return call(*args)


async def test_a_task_registered_elsewhere_goes_in_when_the_caller_says_so(
    redis_server: Any, redis_client: redis.asyncio.Redis, queue_name: str
) -> None:
    # Given an App that registers send-email here, while a worker's modules also register
    # send-digest (a module this process does not import)
    app = _email_app(queue_name, redis_server.url)
    # When the caller enqueues send-digest saying it is registered elsewhere
    one = await app.enqueue("send-digest", {"day": "mon"}, allow_unregistered=True)
    two = app.enqueue_sync("send-digest", {"day": "tue"}, allow_unregistered=True)
    many = await app.enqueue_many(
        [producer.JobSpec("send-digest", {"day": "wed"})], allow_unregistered=True
    )
    # Then all three jobs are enqueued
    assert [one.created, two.created, *(r.created for r in many)] == [True, True, True]
    assert await _backlog(redis_client, queue_name) == 3
    await app.aclose()


@pytest.mark.parametrize("registers", ["nothing", "a subscription only"])
async def test_an_app_that_registers_no_task_for_its_queue_enqueues_any_task_name(
    redis_server: Any, redis_client: redis.asyncio.Redis, queue_name: str, registers: str
) -> None:
    # Given a producer-only App (its queue's tasks are another service's), or one whose only
    # handler is a subscription (served on a queue of its own)
    app = App(queue=queue_name, redis_url=redis_server.url)
    if registers == "a subscription only":

        @app.subscribe("shop.order.placed", group="billing")
        async def bill(data: dict[str, Any]) -> None:
            return None

    # When it enqueues any task name
    one = await app.enqueue("resize-image", {"id": "1"})
    many = await app.enqueue_many([producer.JobSpec("resize-image", {"id": "2"})])
    two = app.enqueue_sync("resize-image", {"id": "3"})
    # Then the jobs go in, as before
    assert [one.created, many[0].created, two.created] == [True, True, True]
    assert await _backlog(redis_client, queue_name) == 3
    await app.aclose()
