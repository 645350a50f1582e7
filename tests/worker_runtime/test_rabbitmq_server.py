"""The private RabbitMQ brokers the tests run on are private, loopback-only and really stopped.

Checks tests/support/rabbitmq_server.py, the fixture every RabbitMQ test stands on: if it
listened on every interface, leaked a running ``beam.smp`` or lost durable messages across a
restart, the broker's own tests would prove nothing.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest

pytestmark = pytest.mark.slow


def listening_addresses(pid: int) -> set[str]:
    """The local addresses the process ``pid`` listens on (TCP), from ``ss``."""
    out = subprocess.run(
        ["ss", "-H", "-ltnp"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    found = set()
    for line in out.splitlines():
        if f"pid={pid}," in line:
            found.add(line.split()[3].rsplit(":", 1)[0])
    return found


async def test_a_private_broker_listens_on_loopback_only_and_serves_amqp_and_management(
    rabbitmq_server: Any,
) -> None:
    # Given the session's private broker
    assert rabbitmq_server.running()
    # Then every port its broker process opened is on 127.0.0.1 (AMQP, management, distribution)
    assert listening_addresses(rabbitmq_server.pid) == {"127.0.0.1"}
    # And AMQP and the management API answer
    connection = await aio_pika.connect(rabbitmq_server.url)
    await connection.close()
    assert rabbitmq_server.management_answers()


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_a_killed_broker_is_gone_and_a_restart_keeps_persistent_messages(
    rabbitmq_factory: Callable[[], Any], queue_type: str
) -> None:
    # Given a broker of its own with a durable queue (of each type the broker declares)
    # holding a confirmed persistent message
    server = rabbitmq_factory()
    connection = await aio_pika.connect(server.url)
    channel = await connection.channel(publisher_confirms=True)
    queue = await channel.declare_queue(
        "wf.survivor", durable=True, arguments={"x-queue-type": queue_type}
    )
    await channel.default_exchange.publish(
        aio_pika.Message(b"kept", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=queue.name,
    )
    await connection.close()
    beam = server.pid
    # The crash comes 2 s after the declare, not at once: a node of 3.10.8 killed right after a
    # queue's creation can lose the new queue whole. A quorum queue's Ra name registration is
    # saved a moment after the declare (measured: killed at once, 0 of 5 messages came back; 1 s
    # or 3 s after, 5 of 5); a classic queue was gone after a kill at once in 1 of 6 probes and
    # once in a CI run (docs/brokers.md). What this test holds is the other promise: a queue
    # that exists keeps its confirmed persistent messages across SIGKILL.
    await asyncio.sleep(2)
    # When the broker process is killed with SIGKILL
    server.kill()
    # Then it is really gone (killing the wrapper alone would leave beam.smp running)
    assert not server.running()
    # When it boots again on the same node name and directories
    server.start()
    assert server.pid != beam
    # Then the confirmed persistent message is still there (the queue answers once it has
    # recovered: the read is retried, bounded)
    connection = await aio_pika.connect(server.url)
    try:
        body = None
        deadline = time.monotonic() + 60
        while body is None and time.monotonic() < deadline:
            try:
                channel = await connection.channel()
                queue = await channel.declare_queue("wf.survivor", passive=True)
                message = await queue.get(no_ack=True, timeout=5, fail=False)
                body = message.body if message is not None else None
            except (TimeoutError, aio_pika.exceptions.AMQPError):
                await asyncio.sleep(0.5)
        assert body == b"kept"
    finally:
        await connection.close()
