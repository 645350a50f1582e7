"""RabbitMQ behind the broker seam (AMQP 0-9-1, quorum queues, publisher confirms).

``open_broker`` imports this package lazily for ``amqp://`` and ``amqps://`` URLs. The pieces:
:mod:`.topology` (every queue name, argument and header) and :mod:`.broker` (the one
:class:`~worker_runtime.brokers.base.Broker` of the worker, the producer, the operator's probe
and the CLI's dead-letter commands; the probe reads the management HTTP API, never AMQP).
:mod:`.topology` is pure and imports no client library (the package imports :mod:`.broker`
only when a broker is opened). What it promises and what it cannot: docs/brokers.md.

URL: ``amqp://USER:PASSWORD@HOST:PORT/VHOST?prefetch=N&management_port=P&queue_type=T``
(``amqps://`` for TLS). ``prefetch`` is the unacked deliveries per priority level
(default: the worker's first fetch, its free slots); ``management_port`` is where the probe
reads the queue's numbers (default 15672); ``queue_type`` is ``quorum`` (default) or
``classic`` (see :data:`.topology.QUEUE_TYPES`). They are taken off the URL before it
reaches the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yarl

from worker_runtime import errors
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import topology

if TYPE_CHECKING:
    from worker_runtime.brokers.rabbitmq import broker

_URL_SETTINGS = ("prefetch", "management_port", "queue_type")

#: the client libraries a broker of this package needs (``open_broker`` checks them first)
CLIENT_PACKAGES = ("aio_pika",)


async def open_from_url(
    url: str,
    queue: str,
    *,
    options: base.QueueOptions,
    socket_timeout: float | None = None,
    retries: int | None = None,
    role: base.QueueRole = base.QueueRole.CONSUMER,
    **settings: Any,
) -> broker.RabbitMQBroker:
    """``open_broker``'s entry for ``amqp://``/``amqps://``: the queue's broker (it connects
    and declares its queues on first use). Takes the connection settings every broker takes:
    ``socket_timeout`` bounds connecting; ``retries`` is accepted and unused (the broker never
    re-sends a call by itself). Its own: ``prefetch``, ``management_port`` (also from the
    URL's query), ``connect_timeout``. ``role``: a consumer or a producer declares the queues,
    which creates a missing one with its arguments (RabbitMQ never changes an existing queue's
    arguments: a declare with others is refused and the queue used as it is); a reader declares
    nothing, and reads a queue that does not exist as empty."""
    # Imported here, not at the top: the operator's pure core reads :mod:`.topology` (the queue
    # names KEDA counts) and must not pull in the AMQP client with it.
    try:
        from worker_runtime.brokers.rabbitmq import broker
    except ImportError as exc:
        raise errors.BrokerNotInstalled(
            f"the amqp:// broker is not available here ({exc.name or 'aio_pika'} is not installed)"
        ) from exc

    if socket_timeout is not None:
        settings.setdefault("connect_timeout", max(1.0, socket_timeout))
    client_url, taken = parse_url(url)
    return broker.RabbitMQBroker(client_url, queue, options, role=role, **{**taken, **settings})


def parse_url(url: str) -> tuple[str, dict[str, Any]]:
    """The client's URL (the workerfleet options taken off) and those options, checked.

    The one reading of an ``amqp://``/``amqps://`` URL: the broker opens with it and the operator
    checks a pool's Secret with it. Raises :class:`~worker_runtime.errors.InvalidBrokerURL`
    (never quoting the URL, which carries a password) for a URL that cannot work.
    """
    try:
        parsed = yarl.URL(url)
        host = parsed.host
    except ValueError:
        raise errors.InvalidBrokerURL("the RabbitMQ URL does not parse") from None
    if parsed.scheme.lower() not in ("amqp", "amqps"):
        raise errors.InvalidBrokerURL("a RabbitMQ URL starts with amqp:// or amqps://")
    if not host:
        raise errors.InvalidBrokerURL("the RabbitMQ URL names no host")
    taken: dict[str, Any] = {}
    for name in _URL_SETTINGS:
        if name in parsed.query:
            value = parsed.query[name]
            if name == "queue_type":
                if value not in topology.QUEUE_TYPES:
                    raise errors.InvalidBrokerURL(
                        f"the URL's queue_type must be one of {', '.join(topology.QUEUE_TYPES)}"
                    )
                taken[name] = value
                continue
            try:
                taken[name] = int(value)
            except ValueError:
                raise errors.InvalidBrokerURL(f"the URL's {name} must be an integer") from None
    return str(parsed.without_query_params(*_URL_SETTINGS)), taken
