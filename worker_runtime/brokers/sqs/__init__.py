"""Amazon SQS (and SQS-compatible servers such as ElasticMQ) as a workerfleet broker.

Imported lazily by ``open_broker`` for ``sqs://`` URLs (needs the ``sqs`` extra: aiobotocore).
:mod:`~worker_runtime.brokers.sqs.broker` maps the broker contract onto SQS,
:mod:`~worker_runtime.brokers.sqs.attributes` is what a message carries besides the job,
:mod:`~worker_runtime.brokers.sqs.settings` parses the URL and names the SQS queues, and
:mod:`~worker_runtime.brokers.sqs.dlq` reads and replays the dead letters.

Importing this package (or :mod:`~worker_runtime.brokers.sqs.settings`) loads no client library:
the operator's pure core composes ``sqs://`` URLs and SQS queue names with ``settings`` alone, and
the broker module (aiobotocore) is imported when a broker is opened. The package itself
import anywhere; ``open_broker`` checks :data:`CLIENT_PACKAGES` before it opens a broker and
names the extra to install when one is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from worker_runtime.brokers import base

if TYPE_CHECKING:
    from worker_runtime.brokers.sqs import broker

#: the client libraries a broker of this package needs (``open_broker`` checks them first)
CLIENT_PACKAGES = ("aiobotocore",)


async def open_from_url(
    url: str,
    queue: str,
    *,
    options: base.QueueOptions,
    socket_timeout: float | None = None,
    retries: int | None = None,
    role: base.QueueRole = base.QueueRole.CONSUMER,
    **settings: Any,
) -> broker.SqsBroker:
    """``open_broker``'s entry for ``sqs://`` URLs: the queue's broker, connected, queues made
    or looked up as its ``role`` allows (the consumer's sets the queue attributes).

    Takes the connection settings every broker takes (``socket_timeout``, ``retries``); any
    other setting is an error (it would be silently meaningless here)."""
    if settings:
        raise TypeError(f"the sqs broker takes no settings: {', '.join(sorted(settings))}")
    from worker_runtime.brokers.sqs import broker  # the client library, only now it is needed

    return await broker.open_sqs_broker(
        url,
        queue,
        options=options,
        socket_timeout=socket_timeout,
        retries=retries,
        role=role,
    )
