"""The developer API: task registration, control-flow exceptions, JobContext, enqueue."""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import time
import types
from typing import Any

import pydantic
import pytest
import redis
import redis.asyncio
from typing_extensions import TypedDict

from worker_runtime import (
    HIGH,
    App,
    Backoff,
    JobContext,
    Reject,
    Retry,
    RetryLater,
    config,
    envelope,
    errors,
    logs,
    worker,
)
from worker_runtime import brokers as brokers_mod
from worker_runtime.brokers import memory
from worker_runtime.brokers.redis import keys, queue
from worker_runtime.worker import policy


class Email(pydantic.BaseModel):
    to: str
    subject: str = ""


def _ctx(**overrides: Any) -> JobContext:
    values: dict[str, Any] = {
        "job_id": "j1",
        "task": "t",
        "queue": "q",
        "attempt": 1,
        "deliveries": 1,
        "correlation_id": None,
        "idempotency_key": None,
        "enqueued_at": 0.0,
        "headers": {},
        "priority": envelope.Priority.NORMAL,
        "leased_until": 0.0,
        "worker_id": "w",
        "logger": logs.get_logger("test"),
    }
    values.update(overrides)
    return JobContext(**values)


def test_a_task_is_registered_by_name_with_its_payload_model_from_the_annotation() -> None:
    app = App(queue="emails")

    @app.task("send-email", retry=Retry(max_attempts=7), timeout=30)
    async def send(payload: Email, ctx: JobContext) -> None:
        return None

    @app.task("plain-sync")
    def plain(payload: dict[str, int]) -> None:
        return None

    spec = app.tasks["send-email"]
    assert spec.is_async and spec.wants_context
    assert spec.retry == Retry(max_attempts=7) and spec.timeout == 30
    assert spec.payload_adapter.validate_python({"to": "a@b"}) == Email(to="a@b")
    with pytest.raises(pydantic.ValidationError):
        spec.payload_adapter.validate_python({"subject": "no recipient"})
    other = app.tasks["plain-sync"]
    assert not other.is_async and not other.wants_context
    assert other.payload_adapter.validate_python({"a": 1}) == {"a": 1}
    # the decorator hands back the function itself
    assert send.__name__ == "send"


def test_registration_refuses_duplicates_bad_signatures_and_nonsense_limits() -> None:
    app = App(queue="q")

    @app.task("once")
    async def once(payload: Email) -> None:
        return None

    with pytest.raises(ValueError, match="already registered"):
        app.task("once")(once)
    with pytest.raises(TypeError, match="payload"):

        @app.task("no-args")
        async def no_args() -> None:
            return None

    with pytest.raises(ValueError, match="timeout"):
        app.task("zero-timeout", timeout=0)(once)
    with pytest.raises(ValueError, match="max_attempts"):
        Retry(max_attempts=0)


@pytest.mark.parametrize("payload", [list[int], int, str, tuple[int, str]])
def test_a_payload_type_that_is_not_a_json_object_is_refused_at_registration(
    payload: Any,
) -> None:
    # Given a handler whose payload would be a list or a scalar (a job's payload is an object)
    app = App(queue="q")

    async def handler(p: Any) -> None:
        return None

    handler.__annotations__["p"] = payload
    # Then registering it says so and how to wrap it, instead of a task nobody can enqueue
    with pytest.raises(TypeError, match="the payload must be a JSON object"):
        app.task("t")(handler)


def test_object_payload_types_are_accepted() -> None:
    # Given payload types that validate JSON objects: a model, a dict type and a TypedDict
    app = App(queue="q")

    class Point(TypedDict):
        x: int

    @app.task("model")
    async def model(p: Email) -> None:
        return None

    @app.task("mapping")
    async def mapping(p: dict[str, int]) -> None:
        return None

    @app.task("typed", payload=Point)  # a local class: given, not read off the annotation
    async def typed(p: Any) -> None:
        return None

    # Then all are registered
    assert {"model", "mapping", "typed"} <= set(app.tasks)


async def test_enqueueing_a_payload_that_is_not_an_object_says_what_it_must_be() -> None:
    # Given an App that does not know the task (a producer-only process)
    app = App(queue="q")
    app.bind_broker(memory.MemoryBroker("q"))
    # When a list is sent as a payload, then the error names what a payload must be
    with pytest.raises(TypeError, match=r"payload must be a JSON object .* not list"):
        await app.enqueue("t", [1, 2, 3])  # type: ignore[arg-type]


@pytest.mark.parametrize("queue", ["emails/eu", "{emails}", "a b", ""])
def test_an_app_on_a_queue_name_no_broker_can_hold_is_refused_at_import(queue: str) -> None:
    # it surfaced only at the first enqueue, or when a worker started
    with pytest.raises(errors.InvalidQueueName, match="must match"):
        App(queue=queue)


def test_the_bare_decorator_is_refused_instead_of_registering_nothing() -> None:
    app = App(queue="q")
    # When @app.task is written without the task's name
    # Then registration fails at import, saying how to write it (it registered nothing, and
    # the function became the decorator's inner function)
    with pytest.raises(TypeError, match=r'write @app.task\("name"\)'):

        @app.task  # type: ignore[arg-type]
        async def send(payload: Email) -> None:
            return None

    assert app.tasks == {}


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_a_task_name_no_job_can_carry_is_refused(name: str) -> None:
    app = App(queue="q")
    with pytest.raises(ValueError, match="must be 1 to 200 characters, not blank"):
        app.task(name)
    app.task("x" * 200)(_noop)  # the longest a job envelope carries is fine
    assert list(app.tasks) == ["x" * 200]


def test_a_timeout_that_is_not_a_number_is_refused() -> None:
    # NaN compared false with every deadline: the task silently never timed out
    with pytest.raises(ValueError, match="timeout must be > 0"):
        App(queue="q").task("t", timeout=float("nan"))(_noop)


async def _noop(payload: Email) -> None:
    return None


def test_retry_later_accepts_seconds_or_an_http_retry_after_value() -> None:
    assert RetryLater(2.5).delay == 2.5
    assert RetryLater(-3).delay == 0.0
    assert RetryLater(retry_after="120").delay == 120.0
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    delay = RetryLater(retry_after=in_a_minute).delay
    assert delay is not None and 55 <= delay <= 61
    assert RetryLater().delay is None
    assert Reject("bad input").reason == "bad input"


def test_retry_later_and_an_errors_retry_hint_take_the_forms_client_libraries_hand_out() -> None:
    # Given the shapes a retry hint comes in: seconds as a number, a timedelta, an aware
    # datetime, header text as str or bytes
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    # Then RetryLater takes each (an int raised AttributeError inside the handler)
    assert RetryLater(retry_after=120).delay == 120.0
    assert RetryLater(retry_after=datetime.timedelta(seconds=2)).delay == 2.0
    at = RetryLater(retry_after=soon).delay
    assert at is not None and 25 <= at <= 31
    # And so does an error's retry_after, or its response's Retry-After header in any case
    # (a plain dict's keys do not ignore case)

    class Throttled(Exception):
        def __init__(self, hint: object = None, headers: object = None) -> None:
            super().__init__("throttled")
            if hint is not None:
                self.retry_after = hint
            self.response = types.SimpleNamespace(headers=headers)

    assert policy.retry_after_hint(Throttled(datetime.timedelta(seconds=3))) == 3.0
    assert policy.retry_after_hint(Throttled(b"7")) == 7.0
    assert policy.retry_after_hint(Throttled(headers={"retry-after": "9"})) == 9.0
    assert policy.retry_after_hint(Throttled(headers={"Retry-After": "11"})) == 11.0
    # And what is not a delay leaves it to the backoff
    assert policy.retry_after_hint(Throttled(True)) is None
    assert policy.retry_after_hint(Throttled(datetime.datetime(2030, 1, 1))) is None  # naive
    assert policy.retry_after_hint(Throttled(object())) is None


async def test_a_retry_delay_prefers_retry_later_then_the_errors_retry_after_then_backoff() -> None:
    # Given a worker whose default backoff has no jitter, and a task with its own backoff
    settings = config.WorkerSettings(
        redis_url="redis://127.0.0.1:1/0",
        retry_backoff_jitter="none",
        retry_backoff_base_seconds=1.0,
    )
    app = App(queue="q")

    @app.task("own", retry=Retry(backoff=Backoff(base_seconds=10.0, jitter="none")))
    async def own(payload: Email) -> None:
        return None

    @app.task("default")
    async def default(payload: Email) -> None:
        return None

    w = worker.Worker(app, settings, install_signal_handlers=False)

    class Response:
        headers = {"Retry-After": "7"}

    class HttpError(Exception):
        response = Response()

    class Throttled(Exception):
        retry_after = 4.0

    def job(attempt: int) -> queue.Job:
        # the delivery of a job's attempt-th run: attempts counts the failures before it
        return queue.Job(
            id="j",
            receipt="e:1",
            envelope=envelope.build_envelope("own", Email(to="a@b.c")),
            attempts=attempt - 1,
            deliveries=attempt,
            lost=0,
            lease_deadline=0.0,
            fetched_at=0.0,
        )

    # Then the delay comes from, in order: RetryLater, the error itself, the task, the worker
    assert await w.policy.retry_delay(app.tasks["own"], RetryLater(3.0), job(1)) == 3.0
    assert await w.policy.retry_delay(app.tasks["own"], HttpError(), job(1)) == 7.0
    assert await w.policy.retry_delay(app.tasks["own"], Throttled(), job(1)) == 4.0
    assert await w.policy.retry_delay(app.tasks["own"], RuntimeError(), job(1)) == 10.0
    assert await w.policy.retry_delay(app.tasks["own"], RuntimeError(), job(2)) == 20.0
    assert await w.policy.retry_delay(app.tasks["default"], RuntimeError(), job(1)) == 1.0
    assert await w.policy.retry_delay(app.tasks["default"], RuntimeError(), job(3)) == 4.0


def test_mark_done_on_ack_records_the_key_given_else_the_jobs_idempotency_key_else_its_id() -> None:
    ctx = _ctx()
    ctx.mark_done_on_ack("order-7", ttl_seconds=60)
    assert ctx.done_key == ("order-7", 60)
    keyed = _ctx(idempotency_key="k-1")
    keyed.mark_done_on_ack()
    assert keyed.done_key == ("k-1", 86_400.0)
    # a job without an idempotency key (it used to raise here, after the side effect)
    unkeyed = _ctx()
    unkeyed.mark_done_on_ack()
    assert unkeyed.done_key == ("job-id:j1", 86_400.0)


@pytest.mark.parametrize(("idempotency_key", "expected"), [(None, "job-id:j1"), ("k-1", "k-1")])
async def test_already_done_asks_for_the_key_mark_done_on_ack_records(
    idempotency_key: str | None, expected: str
) -> None:
    asked: list[str] = []

    async def is_done(key: str) -> bool:
        asked.append(key)
        return False

    ctx = _ctx(idempotency_key=idempotency_key, idempotency=is_done)
    assert await ctx.already_done() is False
    ctx.mark_done_on_ack()
    assert asked == [expected]
    assert ctx.done_key == (expected, 86_400.0)


@pytest.mark.parametrize(
    ("key", "ttl", "refusal"),
    [
        ("", 60.0, "not empty or blank"),
        ("k", float("inf"), "ttl_seconds must be"),  # failed every ack of its batch
        ("k", float("nan"), "ttl_seconds must be"),
        ("k", 0.0, "ttl_seconds must be"),  # was taken as the default day
        ("k", -5.0, "ttl_seconds must be"),
    ],
)
def test_mark_done_on_ack_refuses_an_empty_key_or_a_ttl_no_marker_can_keep(
    key: str, ttl: float, refusal: str
) -> None:
    ctx = _ctx()
    with pytest.raises(ValueError, match=refusal):
        ctx.mark_done_on_ack(key, ttl_seconds=ttl)
    assert ctx.done_key == (None, None)  # nothing recorded


async def test_enqueue_validates_a_known_tasks_payload_before_anything_reaches_redis() -> None:
    app = App(queue="q", redis_url="redis://127.0.0.1:1/0")  # nothing listens there

    @app.task("send-email")
    async def send(payload: Email) -> None:
        return None

    with pytest.raises(pydantic.ValidationError):
        await app.enqueue("send-email", {"subject": "no recipient"})
    with pytest.raises(pydantic.ValidationError):
        app.enqueue_sync("send-email", {"subject": "no recipient"})


async def test_enqueue_and_enqueue_sync_put_typed_jobs_on_the_queue(
    redis_server: Any, queue_name: str
) -> None:
    # Given an App bound to a real Redis
    app = App(queue=queue_name, redis_url=redis_server.url)

    @app.task("send-email")
    async def send(payload: Email) -> None:
        return None

    # When jobs are enqueued from async and sync code, one twice with the same key
    first = await app.enqueue(
        "send-email", Email(to="a@b"), priority=HIGH, correlation_id="c-1", idempotency_key="k"
    )
    again = await asyncio.to_thread(
        app.enqueue_sync, "send-email", {"to": "x@y"}, idempotency_key="k"
    )
    other = await asyncio.to_thread(app.enqueue_sync, "send-email", {"to": "c@d"}, delay=60)
    await app.aclose()
    # Then both paths stored JSON envelopes; the duplicate was recognised
    assert first.created and not again.created and again.job_id == first.job_id
    assert other.created
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    try:
        stored = client.hget(keys.build_keys(queue_name).env, first.job_id)
        assert stored is not None
        env = envelope.parse_envelope(stored)
        assert env.task == "send-email" and env.payload == {"to": "a@b", "subject": ""}
        assert env.priority == envelope.Priority.HIGH and env.correlation_id == "c-1"
        assert client.zscore(keys.build_keys(queue_name).delayed, other.job_id) is not None
    finally:
        client.close()


def test_enqueue_without_a_redis_url_says_how_to_configure_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WORKERFLEET_REDIS_URL", raising=False)
    monkeypatch.delenv("WORKERFLEET_BROKER_URL", raising=False)
    app = App(queue="q")
    with pytest.raises(RuntimeError, match="WORKERFLEET_BROKER_URL"):
        app.enqueue_sync("anything", {})


async def test_a_producer_outside_a_worker_reads_the_broker_url_first_and_opens_any_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given WORKERFLEET_BROKER_URL names a memory broker, and the older Redis-only name a
    # Redis where nothing listens (the worker and the CLI read them in that order)
    monkeypatch.setenv("WORKERFLEET_BROKER_URL", "memory://producers-follow-the-worker")
    monkeypatch.setenv("WORKERFLEET_REDIS_URL", "redis://127.0.0.1:1/0")
    app = App(queue="emails")

    @app.subscribe("user.account.created", group="welcome")
    async def welcome(data: dict[str, Any]) -> None:
        return None

    try:
        # When a job is enqueued and an event published from outside any worker
        job = await app.enqueue("send-email", {"to": "a@b"})
        await app.register_subscriptions()
        published = await app.publish("user.account.created", {"user": "u-1"})
        # Then both went through the broker the URL names: a worker there gets them
        jobs = await brokers_mod.open_broker("memory://producers-follow-the-worker", "emails")
        subs = await brokers_mod.open_broker(
            "memory://producers-follow-the-worker", "user.account.created:welcome"
        )
        assert [d.id for d in await jobs.fetch("w1", 5)] == [job.job_id]
        [event] = await subs.fetch("w1", 5)
        assert event.envelope.payload["id"] == published.event_id
        # and the blocking path says it needs Redis instead of connecting there
        with pytest.raises(errors.CapabilityMissing, match="enqueue_sync needs a Redis URL"):
            app.enqueue_sync("send-email", {"to": "a@b"})
    finally:
        await app.aclose()
        memory.forget_stores()


def test_the_package_exports_the_public_names() -> None:
    import worker_runtime

    for name in ("App", "JobContext", "Retry", "RetryLater", "Reject", "Priority", "Backoff"):
        assert hasattr(worker_runtime, name), name
    assert worker_runtime.Priority.HIGH == "high"
    assert isinstance(redis.asyncio.Redis, type)


async def test_already_done_sync_refuses_to_block_the_event_loop_it_needs() -> None:
    async def never(key: str) -> bool:
        raise AssertionError("must not be reached")

    ctx = _ctx(idempotency_key="k", idempotency=never, loop=asyncio.get_running_loop())
    with pytest.raises(RuntimeError, match=r"await ctx\.already_done"):
        ctx.already_done_sync()


async def test_sync_and_async_follow_up_jobs_go_to_the_queue_the_bound_worker_serves(
    redis_server: Any, queue_name: str
) -> None:
    # Given an App declared for its own queue and bound, as a worker started with
    # WORKERFLEET_QUEUE set to another queue binds it, to the broker of the queue it serves
    own, serves = f"{queue_name}-own", f"{queue_name}-served"
    app = App(queue=own, redis_url=redis_server.url)
    served = await brokers_mod.open_broker(redis_server.url, serves)
    client = redis.Redis.from_url(redis_server.url)
    try:
        app.bind_broker(served)
        # When a handler enqueues a follow-up with await, and a sync handler (in a thread)
        # with enqueue_sync
        await app.enqueue("leaf", {"n": 1})
        await asyncio.to_thread(app.enqueue_sync, "leaf", {"n": 2})
        # Then both are on the served queue and none on the App's own
        assert client.hget(keys.build_keys(serves).counters, "enqueued") == b"2"
        assert client.exists(keys.build_keys(own).counters) == 0
    finally:
        client.close()
        await app.aclose()
        await served.close()
