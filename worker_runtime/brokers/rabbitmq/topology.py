"""The RabbitMQ topology of one workerfleet queue: every queue name, argument and header.

Called by :mod:`worker_runtime.brokers.rabbitmq.broker` (declares, publishes, reads the
management API) and by the operator's pure core (the queue names KEDA counts). Pure: no client
import.

For a workerfleet queue ``Q`` (all on the default exchange, routed by queue name)::

    wf.Q.high | wf.Q.normal | wf.Q.low   work queues, one per priority level (quorum)
        x-delivery-limit = max_deliveries   the broker's own poison backstop: a message returned
                                            more often (worker connections dying under it) is
                                            dead-lettered to wf.Q.dead
        x-dead-letter-strategy = at-least-once, x-overflow = reject-publish
    wf.Q.delay.<level>.<ms>              retry/delay buckets (quorum, created on first use):
        x-message-ttl = <ms>                every message in a bucket waits the same time, so
                                            none blocks behind a longer one at the head; each
                                            message also carries <ms> as its own expiration
                                            (``bucket_ms``: a new quorum queue does not apply
                                            its x-message-ttl at first, see below)
        x-dead-letter-routing-key = wf.Q.<level>   expired → back to its work queue
    wf.Q.dead                            the DLQ (quorum)
        x-delivery-limit = 2^31 - 1         none in effect: RabbitMQ 4.0+ gives a quorum queue
                                            without one a limit of 20, and every DLQ scan
                                            returns each letter it reads (see below)
        x-max-length = dlq_max_length       the oldest dead letters make room (drop-head)
        x-message-ttl = dlq retention (ms)  left out past RabbitMQ's largest TTL (~49.7 days)

For a topic ``T`` (``Topics``)::

    wf.topic.T                           a durable fanout exchange; each subscription G of T is
                                         the binding of wf.T:G.normal to it (its registry: the
                                         broker's bindings, read back through the management API)

An event is one message published to ``wf.topic.T``; the broker copies it to every bound queue.
Events have no priority: they go to the ``normal`` level of each subscription. The message's
envelope names the topic as its task (the body is the same for every queue); the header
``wf-topic`` marks it, and the subscription's broker renames the task to its own queue when it
hands the job out.

Why quorum queues, one per level: quorum queues are the durable, replicated default and the
only ones with a delivery count (``x-delivery-count``) and ``x-delivery-limit``; in 3.10 they
have no priorities, so each level gets its own queue and the worker serves high before normal
before low. Classic queues with ``x-max-priority`` would give priorities but no delivery count,
so poison could not be counted by the broker.

A delay is served by the largest bucket (25 ms · 2^k) not longer than what remains; a job
whose due time (header ``wf-due-at``) has not come when it reaches the work queue takes
another hop, so any delay is honoured to within the smallest bucket (25 ms) and nothing is
held in a worker's memory.

Why a bucket's message carries its wait as its own ``expiration`` besides the bucket's
``x-message-ttl``: a new quorum queue starts as machine version 0 and is converted to the
current one (2 on 3.10.8) by its first log entry, and that conversion drops the message TTL;
the TTL is in force again only once the client creating the queue has written the queue's
config, after the cluster started. Another client's declare of the same new queue returns
before that, and what it publishes in between is stored with no expiry at all: it never
leaves the bucket, and every later message waits behind it at the head (seen here on 3.10.8
with the node's CPU contended: ten workers retrying at once into a new 50 ms bucket left all
ten jobs there for good in 4 rounds of 350, the head messages stored without expiry). A
message's own expiration is applied whatever the queue's config, and RabbitMQ removes it when
it dead-letters the message, so the job's copy in its work queue does not expire.

Message headers are the ``H_*`` names below: the job's state travels with the message (retry
counts, failure history, due time; an absent count is 0, and a new job carries none); the body
is the envelope JSON, unchanged.
"""

from __future__ import annotations

import math
import re
from typing import Any

PREFIX = "wf"
LEVELS = ("high", "normal", "low")
"""Priority levels, most urgent first (:class:`worker_runtime.envelope.Priority` values)."""

BUCKET_BASE_SECONDS = 0.025
BUCKET_MAX_EXPONENT = 26
"""Largest bucket: 25 ms · 2^26 ≈ 19 days; a longer delay takes several hops. A job is due when
less than the smallest bucket remains: it may start up to 25 ms early, never later for that."""

H_ATTEMPTS = "wf-attempts"
"""Failed runs recorded so far."""
H_DELIVERIES = "wf-deliveries"
"""Deliveries of earlier copies of the job (a retry or a release publishes a new copy; the
broker's ``x-delivery-count`` counts only the current copy's returns)."""
H_LOST = "wf-lost"
"""Deliveries of earlier copies that ended without a settling call."""
H_HISTORY = "wf-history"
"""The failure history, a JSON list of FailureRecord fields."""
H_DUE_AT = "wf-due-at"
"""Epoch seconds before which the job must not run (a delay not yet over)."""
H_LAST_DELAY = "wf-last-delay"
"""The delay the last retry waited (decorrelated jitter grows from it)."""
H_REASON = "wf-dead-reason"
H_DEAD_AT = "wf-dead-at"
H_WORKER = "wf-worker"
H_TOPIC = "wf-topic"
"""Set on an event published to a topic's exchange: the topic (the envelope's task until the
subscription's broker renames it to the subscription queue)."""
EVENT_LEVEL = "normal"
"""The priority level a subscription's events go to (the only one bound to the exchange)."""
X_DELIVERY_COUNT = "x-delivery-count"
"""Set by a quorum queue: how often this copy was returned (not acked) before."""
X_DEATH = "x-death"
"""Set by the broker when it dead-letters (TTL expiry of a bucket, the delivery limit)."""


def work_queue(queue: str, level: str) -> str:
    return f"{PREFIX}.{queue}.{level}"


def dead_queue(queue: str) -> str:
    return f"{PREFIX}.{queue}.dead"


DEAD_QUEUES_PATTERN = r"^wf\..+\.dead$"
"""Management-API regex of every workerfleet DLQ: one per queue, declared with its topology."""


def queue_of_dead_queue(name: str) -> str | None:
    """The workerfleet queue whose DLQ ``name`` is (None for any other RabbitMQ queue)."""
    head, tail = f"{PREFIX}.", ".dead"
    if name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail):
        return name[len(head) : -len(tail)]
    return None


def topic_exchange(topic: str) -> str:
    """The fanout exchange of ``topic``: its subscriptions are the queues bound to it."""
    return f"{PREFIX}.topic.{topic}"


def group_of_binding(destination: str, topic: str) -> str | None:
    """The subscription group whose work queue ``destination`` is, or None for any other."""
    head = f"{PREFIX}.{topic}:"
    tail = f".{EVENT_LEVEL}"
    if destination.startswith(head) and destination.endswith(tail):
        return destination[len(head) : -len(tail)] or None
    return None


def delay_queue(queue: str, level: str, bucket_ms: int) -> str:
    return f"{delay_queue_prefix(queue)}{level}.{bucket_ms}"


def delay_queue_prefix(queue: str) -> str:
    """What every delay bucket's name of ``queue`` starts with."""
    return f"{PREFIX}.{queue}.delay."


def queue_name_pattern(queue: str) -> str:
    """A regular expression matching exactly the RabbitMQ queues of ``queue``: its work queues,
    its DLQ and its delay buckets (the management API's ``name`` filter with ``use_regex``).

    Exactly, because queue names may hold dots: the prefix it was before (``^wf\\.Q\\.``)
    also matched every queue of the queues named ``Q.<anything>``, and the work queues and DLQ
    of a queue named ``Q.delay`` (``wf.Q.delay.high``, ``wf.Q.delay.dead``) start like ``Q``'s
    delay buckets, so ``Q``'s stats counted ``Q.delay``'s jobs as its own delayed ones (and
    such queues shared the request's page of rows with ``Q``'s). Case-sensitive (``(?-i:...)``):
    the management API compiles the filter caseless, and ``Orders`` and ``orders`` are two
    queues. No two queue names share a RabbitMQ queue (see :func:`owns`), so no name needs
    refusing: only reads by pattern could mix them."""
    levels = "|".join(LEVELS)
    own = re.escape(f"{PREFIX}.{queue}.")
    return f"(?-i:^{own}(?:{levels}|dead|delay\\.(?:{levels})\\.[0-9]+)$)"


def owns(queue: str, name: str) -> bool:
    """Whether the RabbitMQ queue ``name`` is one of ``queue``'s (what
    :func:`queue_name_pattern` matches).

    Why two workerfleet queues never share one: every name is ``wf.<queue>.<suffix>`` with a
    suffix in ``high``, ``normal``, ``low``, ``dead``, ``delay.<level>.<ms>``. For queues ``A``
    and ``B = A.<r>`` to share one, a suffix of ``A`` would have to end in ``.<a suffix of
    B>``; only ``delay.<level>.<ms>`` has a dot, and neither ``<level>.<ms>`` nor ``<ms>`` (all
    digits) is a suffix."""
    if name in (dead_queue(queue), *(work_queue(queue, level) for level in LEVELS)):
        return True
    return bucket_ms(queue, name) is not None


QUEUE_TYPES = ("quorum", "classic")
"""``quorum`` (default): replicated, with a delivery count and limit. ``classic``: durable on
one node, no delivery count (the broker counts a returned delivery itself, see
:mod:`.broker`); measured here 3.4x faster to consume and, unlike quorum queues on this
3.10.8 node, it survives a restart of the node (docs/brokers.md)."""


def work_queue_arguments(
    queue: str, max_deliveries: int, queue_type: str = "quorum"
) -> dict[str, Any]:
    if queue_type == "classic":
        return {"x-queue-type": "classic"}
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": max_deliveries,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_queue(queue),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


MAX_MESSAGE_TTL_MS = 2**32 - 1
"""The largest ``x-message-ttl`` RabbitMQ accepts (a declare with more is refused)."""

DEAD_QUEUE_DELIVERY_LIMIT = 2**31 - 1
"""The DLQ's ``x-delivery-limit``: no limit in practice. Since RabbitMQ 4.0 a quorum queue
declared without one gets a limit of 20, and a DLQ read (``dlq ls``/``show``/``replay``) gets
each letter and returns it (nack, requeue), which counts a delivery: after 20 reads RabbitMQ
would drop the dead letters (the DLQ has no dead-letter exchange of its own). RabbitMQ's own
way to turn the limit off, ``-1``, cannot be sent through the AMQP client's table encoder (it
packs -1..-128 as an unsigned byte), and 3.x knows nothing of it."""


def dead_queue_arguments(
    queue_type: str = "quorum", *, max_length: int, retention_seconds: float
) -> dict[str, Any]:
    """The DLQ's arguments: at most ``max_length`` dead letters (a new one pushes out the
    oldest: RabbitMQ's default overflow, drop-head, left unsaid so that an operator's policy can
    choose another) and each kept ``retention_seconds``. A retention longer than RabbitMQ's
    largest TTL sets none: dead letters are then kept until the length pushes them out, never
    dropped earlier than asked."""
    arguments: dict[str, Any] = {"x-queue-type": queue_type, "x-max-length": max_length}
    if queue_type == "quorum":
        arguments["x-delivery-limit"] = DEAD_QUEUE_DELIVERY_LIMIT
    ttl_ms = math.ceil(retention_seconds * 1000)
    if ttl_ms <= MAX_MESSAGE_TTL_MS:
        arguments["x-message-ttl"] = ttl_ms
    return arguments


def delay_queue_arguments(
    queue: str, level: str, bucket_ms: int, queue_type: str = "quorum"
) -> dict[str, Any]:
    if queue_type == "classic":
        return {
            "x-queue-type": "classic",
            "x-message-ttl": bucket_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": work_queue(queue, level),
        }
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": bucket_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": work_queue(queue, level),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def bucket_ms(queue: str, routing_key: str) -> int | None:
    """How long (ms) a message waits in ``queue``'s delay bucket ``routing_key``; None when
    ``routing_key`` is no delay bucket of ``queue`` (a work queue, the DLQ)."""
    prefix = delay_queue_prefix(queue)
    if not routing_key.startswith(prefix):
        return None
    level, _, ms = routing_key[len(prefix) :].partition(".")
    return int(ms) if level in LEVELS and ms.isdigit() else None


def bucket_for(remaining_seconds: float, avoid: frozenset[int] = frozenset()) -> int | None:
    """The delay bucket (ms) a job due in ``remaining_seconds`` waits in next: the largest
    25 ms · 2^k not longer than it and not in ``avoid`` (buckets that stopped answering); None
    when no such bucket fits what remains (the job is due)."""
    if not remaining_seconds >= BUCKET_BASE_SECONDS:
        return None
    exponent = min(
        BUCKET_MAX_EXPONENT, math.floor(math.log2(remaining_seconds / BUCKET_BASE_SECONDS))
    )
    # float rounding must never pick a bucket longer than what remains
    while exponent > 0 and BUCKET_BASE_SECONDS * 2**exponent > remaining_seconds:
        exponent -= 1
    smallest_ms: int = round(BUCKET_BASE_SECONDS * 1000)
    while exponent >= 0 and smallest_ms << exponent in avoid:
        exponent -= 1
    return smallest_ms << exponent if exponent >= 0 else None


def level_of(routing_key: str, queue: str) -> str | None:
    """The priority level of a work queue's name, or None for any other queue."""
    for level in LEVELS:
        if routing_key == work_queue(queue, level):
            return level
    return None
