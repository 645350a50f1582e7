"""A RabbitMQ settle says ``sent`` True when its first copy went out, and writes nothing once
its consuming channel is gone.

The settle flusher (``RabbitMQBroker._flush_settles``) sends the first copy a consuming channel
publishes to a queue by publisher confirms, ahead of the transaction. Two cases the worker reads
from ``BrokerUnavailable.sent`` (False: surely not applied, so a stale answer to the re-send is a
lost lease): a copy confirmed before the channel closed is out, so the failure must say sent;
and a batch whose channel is already closed must not publish its first copy at all (on a new
connection it would land while the delivery went back to its queue: the job twice). The broker's
publishing and channels are stand-ins here; test_rabbitmq_settle_unsent.py drives the real server.
"""

from __future__ import annotations

import types
from typing import Any

import pytest

from worker_runtime import errors
from worker_runtime.brokers.rabbitmq import broker as rabbitmq

COPY = ("wf.q.delay.x", b"{}", {}, "id1")


def build_broker_holding(channel_closed: bool) -> tuple[Any, Any, list[str]]:
    """A broker holding one delivery on a channel (closed or not), whose confirmed publishes
    are recorded instead of sent."""
    broker = rabbitmq.RabbitMQBroker("amqp://guest:guest@127.0.0.1:1/", "q")
    channel = types.SimpleNamespace(is_closed=channel_closed)
    broker._transaction = None if channel_closed else object()
    broker._consume_exchange = object()
    message = rabbitmq._Delivered(b"{}", {}, "id1", 1, False, channel, 0.0)
    published: list[str] = []

    async def publish(routing_key: str, *_: Any, **__: Any) -> None:
        published.append(routing_key)

    broker._publish = publish
    return broker, message, published


async def test_a_retry_whose_channel_is_already_closed_publishes_no_copy_and_is_not_sent() -> None:
    # Given a delivery whose consuming channel (and connection) are gone
    broker, message, published = build_broker_holding(channel_closed=True)
    # When its retry is settled
    with pytest.raises(errors.BrokerUnavailable) as raised:
        await broker._queue_settle(message, "retry", COPY)
    # Then no copy was published anywhere, and the failure says nothing was sent
    assert published == []
    assert raised.value.sent is False


async def test_a_retry_whose_first_copy_was_confirmed_before_the_channel_closed_is_sent() -> None:
    # Given a delivery on a live channel, which closes right after its first copy is confirmed
    broker, message, published = build_broker_holding(channel_closed=False)

    async def publish_then_lose_the_channel(routing_key: str, *_: Any, **__: Any) -> None:
        published.append(routing_key)
        message.channel.is_closed = True

    broker._publish = publish_then_lose_the_channel
    # When its retry is settled
    with pytest.raises(errors.BrokerUnavailable) as raised:
        await broker._queue_settle(message, "retry", COPY)
    # Then the copy is out, and the failure says so: the worker must not read it as unsent
    assert published == ["wf.q.delay.x"]
    assert raised.value.sent is True
