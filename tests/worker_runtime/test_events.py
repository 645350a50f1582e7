"""Events through the App: naming rule, frozen envelopes, upcasting, DLQ reasons and lineage.

The subscription runs in a real worker, on the memory broker (``memory://NAME``) and on a real
redis-server (the same tests, one run each); what is
asserted comes from the broker (what each queue holds, completed, dead-lettered) and from the
handlers themselves (what they were given), not from the worker's counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pydantic
import pytest

from worker_runtime import App, JobContext, config, errors, events, logs, worker
from worker_runtime.brokers import base, memory, open_broker
from worker_runtime.worker import core as worker_core

TOPIC = "identity.user.created"


class UserCreatedV1(pydantic.BaseModel):
    name: str


class UserCreated(pydantic.BaseModel):
    event_version: ClassVar[int] = 2
    first: str
    last: str


# -- naming --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["user.account.created", "shop.order.placed", "mail.message.sent", "a1.b_2.paid"]
)
def test_an_event_type_named_domain_entity_past_tense_verb_is_accepted(name: str) -> None:
    assert events.validate_event_type(name) == name


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("User.Account.Created", "three lower-case words"),
        ("user.created", "three lower-case words"),
        ("user.account.created.now", "three lower-case words"),
        ("user-account.created.x", "three lower-case words"),
        ("user.account.create", "past tense"),
        ("shop.order.place", "past tense"),
    ],
)
def test_an_event_type_breaking_the_naming_rule_is_refused_saying_why(name: str, says: str) -> None:
    with pytest.raises(events.InvalidEventType, match=says):
        events.validate_event_type(name)


async def test_publish_and_subscribe_refuse_a_badly_named_topic_before_any_io() -> None:
    app = App(queue="q")
    with pytest.raises(events.InvalidEventType):
        await app.publish("user.create", {"x": 1})
    with pytest.raises(events.InvalidEventType):
        app.subscribe("UserCreated", group="g")
    with pytest.raises(events.InvalidEventType):
        app.upcaster("user.created", from_version=1)


def test_an_event_envelope_is_immutable_and_checks_its_type() -> None:
    event = events.build_event(TOPIC, {"name": "Ada"})
    with pytest.raises(pydantic.ValidationError):
        event.version = 2  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError, match="past tense"):
        events.EventEnvelope.model_validate({**event.model_dump(), "type": "user.account.make"})
    # outside a handler an event starts its own correlation and has no cause
    assert (event.correlation_id, event.causation_id) == (event.id, None)


# -- a subscription in a real worker ---------------------------------------------------------


@pytest.fixture(params=["memory", "redis", "rabbitmq"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Where the worker and the publisher meet: the memory reference, a real redis-server or
    a real rabbitmq-server."""
    if request.param == "redis":
        yield request.getfixturevalue("redis_server").url
        return
    if request.param == "rabbitmq":
        server = request.getfixturevalue("rabbitmq_server")
        yield f"{server.url}?management_port={server.management_port}"
        return
    yield f"memory://{uuid.uuid4().hex}"
    memory.forget_stores()


@pytest.fixture
def t() -> str:
    """A topic of this test's own (the redis-server is shared by the session)."""
    return f"identity{uuid.uuid4().hex[:8]}.user.created"


async def run_worker_until(app: App, url: str, done: Any, *, seconds: float = 10.0) -> Any:
    """Run a worker for ``app`` until ``await done()`` is truthy (bounded), then drain it."""
    settings = config.WorkerSettings(redis_url=url, metrics_port=0, lease_seconds=5.0)
    w = worker.Worker(app, settings, install_signal_handlers=False)
    run = asyncio.create_task(w.run())
    result = None
    try:
        for _ in range(int(seconds / 0.01)):
            result = await done()
            if result:
                break
            await asyncio.sleep(0.01)
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 20) == 0
    return result


def test_event_data_holding_nan_or_infinity_is_refused_by_path() -> None:
    # JSON has no NaN: serialized, the number became null in every subscription's job
    with pytest.raises(ValueError, match=r"^data\.readings\[1\] is nan: JSON has no NaN"):
        events.build_event("sensor.reading.recorded", {"readings": [1.0, float("nan")]})


async def test_a_subscription_upcasts_old_events_and_dead_letters_those_it_cannot_read(
    url: str, t: str
) -> None:
    # Given a subscription whose handler reads version 2, with an upcaster from version 1
    queue = events.subscription_queue(t, "welcome")
    app = App(queue=queue)
    seen: list[tuple[str, str]] = []

    @app.upcaster(t, from_version=1)
    def split_name(data: dict[str, Any]) -> dict[str, Any]:
        first, _, last = data["name"].partition(" ")
        return {"first": first, "last": last}

    @app.subscribe(t, group="welcome")
    async def welcome(user: UserCreated) -> None:
        seen.append((user.first, user.last))

    publisher = App(queue="publisher")
    broker = await open_broker(url, "publisher")
    publisher.bind_broker(broker)
    await broker.subscribe(t, "welcome")
    # When a v1, a v2 and a v3 event (newer than the handler knows) are published
    old = await publisher.publish(t, UserCreatedV1(name="Ada Lovelace"))
    new = await publisher.publish(t, UserCreated(first="Alan", last="Turing"))
    newer = await publisher.publish(t, {"first": "X", "last": "Y"}, version=3)
    sub = await open_broker(url, queue)

    async def settled() -> bool:
        return len(seen) == 2 and await sub.show_dead_letter(newer.event_id) is not None

    assert await run_worker_until(app, url, settled)
    # Then v1 was upcast and v2 read as is; v3 is a dead letter saying why, not retried
    assert sorted(seen) == [("Ada", "Lovelace"), ("Alan", "Turing")]
    assert await sub.count_dead_letters() == 1
    if sub.capabilities.exact_stats:
        stats = await sub.fetch_stats()
        assert (stats.completed_total, stats.dead_letter) == (2, 1)
    letter = await sub.show_dead_letter(newer.event_id)
    assert letter is not None and letter.reason == "unknown_event_version"
    assert "version 3 is newer than this consumer's 2" in letter.history[-1].message
    assert len(letter.history) == 1
    assert {old.event_id, new.event_id}.isdisjoint({d.job_id for d in [letter]})


async def test_an_event_with_no_upcaster_chain_to_the_handlers_version_is_dead_lettered(
    url: str, t: str
) -> None:
    # Given a subscription reading version 2 and no upcaster from version 1
    queue = events.subscription_queue(t, "audit")
    app = App(queue=queue)

    @app.subscribe(t, group="audit")
    def audit(user: UserCreated) -> None:
        raise AssertionError("must not run")

    publisher = App(queue="publisher")
    publisher.bind_broker(await open_broker(url, "publisher"))
    sub = await open_broker(url, queue)

    async def registered() -> bool:
        return await sub.list_subscriptions(t) == ["audit"]

    # When its worker starts (registering the subscription) and a v1 event is published
    await run_worker_until(app, url, registered)
    published = await publisher.publish(t, UserCreatedV1(name="Ada"))

    async def dead() -> bool:
        return await sub.count_dead_letters() == 1

    await run_worker_until(app, url, dead)
    # Then it is a dead letter whose reason and message name the missing step
    letter = await sub.show_dead_letter(published.event_id)
    assert letter is not None and letter.reason == "unknown_event_version"
    assert "no upcaster from version 1" in letter.history[-1].message


async def test_work_started_inside_a_handler_inherits_correlation_and_names_its_cause(
    url: str, t: str
) -> None:
    # Given a subscription whose handler enqueues a job and publishes a follow-up event, and
    # a task for that job on the same pool
    queue = events.subscription_queue(t, "onboarding")
    corr = f"req-{uuid.uuid4().hex[:8]}"
    app = App(queue=queue)
    follow_up = t.replace(".created", ".welcomed")
    got: list[events.EventEnvelope | None] = []
    emails: list[tuple[str | None, str | None]] = []
    audits: list[tuple[str | None, str | None, str]] = []
    log_lines: list[dict[str, Any]] = []

    @app.subscribe(t, group="onboarding")
    async def onboard(user: UserCreated, ctx: JobContext) -> None:
        got.append(events.current_event())
        await app.enqueue("send-email", {"to": user.first})
        await app.publish(follow_up, {"who": user.first})

    @app.task("send-email")
    async def send_email(payload: dict[str, str], ctx: JobContext) -> None:
        emails.append((ctx.correlation_id, ctx.headers.get(events.CAUSATION_HEADER)))
        await app.enqueue("audit", {"what": "email"})

    @app.task("audit")
    async def audit(payload: dict[str, str], ctx: JobContext) -> None:
        audits.append((ctx.correlation_id, ctx.headers.get(events.CAUSATION_HEADER), ctx.job_id))
        # what a log line written here carries (the worker bound this job for logging)
        line = logging.LogRecord("workerfleet.task", logging.INFO, "x", 0, "audited", None, None)
        log_lines.append(logs.build_log_record_fields(line))

    publisher = App(queue="publisher")
    broker = await open_broker(url, "publisher")
    publisher.bind_broker(broker)
    await broker.subscribe(t, "onboarding")
    await broker.subscribe(follow_up, "crm")
    # When an event is published with a correlation id, and the worker runs its handler
    root = await publisher.publish(t, UserCreated(first="Ada", last="L"), correlation_id=corr)
    crm = await open_broker(url, events.subscription_queue(follow_up, "crm"))
    held: list[base.Delivery] = []

    async def all_done() -> bool:
        held.extend(await crm.fetch("reader", 1))
        return bool(held and emails and audits)

    assert await run_worker_until(app, url, all_done)
    # Then the child job and the child event carry the root's correlation id and name the
    # handler's job (whose id is the event id) as their cause
    assert got and got[0] is not None and got[0].id == root.event_id
    assert emails == [(corr, root.event_id)]
    [child] = held
    child_event = events.EventEnvelope.model_validate(child.envelope.payload)
    assert (child_event.correlation_id, child_event.causation_id) == (corr, root.event_id)
    assert child.envelope.correlation_id == corr
    assert child.envelope.headers[events.CAUSATION_HEADER] == root.event_id
    # and a log line of the grandchild job names its correlation id and its cause
    [(_, email_id, audit_id)] = audits
    assert email_id is not None
    [line] = log_lines
    assert (line["correlation_id"], line["causation_id"]) == (corr, email_id)
    if url.startswith("amqp"):
        # RabbitMQ keeps no trace index: reading one says so
        with pytest.raises(errors.CapabilityMissing, match="no trace index"):
            await broker.fetch_trace(corr)
        return
    # and the trace of the correlation id is the three-level tree of what happened
    lines = events.render_trace_tree(await broker.fetch_trace(corr))
    assert sorted(lines[1:]) == sorted(
        [
            f"  job send-email {email_id}",
            f"    job audit {audit_id}",
            f"  event {follow_up} {child_event.id}",
        ]
    )
    assert lines[0] == f"event {t} {root.event_id}"
    assert (
        lines.index(f"    job audit {audit_id}") == lines.index(f"  job send-email {email_id}") + 1
    )


def test_log_records_written_while_a_job_runs_carry_its_correlation_and_causation_ids() -> None:
    # Given a running job (as the worker binds it) that was caused by another
    @dataclasses.dataclass(frozen=True)
    class RunningJob:
        job_id: str = "child"
        task_name: str = "send-email"
        correlation_id: str | None = "req-1"
        attempt: int = 1
        queue: str = "emails"
        causation_id: str | None = "parent-event"

    token = logs.bind_job(RunningJob())
    try:
        # When something is logged
        record = logging.LogRecord("workerfleet.task", logging.INFO, "x", 0, "sent", None, None)
        fields = logs.build_log_record_fields(record)
    finally:
        logs.unbind_job(token)
    # Then the line names the correlation id and the cause
    assert (fields["correlation_id"], fields["causation_id"]) == ("req-1", "parent-event")
    assert (fields["job_id"], fields["task"]) == ("child", "send-email")


@contextlib.asynccontextmanager
async def running_mailer(url: str, t: str) -> AsyncIterator[tuple[asyncio.Task[int], list[str]]]:
    """A real worker serving subscription "mailer" of ``t`` on ``url`` (its run, and what its
    handler saw), drained on the way out: it must exit 0."""
    app = App(queue=events.subscription_queue(t, "mailer"))
    seen: list[str] = []

    @app.subscribe(t, group="mailer")
    async def mail(user: UserCreated) -> None:
        seen.append(user.first)

    settings = config.WorkerSettings(redis_url=url, metrics_port=0, lease_seconds=5.0)
    w = worker.Worker(app, settings, install_signal_handlers=False)
    run = asyncio.create_task(w.run())
    try:
        yield run, seen
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 20) == 0


async def wait_until_subscribed(url: str, t: str) -> list[str]:
    """The groups of ``t`` once "mailer" is among them (or after 10 s)."""
    probe = await open_broker(url, events.subscription_queue(t, "mailer"))
    try:
        for _ in range(1000):  # bounded: 10 s
            if await probe.list_subscriptions(t) == ["mailer"]:
                break
            await asyncio.sleep(0.01)
        return await probe.list_subscriptions(t)
    finally:
        await probe.close()


async def publish_and_wait(url: str, t: str, seen: list[str]) -> list[str]:
    """Publish one UserCreated on ``t``; what the handler saw once it saw something (≤ 10 s)."""
    publisher = App(queue="publisher")
    broker = await open_broker(url, "publisher")
    publisher.bind_broker(broker)
    try:
        await publisher.publish(t, UserCreated(first="Ada", last="L"))
    finally:
        await broker.close()
    for _ in range(1000):
        if seen:
            break
        await asyncio.sleep(0.01)
    return seen


@pytest.mark.parametrize(
    ("outage", "period"),
    [
        # restarted between two of the worker's calls: its client reconnects without an error,
        # so only the periodic registration (30 s in production, 1 s here) finds it
        ("restarted", 1.0),
        # down for a second: the worker's calls fail, and it registers as soon as they answer
        ("down-a-second", 3600.0),
    ],
)
async def test_a_subscription_worker_registers_again_after_its_redis_came_back_empty(
    redis_factory: Any, t: str, monkeypatch: pytest.MonkeyPatch, outage: str, period: float
) -> None:
    # Given a subscription's worker on a Redis without persistence
    monkeypatch.setattr(worker_core, "SUBSCRIPTION_RECHECK_SECONDS", period)
    server = redis_factory()
    async with running_mailer(server.url, t) as (_, seen):
        assert await wait_until_subscribed(server.url, t) == ["mailer"]
        # When Redis comes back with none of its data (the registry of the topic gone too)
        if outage == "restarted":
            server.restart()
        else:
            server.stop()
            await asyncio.sleep(1.0)  # the worker's fetches are refused meanwhile
            server.start()
        # Then the subscription is registered again
        assert await wait_until_subscribed(server.url, t) == ["mailer"]
        # And an event published now reaches its handler
        assert await publish_and_wait(server.url, t, seen) == ["Ada"]


async def test_a_subscription_worker_started_before_its_redis_waits_for_it_then_handles_events(
    redis_factory: Any, t: str
) -> None:
    # Given a Redis that is down, and a subscription's worker started on it (it exited with
    # 'cannot reach the broker' while any other worker waits: a crash loop under Kubernetes)
    server = redis_factory()
    server.stop()
    async with running_mailer(server.url, t) as (run, seen):
        await asyncio.sleep(0.5)  # several refused registrations (backoff from 0.2 s)
        # Then it is still running
        assert not run.done()
        # When Redis starts and an event is published
        server.start()
        assert await wait_until_subscribed(server.url, t) == ["mailer"]
        # Then its handler gets it
        assert await publish_and_wait(server.url, t, seen) == ["Ada"]
