"""The broker seam: what a queue backend promises the worker, producer, operator and CLI.

Every backend (``brokers/redis``, ``brokers/memory``, and the RabbitMQ and SQS ones) implements
the protocols here; the worker (:mod:`worker_runtime.worker`), the producer, the CLI and the
operator program against them only. This module imports no client library (no redis-py,
aio-pika or botocore: an import-linter contract holds it to that), so the operator's pure
autoscaling core can read :class:`QueueStats` without pulling a client in.

The model, in one paragraph. ``enqueue`` stores a job (an :class:`~worker_runtime.envelope.
JobEnvelope`). ``fetch`` hands it to one worker as a :class:`Delivery`: a lease on the job until
``lease_deadline``, identified by ``(id, receipt)``. The receipt is opaque to callers (Redis: a
fencing token ``<epoch>:<n>``; RabbitMQ: the channel's delivery tag; SQS: the receipt handle);
callers only keep it, compare it and hand the delivery back. Exactly one settling call ends a
delivery: ``ack`` (done), ``retry`` (failed, run again after a delay: one attempt spent),
``dead_letter`` (give up: into the DLQ with the job's failure history) or ``release`` (put back
untouched, e.g. on drain: no attempt spent). A lease not renewed (``renew``) before its deadline
expires: the job is delivered again to someone (a *lost* delivery) and after
``QueueOptions.max_deliveries`` deliveries it is dead-lettered as poison. A settling call made
with a delivery that is no longer current (its lease expired and the job went to someone else,
or it was already settled) returns False and changes nothing: that is the *fence*, and it is
what makes re-sending a settling call after :class:`~worker_runtime.errors.BrokerUnavailable`
safe (a re-send of one that had landed is answered False too: :class:`DeliveryAudit` tells the
two apart where the broker can). Where a backend cannot keep a promise fully it says so in its
:class:`Capabilities`, and the contract suite (``tests/worker_runtime/brokers/test_contract.py``)
skips the check with that reason.

Errors: every method raises only :mod:`worker_runtime.errors` classes for broker trouble
(:class:`~worker_runtime.errors.BrokerUnavailable` when no reply came, so the call may have been
applied; :class:`~worker_runtime.errors.BrokerRejected` when the broker refused), never its
client library's exceptions. ``ValueError`` still means a bad argument.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import re
import traceback
from collections.abc import AsyncIterator, Collection, Container, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from worker_runtime import config, errors, expiry
from worker_runtime import envelope as envelope_mod

# -- names ----------------------------------------------------------------------------------

QUEUE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
"""Every queue name, on every broker and in the WorkerPool CRD: no braces (they would break
Redis Cluster hash tags), no slashes or spaces (RabbitMQ and SQS names stay valid), ≤ 128."""

_QUEUE_NAME = re.compile(QUEUE_NAME_PATTERN)


def validate_queue_name(name: str) -> str:
    """Return ``name`` when it matches :data:`QUEUE_NAME_PATTERN`, else raise
    :class:`~worker_runtime.errors.InvalidQueueName`."""
    if not _QUEUE_NAME.match(name):
        raise errors.InvalidQueueName(
            f"queue name {name!r} must match {QUEUE_NAME_PATTERN} (letters, digits, . _ : -)"
        )
    return name


Receipt = str
"""A delivery's opaque handle (Redis: fencing token; RabbitMQ: delivery tag; SQS: receipt
handle). Callers never parse it; they compare it and send it back."""

TRACEBACK_KEEP = 4000
"""Characters of traceback kept per failure (the end, where the error is)."""

FAILURE_HISTORY_KEEP = 25
"""Failures a job's history keeps on the brokers that bound it by count: Redis (``HISTORY_KEEP``
in redis/lua/_prelude.lua, the first and the newest) and RabbitMQ (the newest)."""


# -- what goes in and comes out ---------------------------------------------------------------


@dataclass(frozen=True)
class RateLimit:
    """A global rate limit shared by all workers of a queue: ``jobs`` starts per ``per_seconds``."""

    jobs: int
    per_seconds: float = 1.0

    def __post_init__(self) -> None:
        # The window's floor is the settings' (WORKERFLEET_RATE_LIMIT_PER_SECONDS): a limit
        # built in code (a handler's named bucket, ratelimit.apply_acquire) went to the Redis
        # engine as 0 ms too, which its token bucket divides by.
        if self.jobs < 1 or not self.per_seconds >= config.MIN_RATE_LIMIT_PER_SECONDS:
            raise ValueError(
                "a rate limit needs jobs >= 1 and per_seconds >= "
                f"{config.MIN_RATE_LIMIT_PER_SECONDS:g} (the window is counted in milliseconds)"
                f", not jobs={self.jobs}, per_seconds={self.per_seconds:g}"
            )


ENQUEUE_DEDUP_SECONDS = 300.0
"""How long a queue remembers an enqueued job id: a re-sent enqueue of it is a no-op.

A client re-sends an enqueue whose reply timed out or was cut (producers keep that: their
enqueue must not fail on a blip). The job's envelope is gone once it ran, so without this
window the re-send would run a finished job again. 300 s covers the client's re-sends (a few
seconds) and an application's own retry loop; a longer horizon is what idempotency keys are for."""


KEEP_FINISHED_MAX_SECONDS = config.KEEP_FINISHED_MAX_SECONDS
"""The longest ``QueueOptions.keep_finished_seconds`` (30 days): finished records cost memory
per job on the broker (about 290 B each on Redis), so a longer horizon belongs in the
application's own store."""


def validate_keep_finished_seconds(seconds: float, name: str = "keep_finished_seconds") -> float:
    """Return ``seconds`` when it is a keep-finished horizon (0 = off, up to
    :data:`KEEP_FINISHED_MAX_SECONDS`), else raise ``ValueError`` naming ``name``."""
    if not 0.0 <= seconds <= KEEP_FINISHED_MAX_SECONDS:
        raise ValueError(
            f"{name}={seconds:.15g} must be between 0 (off: a finished job leaves no record) and "
            f"{KEEP_FINISHED_MAX_SECONDS:.0f} s (30 days)"
        )
    return seconds


class QueueRole(StrEnum):
    """What an opener of a queue's broker does with the queue's own settings (its lease and
    poison limit, which some brokers keep as attributes of the queue itself: SQS).

    The queue's consumer (its workers) owns those settings; nobody else may overwrite them, or
    a ``queue stats`` would reset a worker's lease to the defaults.
    """

    CONSUMER = "consumer"
    """The worker: creates missing queues and sets its options on existing ones."""
    PRODUCER = "producer"
    """Enqueue, replay: creates a missing queue with its options (a job sent before any worker
    started must not be lost) and leaves an existing queue's settings as they are."""
    READER = "reader"
    """Stats probes: creates and changes nothing; a queue that does not exist reads as empty
    where the broker can tell (SQS)."""


@dataclass(frozen=True)
class QueueOptions:
    """Per-queue settings every broker honours (from WorkerSettings / the WorkerPool spec)."""

    lease_seconds: float = 30.0
    max_deliveries: int = 5
    dlq_max_length: int = 100_000
    dlq_retention_seconds: float = 604_800.0
    rate_limit: RateLimit | None = None
    enqueue_dedup_seconds: float = ENQUEUE_DEDUP_SECONDS
    keep_finished_seconds: float = 0.0
    """Keep a record of each acknowledged job (when it finished, its attempts, deliveries, task
    and run time) for this long, so a look-up by id reads DONE instead of UNKNOWN; 0 = off (the
    ack writes nothing more). Honoured where ``Capabilities.keep_finished`` is True."""

    def __post_init__(self) -> None:
        if self.lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        if not 0 <= self.enqueue_dedup_seconds < math.inf:
            raise ValueError("enqueue_dedup_seconds must be a finite number >= 0")
        if self.max_deliveries < 1:
            raise ValueError("max_deliveries must be at least 1")
        validate_keep_finished_seconds(self.keep_finished_seconds)


@dataclass(frozen=True)
class EnqueueRequest:
    """One job to enqueue: the envelope and how it enters the queue."""

    envelope: envelope_mod.JobEnvelope
    delay_seconds: float = 0.0
    idempotency_ttl_seconds: float | None = None
    encoded: bytes | None = None
    """The envelope's stored bytes when the producer already made them (``encode_envelope``):
    a broker sends these instead of encoding the envelope again."""

    def envelope_bytes(self) -> bytes:
        """The envelope's stored bytes (``encoded``, or encoded now)."""
        if self.encoded is not None:
            return self.encoded
        return envelope_mod.encode_envelope(self.envelope)


def validate_delay(seconds: float, what: str = "an enqueue delay") -> None:
    """Refuse a delay that is not a finite number of seconds with ``ValueError``: every
    broker's enqueue and retry check theirs here, before anything is sent. (``inf`` stored a
    job that never came due, ``nan`` ran at once: neither is what the caller asked for.)"""
    if not math.isfinite(seconds):
        raise ValueError(f"{what} must be a finite number of seconds: {seconds}")


def validate_delays(requests: Sequence[EnqueueRequest]) -> None:
    """:func:`validate_delay` for every request of a batch: all checked before any is sent,
    so a refused batch adds nothing."""
    for request in requests:
        validate_delay(request.delay_seconds)


@dataclass(frozen=True)
class EnqueueResult:
    """The job id a request resolved to; ``created`` is False when deduplicated."""

    job_id: str
    created: bool


@dataclass(frozen=True)
class Delivery:
    """One delivery of a job to one worker: a lease until ``lease_deadline``.

    ``(id, receipt)`` names the delivery: a job delivered twice (its first lease expired) has
    two deliveries with different receipts, and only the current one settles. ``attempts``
    counts the failed runs recorded so far (retries and counted dead-letters), ``deliveries``
    the times the job was handed out including this one, ``lost`` the deliveries that ended
    without any settling call (lease expired, worker killed). Times are epoch seconds of the
    broker's clock (``fetched_at``: when this delivery was made).
    """

    id: str
    receipt: Receipt
    envelope: envelope_mod.JobEnvelope
    attempts: int
    deliveries: int
    lease_deadline: float
    lost: int = 0
    fetched_at: float = 0.0


@dataclass(frozen=True)
class Failure:
    """One handler failure, appended to the job's history (the broker adds time and counts)."""

    error_type: str
    message: str
    traceback: str = ""
    worker_id: str = ""


def build_failure(exc: BaseException, *, worker_id: str = "") -> Failure:
    """A failure record from an exception, with the end of its traceback."""
    message = errors.message_of(exc)
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(tb) > TRACEBACK_KEEP and len(message) > TRACEBACK_KEEP // 4:
        # The traceback ends with the message: kept whole, a long one pushed every frame out
        # of the kept end (a 200 KB message left only its own tail, no file or line). Keep
        # the innermost frames and a cut message instead.
        last = f"{type(exc).__qualname__}: {message[: TRACEBACK_KEEP // 4]}... (cut)\n"
        frames = "Traceback (most recent call last):\n" + "".join(
            traceback.format_tb(exc.__traceback__)
        )
        tb = frames[-(TRACEBACK_KEEP - len(last)) :] + last
    return Failure(
        error_type=type(exc).__qualname__,
        message=message[:2000],
        traceback=tb[-TRACEBACK_KEEP:],
        worker_id=worker_id,
    )


class DeadLetterReason(StrEnum):
    """Why a job went to the DLQ (the ``reason`` of its record and of metrics)."""

    MAX_ATTEMPTS = "max_attempts"
    MAX_DELIVERIES = "max_deliveries"
    NON_RETRYABLE = "non_retryable"
    UNKNOWN_TASK = "unknown_task"
    INVALID_PAYLOAD = "invalid_payload"
    INVALID_ENVELOPE = "invalid_envelope"
    UNPARSEABLE_JSON = "unparseable_json"
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    EXPIRED = "expired"
    UNKNOWN_EVENT_VERSION = "unknown_event_version"


@dataclass(frozen=True)
class LeaseRenewal:
    """What one ``renew`` call found: deliveries whose lease was extended, and those lost
    (their lease had expired and the job went to someone else, or it was settled)."""

    kept: tuple[Delivery, ...]
    lost: tuple[Delivery, ...]


@dataclass(frozen=True)
class WorkerBeat:
    """What a worker writes as its heartbeat (readers get :class:`WorkerHeartbeat`)."""

    worker_id: str
    pod_name: str
    concurrency: int
    in_flight: int
    processed: int
    busy_seconds: float
    started_at: float
    oldest_job_started_at: float | None
    draining: bool
    ttl_seconds: float


# -- what a broker can do ---------------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What a broker promises beyond the core contract; the worker and the contract suite read
    these instead of asking which broker it is. Each field says what False costs."""

    priorities: bool
    """Fetch serves high before normal before low. False: one FIFO-ish order for all."""
    max_delay_seconds: float
    """Longest ``delay_seconds`` an enqueue or retry honours exactly (``math.inf``: any);
    beyond it the broker waits in steps (SQS: 900 s per message timer)."""
    enqueue_dedup: bool
    """A re-sent enqueue of a job id inside ``QueueOptions.enqueue_dedup_seconds``, and an
    enqueue with a live idempotency key, is a no-op. False: a re-send may run a job twice."""
    atomic_done_marker: bool
    """``ack(done_key=...)`` writes the done marker in the same step as the ack. False: the
    marker is written separately (a crash in between lets a duplicate run)."""
    rate_limit: bool
    """``QueueOptions.rate_limit`` is enforced by the broker across all workers."""
    heartbeats: bool
    """``renew(heartbeat=...)`` stores worker heartbeats that :class:`QueueStats` reports."""
    dead_letter_by_id: bool
    """The DLQ can be read, replayed and purged by job id (:class:`DeadLetters`)."""
    failure_history: bool
    """Each job keeps its full failure history, shown in its dead letter."""
    fenced_receipts: bool
    """A settling call with a stale delivery returns False and changes nothing. False: the
    broker may apply it (SQS accepts an older receipt handle in some cases)."""
    lease_expiry: bool
    """An unrenewed lease expires and the job is delivered again. False: a delivery lasts
    until the worker's connection ends (RabbitMQ's unacked messages)."""
    recover_after_lost_reply: bool
    """``recover`` returns the deliveries a fetch whose reply was lost handed out. False:
    they come back only when their lease expires (counted as lost)."""
    previous_delay: bool
    """``fetch_previous_delay`` reads the delay a job's last retry waited (decorrelated jitter
    grows from it). False: it returns None and backoff restarts from its base."""
    exact_stats: bool
    """:class:`QueueStats` is one consistent snapshot. False: approximate counts."""
    expiry_enforcement: expiry.Enforcement
    """Where job deadlines are enforced (the worker at start, or the broker itself)."""
    oldest_job_age: bool = True
    """:attr:`QueueStats.oldest_job_age_seconds` is measured. False: it is always 0 (RabbitMQ's
    quorum queues and SQS do not report their oldest message's age), and the operator's
    autoscaler turns its oldest-age reaction off, saying so in the pool's status."""
    overlapped_fetches: bool = False
    """Two fetch calls of one worker may be out at once (each on its own connection), so the
    worker runs the jobs one brought while the broker serves the other. False: one at a time
    (the worker waits for the broker, then the broker for the worker)."""
    topics: bool = False
    """The broker implements :class:`Topics`: subscriptions registered in the broker and a
    publish that fans out to every current subscription at once (all or none). False:
    ``publish``/``subscribe`` raise :class:`~worker_runtime.errors.CapabilityMissing`."""
    cancel_by_id: bool = False
    """A job that has not started (waiting on the ready queue, scheduled, or waiting out a
    retry's backoff) can be cancelled by its id (:class:`Cancelling`): removed in one step,
    never delivered afterwards. False: a job once enqueued runs (or fails) whatever happens;
    :func:`cancel_jobs` raises :class:`~worker_runtime.errors.CapabilityMissing` naming the
    broker (RabbitMQ's and SQS' queues cannot remove a message by id: it could only be
    skipped when delivered, which needs a record of cancelled ids the broker does not keep)."""
    status_by_id: bool = False
    """One job's state can be looked up by its id (:class:`JobLookup`): waiting, scheduled,
    running (with its worker and lease), dead-lettered or unknown, with its attempts and last
    failure, read in one consistent step. False: nobody can ask "where is my job?"; a job is
    seen only when a worker runs it or it reaches the dead-letter queue, and
    :func:`fetch_job_status` raises :class:`~worker_runtime.errors.CapabilityMissing` naming
    the broker (RabbitMQ's and SQS' queues can only be read from their head: finding a
    message by id would mean receiving, and so delivering, every message before it)."""
    keep_finished: bool = False
    """``QueueOptions.keep_finished_seconds`` > 0 keeps a record of each acknowledged job by id,
    written in the ack's own step, so a look-up reads :attr:`JobState.DONE` with its finish
    time until the record is older than the setting. False: the option is ignored and a
    finished job reads UNKNOWN (RabbitMQ and SQS, which cannot look a job up by id at all)."""


FULL_CONTRACT = Capabilities(
    priorities=True,
    max_delay_seconds=math.inf,
    enqueue_dedup=True,
    atomic_done_marker=True,
    rate_limit=True,
    heartbeats=True,
    dead_letter_by_id=True,
    failure_history=True,
    fenced_receipts=True,
    lease_expiry=True,
    recover_after_lost_reply=True,
    previous_delay=True,
    exact_stats=True,
    expiry_enforcement=expiry.Enforcement.WORKER_AT_START,
    overlapped_fetches=True,
    topics=True,
    cancel_by_id=True,
    status_by_id=True,
    keep_finished=True,
)
"""Every promise (the Redis engine, which the seam was cut from, and the memory reference)."""


# -- the worker's and the producer's side -----------------------------------------------------


@runtime_checkable
class Broker(Protocol):
    """One queue on one backend. Methods are coroutines and safe to call concurrently from
    one event loop (a broker may coalesce concurrent settling calls into one round trip)."""

    queue: str
    """The queue's name (checked with :func:`validate_queue_name`)."""
    options: QueueOptions
    capabilities: Capabilities
    dead_lettered_by_fetch: collections.Counter[str]
    """Jobs this broker's fetches dead-lettered themselves, by reason, running totals (poison
    jobs at ``max_deliveries``, envelopes that do not parse): they never reach the worker, so
    its metrics read them here."""

    async def enqueue(self, request: EnqueueRequest) -> EnqueueResult:
        """Store one job; it becomes due after ``request.delay_seconds``. When this returns the
        job is durable on the broker. A duplicate (see ``Capabilities.enqueue_dedup``) returns
        the existing id with ``created=False``."""
        ...

    async def enqueue_many(self, requests: Sequence[EnqueueRequest]) -> list[EnqueueResult]:
        """:meth:`enqueue` for many jobs, one result per request in order (fewer round trips;
        not atomic as a whole)."""
        ...

    async def fetch(
        self,
        worker_id: str,
        count: int,
        *,
        block: float = 0.0,
        wake: asyncio.Event | None = None,
        holding: Container[tuple[str, Receipt]] = (),
    ) -> list[Delivery]:
        """Up to ``count`` due jobs leased to ``worker_id``, most urgent first.

        With ``block`` > 0 and nothing due, waits up to ``block`` seconds for a job; returns
        [] on timeout, at once when ``count`` <= 0, and as soon as ``wake`` is set. Never
        hands ``worker_id`` a second delivery of a job it is ``holding`` (the ``(id,
        receipt)`` pairs it still runs): its own expired lease is renewed instead, or ended as
        a lost delivery when it holds it no more. A fetch may dead-letter jobs itself (poison,
        unparseable envelopes): they are counted in :attr:`dead_lettered_by_fetch`, not returned.
        """
        ...

    async def ack_and_fetch(
        self,
        deliveries: Sequence[Delivery],
        worker_id: str,
        count: int,
        *,
        block: float = 0.0,
        wake: asyncio.Event | None = None,
        holding: Container[tuple[str, Receipt]] = (),
    ) -> tuple[list[bool], list[Delivery]]:
        """Ack ``deliveries`` (one flag each, as :meth:`ack`) then :meth:`fetch`; a broker that
        can do both in one round trip does (the worker's cycle under load). A broker that
        answers the acks one by one raises ``BrokerPartlyApplied`` when it applied some and not
        others, before it fetches: nothing was handed out."""
        ...

    async def ack(
        self,
        delivery: Delivery,
        *,
        done_key: str | None = None,
        done_ttl_seconds: float | None = None,
    ) -> bool:
        """Finish the job: it is gone for good. False (and nothing changed) when the delivery
        is not current. ``done_key`` writes a done marker (see :meth:`fetch_is_done`) kept
        ``done_ttl_seconds`` (default a day), with the ack when ``atomic_done_marker``."""
        ...

    async def retry(self, delivery: Delivery, failure: Failure, *, delay_seconds: float) -> bool:
        """Record ``failure`` (attempts + 1) and make the job due again after
        ``delay_seconds``. False (nothing changed) when the delivery is not current. A
        non-finite delay raises ``ValueError`` before anything is sent."""
        ...

    async def dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        *,
        failure: Failure | None = None,
        attempt: bool = True,
    ) -> bool:
        """Move the job to the DLQ with ``reason`` and its failure history (``failure``
        appended; it counts as an attempt when ``attempt``). False when not current."""
        ...

    async def release(self, delivery: Delivery) -> bool:
        """Put the job back as due now without spending an attempt (drain, a worker handing
        work back). False when not current."""
        ...

    async def renew(
        self,
        worker_id: str,
        deliveries: Sequence[Delivery],
        *,
        heartbeat: WorkerBeat | None = None,
    ) -> LeaseRenewal:
        """Extend every current delivery's lease by ``options.lease_seconds`` from now, and
        write ``heartbeat`` when given (``Capabilities.heartbeats``). Deliveries that are not
        current any more come back in ``lost``: their job is someone else's now. A broker
        that renews them one by one raises ``BrokerPartlyApplied`` when it refused some: its
        ``applied`` and ``lost`` say what this result would have."""
        ...

    async def recover(
        self, worker_id: str, held: Collection[tuple[str, Receipt]] = ()
    ) -> list[Delivery]:
        """The deliveries leased to ``worker_id`` that it does not hold (``held``), with fresh
        leases: what a fetch whose reply was lost handed out. [] when the broker cannot know
        (``Capabilities.recover_after_lost_reply`` False)."""
        ...

    async def fetch_previous_delay(self, job_id: str) -> float | None:
        """The delay the job's last retry waited, when the broker keeps it (else None)."""
        ...

    async def fetch_is_done(self, done_key: str) -> bool:
        """True while a done marker written by ``ack(done_key=...)`` lives."""
        ...

    async def deregister(self, worker_id: str) -> None:
        """Forget a worker's heartbeat on a clean exit (it is not counted as lost)."""
        ...

    async def close(self) -> None:
        """Send every batched call still pending, then release the connection the broker
        opened (one it was given stays open). The broker is unusable afterwards."""
        ...


@runtime_checkable
class Prefetching(Protocol):
    """A broker that fetches jobs ahead of the worker's calls (RabbitMQ: each consumer's
    ``prefetch``). Those jobs are taken from the queue but never handed out; when the worker
    drains they must go back at once, or no other worker can run them until this one exits.
    A broker that fetches only what it is asked for has nothing to do here:
    :func:`stop_prefetching` is a no-op for it."""

    async def stop_prefetching(self) -> None:
        """The worker fetches no more (its drain began): stop fetching ahead and give back
        every job fetched ahead and never handed out, without spending a delivery or an
        attempt. Jobs handed out stay the worker's. A later ``fetch`` returns nothing."""
        ...


async def stop_prefetching(broker: Broker) -> None:
    """:meth:`Prefetching.stop_prefetching` for a broker that fetches ahead; nothing for one
    that does not (Redis, SQS, memory fetch only what the worker asks for)."""
    if isinstance(broker, Prefetching):
        await broker.stop_prefetching()


# -- what became of a delivery: a stale answer to a re-sent settle ------------------------------
#
# A settling call that got no reply (BrokerUnavailable) may have landed; the worker sends it
# again, and the fence then answers the re-send False, exactly as it answers a delivery whose
# lease was lost. Only then, never on the normal path, the worker asks the broker which of the
# two it was. Optional and read-only: a broker that cannot tell (RabbitMQ, SQS) does not
# implement it and :func:`fetch_delivery_fate` answers UNKNOWN for it.


class DeliveryFate(StrEnum):
    """What became of a delivery, judged from the counts the broker keeps for its job."""

    SETTLED = "settled"
    """A settling call of this delivery landed: no delivery of the job was lost since, and the
    job lives on (a retry, a release) or lies in the DLQ."""
    LOST = "lost"
    """The delivery ended without a settle: its lease ran out and the job was delivered again
    (or dead-lettered as poison). A lost lease; the worker's result is discarded."""
    GONE = "gone"
    """The job left the queue (acked), by this delivery or, after a lost lease, by another one:
    nothing is left that tells which."""
    HELD = "held"
    """The delivery is still current: nothing ended it (a settle with it would be applied)."""
    UNKNOWN = "unknown"
    """The broker keeps nothing to tell by, or the check itself failed."""


def judge_delivery_fate(
    delivery: Delivery, *, deliveries: int, lost: int, dead_lettered_at: float | None = None
) -> DeliveryFate:
    """The fate of ``delivery`` from its job's counts as the broker keeps them now (the live
    job's, or those its dead letter recorded at ``dead_lettered_at``).

    Only a delivery that ends without a settle adds to ``lost`` (a reclaim after the lease ran
    out, a poison dead letter, a release of a delivery its worker no longer held), and only its
    own worker can settle a delivery (its receipt fences every other): so ``lost`` unchanged
    means this delivery ended by its own settle. Counts below the delivery's (or a dead letter
    older than the delivery) belong to a later job under the same id (re-enqueued, replayed):
    GONE. A retry that landed and was then delivered again and lost, all within the worker's
    re-sends, would read LOST: counted as a lost lease, the safe side.
    """
    if deliveries < delivery.deliveries or lost < delivery.lost:
        return DeliveryFate.GONE
    if dead_lettered_at is not None and dead_lettered_at < delivery.fetched_at:
        return DeliveryFate.GONE
    return DeliveryFate.LOST if lost > delivery.lost else DeliveryFate.SETTLED


@runtime_checkable
class DeliveryAudit(Protocol):
    """A broker that can tell what became of a delivery (Redis, memory)."""

    async def fetch_delivery_fate(self, delivery: Delivery) -> DeliveryFate:
        """What became of ``delivery`` (read-only): HELD while it is current, else
        :func:`judge_delivery_fate` on the job's counts, or GONE when the broker keeps nothing
        of the job any more."""
        ...


async def fetch_delivery_fate(broker: Broker, delivery: Delivery) -> DeliveryFate:
    """:meth:`DeliveryAudit.fetch_delivery_fate` where the broker implements it; UNKNOWN for
    one that does not (RabbitMQ, SQS)."""
    if isinstance(broker, DeliveryAudit):
        return await broker.fetch_delivery_fate(delivery)
    return DeliveryFate.UNKNOWN


# -- topics: publish once, one job per subscription ---------------------------------------------


def subscription_queue_name(topic: str, group: str) -> str:
    """The queue (and task name) of subscription ``group`` of ``topic``: ``<topic>:<group>``.
    :func:`worker_runtime.events.subscription_queue` validates both parts first."""
    return validate_queue_name(f"{topic}:{group}")


@dataclass(frozen=True)
class PublishRequest:
    """One event to fan out: ``payload`` is the event envelope as JSON data; ``event_id`` is
    the id every subscription's job gets (so a re-sent publish is deduplicated per queue)."""

    topic: str
    event_id: str
    payload: Any
    correlation_id: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def build_subscription_envelope(
    request: PublishRequest, group: str, *, now: float
) -> envelope_mod.JobEnvelope:
    """The job one subscription gets for an event: task = its queue name, id = the event id,
    idempotency key = the event id (what ``ctx.mark_done_on_ack()`` records)."""
    return build_event_envelope(request, subscription_queue_name(request.topic, group), now=now)


def build_event_envelope(
    request: PublishRequest, task: str, *, now: float
) -> envelope_mod.JobEnvelope:
    """The job of an event under ``task`` (a broker that copies one message to every
    subscription names the topic here, and each subscription's queue renames it)."""
    return envelope_mod.JobEnvelope(
        id=request.event_id,
        task=task,
        payload=request.payload,
        correlation_id=request.correlation_id,
        idempotency_key=request.event_id,
        enqueued_at=now,
        headers=dict(request.headers),
    )


@dataclass(frozen=True)
class PublishResult:
    """Which subscriptions got the event (``created``) and which already had it (a re-sent
    publish inside the queue's enqueue-dedup window); both hold group names."""

    event_id: str
    created: tuple[str, ...]
    duplicate: tuple[str, ...]

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """Every group the event reached (new or already there)."""
        return tuple(sorted(self.created + self.duplicate))


@dataclass(frozen=True)
class SubscriptionLag:
    """How far one subscription is behind: its queue's backlog (ready and due jobs, i.e.
    events not yet started) and the age of the oldest of them, from its :class:`QueueStats`;
    ``delayed``: events not due yet (retries waiting out their backoff), which the backlog
    leaves out, so a group whose every event is failing does not read as keeping up."""

    topic: str
    group: str
    queue: str
    backlog: int
    oldest_event_age_seconds: float
    in_flight: int
    dead_letter: int
    delayed: int

    @classmethod
    def of(cls, topic: str, group: str, stats: QueueStats) -> SubscriptionLag:
        """The lag of subscription ``group`` read off its queue's stats."""
        return cls(
            topic=topic,
            group=group,
            queue=stats.queue,
            backlog=stats.backlog,
            oldest_event_age_seconds=stats.oldest_job_age_seconds,
            in_flight=stats.in_flight,
            dead_letter=stats.dead_letter,
            delayed=stats.future_delayed,
        )


TRACE_KEEP = 1000
"""Most entries a trace (one correlation id) keeps; the oldest go first."""

TRACE_TTL_SECONDS = 86_400.0
"""How long a trace lives after its last entry."""


@dataclass(frozen=True)
class TraceEntry:
    """One job or event in the trace of a correlation id: ``parent`` is its cause (the
    causation id; None at the root), ``name`` its task or topic, ``at`` epoch seconds."""

    kind: str  # "job" | "event"
    id: str
    parent: str | None
    name: str
    at: float

    def encode(self) -> str:
        """The stored form (JSON)."""
        return json.dumps(
            {
                "kind": self.kind,
                "id": self.id,
                "parent": self.parent,
                "name": self.name,
                "at": self.at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, raw: str | bytes) -> TraceEntry:
        """An entry from its stored form."""
        d = json.loads(raw)
        return cls(str(d["kind"]), str(d["id"]), d.get("parent"), str(d["name"]), float(d["at"]))


@runtime_checkable
class Topics(Protocol):
    """Topics of one backend (``Capabilities.topics``): any broker object of it reaches all.

    Publish fans out on write: in one atomic step it stores one job per subscription that is
    registered at that moment, or none (a killed publisher never leaves an event in some
    subscriptions only). A subscription sees only the events published after it registered.
    """

    async def subscribe(self, topic: str, group: str) -> str:
        """Register subscription ``group`` of ``topic`` (idempotent); returns its queue name."""
        ...

    async def unsubscribe(self, topic: str, group: str) -> bool:
        """Stop fanning out to ``group`` (its queue and its jobs stay); False if unknown."""
        ...

    async def list_subscriptions(self, topic: str) -> list[str]:
        """The groups subscribed to ``topic`` now, sorted."""
        ...

    async def publish(self, request: PublishRequest) -> PublishResult:
        """Store the event's job in every current subscription of ``request.topic``, at once.

        With no subscription the event reaches nobody (``created`` and ``duplicate`` empty).
        """
        ...

    async def fetch_topic_lag(self, topic: str) -> list[SubscriptionLag]:
        """Each current subscription's lag (read-only), by group name."""
        ...

    async def record_trace(self, correlation_id: str, entry: TraceEntry) -> None:
        """Append ``entry`` to the trace of ``correlation_id``: bounded (:data:`TRACE_KEEP`,
        oldest dropped) and forgotten :data:`TRACE_TTL_SECONDS` after its last entry."""
        ...

    async def fetch_trace(self, correlation_id: str) -> list[TraceEntry]:
        """The trace of ``correlation_id``, oldest first ([] when unknown or expired)."""
        ...


# -- the read side: operator, CLI, console -----------------------------------------------------


@dataclass(frozen=True)
class WorkerHeartbeat:
    """One live worker, as its last heartbeat described it."""

    worker_id: str
    pod_name: str
    concurrency: int
    in_flight: int
    processed: int
    busy_seconds: float
    started_at: float
    last_seen: float
    oldest_job_started_at: float | None
    draining: bool


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of one queue (from one instant when ``Capabilities.exact_stats``).

    The contract between the runtime and the operator (docs/architecture.md, "Runtime ↔
    operator: the read-only stats API"); change it there first.

    The ``*_total`` counters only grow; None where the broker keeps no such counter (SQS keeps
    none, RabbitMQ no failed, retried, cancelled or workers-lost total): not a 0, which would
    read as "nothing happened" to the alerts and the autoscaler's rates. Consumers show it as
    unknown and derive nothing from it.
    """

    queue: str
    now: float
    backlog: int
    due_delayed: int
    future_delayed: int
    in_flight: int
    dead_letter: int
    oldest_job_age_seconds: float
    enqueued_total: int | None
    completed_total: int | None
    failed_total: int | None
    retried_total: int | None
    dead_lettered_total: int | None
    cancelled_total: int | None
    """Jobs removed by a cancel before they started (:class:`Cancelling`); with completed and
    dead-lettered, where enqueued jobs went. None where the broker cannot cancel a job
    (``Capabilities.cancel_by_id`` False: RabbitMQ, SQS)."""
    workers_lost_total: int | None
    workers_expired: int
    workers: tuple[WorkerHeartbeat, ...]
    maxmemory_policy: str | None = None
    """Redis' ``maxmemory-policy``; None when it could not be read or the broker is not Redis."""
    oldest_dead_letter_age_seconds: float | None = 0.0
    """How long the oldest entry of the DLQ has waited there (0 when the DLQ is empty); None
    where the broker cannot tell (SQS, RabbitMQ): not a 0, which would keep
    WorkerPoolDeadLetterStale quiet however old the DLQ's letters are."""


@runtime_checkable
class QueueProbe(Protocol):
    """Read-only queue statistics: the autoscaler's, the CLI's and the metrics' input. Needs no
    worker running and changes nothing."""

    async def fetch_stats(self) -> QueueStats:
        """The queue's statistics now (one round trip where the broker allows it)."""
        ...


@dataclass(frozen=True)
class FailureRecord:
    """One failure in a job's history."""

    error_type: str
    message: str
    traceback: str
    worker_id: str
    at: float
    attempt: int
    delivery: int


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered job with its payload and full failure history."""

    job_id: str
    task: str | None
    reason: str
    priority: str
    dead_lettered_at: float
    attempts: int
    deliveries: int
    lost: int
    worker_id: str
    correlation_id: str | None
    first_failure_at: float | None
    last_failure_at: float | None
    history: tuple[FailureRecord, ...]
    envelope_raw: str
    """The stored envelope as text; bytes that are not UTF-8 appear escaped (``\\xe9``)."""
    envelope_base64: str | None = None
    """The envelope's exact bytes (base64) when they are not UTF-8; None otherwise."""

    @property
    def payload(self) -> Any:
        """The job's payload, or None when the envelope is not JSON."""
        try:
            return json.loads(self.envelope_raw).get("payload")
        except (ValueError, AttributeError):
            return None


@runtime_checkable
class DeadLetters(Protocol):
    """The DLQ of one queue: list, show, replay, purge (``workerfleet dlq``, the console)."""

    async def count_dead_letters(self) -> int:
        """How many dead letters the queue holds."""
        ...

    async def list_dead_letters(self, *, offset: int = 0, limit: int = 50) -> list[DeadLetter]:
        """One page of dead letters, newest first (read-only)."""
        ...

    async def show_dead_letter(self, job_id: str) -> DeadLetter | None:
        """One dead letter by job id, or None."""
        ...

    async def replay_dead_letters(
        self,
        *,
        job_ids: Sequence[str] | None = None,
        limit: int | None = None,
        reset_attempts: bool = False,
        rate_per_second: float = 100.0,
    ) -> list[str]:
        """Move dead letters back to the queue as due now, oldest first, at most
        ``rate_per_second``: ``job_ids`` picks them (else the oldest ``limit``, else all);
        ``reset_attempts`` gives a full set of attempts again. Returns the replayed ids; an
        entry whose job id is live again stays in the DLQ and is skipped."""
        ...

    async def purge_dead_letters(
        self,
        *,
        job_ids: Sequence[str] | None = None,
        older_than_seconds: float | None = None,
        everything: bool = False,
    ) -> int:
        """Delete dead letters by id, by age, or all (exactly one); returns how many."""
        ...


# -- cancelling a job that has not started -------------------------------------------------------


class CancelOutcome(StrEnum):
    """What a cancel did to one job id (:meth:`Cancelling.cancel_jobs`)."""

    CANCELLED = "cancelled"
    """The job was waiting (ready, scheduled, or waiting out a retry's backoff) and is gone:
    it will never be delivered. Its id's enqueue-dedup entry and its idempotency key stay
    until they expire, so a re-sent enqueue of it does not bring it back."""
    RUNNING = "running"
    """Refused: the job is leased to a worker. It is not touched: it finishes, fails or is
    retried as usual (a later cancel may catch it waiting for a retry)."""
    DEAD_LETTERED = "dead_lettered"
    """Refused: the job is in the dead-letter queue; ``workerfleet dlq purge`` deletes it."""
    UNKNOWN = "unknown"
    """No such job in this queue (never enqueued, already finished, already cancelled, or a
    mistyped id)."""


@runtime_checkable
class Cancelling(Protocol):
    """A broker that removes jobs that have not started by id (``Capabilities.cancel_by_id``).

    Callers go through :func:`cancel_jobs`, which refuses a broker without the capability."""

    async def cancel_jobs(self, job_ids: Sequence[str]) -> list[CancelOutcome]:
        """Cancel each of ``job_ids`` that has not started; one outcome per id, in order (an
        id named twice is cancelled once and then reads UNKNOWN). Each job is judged and
        removed atomically: one fetched at the same moment is either handed out (and answered
        RUNNING) or never handed out (and answered CANCELLED), never both."""
        ...


_BACKEND_NAMES = {"redis": "Redis", "memory": "memory", "rabbitmq": "RabbitMQ", "sqs": "SQS"}


def describe_backend(broker: object) -> str:
    """``Redis``, ``RabbitMQ``, ``SQS`` or ``memory``: the backend of a broker object (by the
    package its class, or a class it derives from, lives in), for messages; its class name
    for any other."""
    for cls in type(broker).__mro__:
        for part in cls.__module__.split("."):
            if part in _BACKEND_NAMES:
                return _BACKEND_NAMES[part]
    return type(broker).__name__


async def cancel_jobs(broker: Broker, job_ids: Sequence[str]) -> list[CancelOutcome]:
    """:meth:`Cancelling.cancel_jobs` on ``broker``; the one place that refuses a broker
    without ``Capabilities.cancel_by_id``, with
    :class:`~worker_runtime.errors.CapabilityMissing` naming it (the producer's ``cancel``
    and ``workerfleet job cancel`` both come here)."""
    if not broker.capabilities.cancel_by_id or not isinstance(broker, Cancelling):
        raise errors.CapabilityMissing(
            f"the {describe_backend(broker)} broker cannot cancel a job by id: its queues "
            "cannot remove a waiting message by id (Capabilities.cancel_by_id is False); "
            "a job enqueued there runs, or fails into the dead-letter queue",
            operation="cancel",
        )
    return await broker.cancel_jobs(job_ids)


# -- looking a job up by id ("where is my job?") -------------------------------------------------


class JobState(StrEnum):
    """Where one job is (:attr:`JobStatus.state`).

    An acknowledged job reads DONE only while its queue keeps finished records
    (``QueueOptions.keep_finished_seconds`` > 0, ``Capabilities.keep_finished``). Otherwise a
    broker deletes a job when it is acknowledged, and its done marker is keyed by the handler's
    idempotency key, not by the job id, so a finished job cannot be told from one never
    enqueued: both read UNKNOWN."""

    WAITING = "waiting"
    """On the ready queue, to be handed to the next free worker (a scheduled job whose time
    has come reads WAITING too: the next fetch moves it to the ready queue first)."""
    SCHEDULED = "scheduled"
    """Waiting for its time (:attr:`JobStatus.due_at`): enqueued with a delay, or waiting out
    a retry's backoff (:attr:`JobStatus.retry`)."""
    RUNNING = "running"
    """Leased to a worker (:attr:`JobStatus.worker_id`) until :attr:`JobStatus.lease_expires_at`;
    a lease already expired is taken back by the next fetch and the job delivered again."""
    DEAD_LETTERED = "dead_lettered"
    """In the dead-letter queue (``workerfleet dlq show`` has its whole history)."""
    DONE = "done"
    """Acknowledged (finished) at :attr:`JobStatus.finished_at`, its record kept for
    ``QueueOptions.keep_finished_seconds``; :attr:`JobStatus.attempts` counts the failed runs
    before the one that finished it."""
    UNKNOWN = "unknown"
    """Not in this queue: finished (acknowledged) with no record kept, cancelled, its dead
    letter deleted, never enqueued, or a mistyped id or queue. :attr:`JobStatus.enqueued_at`
    set: the queue still remembers enqueuing it (for ``QueueOptions.enqueue_dedup_seconds``),
    so it was no typo."""


@dataclass(frozen=True)
class JobStatus:
    """What a broker holds about one job id, read in one consistent step (:class:`JobLookup`).

    Only what the broker stores: every field but ``job_id``, ``state`` and ``checked_at`` may
    be unset. Times are epoch seconds of the broker's clock; ``checked_at`` is when it read."""

    job_id: str
    state: JobState
    checked_at: float
    """The broker's clock at the read: relative times ("in 12 s") are counted from it."""
    task: str | None = None
    priority: str | None = None
    attempts: int = 0
    """Failed runs recorded so far (retries and a counted dead-letter)."""
    deliveries: int = 0
    """Times the job was handed to a worker, a current delivery included."""
    enqueued_at: float | None = None
    """When the producer enqueued it (from its envelope; for an UNKNOWN id, from the queue's
    enqueue-dedup record, kept ``enqueue_dedup_seconds``)."""
    due_at: float | None = None
    """SCHEDULED (or WAITING after its time came): when it is due."""
    retry: bool = False
    """SCHEDULED after a failure (attempts > 0): it waits out a retry's backoff."""
    worker_id: str | None = None
    """RUNNING: the worker holding its lease."""
    lease_expires_at: float | None = None
    """RUNNING: when its lease ends unless the worker renews it."""
    dead_lettered_at: float | None = None
    dead_letter_reason: str | None = None
    last_failure: FailureRecord | None = None
    """The newest failure of its history (a dead letter's too), if it failed."""
    finished_at: float | None = None
    """DONE: when it was acknowledged."""
    run_seconds: float | None = None
    """DONE: how long its finishing run took, from its delivery to its ack (None when the
    broker does not know when the delivery was made)."""


@runtime_checkable
class JobLookup(Protocol):
    """A broker that looks jobs up by id (``Capabilities.status_by_id``). Read-only.

    Callers go through :func:`fetch_job_status`, which refuses a broker without the
    capability."""

    async def fetch_job_status(self, job_ids: Sequence[str]) -> list[JobStatus]:
        """One status per id, in order, all read in one consistent step per call (a job is
        never seen in two places, or in none while it moves between them)."""
        ...


def build_dead_letter_status(job_id: str, letter: DeadLetter, now: float) -> JobStatus:
    """The status of a dead-lettered job, from its dead letter (pure; every broker that
    keeps dead letters by id builds it here)."""
    enqueued_at: float | None = None
    try:
        at = json.loads(letter.envelope_raw).get("enqueued_at")
        enqueued_at = float(at) if isinstance(at, int | float) else None
    except (ValueError, AttributeError):
        pass
    return JobStatus(
        job_id=job_id,
        state=JobState.DEAD_LETTERED,
        checked_at=now,
        task=letter.task,
        priority=letter.priority,
        attempts=letter.attempts,
        deliveries=letter.deliveries,
        enqueued_at=enqueued_at,
        dead_lettered_at=letter.dead_lettered_at,
        dead_letter_reason=letter.reason,
        last_failure=letter.history[-1] if letter.history else None,
    )


async def fetch_job_status(broker: Broker, job_ids: Sequence[str]) -> list[JobStatus]:
    """:meth:`JobLookup.fetch_job_status` on ``broker``; the one place that refuses a broker
    without ``Capabilities.status_by_id``, with :class:`~worker_runtime.errors.CapabilityMissing`
    naming it (the producer's ``status`` and ``workerfleet job show`` both come here)."""
    if not broker.capabilities.status_by_id or not isinstance(broker, JobLookup):
        raise errors.CapabilityMissing(
            f"the {describe_backend(broker)} broker cannot look a job up by id: its queues "
            "are read from the head only (Capabilities.status_by_id is False); a job is seen "
            "when a worker runs it (its logs) or in the dead-letter queue (workerfleet dlq show)",
            operation="status",
        )
    return await broker.fetch_job_status(job_ids)


# -- optional read-side extras (the CLI and the console check for them) ------------------------
#
# A broker that does not implement one of these makes the command that needs it fail with
# :class:`~worker_runtime.errors.CapabilityMissing` naming the broker and what it lacks
# (``workerfleet queue jobs --in-flight``), or lose only a convenience (a purge without
# steps runs as one call: no progress until it is done). Redis and memory implement both.


@dataclass(frozen=True)
class InFlightJob:
    """One job delivered to a worker and not yet finished."""

    job_id: str
    task: str | None
    priority: str
    worker_id: str
    running_seconds: float
    """Time since its (latest) delivery."""
    deliveries: int
    lease_expires_in_seconds: float | None


@runtime_checkable
class InFlightJobs(Protocol):
    """The jobs running now, with the worker holding each (``workerfleet queue jobs
    --in-flight``, the console's queue page). Read-only."""

    async def list_in_flight_jobs(self, *, limit: int = 200) -> list[InFlightJob]:
        """At most ``limit`` jobs in flight, longest-running first."""
        ...


@runtime_checkable
class QueueListing(Protocol):
    """The queues the broker's server holds (``workerfleet queue ls``): a queue name mistyped
    elsewhere reads as an empty queue, this says which ones exist. Read-only."""

    async def list_queues(self, *, limit: int = 1000) -> list[str]:
        """Names of at most ``limit`` queues that ever held a job, sorted."""
        ...


@runtime_checkable
class DeadLetterSteps(Protocol):
    """A purge in bounded steps, so a caller shows progress and can stop between steps
    knowing exactly how many were deleted (the CLI's Ctrl-C summary)."""

    def purge_dead_letters_in_steps(
        self,
        *,
        job_ids: Sequence[str] | None = None,
        older_than_seconds: float | None = None,
        everything: bool = False,
    ) -> AsyncIterator[int]:
        """Like :meth:`DeadLetters.purge_dead_letters`; yields how many each step deleted."""
        ...

    async def count_dead_letters_older_than(self, older_than_seconds: float) -> int:
        """How many dead letters were dead-lettered more than ``older_than_seconds`` ago."""
        ...
