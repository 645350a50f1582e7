"""RabbitMQ behind the broker seam (AMQP 0-9-1, quorum queues, publisher confirms).

``open_broker`` imports this package lazily for ``amqp://`` and ``amqps://`` URLs. The pieces:
:mod:`.topology` (every queue name, argument and header), :mod:`.broker` (the worker's and the
producer's :class:`~worker_runtime.brokers.base.Broker`), :mod:`.readside` (the operator's
:class:`~worker_runtime.brokers.base.QueueProbe` and the CLI's
:class:`~worker_runtime.brokers.base.DeadLetters`). What it promises and what it cannot:
docs/brokers.md.

URL: ``amqp://USER:PASSWORD@HOST:PORT/VHOST?prefetch=N&management_port=P&queue_type=T``
(``amqps://`` for TLS). ``prefetch`` is the unacked deliveries per priority level
(default: the worker's first fetch, its free slots); ``management_port`` is where the probe
reads the queue's numbers (default 15672); ``queue_type`` is ``quorum`` (default) or
``classic`` (see :data:`.topology.QUEUE_TYPES`). They are taken off the URL before it
reaches the client.
"""

from __future__ import annotations

from typing import Any

import yarl

from worker_runtime import errors
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker

_URL_SETTINGS = ("prefetch", "management_port", "queue_type")


async def open_from_url(
    url: str,
    queue: str,
    *,
    options: base.QueueOptions,
    socket_timeout: float | None = None,
    retries: int | None = None,
    **settings: Any,
) -> broker.RabbitMQBroker:
    """``open_broker``'s entry for ``amqp://``/``amqps://``: the queue's broker (it connects
    and declares its queues on first use). Takes the connection settings every broker takes:
    ``socket_timeout`` bounds connecting; ``retries`` is accepted and unused (the broker never
    re-sends a call by itself). Its own: ``prefetch``, ``management_port`` (also from the
    URL's query), ``connect_timeout``."""
    if socket_timeout is not None:
        settings.setdefault("connect_timeout", max(1.0, socket_timeout))
    parsed = yarl.URL(url)
    taken: dict[str, Any] = {}
    for name in _URL_SETTINGS:
        if name in parsed.query:
            try:
                value = parsed.query[name]
                taken[name] = value if name == "queue_type" else int(value)
            except ValueError:
                raise errors.InvalidBrokerURL(f"the URL's {name} must be an integer") from None
    client_url = str(parsed.without_query_params(*_URL_SETTINGS))
    return broker.RabbitMQBroker(client_url, queue, options, **{**taken, **settings})
