"""The RabbitMQ :class:`~worker_runtime.brokers.base.Broker`: AMQP 0-9-1 through aio-pika.

Used by the worker and the producer when a queue's URL is ``amqp://`` / ``amqps://``
(``open_broker``). Topology, names and headers: :mod:`worker_runtime.brokers.rabbitmq.topology`.

How the contract maps onto AMQP:

- **enqueue**: a persistent message published with publisher confirms (``mandatory``: an
  unroutable publish is an error), so a returned enqueue is on disk. No deduplication.
- **lease = an unacknowledged delivery**. One consumer per priority level on one channel, each
  with ``prefetch`` unacked messages (default: the count of the worker's first fetch, i.e. its
  free slots). A delivery stays leased while this connection lives; when it closes (the worker
  died, the network broke) RabbitMQ puts the message back and counts it in
  ``x-delivery-count``. Leases do not expire by time: ``renew`` keeps every delivery of the
  live connection. The broker's ``consumer_timeout`` (30 min by default) closes a channel
  whose delivery stays unacked longer; raise it for longer jobs. A delivery prefetched but not
  handed out within :data:`BUFFERED_WAIT_LIMIT_SECONDS` goes back unspent at the next fetch.
- **settling**: the consuming channel is transactional (``tx.select``). ``ack`` acks and
  commits. ``retry``, ``dead_letter`` and ``release`` publish a new copy with the job's state
  in headers and ack the delivery in one transaction, so a requeue never spends the broker's
  delivery count, nothing waits in worker memory, and a worker killed half-way leaves the job
  whole (neither the copy nor the ack): it comes back as a lost delivery, never twice. The
  one exception is the first copy the channel sends to each queue: it goes with publisher
  confirms before the ack's commit, since a transaction silently drops a publish that a
  quorum queue still starting refuses (``_publish_first_copies``). A settling call on a
  delivery of a closed connection, or one already settled, returns False: the receipt names
  the connection.
- **poison**: before a job is handed out its lost deliveries (those of earlier copies, carried
  in ``wf-lost``, + ``x-delivery-count``: the returns of this copy, each one a worker's
  connection that ended holding it) are checked against ``max_deliveries``; at it the job is
  dead-lettered with reason ``max_deliveries``, as on every broker. Retries and releases are
  settled deliveries: they count in ``deliveries``, never towards poison. ``x-delivery-limit``
  is the broker's backstop (it counts only the current copy's returns, so never a retry).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import datetime
import heapq
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Container,
    Iterator,
    Sequence,
)
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq.abc
import aiormq.exceptions
import pamqp.commands
import pamqp.exceptions
import yarl

from worker_runtime import envelope as envelope_mod
from worker_runtime import errors, expiry, logs
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import topology

_log = logs.get_logger("brokers.rabbitmq")

HISTORY_KEEP = base.FAILURE_HISTORY_KEEP
"""Failures kept in a message's history header (the newest), as many as Redis keeps (it kept
20, Redis 25, so a job's dead letter showed five failures fewer on RabbitMQ). An AMQP header
frame must fit the connection's frame size (128 KiB by default), and each failure keeps up to
4 KB of traceback: :data:`HISTORY_FRAME_ROOM` bounds them by bytes too."""

DEFAULT_FRAME_MAX = 131_072
"""RabbitMQ's default ``frame_max``: the history's bound when the connection's is unknown."""

HISTORY_FRAME_ROOM = 8192
"""Bytes of a message's header frame left for everything but the history (the other headers,
the message id, the expiration); the history takes at most ``frame_max`` less this. AMQP sends
a message's properties in one frame, and RabbitMQ closes the whole connection (FRAME_ERROR
``frame_too_large``) for a larger one: every delivery the worker held went back to its queue
as a lost one. Twenty failures of up to 2,000 characters of message and 4,000 of traceback
passed that when their text was not ASCII (JSON writes such a character as six bytes), at a
job's fourth retry."""

NACK_RETRY_DELAYS_SECONDS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 1.0, 2.0)
"""Waits before publishing again a message RabbitMQ nacked. A quorum queue nacks a publish
while its Raft member is not running yet: another client's declare of the same new queue
returns before the client creating it has started it (measured here on 3.10.8: eight clients
declaring one new queue at once, then publishing, saw a nack in most rounds, and the publish
made again 20-50 ms later was taken). The later, longer waits are for a loaded machine, where
starting the member takes longer: with waits adding up to 0.87 s, ten producers' first
publishes still ended nacked once in a clean-clone CI run (the whole suite running beside it).
A queue that nacks for good (a ``reject-publish`` overflow policy, unsupported) fails the
publish after about 5 s. A starting member sometimes refuses by closing the channel instead
(NOT_FOUND, "home node ... is down or inaccessible"): that refusal gets the same waits, each try
on a new publishing channel of the same connection."""

PUBLISH_CONFIRM_TIMEOUT_SECONDS = 30.0
"""How long a publish waits for RabbitMQ's confirm before it fails as ``BrokerUnavailable``
(the message may or may not be in the queue). A healthy node confirms in milliseconds; a quorum
queue without a leader never does (see :data:`BUCKET_CONFIRM_TIMEOUT_SECONDS`), and a producer
or a worker must not wait on it for good. A node under a memory or disk alarm blocks publishing
connections until the alarm clears: an enqueue then fails after this long (and at most
:data:`DECLARE_TIMEOUT_SECONDS` more, opening the publishing channel meant to replace the stuck
one) instead of waiting for it."""

BUCKET_CONFIRM_TIMEOUT_SECONDS = 5.0
"""The same bound for a publish to a delay bucket, shorter because a worker's settles wait
behind it. Why a bucket can stop answering: on RabbitMQ 3.10, a quorum queue declared less
than a second before its node crashed (SIGKILL, power loss) comes back from the restart with
no leader, for good: its record survived, its Raft member's did not (seen here on 3.10.8, five
times in five: declare, SIGKILL within the second, restart; a queue declared a second before
the crash came back well). Publishes to it are held ("leader not known") and never confirmed.
Delay buckets are declared on first use, so a crash can catch one in that second; a bucket
that does not confirm in time is avoided by this broker object for
:data:`BUCKET_AVOID_SECONDS` (see :meth:`RabbitMQBroker._route_due`)."""

BUCKET_AVOID_SECONDS = 3600.0
"""How long a delay bucket that did not confirm a publish is left out of routing; then it is
tried again (an operator may have deleted it, and workers declare it anew). Long, because each
try of a bucket still without a leader costs a publishing channel
(:meth:`RabbitMQBroker._replace_publish_channel`) and stalls this object's publishes for
:data:`BUCKET_CONFIRM_TIMEOUT_SECONDS`."""

DECLARE_TIMEOUT_SECONDS = 10.0
"""How long a queue declaration may take. A declaration is an RPC on the publishing channel, and
while a publish to a queue without a leader is held there (:data:`BUCKET_CONFIRM_TIMEOUT_SECONDS`)
the channel answers nothing (seen here on 3.10.8: a declare sent behind such a publish got no
reply in 5 s); unbounded, a retry or an enqueue that needed a new delay bucket at that moment
waited for good. On the timeout aio-pika closes the channel, and the next call opens a new
publishing channel on the same connection (:meth:`RabbitMQBroker._ensure`). Opening a publishing
or probing channel and a passive declare are bounded alike: a node under a memory or disk alarm
stops reading from a connection that publishes until the alarm clears (seen here on 3.10.8: an
enqueue on such a connection, its publish unconfirmed, then waited for good on the new
publishing channel meant to replace the stuck one, holding the lock every reconnect takes, and
the worker's next settle with it)."""

CONSUME_TIMEOUT_SECONDS = 30.0
"""How long starting a consumer on a work queue may take. A work queue that a node crash left
without a leader (declared less than a second before it, see
:data:`BUCKET_CONFIRM_TIMEOUT_SECONDS`) never answers ``basic.consume`` (seen here on 3.10.8);
the fetch then fails with an error naming the queue and what may be wrong with it, at each try.
Without this bound the fetch failed after about a minute as "no reply from RabbitMQ during
consume", which names nothing."""

COMMIT_TIMEOUT_SECONDS = PUBLISH_CONFIRM_TIMEOUT_SECONDS
"""How long a settle's ``tx.commit`` may wait for RabbitMQ's answer: as long as a publish waits
for its confirm (RabbitMQ answers a commit, like a confirm, once what it covers is stored). A
node under a memory or disk alarm stops reading from a connection that publishes until the alarm
clears, and a retry, dead-letter or release publishes its copy in the transaction: unbounded,
its commit waited for the whole alarm, and so did every settle queued behind it and the drain
that gives back the prefetched jobs. Past the bound the settle fails as ``BrokerUnavailable``
(sent: the commit may still be applied once RabbitMQ reads it) and the connection is dropped:
the client closed the channel on the timeout (aiormq does), so no delivery of it can be settled
any more, and RabbitMQ hands them back once it reads that close."""

BUFFERED_WAIT_LIMIT_SECONDS = 60.0
"""How long a prefetched delivery may wait in the worker's buffer, never handed out, before it
goes back to its queue (a new copy at the tail, no delivery spent; :meth:`RabbitMQBroker.fetch`
checks at each call). Why: each level's consumer prefetches ``prefetch`` messages and the fetch
serves high before normal before low, so under steady higher-priority work a buffered low
message stayed unacked for good, until RabbitMQ's ``consumer_timeout`` (30 min by default)
closed the channel and sent back every job the worker was running. Well under that timeout, so
that a job handed out just before its limit still has the rest of it to run."""

SUBSCRIPTION_BACKSTOP_DELIVERIES = topology.DEAD_QUEUE_DELIVERY_LIMIT
"""The ``x-delivery-limit`` a publisher gives the work queues of a subscription it creates
(``subscribe`` before any worker of the group ran): 2^31-1, none in practice. RabbitMQ never
changes an existing queue's arguments, and the subscription's worker, whose ``max_deliveries``
the publisher cannot know, then uses the queue as it is; with the default (5) RabbitMQ
dead-lettered the jobs of a worker with a higher ``max_deliveries`` at its own limit first,
without a workerfleet history. The cost: on such a queue RabbitMQ no longer backs up the
fetch's poison check for a copy that keeps coming back while only prefetched, which the fetch
still dead-letters (``max_deliveries``) once it would hand it out. A queue the worker created
first keeps the worker's limit (the publisher's declare is refused and it uses the queue)."""

PREVIOUS_DELAYS_KEEP = 10_000
"""Jobs whose last retry delay one broker object remembers (the oldest are forgotten)."""

CAPABILITIES = base.Capabilities(
    priorities=True,
    max_delay_seconds=math.inf,
    enqueue_dedup=False,
    atomic_done_marker=False,
    rate_limit=False,
    heartbeats=False,
    dead_letter_by_id=True,
    failure_history=True,
    fenced_receipts=True,
    lease_expiry=False,
    recover_after_lost_reply=False,
    previous_delay=True,
    exact_stats=False,
    oldest_job_age=False,
    expiry_enforcement=expiry.Enforcement.WORKER_AT_START,
    topics=True,
    cancel_by_id=False,  # a queue cannot remove a waiting message by id
    status_by_id=False,  # nor find one: a queue is read from its head only
)
"""What RabbitMQ cannot promise, and why (docs/brokers.md has the table):
no enqueue dedup (AMQP has none; the message-deduplication plugin is not bundled); no done
marker store; no shared rate limit; no heartbeats (the live consumers are what the probe
reports); leases end with the connection, not by time; a lost fetch reply cannot happen
(deliveries are pushed) so there is nothing to recover; stats come from the management API,
which samples every few seconds. Topics: a publish is one message to the topic's fanout exchange,
so the fan-out is atomic, but with no enqueue dedup a publisher's re-send after a lost confirm
stores the event again in every subscription, and the publish's own re-send after a nack (one
queue refused, the others stored it) again in those that had it (the event id tells the copies
apart)."""


@dataclass(slots=True)
class _Delivered:
    """A message delivered to one of the worker's consumers: what the broker reads of it, and
    its ack. Built straight from aiormq's delivery (aio-pika's IncomingMessage converts every
    property and costs a task per message; the consuming path is the hot one)."""

    body: bytes
    headers: dict[str, Any]
    message_id: str | None
    delivery_tag: int | None
    redelivered: bool
    channel: aiormq.abc.AbstractChannel
    arrived: float
    """When it was delivered (the broker's monotonic clock): how long it waited unacked."""

    @classmethod
    def of(cls, message: aiormq.abc.DeliveredMessage, arrived: float) -> _Delivered:
        properties = message.header.properties
        return cls(
            message.body,
            dict(properties.headers or {}),
            properties.message_id,
            message.delivery_tag,
            bool(message.redelivered),
            message.channel,
            arrived,
        )

    async def ack(self, *, multiple: bool = False) -> None:
        if self.delivery_tag is None:
            return
        if self.channel.is_closed:
            raise aio_pika.exceptions.ChannelInvalidStateError("the consuming channel is closed")
        await self.channel.basic_ack(self.delivery_tag, multiple=multiple)


class _Settle(NamedTuple):
    """One waiting settle: the delivery to ack, the operation, the copy to publish with it
    (routing key, body, headers, message id) if any, and the future its caller awaits."""

    message: _Delivered
    operation: str
    publish: tuple[str, bytes, dict[str, Any], str] | None
    done: asyncio.Future[None]
    copied: bool = False
    """Its copy went ahead by publisher confirms (:meth:`RabbitMQBroker._publish_first_copies`):
    part of the settle landed, whatever becomes of its ack."""


@dataclass
class _Held:
    message: _Delivered
    delivery: base.Delivery
    headers: dict[str, Any]
    body: bytes


def _int_header(headers: dict[str, Any], name: str) -> int:
    value = headers.get(name)
    try:
        return int(value) if value is not None else 0
    except (TypeError, ValueError):
        return 0


def _float_header(headers: dict[str, Any], name: str) -> float | None:
    value = headers.get(name)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def decode_history(headers: dict[str, Any]) -> list[dict[str, Any]]:
    """The failure history a message carries (newest last); [] when absent or unreadable."""
    raw = headers.get(topology.H_HISTORY)
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    if not isinstance(raw, str):
        return []
    try:
        history = json.loads(raw)
    except ValueError:
        return []
    return [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []


def encode_history(
    history: list[dict[str, Any]], budget: int = DEFAULT_FRAME_MAX - HISTORY_FRAME_ROOM
) -> str:
    """The newest :data:`HISTORY_KEEP` failures as JSON of at most ``budget`` bytes: over it,
    the oldest failures lose their tracebacks first, then the oldest failures go, so the
    newest stays whole (a single failure larger than the budget keeps the end of its
    traceback and the start of its message)."""
    records = [dict(h) for h in history[-HISTORY_KEEP:]]
    while True:
        # ASCII only (json's default): one byte per character, and no lone surrogate of a
        # message decoded with surrogateescape can break the header's UTF-8
        text = json.dumps(records, separators=(",", ":"))
        if len(text) <= budget or not records:
            return text
        older = [r for r in records[:-1] if r.get("traceback")]
        if older:
            older[0]["traceback"] = ""
        elif len(records) > 1:
            records.pop(0)
        else:
            newest = records[0]
            traceback, message = str(newest.get("traceback", "")), str(newest.get("message", ""))
            if not traceback and not message:
                return text
            if traceback:
                newest["traceback"] = traceback[len(traceback) // 2 + 1 :]
            else:
                newest["message"] = message[: len(message) // 2]


def build_message(
    body: bytes, headers: dict[str, Any], message_id: str, *, expiration_ms: int | None = None
) -> aio_pika.Message:
    """A persistent job message: the envelope JSON as body, the job's state in headers, and
    for a delay bucket its wait as the message's own expiration (topology.py says why)."""
    return aio_pika.Message(
        body,
        headers=headers,
        message_id=message_id,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        timestamp=time.time(),
        expiration=None
        if expiration_ms is None
        else datetime.timedelta(milliseconds=expiration_ms),
    )


def decode_dead_letter(message: aio_pika.abc.AbstractIncomingMessage) -> base.DeadLetter:
    """A DLQ message as a :class:`~worker_runtime.brokers.base.DeadLetter`. Jobs the broker
    dead-lettered itself (the delivery limit) carry RabbitMQ's ``x-death`` instead of ours."""
    headers = dict(message.headers or {})
    body = message.body
    try:
        raw = body.decode("utf-8")
        raw_b64 = None
    except UnicodeDecodeError:
        raw = body.decode("utf-8", errors="backslashreplace")
        raw_b64 = base64.b64encode(body).decode()
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    env = data if isinstance(data, dict) else {}
    deaths = headers.get(topology.X_DEATH)
    death = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    reason_header = headers.get(topology.H_REASON)
    if isinstance(reason_header, bytes):
        reason_header = reason_header.decode(errors="replace")
    if reason_header:
        reason = str(reason_header)
    elif str(death.get("reason", "")) == "delivery_limit":
        reason = str(base.DeadLetterReason.MAX_DELIVERIES)
    else:
        reason = str(death.get("reason", "unknown"))
    dead_at = _float_header(headers, topology.H_DEAD_AT)
    if dead_at is None:
        when = death.get("time")
        dead_at = when.timestamp() if isinstance(when, datetime.datetime) else time.time()
    history = decode_history(headers)
    records = tuple(
        base.FailureRecord(
            error_type=str(h.get("error_type", "")),
            message=str(h.get("message", "")),
            traceback=str(h.get("traceback", "")),
            worker_id=str(h.get("worker_id", "")),
            at=float(h.get("at") or 0.0),
            attempt=int(h.get("attempt") or 0),
            delivery=int(h.get("delivery") or 0),
        )
        for h in history
    )
    redelivered = _int_header(headers, topology.X_DELIVERY_COUNT) if not reason_header else 0
    worker = headers.get(topology.H_WORKER, "")
    if isinstance(worker, bytes):
        worker = worker.decode(errors="replace")
    task = env.get("task")
    correlation = env.get("correlation_id")
    return base.DeadLetter(
        job_id=message.message_id or str(env.get("id", "")),
        task=task if isinstance(task, str) else None,
        reason=reason,
        priority=str(env.get("priority", "normal")),
        dead_lettered_at=float(dead_at),
        attempts=_int_header(headers, topology.H_ATTEMPTS),
        deliveries=_int_header(headers, topology.H_DELIVERIES) + redelivered,
        lost=_int_header(headers, topology.H_LOST) + redelivered,
        worker_id=str(worker),
        correlation_id=correlation if isinstance(correlation, str) else None,
        first_failure_at=records[0].at if records else None,
        last_failure_at=records[-1].at if records else None,
        history=records,
        envelope_raw=raw,
        envelope_base64=raw_b64,
    )


def _is_nack(exc: BaseException | None) -> bool:
    """Whether ``exc`` is RabbitMQ's negative confirm of a publish (not an unroutable return)."""
    return isinstance(exc, aio_pika.exceptions.DeliveryError) and isinstance(
        exc.frame, pamqp.commands.Basic.Nack
    )


def _is_unroutable(exc: BaseException | None) -> bool:
    """Whether ``exc`` is RabbitMQ returning a ``mandatory`` publish that no queue took (the
    queue it was sent to does not exist)."""
    return isinstance(exc, aio_pika.exceptions.DeliveryError) and isinstance(
        exc.frame, pamqp.commands.Basic.Return
    )


def _is_member_not_running(exc: BaseException | None) -> bool:
    """Whether ``exc`` is RabbitMQ closing the channel because a quorum queue's member is not
    running (NOT_FOUND, "home node ... of durable queue ... is down or inaccessible"): the queue
    exists and refused the publish, as the nack a starting member more often sends (seen in a
    clean-clone CI run under load: two workers' first retries to a new delay bucket at once)."""
    return isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity) and (
        "down or inaccessible" in str(exc)
    )


REFUSED_CLOSES: tuple[type[aiormq.exceptions.ChannelClosed], ...] = (
    aiormq.exceptions.ChannelAccessRefused,
    aiormq.exceptions.ChannelNotFoundEntity,
    aiormq.exceptions.ChannelLockedResource,
    aiormq.exceptions.ChannelPreconditionFailed,
)
"""The channel closes that are RabbitMQ's answer "not allowed" (ACCESS_REFUSED 403, NOT_FOUND 404,
RESOURCE_LOCKED 405, PRECONDITION_FAILED 406): the call was not applied, and sending it again
changes nothing until someone changes the permissions or the queue. aiormq raises these classes
with RabbitMQ's reply text as their only argument (no reply code), so they are told apart by
class; a plain ``ChannelClosed`` carries ``(reply code, reply text)``."""

REFUSAL_CODES = frozenset({403, 404, 405, 406})
"""The same refusals by reply code, for a ``ChannelClosed(code, text)`` that carries one."""

ABSENT_QUEUE_TEXTS = (
    "is down or inaccessible",
    "is stopped by supervisor",
    "has crashed and failed to restart",
    "due to timeout",
    "may be stopping or being demoted",
)
"""RabbitMQ's NOT_FOUND texts for a queue that exists but whose process cannot be reached now
(``rabbit_amqqueue``'s "absent" reasons on 3.10: its node down, the process stopped or crashed,
a timeout, a replica stopping): an outage, not a refusal. Such a close stays
:class:`~worker_runtime.errors.BrokerUnavailable`, which is also what a publish whose refusals
outlast :data:`NACK_RETRY_DELAYS_SECONDS` must say (a topic's other subscriptions may hold the
event). A NOT_FOUND that names a missing queue or exchange ("no queue 'x' in vhost '/'") is a
refusal."""


def _reply_text(exc: aiormq.exceptions.AMQPError) -> str:
    """RabbitMQ's reply text of a channel close (``ACCESS_REFUSED - access to ...``): aiormq's
    subclasses carry it alone, a plain ``ChannelClosed`` as ``(code, text)``."""
    args = exc.args
    if len(args) == 2 and (args[0] is None or isinstance(args[0], int)):
        return f"{args[0]} {args[1]}" if args[1] else "no reply text"
    return " ".join(str(a) for a in args) or type(exc).__name__


def _is_refusal(exc: aiormq.exceptions.ChannelClosed) -> bool:
    """Whether a channel close is RabbitMQ refusing the call (see :data:`REFUSED_CLOSES`),
    rather than a queue it cannot reach now (:data:`ABSENT_QUEUE_TEXTS`) or any other close."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    if not isinstance(exc, REFUSED_CLOSES) and code not in REFUSAL_CODES:
        return False
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity) or code == 404:
        return not any(text in _reply_text(exc) for text in ABSENT_QUEUE_TEXTS)
    return True


VHOST_REFUSALS = (
    re.compile(r"NOT_ALLOWED - access to vhost '.*' refused for user '.*'"),
    re.compile(r"NOT_ALLOWED - vhost .* not found"),
)
"""The replies to ``connection.open`` that refuse it (``rabbit_reader`` and
``rabbit_access_control`` on 3.10 to 4.x, NOT_ALLOWED 530): the user has no access to the URL's
vhost, or the vhost does not exist. Matched whole: the same NOT_ALLOWED "access to vhost '...'
refused for user '...'" goes on with ": connection limit (N) is reached" (the vhost's
``max-connections``) or ": connection limit cannot be queried, timeout", and INTERNAL_ERROR 541
with ": vhost '...' is down" (a vhost or node still starting); those, a user's or the node's
connection limit ("connection refused ...: ... connection limit (N) is reached") and any other
close at open are temporary: :class:`~worker_runtime.errors.BrokerUnavailable`."""


def _connection_close(exc: pamqp.exceptions.PAMQPException) -> str | None:
    """RabbitMQ's reply (``530 NOT_ALLOWED - ...``) when it closed the connection instead of
    opening it, else None.

    A ``connection.open`` RabbitMQ answers with ``connection.close`` reaches the caller as
    pamqp's ``AMQPInternalError("Connection.OpenOk", <Connection.Close>)``, which is none of
    aiormq's exceptions and carries the reason only in that frame."""
    frames = [a for a in exc.args if isinstance(a, pamqp.commands.Connection.Close)]
    if not frames:
        return None
    return f"{frames[0].reply_code} {frames[0].reply_text}"


def _is_connection_refusal(reply: str) -> bool:
    """Whether a close at open (``_connection_close``'s reply) refuses the URL for good
    (:data:`VHOST_REFUSALS`), rather than saying "not now"."""
    code, _, text = reply.partition(" ")
    return code == "530" and any(pattern.fullmatch(text) for pattern in VHOST_REFUSALS)


@contextlib.asynccontextmanager
async def translate_errors(operation: str) -> AsyncIterator[None]:
    """Map aio-pika's, aiormq's and pamqp's exceptions onto :mod:`worker_runtime.errors` (cause
    kept). RabbitMQ's refusals (:func:`_is_refusal`, a connection it would not open) are
    :class:`~worker_runtime.errors.BrokerRejected` naming RabbitMQ's reply; everything else that
    breaks a call is :class:`~worker_runtime.errors.BrokerUnavailable`."""
    try:
        yield
    except aiormq.exceptions.ChannelClosed as exc:
        if _is_refusal(exc):
            raise errors.BrokerRejected(
                f"RabbitMQ refused {operation}: {_reply_text(exc)}", operation=operation
            ) from exc
        raise errors.BrokerUnavailable(
            f"RabbitMQ channel closed during {operation}: {_reply_text(exc)}",
            operation=operation,
        ) from exc
    except aio_pika.exceptions.DeliveryError as exc:
        raise errors.BrokerRejected(
            f"RabbitMQ did not accept {operation}: {exc}", operation=operation
        ) from exc
    except aiormq.exceptions.ProbableAuthenticationError as exc:
        # ACCESS_REFUSED at login: an answer, and no retry helps until the credentials change
        raise errors.BrokerRejected(
            f"RabbitMQ refused {operation}: it did not accept the user or password of the URL "
            f"({errors.describe_error(exc)})",
            operation=operation,
        ) from exc
    except pamqp.exceptions.PAMQPException as exc:
        reply = _connection_close(exc)
        if reply is not None and _is_connection_refusal(reply):
            raise errors.BrokerRejected(
                f"RabbitMQ refused {operation}: it closed the connection: {reply}",
                operation=operation,
            ) from exc
        if reply is not None:
            raise errors.BrokerUnavailable(
                f"RabbitMQ did not open the connection for {operation} now: {reply}",
                operation=operation,
            ) from exc
        raise errors.BrokerUnavailable(
            f"no reply from RabbitMQ during {operation}: {errors.describe_error(exc)}",
            operation=operation,
        ) from exc
    except (
        aiormq.exceptions.AMQPError,
        aio_pika.exceptions.ChannelInvalidStateError,
        ConnectionError,
        OSError,
        TimeoutError,
    ) as exc:
        raise errors.BrokerUnavailable(
            f"no reply from RabbitMQ during {operation}: {errors.describe_error(exc)}",
            operation=operation,
        ) from exc


def _unsent(exc: BaseException) -> errors.BrokerUnavailable:
    """``exc`` (a failed call) as the :class:`~worker_runtime.errors.BrokerUnavailable` of a
    call that certainly was not applied (``sent`` False), keeping its message and cause: the
    worker then counts a later stale answer to its settle as the lost lease it is."""
    operation = exc.operation if isinstance(exc, errors.BrokerError) else ""
    unsent = errors.BrokerUnavailable(str(exc), operation=operation, sent=False)
    unsent.__cause__ = exc.__cause__ if isinstance(exc, errors.BrokerError) else exc
    return unsent


def _sent(exc: BaseException) -> BaseException:
    """``exc`` for a settle of which something was written (a first copy went ahead by
    confirms): a ``sent`` False :class:`~worker_runtime.errors.BrokerUnavailable` becomes the
    same error with ``sent`` True, so the worker never reads that settle as surely not applied;
    anything else is returned as it is."""
    if not isinstance(exc, errors.BrokerUnavailable) or exc.sent:
        return exc
    sent = errors.BrokerUnavailable(str(exc), operation=exc.operation, sent=True)
    sent.__cause__ = exc.__cause__
    return sent


async def _open_channel(
    connection: aio_pika.abc.AbstractConnection,
    *,
    publisher_confirms: bool,
    on_return_raises: bool = False,
) -> aio_pika.abc.AbstractChannel:
    """A new channel of ``connection``, its opening bounded by :data:`DECLARE_TIMEOUT_SECONDS`
    (aio-pika's ``channel()`` takes no timeout): ``TimeoutError`` when RabbitMQ does not read
    the connection (a memory or disk alarm blocking it)."""
    channel = connection.channel(
        publisher_confirms=publisher_confirms, on_return_raises=on_return_raises
    )
    await asyncio.wait_for(channel.initialize(), DECLARE_TIMEOUT_SECONDS)
    return channel


async def _declare_existing(
    channel: aio_pika.abc.AbstractChannel, name: str
) -> aio_pika.abc.AbstractQueue | None:
    """Queue ``name`` if it exists (a passive declare), else None; a missing queue closes
    ``channel`` (AMQP's 404), so pass one of the caller's own. A queue that exists but cannot be
    reached now (NOT_FOUND "home node ... is down or inaccessible", :data:`ABSENT_QUEUE_TEXTS`)
    is no missing queue: that close is raised (an outage), not read as an empty DLQ."""
    try:
        return await channel.declare_queue(name, passive=True, timeout=DECLARE_TIMEOUT_SECONDS)
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        if not _is_refusal(exc):
            raise
        return None


async def _take_all(
    queue: aio_pika.abc.AbstractQueue,
    found: list[tuple[aio_pika.abc.AbstractIncomingMessage, base.DeadLetter]],
    *,
    newest: int | None = None,
    stop_at: str | None = None,
) -> tuple[int, aio_pika.abc.AbstractIncomingMessage | None]:
    """Get the messages of the DLQ ``queue`` unacked (``basic.get``), decoded, into ``found``:
    every one; or with ``newest``, only the ``newest`` most recently dead-lettered (the others
    are taken and let go, so a read costs memory for one page, not for the DLQ); or with
    ``stop_at``, only that job's letter, the read ending there. Returns how many messages were
    taken and the last one (a ``multiple`` nack of it gives back every one not acked).

    Newest first costs a read of the whole DLQ: a queue hands out its head, the oldest letters,
    and has no peek at its tail. The DLQ's ``x-max-length`` (``dlq_max_length``) bounds it."""
    total = int(queue.declaration_result.message_count or 0)
    kept: list[tuple[float, int, aio_pika.abc.AbstractIncomingMessage, base.DeadLetter]] = []
    taken = 0
    last: aio_pika.abc.AbstractIncomingMessage | None = None
    # messages another scan just put back may take a moment to be ready again:
    # read until empty, and wait (bounded) for as many as the queue counted
    settle = time.monotonic() + 2.0
    for _ in range(total + 10_000):
        message = await queue.get(no_ack=False, fail=False, timeout=10)
        if message is None:
            if taken >= total or time.monotonic() > settle:
                break
            await asyncio.sleep(0.05)
            continue
        taken += 1
        last = message
        record = decode_dead_letter(message)
        if stop_at is not None:
            if record.job_id == stop_at:
                found.append((message, record))
                break
        elif newest is None:
            found.append((message, record))
        elif newest > 0:
            entry = (record.dead_lettered_at, taken, message, record)
            if len(kept) < newest:
                heapq.heappush(kept, entry)
            else:
                heapq.heappushpop(kept, entry)
    found.extend((message, record) for _, _, message, record in kept)
    return taken, last


class RabbitMQBroker:
    """One workerfleet queue on RabbitMQ (see the module docstring)."""

    capabilities = CAPABILITIES

    def __init__(
        self,
        url: str,
        queue: str,
        options: base.QueueOptions | None = None,
        *,
        prefetch: int | None = None,
        connect_timeout: float = 10.0,
        management_port: int = 15672,
        queue_type: str = "quorum",
        role: base.QueueRole = base.QueueRole.CONSUMER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if queue_type not in topology.QUEUE_TYPES:
            raise errors.InvalidBrokerURL(f"queue_type must be one of {topology.QUEUE_TYPES}")
        self._queue_type = queue_type
        self.queue = base.validate_queue_name(queue)
        self.options = options or base.QueueOptions()
        # a reader (stats, dlq ls/show/summary) declares nothing: a mistyped queue name must
        # not create four queues; a queue that does not exist reads as empty
        self.role = base.QueueRole(role)
        self.dead_lettered_by_fetch: collections.Counter[str] = collections.Counter()
        self._url = url
        self._prefetch = prefetch
        # how long a prefetched delivery waited (BUFFERED_WAIT_LIMIT_SECONDS); a fake in tests
        self._clock = clock
        self._management_port = management_port
        self._connect_timeout = connect_timeout
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._consume_channel: aio_pika.abc.AbstractChannel | None = None
        self._publish_channel: aio_pika.abc.AbstractChannel | None = None
        # asks whether a queue still exists (a passive declare of a missing one closes it)
        self._probe_channel: aio_pika.abc.AbstractChannel | None = None
        self._generation = 0
        # receipts name the broker object and its connection: another object (the worker's
        # control thread has its own) cannot judge them
        self._instance = uuid.uuid4().hex[:12]
        self._consuming = False
        # the worker drains (stop_prefetching): no consumer is started again
        self._prefetch_stopped = False
        self._buffers: dict[str, collections.deque[_Delivered]] = {
            level: collections.deque() for level in topology.LEVELS
        }
        self._arrived = asyncio.Event()
        self._held: dict[str, _Held] = {}
        # the delay of each job's last retry, as its message said or as this object sent it
        # (bounded: the worker asks about jobs it holds or just retried)
        self._previous_delays: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._declared: set[str] = set()
        # delay buckets that did not confirm a publish (routing key -> monotonic time until
        # which routing leaves them out); see BUCKET_CONFIRM_TIMEOUT_SECONDS
        self._avoided_buckets: dict[str, float] = {}
        # each topic's exchange, valid while the publishing channel it was declared on lives
        self._exchanges: dict[
            str, tuple[aio_pika.abc.AbstractChannel, aio_pika.abc.AbstractExchange]
        ] = {}
        self._lock = asyncio.Lock()
        # the connection is usable only once its queues are declared: a publish racing the
        # first connect (a producer's enqueue beside a worker's first fetch) would find no
        # queue yet and come back unroutable
        self._declared_topology = False
        self._closed = False
        self._warned_dead_queue = False
        self._consumers: list[tuple[aiormq.abc.AbstractChannel, str]] = []
        self._transaction: aio_pika.abc.AbstractTransaction | None = None
        self._consume_exchange: aio_pika.abc.AbstractExchange | None = None
        self._settle_queue: list[_Settle] = []
        # the queues the consuming channel's transactions may publish to: each took a
        # confirmed copy first (see _publish_first_copies); a new channel starts empty
        self._tx_ready: set[str] = set()
        self._flusher: asyncio.Future[None] | None = None
        # delivery tags of the consuming channel not acked yet, in delivery (= tag) order: a
        # batch of acks that covers the oldest of them goes out as one ``multiple`` ack
        self._unacked: collections.OrderedDict[int, None] = collections.OrderedDict()

    # -- connection ------------------------------------------------------------------------

    def _alive(self) -> bool:
        """Whether the connection and its consuming channel live, so the deliveries this object
        holds are still valid. The publishing channel is not part of it: RabbitMQ closes that
        one on a refused publish or declaration, and :meth:`_ensure` opens another on the same
        connection."""
        return (
            self._declared_topology
            and self._connection is not None
            and not self._connection.is_closed
            and (self._consume_channel is None or not self._consume_channel.is_closed)
        )

    async def _ensure(self) -> aio_pika.abc.AbstractChannel:
        """The publishing channel of a live connection; (re)connects and declares the topology.
        A new connection starts a new generation: every delivery of the old one is stale. A
        publishing channel RabbitMQ closed (a quorum queue whose member is not running refuses a
        publish with NOT_FOUND, which closes the channel) is replaced on the same connection:
        the consuming channel and the deliveries held on it stay valid."""
        if self._closed:
            raise errors.BrokerError("the broker is closed", operation="connect")
        channel = self._publish_channel
        if self._alive() and channel is not None and not channel.is_closed:
            return channel
        async with self._lock:
            if self._alive():
                channel = self._publish_channel
                if channel is not None and not channel.is_closed:
                    return channel
                try:
                    return await self._open_publish_channel()
                except Exception:
                    # The connection is going too (a node killed: aio-pika raises RuntimeError
                    # "closed" before the connection reads as closed): reconnect, as before
                    # the publishing channel could be replaced alone.
                    pass
            await self._drop_connection()
            try:
                async with translate_errors("connect"):
                    connection = await aio_pika.connect(self._url, timeout=self._connect_timeout)
                    self._generation += 1
                    self._connection = connection
                    self._publish_channel = await self._open_publish_channel()
                    self._declared.clear()
                    if self.role is not base.QueueRole.READER:
                        await self._declare_topology(self._publish_channel)
                    self._declared_topology = True
            except errors.BrokerUnavailable as exc:
                # the caller's own call was never sent: its publish or settle is not applied
                raise _unsent(exc) from exc.__cause__
            return self._publish_channel

    async def _declare_topology(self, channel: aio_pika.abc.AbstractChannel) -> None:
        for level in topology.LEVELS:
            channel = await self._declare(
                channel,
                topology.work_queue(self.queue, level),
                topology.work_queue_arguments(
                    self.queue, self.options.max_deliveries, self._queue_type
                ),
            )
        await self._declare(
            channel,
            topology.dead_queue(self.queue),
            topology.dead_queue_arguments(
                self._queue_type,
                max_length=self.options.dlq_max_length,
                retention_seconds=self.options.dlq_retention_seconds,
            ),
        )

    async def _declare(
        self, channel: aio_pika.abc.AbstractChannel, name: str, arguments: dict[str, Any]
    ) -> aio_pika.abc.AbstractChannel:
        """Declare queue ``name``; returns the publishing channel to go on with (a new one
        when the queue already existed with other arguments, which closed the old one)."""
        if name in self._declared:
            return channel
        try:
            await channel.declare_queue(
                name, durable=True, arguments=arguments, timeout=DECLARE_TIMEOUT_SECONDS
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            # It exists with other arguments: a subscription queue registered by a publisher
            # (its x-delivery-limit is SUBSCRIPTION_BACKSTOP_DELIVERIES, above any worker's), or
            # one declared by an older version or another max_deliveries. Use it as it is;
            # max_deliveries is still enforced by this object's own count.
            if name == topology.dead_queue(self.queue):
                self._warn_dead_queue_bounds(arguments, exc)
            channel = await self._open_publish_channel()
            await channel.declare_queue(name, passive=True)
        self._declared.add(name)
        return channel

    def _warn_dead_queue_bounds(
        self, wanted: dict[str, Any], exc: aiormq.exceptions.ChannelPreconditionFailed
    ) -> None:
        """Say once, from a worker, that the DLQ exists with other bounds than its own
        (``dlq_max_length``, ``dlq_retention_seconds``), which therefore do not apply: RabbitMQ
        refuses to change an existing queue's arguments (PRECONDITION_FAILED, which names the
        first one that differs). A DLQ declared before the bounds existed has none and grows
        without limit until someone acts. A producer says nothing: it has no bounds of its own
        to impose (it declares a missing DLQ with the defaults)."""
        if self.role is not base.QueueRole.CONSUMER or self._warned_dead_queue:
            return
        self._warned_dead_queue = True
        _log.warning(
            "the dead-letter queue exists with other bounds than this worker's: they do not apply",
            extra={
                "queue": topology.dead_queue(self.queue),
                "wanted": {k: v for k, v in wanted.items() if k != "x-queue-type"},
                "rabbitmq": str(exc),
                "hint": "RabbitMQ never changes an existing queue's arguments; bound it with a "
                "policy (max-length, message-ttl: the lower of a policy's and the queue's own "
                "applies), or delete the queue while it is empty and workers declare it anew "
                "(docs/brokers.md, RabbitMQ 'Dead letters')",
            },
        )

    async def _drop_connection(self) -> None:
        self._declared_topology = False
        self._consuming = False
        self._transaction = None
        self._consume_exchange = None
        self._consume_channel = None
        self._publish_channel = None
        self._probe_channel = None
        for buffer in self._buffers.values():
            buffer.clear()
        self._held.clear()
        self._unacked.clear()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)

    async def _start_consuming(self, count: int) -> None:
        if (
            self._consuming
            and self._consume_channel is not None
            and not self._consume_channel.is_closed
        ):
            return
        await self._ensure()
        async with self._lock, translate_errors("consume"):
            if self._consuming:
                return
            assert self._connection is not None
            if self._prefetch is None:
                self._prefetch = max(1, count)
            channel = await self._connection.channel(publisher_confirms=False)
            self._unacked = collections.OrderedDict()
            self._tx_ready = set()
            await channel.set_qos(prefetch_count=self._prefetch)
            transaction = channel.transaction()
            await transaction.select()
            self._transaction = transaction
            self._consume_exchange = channel.default_exchange
            generation = self._generation
            self._consumers = []
            underlay = await channel.get_underlay_channel()
            for level in topology.LEVELS:
                name = topology.work_queue(self.queue, level)
                try:
                    ok = await underlay.basic_consume(
                        name,
                        self._on_message_for(level, generation),
                        no_ack=False,
                        timeout=CONSUME_TIMEOUT_SECONDS,
                    )
                except TimeoutError as exc:
                    # the channel waits on the queue for good: start again on a new connection
                    await self._drop_connection()
                    raise errors.BrokerUnavailable(
                        f"RabbitMQ did not answer basic.consume on {name} within "
                        f"{CONSUME_TIMEOUT_SECONDS:g} s (a quorum queue without a leader?)",
                        operation="consume",
                    ) from exc
                assert ok.consumer_tag is not None
                self._consumers.append((underlay, ok.consumer_tag))
            self._consume_channel = channel
            self._consuming = True

    async def _resume_cancelled_consumers(self) -> None:
        """Consume again from each work queue whose consumer RabbitMQ cancelled, declaring the
        queue anew. Deleting a queue cancels its consumers (``basic.cancel``), and the client
        only forgets them: the connection and the channel live on, so the worker went on
        serving its other levels and never took a job of that one again (an operator deletes a
        queue a crash left without a leader, or a subscription's queue to give it the worker's
        delivery limit, and producers declare it again). Checked at each fetch."""
        if not self._consuming or self._prefetch_stopped:
            return
        gone = [
            index
            for index, (channel, tag) in enumerate(self._consumers)
            if tag not in getattr(channel, "consumers", {tag: None})
        ]
        if not gone:
            return
        generation = self._generation
        channel = await self._ensure()
        async with self._lock, translate_errors("consume"):
            if generation != self._generation or not self._consuming:
                return  # a new connection: the fetch starts every consumer again
            for index in gone:
                underlay, _ = self._consumers[index]
                level = topology.LEVELS[index]
                name = topology.work_queue(self.queue, level)
                _log.warning(
                    "RabbitMQ cancelled the consumer of a work queue (deleted?): declared it "
                    "again and consuming it",
                    extra={"queue": name},
                )
                self._declared.discard(name)
                channel = await self._declare(
                    channel,
                    name,
                    topology.work_queue_arguments(
                        self.queue, self.options.max_deliveries, self._queue_type
                    ),
                )
                ok = await underlay.basic_consume(
                    name,
                    self._on_message_for(level, generation),
                    no_ack=False,
                    timeout=CONSUME_TIMEOUT_SECONDS,
                )
                assert ok.consumer_tag is not None
                self._consumers[index] = (underlay, ok.consumer_tag)

    async def _cancel_consumers(self) -> None:
        """Stop new deliveries (drain, close); what is held or buffered stays unacked."""
        consumers, self._consumers = self._consumers, []
        self._consuming = False
        for channel, tag in consumers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.basic_cancel(tag), 5)

    def _on_message_for(self, level: str, generation: int) -> Any:
        async def on_message(delivered: aiormq.abc.DeliveredMessage) -> None:
            if generation == self._generation:
                message = _Delivered.of(delivered, self._clock())
                if message.delivery_tag is not None:
                    self._unacked[message.delivery_tag] = None
                self._buffers[level].append(message)
                self._arrived.set()

        return on_message

    # -- publishing ------------------------------------------------------------------------

    def _job_message(
        self, routing_key: str, body: bytes, headers: dict[str, Any], message_id: str
    ) -> aio_pika.Message:
        """The message of a job copy bound for ``routing_key``: one for a delay bucket expires
        after the bucket's wait on its own, not only by the bucket's TTL (topology.py)."""
        return build_message(
            body, headers, message_id, expiration_ms=topology.bucket_ms(self.queue, routing_key)
        )

    async def _publish(
        self,
        routing_key: str,
        body: bytes,
        headers: dict[str, Any],
        *,
        message_id: str,
        operation: str,
    ) -> None:
        bucket = topology.bucket_ms(self.queue, routing_key) is not None
        timeout = BUCKET_CONFIRM_TIMEOUT_SECONDS if bucket else PUBLISH_CONFIRM_TIMEOUT_SECONDS
        message = self._job_message(routing_key, body, headers, message_id)

        async def send(channel: aio_pika.abc.AbstractChannel) -> None:
            try:
                await channel.default_exchange.publish(
                    message, routing_key=routing_key, mandatory=True, timeout=timeout
                )
            except TimeoutError as exc:
                await self._replace_publish_channel(channel)
                raise self._unconfirmed(routing_key, timeout, operation, bucket=bucket) from exc

        try:
            await self._publish_until_taken(send, operation)
        except errors.BrokerRejected as exc:
            arguments = self._queue_arguments(routing_key)
            if not _is_unroutable(exc.__cause__) or arguments is None:
                raise
            # One of this queue's RabbitMQ queues was deleted under this connection (an
            # operator re-bounding a DLQ or repairing a queue a crash left without a leader,
            # as docs/brokers.md says): declare it again, as a new connection would.
            _log.warning(
                "a queue of this workerfleet queue was deleted: declared it again",
                extra={"queue": routing_key, "operation": operation},
            )
            channel = await self._ensure()
            self._declared.discard(routing_key)
            async with translate_errors(operation):
                await self._declare(channel, routing_key, arguments)
            await self._publish_until_taken(send, operation)

    def _queue_arguments(self, name: str) -> dict[str, Any] | None:
        """The arguments this object declares RabbitMQ queue ``name`` with, when it is one of
        this queue's (a work queue, the DLQ, a delay bucket) and this object declares queues;
        else None."""
        if self.role is base.QueueRole.READER:
            return None
        if topology.level_of(name, self.queue) is not None:
            return topology.work_queue_arguments(
                self.queue, self.options.max_deliveries, self._queue_type
            )
        if name == topology.dead_queue(self.queue):
            return topology.dead_queue_arguments(
                self._queue_type,
                max_length=self.options.dlq_max_length,
                retention_seconds=self.options.dlq_retention_seconds,
            )
        wait_ms = topology.bucket_ms(self.queue, name)
        if wait_ms is None:
            return None
        level = name[len(topology.delay_queue_prefix(self.queue)) :].partition(".")[0]
        return topology.delay_queue_arguments(self.queue, level, wait_ms, self._queue_type)

    async def _forget_deleted_queues(self, batch: list[_Settle]) -> None:
        """Take every queue the transaction would publish ``batch``'s copies to that no longer
        exists out of those the transaction publishes to, so its copy goes by confirms again
        (:meth:`_publish_first_copies`, which declares it anew). A transaction publishes without
        ``mandatory`` (aiormq reports no return there): RabbitMQ dropped a copy to a deleted
        queue while the ack beside it committed, and the job was gone. One passive declare per
        such queue and batch; a queue deleted between it and the commit still loses its copy."""
        routes = {
            entry.publish[0]
            for entry in batch
            if entry.publish is not None and entry.publish[0] in self._tx_ready
        }
        for route in sorted(routes):
            if not await self._queue_exists(route, batch[0].operation):
                self._tx_ready.discard(route)
                self._declared.discard(route)

    async def _queue_exists(self, name: str, operation: str) -> bool:
        """Whether RabbitMQ queue ``name`` exists (a passive declare on a channel of its own,
        opened again after a missing queue closed it)."""
        await self._ensure()
        assert self._connection is not None
        async with translate_errors(operation):
            if self._probe_channel is None or self._probe_channel.is_closed:
                self._probe_channel = await _open_channel(
                    self._connection, publisher_confirms=False
                )
            return await _declare_existing(self._probe_channel, name) is not None

    async def _publish_until_taken(
        self,
        send: Callable[[aio_pika.abc.AbstractChannel], Awaitable[None]],
        operation: str,
    ) -> None:
        """Run ``send`` (one confirmed publish) on the publishing channel, and again after each
        nack (:data:`NACK_RETRY_DELAYS_SECONDS`): a quorum queue nacks for a moment after its
        creation. Any other refusal, or a nack after the last wait, is raised as it came."""
        for wait in (*NACK_RETRY_DELAYS_SECONDS, None):
            channel = await self._ensure()
            try:
                async with translate_errors(operation):
                    await send(channel)
                return
            except errors.BrokerError as exc:
                # only a refusal of a queue still starting is worth another try (a nack, or
                # NOT_FOUND "down or inaccessible", whose closed channel the next _ensure
                # replaces); an unroutable publish stays unroutable
                refused = _is_nack(exc.__cause__) or _is_member_not_running(exc.__cause__)
                if wait is None or not refused:
                    raise
            await asyncio.sleep(wait)

    async def _open_publish_channel(self) -> aio_pika.abc.AbstractChannel:
        """A new publishing channel (confirms, unroutable publishes raise) on the connection."""
        assert self._connection is not None
        self._publish_channel = await _open_channel(
            self._connection, publisher_confirms=True, on_return_raises=True
        )
        return self._publish_channel

    async def _replace_publish_channel(self, stuck: aio_pika.abc.AbstractChannel) -> None:
        """Open a new publishing channel on the same connection in place of ``stuck``, one
        whose publish RabbitMQ did not confirm. The broker confirms a channel's publishes in
        order, so after one it holds for good no later publish on that channel is confirmed
        either (seen on 3.10.8 after a publish to a queue without a leader; a new channel of the
        same connection was confirmed at once). The stuck channel is left as it is: closing it
        waits on the same stuck channel process. The connection, the consuming channel and the
        deliveries held on it stay as they are."""
        async with self._lock:
            if self._publish_channel is not stuck or not self._alive():
                return  # replaced already, or the connection is gone (the next call reconnects)
            await self._open_publish_channel()

    def _unconfirmed(
        self, routing_key: str, timeout: float, operation: str, *, bucket: bool
    ) -> errors.BrokerError:
        """The error for a publish RabbitMQ did not confirm in ``timeout`` seconds; a delay
        bucket's (``bucket``) is left out of routing for a while (BUCKET_AVOID_SECONDS)."""
        if bucket:
            self._avoided_buckets[routing_key] = time.monotonic() + BUCKET_AVOID_SECONDS
            _log.warning(
                "a delay bucket did not confirm a publish: delays route around it",
                extra={
                    "queue": routing_key,
                    "timeout_seconds": timeout,
                    "avoided_for_seconds": BUCKET_AVOID_SECONDS,
                    "hint": "a quorum queue declared just before its node crashed can come "
                    "back without a leader; delete it (workers declare it again on use)",
                },
            )
        return errors.BrokerUnavailable(
            f"RabbitMQ did not confirm a publish to {routing_key} within {timeout:g} s "
            "(a quorum queue without a leader, or a memory or disk alarm blocking publishers?)",
            operation=operation,
        )

    def _avoided(self, level: str) -> frozenset[int]:
        """The delay buckets (ms) of ``level`` routing leaves out now."""
        if not self._avoided_buckets:
            return frozenset()
        now = time.monotonic()
        for key, until in list(self._avoided_buckets.items()):
            if until <= now:
                del self._avoided_buckets[key]
        prefix = f"{topology.delay_queue_prefix(self.queue)}{level}."
        return frozenset(
            int(key[len(prefix) :]) for key in self._avoided_buckets if key.startswith(prefix)
        )

    async def _publish_due(
        self,
        level: str,
        body: bytes,
        headers: dict[str, Any],
        *,
        message_id: str,
        due_at: float,
        operation: str,
    ) -> None:
        """Publish to the work queue of ``level``, or to the delay bucket its due time needs
        (once more, routed around it, when that bucket did not confirm the copy in time)."""
        for last in (False, True):
            routing_key, copy = await self._route_due(level, headers, due_at, operation)
            try:
                await self._publish(
                    routing_key, body, copy, message_id=message_id, operation=operation
                )
                return
            except errors.BrokerUnavailable:
                if last or routing_key not in self._avoided_buckets:
                    raise

    async def _settle_due(
        self,
        message: _Delivered,
        operation: str,
        level: str,
        copy: tuple[bytes, dict[str, Any], str],
        due_at: float,
    ) -> None:
        """Settle ``message`` with a new copy (body, headers, message id) due at ``due_at``:
        in its level's queue or the delay bucket it needs. When that bucket did not confirm
        the copy in time (its first copy on this channel goes by confirms), nothing was acked:
        the copy goes once more, routed around the bucket, within the same call, so a worker's
        settle (bounded by its lease) does not give up on it."""
        body, headers, message_id = copy
        generation = self._generation
        for last in (False, True):
            routing_key, routed = await self._route_due(level, headers, due_at, operation)
            try:
                await self._settle(message, operation, (routing_key, body, routed, message_id))
                return
            except errors.BrokerUnavailable:
                again = routing_key in self._avoided_buckets and self._generation == generation
                if last or not again or not self._alive():
                    raise

    async def _route_due(
        self, level: str, headers: dict[str, Any], due_at: float, operation: str
    ) -> tuple[str, dict[str, Any]]:
        """Where a job due at ``due_at`` goes (its level's queue or a delay bucket, declared),
        and its headers with the due time."""
        headers = dict(headers)
        headers[topology.H_DUE_AT] = repr(due_at)
        # A bucket that stopped confirming is left out: a longer wait takes more hops through
        # smaller ones, and a wait shorter than any usable bucket is over (the job may start
        # up to that bucket's length early, at the fetch that finds it due).
        bucket = topology.bucket_for(due_at - time.time(), avoid=self._avoided(level))
        if bucket is None:
            return topology.work_queue(self.queue, level), headers
        routing_key = topology.delay_queue(self.queue, level, bucket)
        channel = await self._ensure()
        async with translate_errors(operation):
            await self._declare(
                channel,
                routing_key,
                topology.delay_queue_arguments(self.queue, level, bucket, self._queue_type),
            )
        return routing_key, headers

    async def _settle(
        self,
        message: _Delivered,
        operation: str,
        publish: tuple[str, bytes, dict[str, Any], str] | None = None,
    ) -> None:
        """Ack ``message``, and publish ``publish`` (routing key, body, headers, message id) in
        the same transaction: the consuming channel is transactional, so a worker killed
        half-way leaves neither the new copy nor the ack (the job comes back whole, counted as
        a lost delivery), never both. Returns once committed.

        Group commit: settles wait in a queue; one flusher writes every waiting settle's frames
        and then one ``tx.commit`` for all of them (a commit takes a disk write on the
        broker, so under load one covers a whole batch). Only the flusher writes on the
        channel, so a commit never splits a settle's publish from its ack.

        Except the first copy this channel sends to each queue: that one goes by publisher
        confirms before the transaction acks (:meth:`_publish_first_copies`), because a
        transaction drops a publish the queue refuses without a word."""
        await self._queue_settle(message, operation, publish)

    def _queue_settle(
        self,
        message: _Delivered,
        operation: str,
        publish: tuple[str, bytes, dict[str, Any], str] | None,
    ) -> asyncio.Future[None]:
        """Queue one settle for the flusher (started if idle); the future ends once committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._settle_queue.append(_Settle(message, operation, publish, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush_settles())
        return done

    async def _settle_many(
        self,
        settles: Sequence[tuple[_Delivered, tuple[str, bytes, dict[str, Any], str] | None]],
        operation: str,
    ) -> list[BaseException | None]:
        """:meth:`_settle` for many deliveries (each with its copy or None), queued before the
        flusher runs, so they share one transaction and one ``tx.commit``. Once every one is
        committed or failed: each one's failure, or None."""
        waits = [self._queue_settle(message, operation, publish) for message, publish in settles]
        outcomes = await asyncio.gather(*waits, return_exceptions=True)
        return [outcome if isinstance(outcome, BaseException) else None for outcome in outcomes]

    async def _flush_settles(self) -> None:
        while self._settle_queue:
            batch, self._settle_queue = self._settle_queue, []
            if self._consuming_channel_gone(batch):
                # Nothing of this batch is written, not even a first copy by confirms: a copy
                # published on a new connection would land while its delivery went back to
                # its queue with the old one (the job twice), and be reported as not sent.
                gone = errors.BrokerUnavailable(
                    f"the consuming channel is closed ({batch[0][1]})",
                    operation=batch[0][1],
                    sent=False,
                )
                for entry in batch:
                    if not entry.done.done():
                        entry.done.set_exception(gone if not entry.copied else _sent(gone))
                continue
            try:
                await self._forget_deleted_queues(batch)
            except errors.BrokerError as exc:
                # nothing of the batch is written yet
                unchecked = _unsent(exc) if isinstance(exc, errors.BrokerUnavailable) else exc
                for entry in batch:
                    if not entry.done.done():
                        entry.done.set_exception(unchecked)
                continue
            batch = await self._publish_first_copies(batch)
            if not batch:
                continue
            operation = batch[0][1]
            committing = False
            try:
                async with translate_errors(operation):
                    if self._consuming_channel_gone(batch):
                        raise errors.BrokerUnavailable(
                            f"the consuming channel is closed ({operation})",
                            operation=operation,
                            sent=False,
                        )
                    for _, _, publish, _, _ in batch:
                        if publish is not None:
                            assert self._consume_exchange is not None
                            routing_key, body, headers, message_id = publish
                            await self._consume_exchange.publish(
                                self._job_message(routing_key, body, headers, message_id),
                                routing_key=routing_key,
                            )
                    await self._ack_together([entry.message for entry in batch])
                    committing = True
                    assert self._transaction is not None
                    await self._commit(self._transaction, operation)
            except (errors.BrokerError, RuntimeError) as exc:
                # Before its tx.commit a batch is applied by nothing: once the channel is gone
                # RabbitMQ discards what it wrote in the transaction. Its settles were not sent
                # then (the deliveries went back to their queues with the connection), unless a
                # first copy went ahead by confirms.
                unsent = (
                    _unsent(exc) if not committing and self._consuming_channel_gone(batch) else None
                )
                for entry in batch:
                    if not entry.done.done():
                        failure = exc if unsent is None else unsent
                        # a first copy that went ahead by confirms is out: never "not sent"
                        entry.done.set_exception(_sent(failure) if entry.copied else failure)
                continue
            for entry in batch:
                if not entry.done.done():
                    entry.done.set_result(None)

    async def _commit(self, transaction: aio_pika.abc.AbstractTransaction, operation: str) -> None:
        """``tx.commit`` of the consuming channel, bounded by :data:`COMMIT_TIMEOUT_SECONDS`.
        Without an answer in time the connection is dropped (see there) and the settle fails
        as ``BrokerUnavailable`` that may have landed: the commit was sent."""
        generation = self._generation
        try:
            await transaction.commit(timeout=COMMIT_TIMEOUT_SECONDS)
        except TimeoutError as exc:
            if generation == self._generation:
                await self._drop_connection()
            raise errors.BrokerUnavailable(
                f"RabbitMQ did not answer tx.commit of {operation} within "
                f"{COMMIT_TIMEOUT_SECONDS:g} s (a memory or disk alarm blocking publishers?); "
                "the settle may still be applied",
                operation=operation,
            ) from exc

    def _consuming_channel_gone(self, batch: list[_Settle]) -> bool:
        """Whether the consuming channel of ``batch``'s deliveries is closed (or this object
        dropped its connection): nothing more can be written in its transaction."""
        return self._transaction is None or any(entry.message.channel.is_closed for entry in batch)

    async def _publish_first_copies(self, batch: list[_Settle]) -> list[_Settle]:
        """Publish with confirms the first copy of ``batch`` bound for each queue this consuming
        channel has not published to yet; what is left for the transaction (those settles
        with only their ack to do, the other copies to a queue that took its first, and the
        rest untouched). When RabbitMQ did not take a queue's first copy, every settle of
        ``batch`` with a copy for that queue fails here, its delivery not acked.

        Why: a quorum queue refuses a publish while its Raft member is not running, which
        happens in the moment after another client's declare of the same new queue returned
        (two workers sending their first retry to a new delay bucket at once), and a channel
        that learnt a refusal goes on refusing that queue's publishes. A transaction drops a
        refused publish without a word and commits the ack beside it: the job was gone
        (measured here on 3.10.8: 2-5 of 400 jobs retried by 8 workers at once, and once 226
        of 400 when a bucket's channel state stuck). A confirmed publish is nacked instead (or
        its channel closed with NOT_FOUND "down or inaccessible", the publishing channel then
        replaced on the same connection, so the deliveries held stay valid), and made again
        (:data:`NACK_RETRY_DELAYS_SECONDS`); once the queue took one, this
        channel's transactions publish to it as before. The price: a worker killed between
        such a copy's confirm and its ack's commit leaves both, and the job runs twice (only
        for the first copy per queue and channel, also when a batch holds many: a drain's
        release of its whole buffer sends one copy per level by confirms, the rest in the
        transaction)."""
        first: dict[str, _Settle] = {}
        for entry in batch:
            if entry.publish is not None and entry.publish[0] not in self._tx_ready:
                first.setdefault(entry.publish[0], entry)
        if not first:
            return batch

        async def publish(entry: _Settle) -> None:
            assert entry.publish is not None
            routing_key, body, headers, message_id = entry.publish
            await self._publish(
                routing_key, body, headers, message_id=message_id, operation=entry.operation
            )

        outcomes = await asyncio.gather(
            *(publish(e) for e in first.values()), return_exceptions=True
        )
        failed = {
            route: outcome
            for route, outcome in zip(first, outcomes, strict=True)
            if isinstance(outcome, BaseException)
        }
        self._tx_ready.update(route for route in first if route not in failed)
        left: list[_Settle] = []
        for entry in batch:
            route = entry.publish[0] if entry.publish is not None else None
            if route is not None and route in failed:
                if not entry.done.done():
                    entry.done.set_exception(failed[route])
            elif route is not None and first.get(route) is entry:
                left.append(entry._replace(publish=None, copied=True))
            else:
                left.append(entry)
        return left

    async def _ack_together(self, messages: list[_Delivered]) -> None:
        """Ack ``messages`` (all of the consuming channel, inside the open transaction) with as
        few frames as AMQP allows: when they include the channel's oldest unacked deliveries,
        one ``multiple`` ack on the newest of that run covers the run (an ack with ``multiple``
        acks every unacked delivery up to its tag, so it is used only when nothing else of the
        channel lies below that tag); the others are acked one by one.

        Deliveries are registered in tag order as they arrive; one that arrived but is not
        registered yet has a higher tag than every registered one, so it is never covered."""
        wanted = {m.delivery_tag: m for m in messages if m.delivery_tag is not None}
        newest: int | None = None
        covered = 0
        for tag in self._unacked:
            if tag not in wanted:
                break
            newest = tag
            covered += 1
        if newest is not None and covered > 1:
            await wanted[newest].ack(multiple=True)
            single = [m for m in messages if m.delivery_tag is None or m.delivery_tag > newest]
        else:
            single = messages
        for message in single:
            await message.ack()
        for tag in wanted:
            self._unacked.pop(tag, None)

    # -- producer side ---------------------------------------------------------------------

    async def enqueue(self, request: base.EnqueueRequest) -> base.EnqueueResult:
        base.validate_delay(request.delay_seconds)
        env = request.envelope
        body = request.envelope_bytes()
        # a new job carries no state headers: an absent count reads as 0 (one table less to
        # encode and decode per job)
        headers: dict[str, Any] = {}
        await self._publish_due(
            str(env.priority),
            body,
            headers,
            message_id=env.id,
            due_at=time.time() + max(0.0, request.delay_seconds),
            operation="enqueue",
        )
        return base.EnqueueResult(job_id=env.id, created=True)

    async def enqueue_many(
        self, requests: Sequence[base.EnqueueRequest]
    ) -> list[base.EnqueueResult]:
        base.validate_delays(requests)
        # confirms are pipelined: all publishes are in flight at once, each awaits its own
        return list(await asyncio.gather(*(self.enqueue(r) for r in requests)))

    # -- fetching --------------------------------------------------------------------------

    async def fetch(
        self,
        worker_id: str,
        count: int,
        *,
        block: float = 0.0,
        wake: asyncio.Event | None = None,
        holding: Container[tuple[str, base.Receipt]] = (),
    ) -> list[base.Delivery]:
        if count <= 0 or self._prefetch_stopped:
            return []
        await self._start_consuming(count)
        await self._resume_cancelled_consumers()
        await self._give_back_overdue()
        deadline = time.monotonic() + max(0.0, block)
        first = True
        while True:
            out = await self._take(worker_id, count)
            if out:
                return out
            remaining = deadline - time.monotonic()
            if (remaining <= 0 and not first) or (wake is not None and wake.is_set()):
                return out
            first = False
            self._arrived.clear()
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._arrived.wait())]
            if wake is not None:
                waits.append(asyncio.ensure_future(wake.wait()))
            # a first fetch lets the consumers' first deliveries arrive before it gives up
            timeout = max(remaining, 0.05)
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
            if not self._alive():
                await self._ensure()
                self._consuming = False
                await self._start_consuming(count)
            await self._resume_cancelled_consumers()

    async def _take(self, worker_id: str, count: int) -> list[base.Delivery]:
        out: list[base.Delivery] = []
        for level in topology.LEVELS:
            buffer = self._buffers[level]
            while buffer and len(out) < count:
                message = buffer.popleft()
                generation = self._generation
                try:
                    delivery = await self._admit(worker_id, level, message)
                except errors.BrokerError:
                    # Its hop or dead-letter was not sent (a bucket that did not confirm): the
                    # message is still this connection's, and the next fetch handles it again;
                    # the deliveries taken before it are the worker's now.
                    if self._generation == generation and self._alive():
                        buffer.appendleft(message)
                    if out:
                        return out
                    raise
                if delivery is not None:
                    out.append(delivery)
        return out

    async def _admit(self, worker_id: str, level: str, message: _Delivered) -> base.Delivery | None:
        """A delivery for the worker, or None when the message was handled here instead: not
        due yet (another delay hop), poison, or an envelope that cannot run (dead-lettered)."""
        headers = dict(message.headers or {})
        now = time.time()
        receipt = f"{self._instance}:{self._generation}:{level}:{message.delivery_tag}"
        redelivered = _int_header(headers, topology.X_DELIVERY_COUNT)
        deliveries = _int_header(headers, topology.H_DELIVERIES) + redelivered + 1
        lost = _int_header(headers, topology.H_LOST) + redelivered
        job_id = message.message_id or ""
        if self._queue_type == "classic" and message.redelivered:
            # a classic queue only flags a returned message: count that lost delivery in a
            # new copy (at the queue's tail) before anyone runs it, so crashes add up to poison
            copy = self._copy_headers(
                headers,
                deliveries=_int_header(headers, topology.H_DELIVERIES) + 1,
                lost=_int_header(headers, topology.H_LOST) + 1,
            )
            publish = (topology.work_queue(self.queue, level), message.body, copy, job_id)
            await self._settle(message, "fetch", publish)
            return None
        try:
            env = envelope_mod.parse_envelope(message.body)
        except errors.EnvelopeError as exc:
            placeholder = _Held(
                message,
                self._stub_delivery(job_id, receipt, deliveries, lost, headers, now),
                headers,
                message.body,
            )
            await self._dead_letter_held(
                placeholder,
                exc.reason,
                worker_id=worker_id,
                failure=None,
                attempt=False,
                detail=exc.detail,
            )
            self.dead_lettered_by_fetch[exc.reason] += 1
            return None
        body = message.body
        topic = headers.get(topology.H_TOPIC)
        if isinstance(topic, bytes):
            topic = topic.decode(errors="replace")
        if isinstance(topic, str) and env.task == topic and self.queue.startswith(f"{topic}:"):
            # an event copied to every subscription by the topic's exchange: here it is this
            # subscription's job (and its retry and dead-letter copies say so)
            env = env.model_copy(update={"task": self.queue})
            body = envelope_mod.encode_envelope(env)
        delivery = base.Delivery(
            id=env.id,
            receipt=receipt,
            envelope=env,
            attempts=_int_header(headers, topology.H_ATTEMPTS),
            deliveries=deliveries,
            lease_deadline=now + self.options.lease_seconds,
            lost=lost,
            fetched_at=now,
        )
        held = _Held(message, delivery, headers, body)
        due_at = _float_header(headers, topology.H_DUE_AT)
        if (
            due_at is not None
            and topology.bucket_for(due_at - now, avoid=self._avoided(level)) is not None
        ):
            # a delay longer than its bucket: one more hop, no delivery counted
            copy = self._copy_headers(headers, deliveries=deliveries - 1, lost=lost)
            await self._settle_due(message, "fetch", level, (message.body, copy, env.id), due_at)
            return None
        if lost >= self.options.max_deliveries:
            # Poison: its workers died holding it max_deliveries times. Only lost deliveries
            # count (a retry or a release settled its delivery), as on every broker; this
            # delivery is not handed out, so its letter does not count it.
            poison = _Held(message, replace(delivery, deliveries=deliveries - 1), headers, body)
            await self._dead_letter_held(
                poison,
                base.DeadLetterReason.MAX_DELIVERIES,
                worker_id=worker_id,
                failure=None,
                attempt=False,
            )
            self.dead_lettered_by_fetch[str(base.DeadLetterReason.MAX_DELIVERIES)] += 1
            return None
        self._held[receipt] = held
        previous = _float_header(headers, topology.H_LAST_DELAY)
        if previous is not None:
            self._remember_delay(env.id, previous)
        return delivery

    def _remember_delay(self, job_id: str, delay: float) -> None:
        self._previous_delays[job_id] = delay
        self._previous_delays.move_to_end(job_id)
        while len(self._previous_delays) > PREVIOUS_DELAYS_KEEP:
            self._previous_delays.popitem(last=False)

    def _stub_delivery(
        self,
        job_id: str,
        receipt: str,
        deliveries: int,
        lost: int,
        headers: dict[str, Any],
        now: float,
    ) -> base.Delivery:
        stub = envelope_mod.JobEnvelope(id=job_id or "unknown", task="unknown", enqueued_at=now)
        return base.Delivery(
            id=job_id,
            receipt=receipt,
            envelope=stub,
            attempts=_int_header(headers, topology.H_ATTEMPTS),
            deliveries=deliveries,
            lease_deadline=now,
            lost=lost,
            fetched_at=now,
        )

    async def ack_and_fetch(
        self,
        deliveries: Sequence[base.Delivery],
        worker_id: str,
        count: int,
        *,
        block: float = 0.0,
        wake: asyncio.Event | None = None,
        holding: Container[tuple[str, base.Receipt]] = (),
    ) -> tuple[list[bool], list[base.Delivery]]:
        # together: one commit covers them all (group commit, see _settle)
        acked = list(await asyncio.gather(*(self.ack(d) for d in deliveries)))
        try:
            fetched = await self.fetch(worker_id, count, block=block, wake=wake, holding=holding)
        except errors.BrokerError:
            if not any(acked):
                raise
            # The acks are committed: raising now would make the worker send them again, and
            # a second ack of a settled delivery answers False, which it counts as a lost
            # lease. Report the acks; the next fetch meets the trouble again and raises it.
            return acked, []
        return acked, fetched

    # -- settling --------------------------------------------------------------------------

    def _current(self, delivery: base.Delivery) -> _Held | None:
        held = self._held.get(delivery.receipt)
        if held is None or held.delivery.id != delivery.id or not self._alive():
            return None
        return held

    @contextlib.contextmanager
    def _settling(self, receipt: str, held: _Held) -> Iterator[None]:
        """Take ``held`` out of the held deliveries while it is settled. A settle that failed
        while this connection still lives (a first copy RabbitMQ did not confirm in time: its
        ack was not sent) leaves the delivery this worker's, so it is put back: the worker's
        next try of the settle finds it (and routes around a bucket that stopped answering).
        After a lost connection the delivery is back in its queue, and stays forgotten; after
        a cancellation the settle may still go out (it waits in the group commit's queue), so
        it is not put back either."""
        generation = self._generation
        del self._held[receipt]
        try:
            yield
        except errors.BrokerError:
            if self._generation == generation and self._alive():
                self._held.setdefault(receipt, held)
            raise

    def _history_budget(self) -> int:
        """Bytes the failure history may take in a message's header frame on this connection
        (its negotiated ``frame_max``, see :data:`HISTORY_FRAME_ROOM`)."""
        transport = getattr(self._connection, "transport", None)
        tune = getattr(getattr(transport, "connection", None), "connection_tune", None)
        frame_max = int(getattr(tune, "frame_max", 0) or DEFAULT_FRAME_MAX)
        return max(frame_max // 2, frame_max - HISTORY_FRAME_ROOM)

    def _copy_headers(
        self, headers: dict[str, Any], *, deliveries: int, lost: int
    ) -> dict[str, Any]:
        copy = {k: v for k, v in headers.items() if not k.startswith("x-")}
        copy[topology.H_DELIVERIES] = deliveries
        copy[topology.H_LOST] = lost
        return copy

    async def ack(
        self,
        delivery: base.Delivery,
        *,
        done_key: str | None = None,
        done_ttl_seconds: float | None = None,
    ) -> bool:
        held = self._current(delivery)
        if held is None:
            return False
        with self._settling(delivery.receipt, held):
            await self._settle(held.message, "ack")
        return True

    def _record(self, held: _Held, failure: base.Failure, *, attempt: int) -> dict[str, Any]:
        return {
            "error_type": failure.error_type,
            "message": failure.message,
            "traceback": failure.traceback,
            "worker_id": failure.worker_id,
            "at": time.time(),
            "attempt": attempt,
            "delivery": held.delivery.deliveries,
        }

    async def retry(
        self, delivery: base.Delivery, failure: base.Failure, *, delay_seconds: float
    ) -> bool:
        base.validate_delay(delay_seconds, "a retry delay")
        held = self._current(delivery)
        if held is None:
            return False
        attempts = held.delivery.attempts + 1
        headers = self._copy_headers(
            held.headers, deliveries=held.delivery.deliveries, lost=held.delivery.lost
        )
        headers[topology.H_ATTEMPTS] = attempts
        headers[topology.H_HISTORY] = encode_history(
            [*decode_history(held.headers), self._record(held, failure, attempt=attempts)],
            self._history_budget(),
        )
        headers[topology.H_LAST_DELAY] = repr(max(0.0, delay_seconds))
        self._remember_delay(delivery.id, max(0.0, delay_seconds))
        with self._settling(delivery.receipt, held):
            await self._settle_due(
                held.message,
                "retry",
                str(delivery.envelope.priority),
                (held.body, headers, delivery.id),
                time.time() + max(0.0, delay_seconds),
            )
        return True

    async def _dead_letter_held(
        self,
        held: _Held,
        reason: str,
        *,
        worker_id: str,
        failure: base.Failure | None,
        attempt: bool,
        detail: str = "",
    ) -> None:
        attempts = held.delivery.attempts + (1 if attempt else 0)
        headers = self._copy_headers(
            held.headers, deliveries=held.delivery.deliveries, lost=held.delivery.lost
        )
        headers.pop(topology.H_DUE_AT, None)
        headers[topology.H_ATTEMPTS] = attempts
        history = decode_history(held.headers)
        if failure is not None:
            history.append(self._record(held, failure, attempt=attempts))
        elif detail:
            history.append(
                self._record(
                    held,
                    base.Failure(error_type=str(reason), message=detail, worker_id=worker_id),
                    attempt=attempts,
                )
            )
        headers[topology.H_HISTORY] = encode_history(history, self._history_budget())
        headers[topology.H_REASON] = str(reason)
        headers[topology.H_DEAD_AT] = repr(time.time())
        headers[topology.H_WORKER] = (
            failure.worker_id if failure is not None and failure.worker_id else worker_id
        )
        publish = (topology.dead_queue(self.queue), held.body, headers, held.delivery.id)
        await self._settle(held.message, "dead_letter", publish)

    async def dead_letter(
        self,
        delivery: base.Delivery,
        reason: str,
        *,
        failure: base.Failure | None = None,
        attempt: bool = True,
    ) -> bool:
        held = self._current(delivery)
        if held is None:
            return False
        worker_id = failure.worker_id if failure is not None else ""
        with self._settling(delivery.receipt, held):
            await self._dead_letter_held(
                held, reason, worker_id=worker_id, failure=failure, attempt=attempt
            )
        return True

    async def release(self, delivery: base.Delivery) -> bool:
        held = self._current(delivery)
        if held is None:
            return False
        # the released delivery was handed out (it counts in deliveries) and settled (it is
        # not lost): no attempt spent, nothing towards poison
        headers = self._copy_headers(
            held.headers, deliveries=held.delivery.deliveries, lost=held.delivery.lost
        )
        headers.pop(topology.H_DUE_AT, None)
        routing_key = topology.work_queue(self.queue, str(delivery.envelope.priority))
        with self._settling(delivery.receipt, held):
            await self._settle(
                held.message, "release", (routing_key, held.body, headers, delivery.id)
            )
        return True

    async def stop_prefetching(self) -> None:
        """The worker drains and fetches no more: stop the consumers (``basic.cancel``) and give
        back every delivery prefetched but never handed out, at once, so other workers run
        those jobs during this drain rather than after it (:meth:`release_buffered`). A later
        :meth:`fetch` returns nothing. Part of :class:`~worker_runtime.brokers.base.Prefetching`."""
        self._prefetch_stopped = True
        if self._alive():
            await self.release_buffered()

    async def release_buffered(self) -> int:
        """Hand back the deliveries prefetched but never given to the worker (drain, close),
        without spending their delivery count; stops consuming first. Returns how many.

        Each goes back as a new copy at its queue's tail, with the returns RabbitMQ counted on
        it (``x-delivery-count``) moved to its lost deliveries and nothing added, and the
        delivery is acked: a requeue (``basic.nack``) would add one to ``x-delivery-count``,
        which counts towards ``max_deliveries`` and the queue's ``x-delivery-limit``. All of
        them share one transaction, so one ``tx.commit`` gives back the whole buffer well inside
        the worker's close timeout (one commit per message took 10-25 ms each, and ~150 of
        them outlasted it: the rest came back with the connection, one delivery spent)."""
        await self._cancel_consumers()
        settles: list[tuple[_Delivered, tuple[str, bytes, dict[str, Any], str] | None]] = []
        for level in topology.LEVELS:
            buffer = self._buffers[level]
            while buffer:
                message = buffer.popleft()
                settles.append((message, self._unspent_copy(level, message)))
        for failure in await self._settle_many(settles, "release"):
            if failure is not None:
                raise failure
        return len(settles)

    def _unspent_copy(
        self, level: str, message: _Delivered
    ) -> tuple[str, bytes, dict[str, Any], str]:
        """The copy (routing key, body, headers, message id) that gives back a delivery never
        handed out: the returns RabbitMQ counted on it (``x-delivery-count``) become lost
        deliveries of earlier copies, and this delivery adds nothing."""
        headers = dict(message.headers or {})
        copy = self._copy_headers(
            headers,
            deliveries=_int_header(headers, topology.H_DELIVERIES),
            lost=_int_header(headers, topology.H_LOST)
            + _int_header(headers, topology.X_DELIVERY_COUNT),
        )
        return topology.work_queue(self.queue, level), message.body, copy, message.message_id or ""

    async def _give_back_overdue(self) -> None:
        """Give back the buffered deliveries that waited longer than
        :data:`BUFFERED_WAIT_LIMIT_SECONDS` (one transaction for all of them), before RabbitMQ's
        ``consumer_timeout`` closes the channel under them. A buffer holds its level's
        deliveries in arrival order, so the overdue ones are at its head. One that could not be
        given back stays buffered (the next fetch hands it out or tries again)."""
        if not any(self._buffers.values()):
            return
        oldest_kept = self._clock() - BUFFERED_WAIT_LIMIT_SECONDS
        overdue: list[tuple[str, _Delivered]] = []
        for level in topology.LEVELS:
            buffer = self._buffers[level]
            while buffer and buffer[0].arrived < oldest_kept:
                overdue.append((level, buffer.popleft()))
        if not overdue:
            return
        generation = self._generation
        outcomes = await self._settle_many(
            [(message, self._unspent_copy(level, message)) for level, message in overdue],
            "release",
        )
        failed = [
            entry for entry, failure in zip(overdue, outcomes, strict=True) if failure is not None
        ]
        if failed and self._generation == generation and self._alive():
            for level, message in reversed(failed):
                self._buffers[level].appendleft(message)
        _log.info(
            "gave back prefetched jobs that waited too long for a free slot",
            extra={
                "count": len(overdue) - len(failed),
                "failed": len(failed),
                "waited_seconds": BUFFERED_WAIT_LIMIT_SECONDS,
            },
        )

    async def renew(
        self,
        worker_id: str,
        deliveries: Sequence[base.Delivery],
        *,
        heartbeat: base.WorkerBeat | None = None,
    ) -> base.LeaseRenewal:
        now = time.time()
        kept: list[base.Delivery] = []
        lost: list[base.Delivery] = []
        for delivery in deliveries:
            if not delivery.receipt.startswith(f"{self._instance}:"):
                # fetched through another broker object's connection: a lease here does not
                # expire by time, so only that connection's end (seen by its own settling
                # calls) can lose it
                kept.append(replace(delivery, lease_deadline=now + self.options.lease_seconds))
            elif self._current(delivery) is not None:
                kept.append(replace(delivery, lease_deadline=now + self.options.lease_seconds))
            else:
                lost.append(delivery)
        return base.LeaseRenewal(kept=tuple(kept), lost=tuple(lost))

    async def recover(
        self, worker_id: str, held: Collection[tuple[str, base.Receipt]] = ()
    ) -> list[base.Delivery]:
        return []

    async def fetch_previous_delay(self, job_id: str) -> float | None:
        return self._previous_delays.get(job_id)

    async def fetch_is_done(self, done_key: str) -> bool:
        return False

    async def deregister(self, worker_id: str) -> None:
        return None

    # -- the DLQ: list, show, replay, purge -----------------------------------------------------
    #
    # AMQP has no index and no peek: each call takes the DLQ's messages on a channel of its
    # own without acking (basic.get), acks the ones it replays or purges, and gives every other
    # message back. Cost: one read of the whole DLQ per call (its x-max-length,
    # ``dlq_max_length``, bounds it); a list keeps only its page in memory, a show stops at
    # the letter it looks for.

    async def count_dead_letters(self) -> int:
        channel = await self._ensure()
        if self.role is base.QueueRole.READER:
            # the DLQ may not exist: a passive declare of a missing queue closes its channel,
            # so a reader asks on a channel of its own
            assert self._connection is not None
            async with translate_errors("count_dead_letters"):
                channel = await self._connection.channel(publisher_confirms=False)
            try:
                async with translate_errors("count_dead_letters"):
                    queue = await _declare_existing(channel, topology.dead_queue(self.queue))
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(channel.close(), 5)
            return 0 if queue is None else int(queue.declaration_result.message_count or 0)
        async with translate_errors("count_dead_letters"):
            queue = await channel.declare_queue(topology.dead_queue(self.queue), passive=True)
        return int(queue.declaration_result.message_count or 0)

    @contextlib.asynccontextmanager
    async def _dead_letter_scan(
        self, operation: str, *, newest: int | None = None, stop_at: str | None = None
    ) -> AsyncIterator[list[tuple[aio_pika.abc.AbstractIncomingMessage, base.DeadLetter]]]:
        """The DLQ's messages (every one, or what ``newest``/``stop_at`` keep: see
        :func:`_take_all`), unacked on a channel of its own; every one not acked goes back."""
        await self._ensure()
        assert self._connection is not None
        found: list[tuple[aio_pika.abc.AbstractIncomingMessage, base.DeadLetter]] = []
        last, before = None, 0
        async with translate_errors(operation):
            channel = await self._connection.channel(publisher_confirms=False)
        try:
            async with translate_errors(operation):
                # None: no DLQ (a reader declares none), so nothing was dead-lettered
                queue = await _declare_existing(channel, topology.dead_queue(self.queue))
                if queue is not None:
                    before = int(queue.declaration_result.message_count or 0)
                    _, last = await _take_all(queue, found, newest=newest, stop_at=stop_at)
            yield found
        finally:
            # what the DLQ holds again once the returns are counted: all it held, less what
            # this scan acked (replayed or purged). Waiting only for as many as were returned
            # ended too early when the scan stopped before the end (stop_at, newest): the
            # letters it never took already made up that number.
            expected = before - sum(1 for message, _ in found if message.processed)
            with contextlib.suppress(Exception):
                if last is not None and not last.processed:
                    # one frame gives back every message taken and not acked, kept or not
                    await last.nack(multiple=True, requeue=True)
                else:
                    for message, _ in found:
                        if not message.processed:
                            await message.nack(requeue=True)
                await asyncio.wait_for(channel.close(), 5)
            # a quorum queue counts returned messages as ready a moment later: wait (bounded)
            # so the next call sees the DLQ whole
            with contextlib.suppress(Exception):
                for _ in range(40):
                    if await self.count_dead_letters() >= expected:
                        break
                    await asyncio.sleep(0.05)

    async def list_dead_letters(self, *, offset: int = 0, limit: int = 50) -> list[base.DeadLetter]:
        newest = max(0, offset) + max(0, limit)
        async with self._dead_letter_scan("list_dead_letters", newest=newest) as found:
            records = sorted((d for _, d in found), key=lambda d: d.dead_lettered_at, reverse=True)
        return records[offset : offset + limit]

    async def show_dead_letter(self, job_id: str) -> base.DeadLetter | None:
        async with self._dead_letter_scan("show_dead_letter", stop_at=job_id) as found:
            for _, record in found:
                if record.job_id == job_id:
                    return record
        return None

    async def replay_dead_letters(
        self,
        *,
        job_ids: Sequence[str] | None = None,
        limit: int | None = None,
        reset_attempts: bool = False,
        rate_per_second: float = 100.0,
    ) -> list[str]:
        if not rate_per_second > 0:
            raise ValueError("rate_per_second must be > 0")
        wanted = set(job_ids) if job_ids is not None else None
        replayed: list[str] = []
        async with self._dead_letter_scan("replay_dead_letters") as found:
            chosen = sorted(found, key=lambda pair: pair[1].dead_lettered_at)
            if wanted is not None:
                chosen = [pair for pair in chosen if pair[1].job_id in wanted]
            if limit is not None:
                chosen = chosen[:limit]
            for message, record in chosen:
                headers = self._copy_headers(dict(message.headers or {}), deliveries=0, lost=0)
                for name in (
                    topology.H_REASON,
                    topology.H_DEAD_AT,
                    topology.H_WORKER,
                    topology.H_DUE_AT,
                ):
                    headers.pop(name, None)
                if reset_attempts:
                    headers[topology.H_ATTEMPTS] = 0
                level = record.priority if record.priority in topology.LEVELS else "normal"
                await self._publish(
                    topology.work_queue(self.queue, level),
                    message.body,
                    headers,
                    message_id=record.job_id,
                    operation="replay_dead_letters",
                )
                async with translate_errors("replay_dead_letters"):
                    await message.ack()
                replayed.append(record.job_id)
                await asyncio.sleep(1.0 / rate_per_second)
        return replayed

    async def purge_dead_letters(
        self,
        *,
        job_ids: Sequence[str] | None = None,
        older_than_seconds: float | None = None,
        everything: bool = False,
    ) -> int:
        if sum((job_ids is not None, older_than_seconds is not None, everything)) != 1:
            raise ValueError("purge by job_ids, by older_than_seconds or everything: exactly one")
        if everything:
            channel = await self._ensure()
            async with translate_errors("purge_dead_letters"):
                queue = await channel.declare_queue(topology.dead_queue(self.queue), passive=True)
                result = await queue.purge()
            return int(getattr(result, "message_count", 0) or 0)
        wanted = set(job_ids or ())
        cutoff = time.time() - (older_than_seconds or 0.0)
        purged = 0
        async with self._dead_letter_scan("purge_dead_letters") as found:
            for message, record in found:
                hit = (
                    record.job_id in wanted
                    if job_ids is not None
                    else record.dead_lettered_at <= cutoff
                )
                if hit:
                    async with translate_errors("purge_dead_letters"):
                        await message.ack()
                    purged += 1
        return purged

    # -- topics ------------------------------------------------------------------------------
    # A subscription is the binding of its queue's normal level to the topic's fanout
    # exchange; a publish is one persistent, confirmed message to that exchange, copied by the
    # broker to every queue bound at that moment (topology.py).

    def _subscription_broker(self, topic: str, group: str) -> RabbitMQBroker:
        """This object when it serves that subscription, else one for its queue (same URL and
        settings; the subscription's own options when this object is its worker's)."""
        name = base.subscription_queue_name(topic, group)
        if name == self.queue:
            return self
        return RabbitMQBroker(
            self._url,
            name,
            # a backstop no worker's max_deliveries can be above: see the constant
            base.QueueOptions(max_deliveries=SUBSCRIPTION_BACKSTOP_DELIVERIES),
            connect_timeout=self._connect_timeout,
            management_port=self._management_port,
            queue_type=self._queue_type,
            # it declares the subscription's queues for its worker, which owns their settings
            role=base.QueueRole.PRODUCER,
        )

    async def _topic_exchange(
        self, topic: str, channel: aio_pika.abc.AbstractChannel
    ) -> aio_pika.abc.AbstractExchange:
        """The fanout exchange of ``topic`` on the publishing ``channel`` (declared once per
        channel)."""
        cached = self._exchanges.get(topic)
        if cached is not None and cached[0] is channel:
            return cached[1]
        async with translate_errors("publish"):
            exchange = await channel.declare_exchange(
                topology.topic_exchange(topic), aio_pika.ExchangeType.FANOUT, durable=True
            )
        self._exchanges[topic] = (channel, exchange)
        return exchange

    async def subscribe(self, topic: str, group: str) -> str:
        """Declare the subscription's queues (if absent) and bind them to the topic."""
        sub = self._subscription_broker(topic, group)
        try:
            await sub._ensure()  # its work queues and DLQ, as its worker declares them
            channel = await self._ensure()
            exchange = await self._topic_exchange(topic, channel)
            async with translate_errors("subscribe"):
                queue = await channel.get_queue(
                    topology.work_queue(sub.queue, topology.EVENT_LEVEL), ensure=False
                )
                await queue.bind(exchange, routing_key="")
        finally:
            if sub is not self:
                await sub.close()
        return sub.queue

    async def unsubscribe(self, topic: str, group: str) -> bool:
        """Unbind the subscription's queue: later events skip it; its queue and jobs stay."""
        if group not in await self.list_subscriptions(topic):
            return False
        channel = await self._ensure()
        exchange = await self._topic_exchange(topic, channel)
        name = base.subscription_queue_name(topic, group)
        async with translate_errors("unsubscribe"):
            queue = await channel.get_queue(
                topology.work_queue(name, topology.EVENT_LEVEL), ensure=False
            )
            await queue.unbind(exchange, routing_key="")
        return True

    async def list_subscriptions(self, topic: str) -> list[str]:
        """The groups bound to the topic's exchange now (the management API's bindings)."""
        rows = await asyncio.to_thread(
            self._read_management,
            "exchanges/{}/"
            + urllib.parse.quote(topology.topic_exchange(topic), safe="")
            + "/bindings/source",
            {},
            operation="list_subscriptions",
        )
        groups = {
            topology.group_of_binding(str(row.get("destination", "")), topic)
            for row in rows
            if row.get("destination_type") == "queue"
        }
        return sorted(g for g in groups if g is not None)

    async def publish(self, request: base.PublishRequest) -> base.PublishResult:
        """One persistent message to the topic's exchange, confirmed once every bound queue
        has it. ``created`` names the groups bound just before (one bound in between gets the
        event too, unnamed); ``duplicate`` is always empty: a re-send is stored again.

        A nack is published again (:meth:`_publish_until_taken`), as an enqueue is: RabbitMQ
        nacks the whole fan-out when one bound queue refused it, though the others stored it
        (a subscription's queue created a moment before nacks at first). So the subscriptions
        that took an earlier try hold the event once more per try, under the same event id
        (the at-least-once copies a lost confirm makes too). When the refusals outlast the
        waits the error is :class:`~worker_runtime.errors.BrokerUnavailable`: some
        subscriptions may hold the event, and a re-send with the same event id completes it."""
        groups = await self.list_subscriptions(request.topic)
        env = base.build_event_envelope(request, request.topic, now=time.time())
        headers: dict[str, Any] = {
            topology.H_ATTEMPTS: 0,
            topology.H_DELIVERIES: 0,
            topology.H_LOST: 0,
            topology.H_TOPIC: request.topic,
        }
        message = build_message(envelope_mod.encode_envelope(env), headers, env.id)
        timeout = PUBLISH_CONFIRM_TIMEOUT_SECONDS

        async def send(channel: aio_pika.abc.AbstractChannel) -> None:
            exchange = await self._topic_exchange(request.topic, channel)
            try:
                # not mandatory: a topic nobody subscribes to drops the event, as on every broker
                await exchange.publish(message, routing_key="", mandatory=False, timeout=timeout)
            except TimeoutError as exc:
                await self._replace_publish_channel(channel)
                raise self._unconfirmed(exchange.name, timeout, "publish", bucket=False) from exc

        try:
            await self._publish_until_taken(send, "publish")
        except errors.BrokerRejected as exc:
            if not _is_nack(exc.__cause__):
                raise
            raise errors.BrokerUnavailable(
                f"a subscription of topic {request.topic!r} kept refusing event "
                f"{request.event_id} (RabbitMQ nacked every try): the subscriptions that took "
                "it keep it; publish it again with the same event id",
                operation="publish",
            ) from exc
        return base.PublishResult(request.event_id, tuple(groups), ())

    async def fetch_topic_lag(self, topic: str) -> list[base.SubscriptionLag]:
        """Each bound subscription's lag from its queue's management-API numbers (sampled;
        the oldest event's age is not measured here: 0)."""
        out = []
        for group in await self.list_subscriptions(topic):
            sub = self._subscription_broker(topic, group)
            out.append(base.SubscriptionLag.of(topic, group, await sub.fetch_stats()))
        return out

    async def record_trace(self, correlation_id: str, entry: base.TraceEntry) -> None:
        """Not kept on RabbitMQ: it has no store to index correlation ids in."""
        raise errors.CapabilityMissing(
            "RabbitMQ keeps no trace index (no key-value store)", operation="record_trace"
        )

    async def fetch_trace(self, correlation_id: str) -> list[base.TraceEntry]:
        """Not kept on RabbitMQ (see :meth:`record_trace`)."""
        raise errors.CapabilityMissing(
            "RabbitMQ keeps no trace index (no key-value store)", operation="fetch_trace"
        )

    # -- the operator's side ------------------------------------------------------------------

    async def fetch_stats(self) -> base.QueueStats:
        """The queue's numbers from the management API, in one request for all its RabbitMQ
        queues (work, delay buckets, DLQ). Sampled by RabbitMQ every few seconds, so not one
        snapshot (``exact_stats`` is False); the oldest job's age is unavailable (quorum queues
        do not report their head message's time): always 0 here. The oldest dead letter's age
        is None for the same reason (unknown, not 0: WorkerPoolDeadLetterStale must not read
        a DLQ of old letters as fresh); only ``dlq`` reads, which take every letter, see it.
        ``enqueued_total`` and ``completed_total`` are the work queues' publish and ack
        counters, so a retry's, release's or dead-letter's copy counts too;
        ``dead_lettered_total`` is the dead-letter queue's publish counter (every job a worker
        dead-lettered, kept after a purge), so the dead-letter alert reads the same series on
        RabbitMQ as on Redis. RabbitMQ keeps these counters in memory: they restart from 0
        with the node or the queue. The failed, retried and workers-lost totals are None:
        RabbitMQ counts no failed attempt (a retry is an ack and a publish like any other) and
        workerfleet keeps no heartbeats here, so no counter holds them, and a 0 would read as
        "none happened" to the alerts.

        ``in_flight`` is the work queues' unacknowledged messages: the jobs workers run and
        those their consumers prefetched and did not hand out yet (up to ``prefetch`` per
        level and worker), which ``backlog`` (ready messages) leaves out. RabbitMQ keeps no
        record of which deliveries a worker handed to a handler, so they cannot be counted
        apart here; ``backlog + in_flight`` is every unfinished job once (docs/brokers.md,
        "What in flight counts on RabbitMQ", says what it means for each reader)."""
        rows = await asyncio.to_thread(
            self._read_management,
            "queues/{}",
            {
                "name": topology.queue_name_pattern(self.queue),
                "use_regex": "true",
                "page": "1",
                "page_size": "500",
                "columns": "name,messages_ready,messages_unacknowledged,consumers,message_stats",
            },
        )
        now = time.time()
        backlog = in_flight = delayed = dead = 0
        published = acked = dead_published = 0
        for row in rows:
            name = str(row.get("name", ""))
            if not topology.owns(self.queue, name):
                continue  # the filter is a regex the API applies caseless: check each name
            ready = int(row.get("messages_ready") or 0)
            unacked = int(row.get("messages_unacknowledged") or 0)
            if topology.level_of(name, self.queue) is not None:
                backlog += ready
                in_flight += unacked
                stats = row.get("message_stats") or {}
                published += int(stats.get("publish") or 0)
                acked += int(stats.get("ack") or 0)
            elif name == topology.dead_queue(self.queue):
                dead += ready + unacked
                dead_published += int((row.get("message_stats") or {}).get("publish") or 0)
            else:  # a delay bucket
                delayed += ready + unacked
        return base.QueueStats(
            queue=self.queue,
            now=now,
            backlog=backlog,
            due_delayed=0,
            future_delayed=delayed,
            in_flight=in_flight,
            dead_letter=dead,
            oldest_job_age_seconds=0.0,
            oldest_dead_letter_age_seconds=None,
            enqueued_total=published,
            completed_total=acked,
            failed_total=None,
            retried_total=None,
            dead_lettered_total=dead_published,
            cancelled_total=None,  # no cancel by id (Capabilities.cancel_by_id)
            workers_lost_total=None,
            workers_expired=0,
            workers=(),
        )

    async def list_queues(self, *, limit: int = 1000) -> list[str]:
        """The workerfleet queues of the vhost (``QueueListing``): those whose DLQ exists,
        which a queue's first producer or worker declares with the rest of its topology.
        One page of the management API: the first 500 DLQs."""
        rows = await asyncio.to_thread(
            self._read_management,
            "queues/{}",
            {
                "name": topology.DEAD_QUEUES_PATTERN,
                "use_regex": "true",
                "page": "1",
                "page_size": "500",
                "columns": "name",
            },
            operation="queue list",
        )
        names = {topology.queue_of_dead_queue(str(row.get("name", ""))) for row in rows}
        return sorted(name for name in names if name is not None)[:limit]

    def _read_management(
        self, collection: str, query: dict[str, str], *, operation: str = "fetch_stats"
    ) -> list[dict[str, Any]]:
        """GET ``/api/<collection>`` of the management API, ``{}`` in it standing for the
        vhost (``queues/{}``, ``exchanges/{}/NAME/bindings/source``): its rows. A missing
        exchange reads as no rows (nothing is bound to it)."""
        url = yarl.URL(self._url)
        vhost = urllib.parse.quote(url.path[1:] or "/", safe="")
        path = "/api/" + collection.format(vhost)
        api = yarl.URL.build(
            scheme="https" if url.scheme == "amqps" else "http",
            host=url.host or "127.0.0.1",
            port=self._management_port,
        ).with_path(path, encoded=True)
        api = api.with_query(query)
        request = urllib.request.Request(str(api))
        token = base64.b64encode(f"{url.user or 'guest'}:{url.password or 'guest'}".encode())
        request.add_header("Authorization", "Basic " + token.decode())
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and collection.startswith("exchanges/"):
                return []  # the exchange does not exist (yet): nothing is bound to it
            if exc.code == 401:
                raise errors.BrokerRejected(
                    "the RabbitMQ management API did not accept the user or password of the URL "
                    "(401)",
                    operation=operation,
                ) from exc
            raise errors.BrokerRejected(
                f"the RabbitMQ management API answered {exc.code}", operation=operation
            ) from exc
        except (OSError, ValueError) as exc:
            # the address has no credentials in it (they travel in the header): safe to show
            where = f"{api.scheme}://{api.host}:{api.port}"
            raise errors.BrokerUnavailable(
                f"no reply from the RabbitMQ management API at {where}: "
                f"{errors.describe_error(exc)}",
                operation=operation,
            ) from exc
        items = body.get("items", []) if isinstance(body, dict) else body
        return [row for row in items if isinstance(row, dict)]

    async def close(self) -> None:
        """Hand back prefetched deliveries (they never ran: no delivery spent), then close.
        Deliveries the worker still holds return to the queue with the connection."""
        if self._alive():
            with contextlib.suppress(errors.BrokerError):
                await self.release_buffered()
        # settling calls already made are committed first
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        self._closed = True
        await self._drop_connection()
