"""RabbitMQ's refusals reach the caller as BrokerRejected naming RabbitMQ's reply; an outage stays
BrokerUnavailable.

aiormq raises a refused call's channel close as a class per reply code (ChannelAccessRefused,
ChannelNotFoundEntity, ChannelLockedResource, ChannelPreconditionFailed) carrying RabbitMQ's
reply text only, no code, so the broker's mapping, which looked for a code, called every
refusal "RabbitMQ channel closed during ..." (BrokerUnavailable: no reply, may be applied): a
user without write permission on the vhost read as a broker that cannot be reached. A
connection RabbitMQ would not open (no access to the vhost) escaped the taxonomy as pamqp's
own AMQPInternalError. A NOT_FOUND about a queue that exists but whose node is down ("home
node ... is down or inaccessible") is an outage, not a refusal: a publish refused so keeps
being sent again (910a988) and, when that outlasts the waits, fails as BrokerUnavailable.

The refusals happen on the session's real rabbitmq-server, with users made for each test through
its management API; the translation table itself is checked with the exceptions as aiormq builds
them.
"""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq.exceptions
import pamqp.commands
import pamqp.exceptions
import pytest

from tests.support import rabbitmq_server as rabbitmq_support
from worker_runtime import envelope, errors
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker
from worker_runtime.brokers.rabbitmq import topology

HOME_NODE_DOWN = (
    "NOT_FOUND - home node 'rabbit@localhost' of durable queue 'wf.q.delay.normal.100' "
    "in vhost '/' is down or inaccessible"
)


def job(job_id: str) -> base.EnqueueRequest:
    return base.EnqueueRequest(envelope.build_envelope("t", {"n": 1}, job_id=job_id))


async def translated(exc: BaseException) -> errors.BrokerError:
    """What :func:`rabbitmq_broker.translate_errors` makes of ``exc`` raised inside it."""
    with pytest.raises(errors.BrokerError) as caught:
        async with rabbitmq_broker.translate_errors("enqueue"):
            raise exc
    assert caught.value.__cause__ is exc
    return caught.value


@pytest.mark.parametrize(
    "close",
    [
        aiormq.exceptions.ChannelAccessRefused(
            "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'u'"
        ),
        aiormq.exceptions.ChannelNotFoundEntity("NOT_FOUND - no queue 'wf.q.dead' in vhost '/'"),
        aiormq.exceptions.ChannelLockedResource(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'wf.q.high'"
        ),
        aiormq.exceptions.ChannelPreconditionFailed(
            "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'wf.q.high'"
        ),
        aiormq.exceptions.ChannelClosed(403, "ACCESS_REFUSED - access to queue 'wf.q.high'"),
    ],
    ids=["access-refused", "not-found", "resource-locked", "precondition-failed", "by-code"],
)
async def test_a_channel_close_refusing_the_call_is_broker_rejected_with_rabbitmqs_reply(
    close: aiormq.exceptions.ChannelClosed,
) -> None:
    # Given a channel close as aiormq raises RabbitMQ's refusals (the reply text alone, or a
    # plain ChannelClosed with its reply code)
    # When it is translated
    error = await translated(close)
    # Then it is a refusal (an answer: not applied) that quotes RabbitMQ's reply
    assert isinstance(error, errors.BrokerRejected)
    assert str(error).startswith("RabbitMQ refused enqueue: ")
    assert str(close.args[-1]) in str(error)


@pytest.mark.parametrize(
    "text",
    [
        HOME_NODE_DOWN,
        "NOT_FOUND - queue 'wf.q.high' in vhost '/' process is stopped by supervisor",
        "NOT_FOUND - queue 'wf.q.high' in vhost '/' has crashed and failed to restart",
        "NOT_FOUND - failed to perform operation on queue 'wf.q.high' in vhost '/' due to timeout",
    ],
)
async def test_a_not_found_for_a_queue_that_cannot_be_reached_stays_an_outage_naming_why(
    text: str,
) -> None:
    # Given RabbitMQ's NOT_FOUND for a queue that exists but whose process cannot be reached
    close = aiormq.exceptions.ChannelNotFoundEntity(text)
    # When it is translated
    error = await translated(close)
    # Then it is an outage (the call may go through later), and the error says why
    assert isinstance(error, errors.BrokerUnavailable)
    assert text in str(error)


async def test_a_connection_rabbitmq_would_not_open_is_broker_rejected_with_its_reply() -> None:
    # Given the exception aiormq lets through when RabbitMQ answers connection.open with a close
    # (NOT_ALLOWED: no access to the vhost)
    close = pamqp.commands.Connection.Close(
        530, "NOT_ALLOWED - access to vhost '/' refused for user 'u'"
    )
    exc = pamqp.exceptions.AMQPInternalError("one of ['Connection.OpenOk']", close)
    # When it is translated
    error = await translated(exc)
    # Then it is a refusal quoting RabbitMQ's reply
    assert isinstance(error, errors.BrokerRejected)
    assert "530 NOT_ALLOWED - access to vhost '/' refused for user 'u'" in str(error)


class _ClosingChannel:
    """A channel whose passive declare RabbitMQ answers with a NOT_FOUND close."""

    def __init__(self, text: str) -> None:
        self.text = text

    async def declare_queue(self, name: str, *, passive: bool, **options: Any) -> Any:
        # options: aio-pika's others, the declare's timeout among them
        raise aiormq.exceptions.ChannelNotFoundEntity(self.text)


async def test_a_dlq_whose_node_is_down_is_not_read_as_a_missing_dlq() -> None:
    # Given a passive declare answered "no queue" and one answered "home node down"
    missing = _ClosingChannel("NOT_FOUND - no queue 'wf.q.dead' in vhost '/'")
    unreachable = _ClosingChannel(HOME_NODE_DOWN)
    # When each is asked whether the DLQ exists
    # Then the missing one reads as no DLQ, the unreachable one as the outage it is
    assert await rabbitmq_broker._declare_existing(missing, "wf.q.dead") is None  # type: ignore[arg-type]
    with pytest.raises(errors.BrokerUnavailable, match="is down or inaccessible"):
        async with rabbitmq_broker.translate_errors("count_dead_letters"):
            await rabbitmq_broker._declare_existing(unreachable, "wf.q.dead")  # type: ignore[arg-type]


# -- on the real rabbitmq-server ---------------------------------------------------------------


def _manage(server: Any, method: str, path: str, body: dict[str, Any] | None = None) -> None:
    """One call of the node's management API as the administrator."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.management_port}/api/{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"content-type": "application/json"},
    )
    token = f"{rabbitmq_support.USER}:{rabbitmq_support.PASSWORD}".encode()
    request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    with urllib.request.urlopen(request, timeout=10):
        pass


@pytest.fixture
def make_user(rabbitmq_server: Any) -> Any:
    """A function making a user with the given permissions on the vhost '/' (None: none at
    all); returns its AMQP URL. The users are deleted after the test."""
    made: list[str] = []

    def make(permissions: dict[str, str] | None) -> tuple[str, str]:
        user = f"u{uuid.uuid4().hex[:10]}"
        _manage(rabbitmq_server, "PUT", f"users/{user}", {"password": "pw", "tags": ""})
        made.append(user)
        if permissions is not None:
            _manage(rabbitmq_server, "PUT", f"permissions/%2F/{user}", permissions)
        return user, f"amqp://{user}:pw@127.0.0.1:{rabbitmq_server.port}/"

    yield make
    for user in made:
        _manage(rabbitmq_server, "DELETE", f"users/{user}")


@pytest.fixture
def rq_queue() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def counted_publishes(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[str]]:
    """The routing key of every publish any broker of the test sends, in order."""
    sent: list[str] = []
    publish = aio_pika.Exchange.publish

    async def counting(
        exchange: aio_pika.Exchange, message: Any, routing_key: str, **kwargs: Any
    ) -> Any:
        sent.append(routing_key)
        return await publish(exchange, message, routing_key, **kwargs)

    monkeypatch.setattr(aio_pika.Exchange, "publish", counting)
    yield sent


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_user_without_write_permission_is_refused_at_its_first_enqueue_saying_so(
    rabbitmq_server: Any, rq_queue: str, make_user: Any, counted_publishes: list[str]
) -> None:
    # Given a queue whose RabbitMQ queues exist, and a user that may configure and read on the
    # vhost but write nowhere
    owner = rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, rq_queue, prefetch=5)
    try:
        await owner.enqueue(job("first"))
        user, url = make_user({"configure": ".*", "write": "", "read": ".*"})
        producer = rabbitmq_broker.RabbitMQBroker(url, rq_queue, role=base.QueueRole.PRODUCER)
        sent_before = len(counted_publishes)
        try:
            # When that user's producer enqueues a job
            with pytest.raises(errors.BrokerRejected) as refused:
                await producer.enqueue(job("second"))
        finally:
            await producer.close()
        # Then it is a refusal naming what RabbitMQ refused and to whom, raised at the first
        # publish (never sent again through the nack waits)
        message = str(refused.value)
        assert message.startswith("RabbitMQ refused enqueue: ACCESS_REFUSED")
        assert f"access to exchange 'amq.default' in vhost '/' refused for user '{user}'" in message
        assert counted_publishes[sent_before:] == [topology.work_queue(rq_queue, "normal")]
        # And nothing was enqueued: the queue hands out the first job alone
        got = await owner.fetch("w1", 5, block=5)
        assert [d.id for d in got] == ["first"]
        assert await owner.ack(got[0]) is True
        assert await owner.fetch("w1", 5, block=1) == []
    finally:
        await owner.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_worker_without_configure_permission_is_refused_declaring_its_queues(
    rabbitmq_server: Any, rq_queue: str, make_user: Any
) -> None:
    # Given a user that may write and read but configure nothing, and a queue not declared yet
    user, url = make_user({"configure": "", "write": ".*", "read": ".*"})
    worker = rabbitmq_broker.RabbitMQBroker(url, rq_queue)
    try:
        # When its worker fetches (declaring the queue's topology first)
        with pytest.raises(errors.BrokerRejected) as refused:
            await worker.fetch("w1", 1, block=0.1)
    finally:
        await worker.close()
    # Then it is a refusal naming the queue it may not declare
    assert (
        f"ACCESS_REFUSED - access to queue '{topology.work_queue(rq_queue, 'high')}' "
        f"in vhost '/' refused for user '{user}'"
    ) in str(refused.value)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_user_without_access_to_the_vhost_is_refused_at_connect_saying_so(
    rq_queue: str, make_user: Any
) -> None:
    # Given a user with no permissions on the vhost at all
    user, url = make_user(None)
    producer = rabbitmq_broker.RabbitMQBroker(url, rq_queue, role=base.QueueRole.PRODUCER)
    try:
        # When its producer enqueues
        with pytest.raises(errors.BrokerRejected) as refused:
            await producer.enqueue(job("j"))
    finally:
        await producer.close()
    # Then the broker's own taxonomy carries RabbitMQ's reply (not pamqp's AMQPInternalError)
    assert f"NOT_ALLOWED - access to vhost '/' refused for user '{user}'" in str(refused.value)


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_retry_its_bucket_keeps_refusing_as_home_node_down_is_sent_again_and_stays_held(
    rabbitmq_server: Any, rq_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker holding a job, and the node refusing every publish to a delay bucket by
    # closing the channel with NOT_FOUND "home node ... is down or inaccessible" (the server
    # closes the channel for real; the publish raises that refusal as aiormq does)
    monkeypatch.setattr(rabbitmq_broker, "NACK_RETRY_DELAYS_SECONDS", (0.01, 0.01, 0.01))
    worker = rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, rq_queue, prefetch=1)
    refusals: list[str] = []
    publish = aio_pika.Exchange.publish
    down = True

    async def refusing(
        exchange: aio_pika.Exchange, message: Any, routing_key: str, **kwargs: Any
    ) -> Any:
        if down and routing_key.startswith(topology.delay_queue_prefix(rq_queue)):
            refusals.append(routing_key)
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await exchange.channel.declare_queue(f"missing-{uuid.uuid4().hex}", passive=True)
            raise aiormq.exceptions.ChannelNotFoundEntity(HOME_NODE_DOWN)
        return await publish(exchange, message, routing_key, **kwargs)

    monkeypatch.setattr(aio_pika.Exchange, "publish", refusing)
    try:
        await worker.enqueue(job("a"))
        [held] = await worker.fetch("w1", 1, block=10)
        failure = base.Failure("Flaky", "try again")
        # When it retries the job into a delay bucket while the node keeps refusing
        with pytest.raises(errors.BrokerUnavailable) as outage:
            await worker.retry(held, failure, delay_seconds=0.1)
        # Then the copy was sent once per wait and once more, and the retry fails as an
        # outage naming RabbitMQ's reason (not as a refusal: the queue exists)
        assert len(refusals) == 4
        assert "is down or inaccessible" in str(outage.value)
        # And once the node takes publishes again the same delivery is still the worker's:
        # its retry goes through, and the job comes back once with its attempt recorded
        down = False
        assert await worker.retry(held, failure, delay_seconds=0.1) is True
        [again] = await worker.fetch("w1", 1, block=10)
        assert (again.id, again.attempts) == ("a", 1)
        assert await worker.ack(again) is True
        assert await worker.fetch("w1", 1, block=1) == []
        assert await worker.list_dead_letters() == []
    finally:
        await worker.close()
