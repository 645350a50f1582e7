"""RabbitMQ quorum vs classic queues on this machine: publish with confirms, consume and ack.

Run by hand (``.venv/bin/python bench/rabbitmq_queue_types.py [N]``) on a private node
(tests/support/rabbitmq_server.py); docs/brokers.md quotes its figures for the choice of
``queue_type``. N persistent 200-byte messages per queue type, published concurrently with
publisher confirms, then consumed by one consumer (prefetch 8) that acks each.
"""

from __future__ import annotations

import asyncio
import sys
import time

import aio_pika
import aio_pika.abc

from tests.support import rabbitmq_server

TYPES: dict[str, dict[str, object]] = {
    "quorum": {"x-queue-type": "quorum"},
    "classic": {"x-queue-type": "classic"},
}


async def measure(connection: aio_pika.abc.AbstractConnection, name: str, n: int) -> str:
    channel = await connection.channel(publisher_confirms=True)
    queue = await channel.declare_queue(f"bench-{name}", durable=True, arguments=TYPES[name])
    started = time.monotonic()
    await asyncio.gather(
        *(
            channel.default_exchange.publish(
                aio_pika.Message(b"x" * 200, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue.name,
            )
            for _ in range(n)
        )
    )
    published = n / (time.monotonic() - started)
    consumer = await connection.channel()
    await consumer.set_qos(prefetch_count=8)
    source = await consumer.get_queue(queue.name)
    got = 0
    finished = asyncio.Event()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal got
        await message.ack()
        got += 1
        if got == n:
            finished.set()

    started = time.monotonic()
    await source.consume(on_message)
    await asyncio.wait_for(finished.wait(), 600)
    consumed = n / (time.monotonic() - started)
    return f"{name}: publish+confirm {published:.0f}/s, consume+ack (prefetch 8) {consumed:.0f}/s"


async def main(n: int) -> None:
    server = rabbitmq_server.RabbitMQServer()
    server.start()
    try:
        connection = await aio_pika.connect(server.url)
        try:
            for name in TYPES:
                print(await measure(connection, name, n), flush=True)
        finally:
            await connection.close()
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
