"""Amazon SQS (and SQS-compatible servers such as ElasticMQ) as a workerfleet broker.

Imported lazily by ``open_broker`` for ``sqs://`` URLs (needs the ``sqs`` extra: aiobotocore).
:mod:`~worker_runtime.brokers.sqs.broker` maps the broker contract onto SQS,
:mod:`~worker_runtime.brokers.sqs.attributes` is what a message carries besides the job,
:mod:`~worker_runtime.brokers.sqs.settings` parses the URL and names the SQS queues, and
:mod:`~worker_runtime.brokers.sqs.dlq` reads and replays the dead letters.
"""

from __future__ import annotations

from typing import Any

from worker_runtime.brokers import base
from worker_runtime.brokers.sqs import broker


async def open_from_url(
    url: str,
    queue: str,
    *,
    options: base.QueueOptions,
    socket_timeout: float | None = None,
    retries: int | None = None,
    **settings: Any,
) -> broker.SqsBroker:
    """``open_broker``'s entry for ``sqs://`` URLs: the queue's broker, connected, queues made.

    Takes the connection settings every broker takes (``socket_timeout``, ``retries``); any
    other setting is an error (it would be silently meaningless here)."""
    if settings:
        raise TypeError(f"the sqs broker takes no settings: {', '.join(sorted(settings))}")
    return await broker.open_sqs_broker(
        url, queue, options=options, socket_timeout=socket_timeout, retries=retries
    )
