"""The SQS broker: workerfleet's :class:`~worker_runtime.brokers.base.Broker` on Amazon SQS (or an
SQS-compatible server such as ElasticMQ), plus its ``QueueProbe`` and ``DeadLetters``.

Opened by :func:`open_sqs_broker` (``open_broker`` for ``sqs://`` URLs); used by the worker, the
producer, the CLI and the operator like any broker. How the contract maps onto SQS:

- lease = the message's visibility timeout (``QueueOptions.lease_seconds``, whole seconds);
  ``renew`` = ChangeMessageVisibilityBatch (10 per call); the receipt is SQS's receipt handle.
- ack = DeleteMessageBatch: concurrent acks are coalesced, 10 per call, the calls sent at once.
- fetch = ReceiveMessage over the priority queues in order (high, normal, low; a full reply of
  10 is followed by one call per further 10 wanted, sent at once); with ``block``
  the queues are long-polled at once (WaitTimeSeconds <= 20) and ``wake`` or ``close`` ends the
  wait at once. A poll still running when the wait ends keeps running; what it receives is
  served by the next fetch (``close`` waits for it, briefly, and puts it back without spending
  anything).
- retry = send a NEW message (SQS cannot re-delay a message it holds) with DelaySeconds (at most
  900; a longer delay waits in 900 s steps, ``wf-not-before``), the attempt and the failure
  history in its attributes (:mod:`worker_runtime.brokers.sqs.attributes`), then delete the
  original. release = the same with no delay and no attempt (a visibility reset would raise the
  receive count that poison detection reads; FIFO: see below).
- poison: a message's ``ApproximateReceiveCount`` minus one is the deliveries it lost; once a
  job's lost deliveries reach ``max_deliveries`` fetch dead-letters it with its history before it
  runs. The SQS redrive policy (``maxReceiveCount`` = ``max_deliveries`` + 1, to the ``-dlq``
  queue) is the backstop when even that dead-letter cannot be sent.
- FIFO queue sets (``fifo=true``): MessageGroupId = the envelope header ``message-group-id``
  (else the queue name: one ordered stream), MessageDeduplicationId = job id (+ attempt on a
  re-send). SQS cannot delay single messages on FIFO queues: retries are due at once there
  (``Capabilities.max_delay_seconds`` = 0). A release resets the visibility instead of sending
  a copy (a copy would go behind the jobs of its group sent since), which SQS counts as a
  receive: each such release counts one lost delivery. The release that would bring the job to
  ``max_deliveries`` sends the copy instead (carrying the count), so releases alone never
  dead-letter a job; they bring the real losses that do nearer.

What SQS cannot promise is declared in :data:`STANDARD_CAPABILITIES` / :data:`FIFO_CAPABILITIES`
(the per-broker table is docs/brokers.md). Credentials come from the standard AWS chain
(environment, profile, IRSA / Pod Identity web-identity tokens); only an endpoint on this machine
without any credentials gets a fixed local pair (ElasticMQ does not check signatures).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Awaitable, Callable, Collection, Container, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiobotocore.config
import aiobotocore.session
import botocore.exceptions

from worker_runtime import envelope as envelope_mod
from worker_runtime import errors, expiry, logs
from worker_runtime.brokers import base
from worker_runtime.brokers.sqs import attributes, dlq, settings

_log = logs.get_logger("brokers.sqs")

MAX_SQS_DELAY = 900
"""SQS's longest per-message delay (DelaySeconds), seconds."""

MAX_VISIBILITY = 43_200
"""SQS's longest visibility timeout (12 h): the longest lease."""

MAX_WAIT = 20
"""SQS's longest long poll (WaitTimeSeconds)."""

CONFIRM_WAIT_SECONDS = 1
"""The long poll of :meth:`SqsBroker.fetch_confirming_empty` (a burst's last look), seconds."""

CLOSE_POLL_WAIT_SECONDS = 2.0
"""How long :meth:`SqsBroker.close` waits for long polls still out. A worker's polls last 1 s
(its fetches wait 1 s), so they answer within this and the jobs they received are put back
at once; a longer poll (a caller's ``fetch(block=...)`` of more) is cancelled after it, and
what SQS hands it waits out its visibility timeout. Below the 3 s the worker gives ``close``."""

RETENTION_RANGE = (60, 1_209_600)
"""The shortest and longest time SQS keeps a queue's messages (MessageRetentionPeriod), s."""

BATCH = 10
"""SQS's batch size for SendMessageBatch, DeleteMessageBatch and ChangeMessageVisibilityBatch."""

ENTRY_RESEND_WAITS_SECONDS = (0.05, 0.2, 0.5, 1.0)
"""Waits before an enqueue sends again the entries of its SendMessageBatch that SQS failed
through no fault of the sender (``SenderFault`` false, a throttle): those entries alone, as the
call's other entries are stored (a standard queue would store them twice). Still failing after
the last wait, the enqueue raises BrokerUnavailable."""


BUFFERED_RENEW_SHARE = 0.5
"""A job a long poll received after its fetch had returned waits in the broker for the next
fetch, its lease running. It is handed out as it is while at least this share of its lease is
left; with less, its lease is renewed first (the worker renews its leases every third of a
lease: a job handed out with less could expire before its first renewal)."""

BUFFERED_DROP_SECONDS = 1.0
"""A waiting job with less lease than this left (or a quarter of the lease, when shorter) is
neither handed out nor renewed: a renewal might land after the lease ended, when the job may
already be another worker's. SQS hands it out again when its visibility ends."""

RETRY_DELAYS_KEPT = 10_000
"""Retry delays a broker remembers by job id (see ``SqsBroker.fetch_previous_delay``)."""

LOCAL_CREDENTIALS = ("workerfleet-local", "workerfleet-local")
"""Used only for an endpoint on this machine when the AWS chain finds nothing."""

_BASE_CAPABILITIES = base.Capabilities(
    priorities=True,
    max_delay_seconds=MAX_SQS_DELAY,
    enqueue_dedup=False,
    atomic_done_marker=False,
    rate_limit=False,
    heartbeats=False,
    dead_letter_by_id=True,
    failure_history=True,
    fenced_receipts=False,
    lease_expiry=True,
    recover_after_lost_reply=False,
    previous_delay=True,
    exact_stats=False,
    oldest_job_age=False,
    expiry_enforcement=expiry.Enforcement.WORKER_AT_START,
    cancel_by_id=False,  # a queue cannot remove a waiting message by id (only a received one)
    status_by_id=False,  # nor find one: receiving it would deliver it
)

STANDARD_CAPABILITIES = _BASE_CAPABILITIES
"""Standard queues. enqueue_dedup: no (SQS has no id index; a re-sent enqueue runs twice);
done markers, rate limit, heartbeats: no store for them; fenced_receipts: SQS may apply a call
made with an older receipt handle; recover: a lost ReceiveMessage reply's messages come back
only when their visibility expires; stats: approximate counts, no oldest-job age, no totals
(``QueueStats``' ``*_total`` are None), no oldest dead letter's age (None)."""

FIFO_CAPABILITIES = dataclasses.replace(_BASE_CAPABILITIES, max_delay_seconds=0.0)
"""FIFO queues: as standard, and no per-message delay (retries are due at once). A release keeps
the job at its group's head, which SQS counts as a receive: it counts one lost delivery, except
the release that would reach ``max_deliveries`` (that one re-sends the job behind its group)."""

OLDEST_AGE_AVAILABLE = False
"""SQS reports no age of its oldest message through GetQueueAttributes (CloudWatch's
ApproximateAgeOfOldestMessage is a separate service, minutes late), so the age signal is
unavailable on SQS: ``QueueStats.oldest_job_age_seconds`` is always 0 here."""

_LOST_RECEIPT_CODES = frozenset(
    {"ReceiptHandleIsInvalid", "MessageNotInflight", "InvalidParameterValue"}
)
"""SQS's answers that mean a receipt handle is gone (the lease ran out, the message was
received again or deleted): only these make a settle or a renew report the lease as lost."""

_TRANSIENT_CODES = frozenset(
    {
        "RequestThrottled",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "KmsThrottled",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "OverLimit",
    }
)
"""SQS's answers that say "not now" (throttling, a server-side failure, a queue over a limit of
the moment): the same call may succeed in a moment, so they are
:class:`~worker_runtime.errors.BrokerUnavailable` (retried) and never read as a lost lease or as
a permanent refusal. ``OverLimit`` (HTTP 403) is a ReceiveMessage on a queue at its in-flight
limit (120,000 messages received and not yet deleted on a standard queue, 120,000 on FIFO): it
passes as acks and expiring leases bring that count down, and a worker that took it as a
refusal reported its queue broken while it only had to wait."""


def _code_name(code: str) -> str:
    """An SQS error code without its namespace (``AWS.SimpleQueueService.X``, ``...#X``)."""
    return code.rsplit("#", 1)[-1].rsplit(".", 1)[-1]


def _refusal(
    code: str, message: str, operation: str, *, transient: bool = False
) -> errors.BrokerError:
    """SQS's answer ``code`` as the runtime's taxonomy: a "not now" answer (``transient``, or a
    throttling or server-side code) is BrokerUnavailable, anything else BrokerRejected."""
    # AWS's message says what to fix (a signature that does not match, a token that is not
    # valid, a queue that does not exist); it never repeats the credentials
    said = f"{code}: {message}" if message else code
    if transient or _code_name(code) in _TRANSIENT_CODES:
        return errors.BrokerUnavailable(
            f"SQS could not serve {operation} now: {said}", operation=operation
        )
    return errors.BrokerRejected(f"SQS refused {operation}: {said}", operation=operation)


def _is_lost_receipt(code: str) -> bool:
    """Whether SQS's answer ``code`` to a call on one receipt means that receipt is gone."""
    return _code_name(code) in _LOST_RECEIPT_CODES


def _entry_error(failed: dict[str, Any], operation: str) -> errors.BrokerError:
    """One refused entry of a batch call (``Failed``: Id, Code, Message, SenderFault) as an
    error; an entry refused through no fault of the sender is a "not now"."""
    return _refusal(
        str(failed.get("Code", "")),
        str(failed.get("Message", "")),
        operation,
        transient=failed.get("SenderFault") is False,
    )


RECEIPT_ALIASES: dict[str, str] = {}
"""A receipt a worker still holds -> the receipt SQS gave the same job since (its lease ran out
while the worker ran it, and the job came back to that worker's fetch). Process-wide, because a
worker renews through another broker instance (its control thread's) than the one that fetched;
entries go when the delivery is settled. Plain dict reads and writes are atomic in CPython."""

RECEIPT_ALIASES_MAX = 100_000
"""Bound on :data:`RECEIPT_ALIASES` (the oldest go first; a lost alias costs one lost lease)."""


def _entry_bytes(entry: dict[str, Any]) -> int:
    """The bytes SQS counts for one SendMessage(Batch) entry: its body and each message
    attribute's name, type and value."""
    body = len(str(entry["MessageBody"]).encode())
    return body + attributes.attribute_bytes(entry.get("MessageAttributes") or {})


def _send_batches(entries: Sequence[dict[str, Any]], max_bytes: int) -> list[list[dict[str, Any]]]:
    """``entries`` in order, cut into SendMessageBatch calls the server takes: at most
    :data:`BATCH` entries and ``max_bytes`` in all (``SqsSettings.max_message_bytes``: on a
    server that takes 256 KiB, ten jobs of 40 KB each are one call of 400 KB, which it refuses
    whole, though it takes each of them). An entry too large on its own goes alone, and the
    server says so."""
    batches: list[list[dict[str, Any]]] = []
    size = 0
    for entry in entries:
        n = _entry_bytes(entry)
        if not batches or len(batches[-1]) >= BATCH or size + n > max_bytes:
            batches.append([])
            size = 0
        batches[-1].append(entry)
        size += n
    return batches


def _enqueue_failure(
    requests: Sequence[base.EnqueueRequest],
    stored: Collection[str],
    failed: dict[str, errors.BrokerError],
    whole_calls: Sequence[errors.BrokerError],
) -> errors.BrokerError:
    """The error of an ``enqueue_many`` some of whose jobs SQS did not store (``failed``, by
    request index; ``whole_calls``: the errors of calls that failed whole). With some stored,
    :class:`~worker_runtime.errors.BrokerPartlyApplied` naming both: a BrokerRejected ("nothing
    applied") made callers send the stored jobs again, which ran them twice."""
    if not stored:
        # Nothing is known stored: the class of one error says it all. A call without a reply
        # first (its jobs may be stored after all), then a refusal for good, then a "not now".
        errors_seen = list(failed.values())
        no_reply = (e for e in whole_calls if isinstance(e, errors.BrokerUnavailable))
        rejected = (e for e in errors_seen if isinstance(e, errors.BrokerRejected))
        return next(no_reply, next(rejected, errors_seen[0]))
    applied = tuple(requests[int(i)].envelope.id for i in sorted(stored, key=int))
    refused = {requests[int(i)].envelope.id: failed[i] for i in sorted(failed, key=int)}
    return _partly_applied("enqueue", "stored", applied, refused)


PARTLY_APPLIED_NAMED = 5
"""Refused jobs a partly applied batch's error message names one by one (all are in its
``refused``)."""


def _partly_applied(
    operation: str,
    done: str,
    applied: tuple[str, ...],
    refused: dict[str, errors.BrokerError],
    *,
    lost: tuple[str, ...] = (),
) -> errors.BrokerPartlyApplied:
    """The error of a batch SQS applied in part: how many jobs it applied (``done``: stored,
    deleted, renewed), which it did not and why, and which SQS answered gone (``lost``:
    deliveries whose lease had ended)."""
    named = "; ".join(
        f"{job_id}: {error}" for job_id, error in list(refused.items())[:PARTLY_APPLIED_NAMED]
    )
    more = len(refused) - PARTLY_APPLIED_NAMED
    if more > 0:
        named += f"; and {more} more"
    gone = f"; {len(lost)} leases were gone" if lost else ""
    text = (
        f"SQS {done} {len(applied)} of {len(applied) + len(refused) + len(lost)} jobs of"
        f" {operation} (send those again and they are {done} twice) and not {len(refused)}:"
        f" {named}{gone}"
    )
    return errors.BrokerPartlyApplied(
        text, operation=operation, applied=applied, refused=refused, lost=lost
    )


def _set_alias(held_receipt: str, newest: str) -> None:
    while len(RECEIPT_ALIASES) >= RECEIPT_ALIASES_MAX:
        RECEIPT_ALIASES.pop(next(iter(RECEIPT_ALIASES)))
    RECEIPT_ALIASES[held_receipt] = newest


def dead_letter_retention(seconds: float) -> int:
    """``QueueOptions.dlq_retention_seconds`` as the DLQ's MessageRetentionPeriod (whole
    seconds, rounded up), or :class:`~worker_runtime.errors.ConfigError` for a time SQS cannot
    keep messages: a shorter or longer one would not be what the runbooks promise."""
    shortest, longest = RETENTION_RANGE
    if not (math.isfinite(seconds) and shortest <= math.ceil(seconds) <= longest):
        raise errors.ConfigError(
            f"dlq_retention_seconds={seconds:g} cannot be kept on SQS: a queue keeps its"
            f" messages {shortest} s to {longest:,} s (14 days); set the pool's"
            " deadLetter.retentionSeconds (WORKERFLEET_DLQ_RETENTION_SECONDS) within that range"
        )
    return math.ceil(seconds)


def _map_error(exc: Exception, operation: str) -> errors.WorkerfleetError:
    """One botocore exception as the runtime's taxonomy (the original stays as __cause__)."""
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return errors.ConfigError("no AWS credentials found in the AWS credential chain")
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return _refusal(
            str(error.get("Code", "")),
            str(error.get("Message", "")),
            operation,
            transient=int(status or 0) >= 500,
        )
    return errors.BrokerUnavailable(
        f"SQS did not answer {operation}: {errors.describe_error(exc)}", operation=operation
    )


@contextlib.contextmanager
def _mapped(operation: str) -> Iterator[None]:
    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _map_error(exc, operation) from exc
    except (TimeoutError, OSError) as exc:
        raise errors.BrokerUnavailable(
            f"SQS did not answer {operation}: {errors.describe_error(exc)}", operation=operation
        ) from exc


@dataclass(frozen=True)
class _Held:
    """What this broker keeps about a delivery it handed out (to re-send it)."""

    queue_url: str
    priority: envelope_mod.Priority
    body: str
    carried: attributes.Carried
    receive_count: int
    copy_sent: bool = False
    """A settle's copy of the job (retry, release, dead-letter) is out and only deleting this
    message is left: a re-sent settle deletes, and never sends a second copy."""


def _with_receives(held: _Held) -> _Held:
    """``held`` carrying its message's receives before this one: each a delivery, and a lost
    one (the message came back without a settle). This receive is not a delivery: a fetch
    that dead-letters or parks the message never hands it out."""
    before = held.receive_count - 1
    carried = dataclasses.replace(
        held.carried,
        deliveries=held.carried.deliveries + before,
        lost=held.carried.lost + before,
    )
    return dataclasses.replace(held, carried=carried)


@dataclass(frozen=True)
class _Buffered:
    """A message a long poll received that no fetch has handed out yet (its lease running)."""

    url: str
    priority: envelope_mod.Priority
    message: dict[str, Any]
    received: float
    """When its lease began (epoch seconds): received, or last renewed while it waited."""


@dataclass
class _Pending:
    """One settling call waiting for its batch."""

    entry: dict[str, Any]
    done: asyncio.Future[bool]


class SqsBroker:
    """One workerfleet queue on SQS (see the module docstring for the mapping)."""

    DEFAULT_RETRIES = 2
    """Re-sends botocore makes of a call whose reply was lost, unless ``retries`` says otherwise
    (a re-sent SendMessageBatch on a standard queue may store its jobs twice)."""

    def __init__(
        self,
        queue: str,
        sqs_settings: settings.SqsSettings,
        *,
        options: base.QueueOptions | None = None,
        socket_timeout: float | None = None,
        retries: int | None = None,
        role: base.QueueRole = base.QueueRole.CONSUMER,
    ) -> None:
        self.queue = base.validate_queue_name(queue)
        self.role = base.QueueRole(role)
        """Only the consumer (the worker) sets the lease and redrive limit on existing queues:
        a producer creates missing queues and leaves existing ones as they are, a reader (the
        operator's probe, ``queue stats``) only looks queues up. Anyone else setting them would
        overwrite the workers' with its own defaults."""
        # A read must outlast the longest long poll (20 s), whatever the caller asked for.
        self.read_timeout = max(float(MAX_WAIT + 5), socket_timeout or 0.0)
        self.renew_timeout = (
            socket_timeout if socket_timeout and socket_timeout < self.read_timeout else None
        )
        """How long one ChangeMessageVisibilityBatch of ``renew`` waits for its reply (its
        re-sends included): the caller's shorter ``socket_timeout`` (the worker's control
        thread asks for its renewal interval, ``lease/3``, at least 0.5 s). Under the long
        polls' read timeout, a renewal on a stalled connection waited 25 s for each of its three
        tries, past the end of every lease it was to extend; failed in time, it is renewed again
        at once."""
        # botocore counts the first call as an attempt; retries=0 means one call, no re-send
        # (a re-sent ReceiveMessage after a lost reply strands the first reply's messages until
        # their visibility ends, which a caller that recovers on its own may not want).
        self.max_attempts = self.DEFAULT_RETRIES + 1 if retries is None else max(0, retries) + 1
        self.settings = sqs_settings
        self.options = options or base.QueueOptions()
        self.names = settings.build_queue_names(queue, sqs_settings)
        self.dead_letter_retention = (
            None
            if self.role is base.QueueRole.READER
            else dead_letter_retention(self.options.dlq_retention_seconds)
        )
        """The DLQ's MessageRetentionPeriod, checked before any call (a reader sets nothing)."""
        self.capabilities = FIFO_CAPABILITIES if sqs_settings.fifo else STANDARD_CAPABILITIES
        if not sqs_settings.priorities:
            self.capabilities = dataclasses.replace(self.capabilities, priorities=False)
        self.dead_lettered_by_fetch: collections.Counter[str] = collections.Counter()
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._urls: dict[str, str] = {}
        self._ready = asyncio.Lock()
        self._held: dict[str, _Held] = {}
        self._by_job: dict[str, str] = {}
        """job id -> the receipt of its delivery out of this broker now."""
        self._buffer: collections.deque[_Buffered] = collections.deque()
        self._polls: dict[str, asyncio.Task[list[dict[str, Any]]]] = {}
        self._closing = asyncio.Event()
        self._deferred: Exception | None = None
        """The error of a fetch that returned the jobs it had leased before it failed (raising
        would strand them): raised by the next fetch or ack_and_fetch, before it does anything."""
        self._deletes: dict[str, list[_Pending]] = collections.defaultdict(list)
        self._delete_flush: asyncio.Task[None] | None = None
        self._warned_done_marker = False
        self._acked_unreported: collections.OrderedDict[tuple[str, str], bool] = (
            collections.OrderedDict()
        )
        """(job id, receipt) of deliveries an ``ack_and_fetch`` deleted while it raised
        BrokerPartlyApplied for others: the worker's re-sent ack of one answers True, once."""
        self._retry_delays: collections.OrderedDict[str, float] = collections.OrderedDict()
        """job id -> the delay this broker's last retry of it set (a message's own attribute
        says the same once it is received again; this answers before that)."""

    # -- connection and queues ------------------------------------------------------------

    @property
    def visibility(self) -> int:
        """The lease as SQS's whole-second visibility timeout."""
        return max(1, min(MAX_VISIBILITY, math.ceil(self.options.lease_seconds)))

    async def connect(self) -> None:
        """Open the client and make sure the queues exist (idempotent)."""
        async with self._ready:
            if self._client is not None:
                return
            session = aiobotocore.session.get_session()
            key_id: str | None = None
            secret: str | None = None
            if self.settings.local_endpoint and await session.get_credentials() is None:
                key_id, secret = LOCAL_CREDENTIALS
            region = self.settings.region
            if region is None and self.settings.local_endpoint:
                region = "us-east-1"
            config = aiobotocore.config.AioConfig(
                connect_timeout=5,
                read_timeout=self.read_timeout,
                retries={"max_attempts": self.max_attempts, "mode": "standard"},
                max_pool_connections=20,
            )
            with _mapped("connect"):
                self._client = await self._stack.enter_async_context(
                    session.create_client(
                        "sqs",
                        region_name=region,
                        endpoint_url=self.settings.endpoint_url,
                        config=config,
                        aws_access_key_id=key_id,
                        aws_secret_access_key=secret,
                    )
                )
                try:
                    await self._ensure_queues()
                except BaseException:
                    # no half-open broker: its HTTP session would outlive it unclosed
                    await self._stack.aclose()
                    self._client = None
                    raise

    async def _ensure_queues(self) -> None:
        if self.role is base.QueueRole.READER:
            await self._look_up_queues()
            return
        fifo = {"FifoQueue": "true"} if self.settings.fifo else {}
        # Every queue takes the messages this broker sends (it cuts batches and histories to
        # max_message_bytes): a queue whose own MaximumMessageSize is lower refuses the retry
        # of a large job whose history was not cut to that, every time. (ElasticMQ ignores it.)
        size = {"MaximumMessageSize": str(self.settings.max_message_bytes)}
        # SQS keeps messages 4 days unless told: the dead letters get the configured retention
        retention = {"MessageRetentionPeriod": str(self.dead_letter_retention)}
        dlq_url = await self._queue_url(self.names.dead_letter, {**fifo, **retention, **size})
        arn = await self._client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
        redrive = json.dumps(
            {
                "deadLetterTargetArn": arn["Attributes"]["QueueArn"],
                "maxReceiveCount": str(self.options.max_deliveries + 1),
            }
        )
        # A new job queue keeps its jobs as long as SQS can (14 days), not SQS's default 4: a
        # backlog that outlived a long outage of its workers was dropped silently. An existing
        # queue keeps the retention it has (its owner may have chosen it).
        longest = {"MessageRetentionPeriod": str(RETENTION_RANGE[1])}
        for _, name in self.names.by_priority:
            await self._queue_url(
                name,
                {
                    **fifo,
                    "RedrivePolicy": redrive,
                    "VisibilityTimeout": str(self.visibility),
                    **size,
                },
                on_create=longest,
            )

    async def _queue_url(
        self, name: str, attrs: dict[str, str], *, on_create: dict[str, str] | None = None
    ) -> str:
        try:
            reply = await self._client.get_queue_url(QueueName=name)
            url = str(reply["QueueUrl"])
            settable = {k: v for k, v in attrs.items() if k != "FifoQueue"}
            if settable and self.role is base.QueueRole.CONSUMER:
                # an existing queue gets its consumer's redrive policy and lease, an existing
                # DLQ its retention
                await self._client.set_queue_attributes(QueueUrl=url, Attributes=settable)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if "NonExistentQueue" not in code and "QueueDoesNotExist" not in code:
                raise
            reply = await self._client.create_queue(
                QueueName=name, Attributes={**attrs, **(on_create or {})}
            )
            url = str(reply["QueueUrl"])
        self._urls[name] = url
        return url

    async def _look_up_queues(self) -> None:
        """A probe's queue URLs: each queue not known yet is looked up (GetQueueUrl, all at once);
        one that does not exist stays unknown (it holds nothing) and is looked up next time."""

        async def look_up(name: str) -> None:
            try:
                reply = await self._client.get_queue_url(QueueName=name)
            except botocore.exceptions.ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if "NonExistentQueue" not in code and "QueueDoesNotExist" not in code:
                    raise
                return
            self._urls[name] = str(reply["QueueUrl"])

        every = (*(n for _, n in self.names.by_priority), self.names.dead_letter)
        await asyncio.gather(*(look_up(name) for name in every if name not in self._urls))

    async def _ready_client(self) -> Any:
        if self._client is None:
            await self.connect()
        return self._client

    def _url(self, priority: envelope_mod.Priority) -> str:
        return self._urls[self.names.for_priority(priority)]

    @property
    def dead_letter_url(self) -> str:
        """The DLQ's queue URL (after :meth:`connect`)."""
        return self._urls[self.names.dead_letter]

    # -- enqueue ----------------------------------------------------------------------------

    def _send_entry(
        self,
        body: str,
        carried: attributes.Carried,
        *,
        delay: float,
        job_id: str,
        envelope: envelope_mod.JobEnvelope | None,
        entry_id: str = "0",
    ) -> dict[str, Any]:
        """One SendMessage(Batch) entry; a delay over 900 s waits its first step."""
        base.validate_delay(delay)
        delay = max(0.0, delay)
        if delay > MAX_SQS_DELAY and not self.settings.fifo:
            carried = dataclasses.replace(carried, not_before=time.time() + delay)
        entry: dict[str, Any] = {"Id": entry_id, "MessageBody": body}
        attrs = attributes.encode_carried(
            carried, body_bytes=len(body.encode()), max_bytes=self.settings.max_message_bytes
        )
        if attrs:
            entry["MessageAttributes"] = attrs
        if self.settings.fifo:
            group = (envelope.headers.get("message-group-id") if envelope else None) or self.queue
            entry["MessageGroupId"] = group
            entry["MessageDeduplicationId"] = f"{job_id}-{carried.attempts}-{carried.deliveries}"[
                :128
            ]
        else:
            entry["DelaySeconds"] = min(MAX_SQS_DELAY, math.ceil(delay))
        return entry

    async def enqueue(self, request: base.EnqueueRequest) -> base.EnqueueResult:
        return (await self.enqueue_many([request]))[0]

    async def enqueue_many(
        self, requests: Sequence[base.EnqueueRequest]
    ) -> list[base.EnqueueResult]:
        client = await self._ready_client()
        by_url: dict[str, list[tuple[int, dict[str, Any]]]] = collections.defaultdict(list)
        for i, request in enumerate(requests):
            env = request.envelope
            if self.settings.fifo and request.delay_seconds > 0:
                raise errors.CapabilityMissing(
                    "SQS FIFO queues cannot delay single messages", operation="enqueue"
                )
            entry = self._send_entry(
                envelope_mod.encode_envelope_text(env),
                attributes.Carried(),
                delay=request.delay_seconds,
                job_id=env.id,
                envelope=env,
                entry_id=str(i),
            )
            by_url[self._url(env.priority)].append((i, entry))

        stored: set[str] = set()
        """Entry ids (request indexes) SQS answered stored."""
        failed: dict[str, errors.BrokerError] = {}
        """Entry id -> why it is not known stored: an entry SQS answered failed, or an entry of
        a call that failed whole (no reply: it may be stored)."""
        whole_calls: list[errors.BrokerError] = []

        async def send(url: str, chunk: list[dict[str, Any]]) -> None:
            for wait in (*ENTRY_RESEND_WAITS_SECONDS, None):
                try:
                    with _mapped("enqueue"):
                        reply = await client.send_message_batch(QueueUrl=url, Entries=chunk)
                except errors.BrokerError as exc:
                    whole_calls.append(exc)
                    failed.update((entry["Id"], exc) for entry in chunk)
                    return
                stored.update(str(e.get("Id")) for e in reply.get("Successful", []))
                by_id = {entry["Id"]: entry for entry in chunk}
                chunk = []
                for refusal in reply.get("Failed", []):
                    error = _entry_error(refusal, "enqueue")
                    if isinstance(error, errors.BrokerUnavailable) and wait is not None:
                        # only the failed entry goes again: the call's others are stored
                        chunk.append(by_id[str(refusal.get("Id"))])
                    else:
                        failed[str(refusal.get("Id"))] = error
                if not chunk:
                    break
                await asyncio.sleep(wait or 0.0)

        async def send_in_order(url: str, chunks: list[list[dict[str, Any]]]) -> None:
            for n, chunk in enumerate(chunks):
                await send(url, chunk)
                first_failed = next((failed[e["Id"]] for e in chunk if e["Id"] in failed), None)
                if first_failed is not None:
                    # the later batches stay unsent: stored now, they would go before the
                    # failed jobs of their message groups
                    unsent = errors.BrokerUnavailable(
                        f"not sent, as an earlier batch of its FIFO queue failed: {first_failed}",
                        operation="enqueue",
                        sent=False,
                    )
                    failed.update((e["Id"], unsent) for later in chunks[n + 1 :] for e in later)
                    return

        limit = self.settings.max_message_bytes
        batches = {
            url: _send_batches([e for _, e in entries], limit) for url, entries in by_url.items()
        }
        if self.settings.fifo:
            # A FIFO queue stores a message group in the order its sends arrive: batches sent
            # at once could arrive in any order, so each queue's go one after the other
            await asyncio.gather(*(send_in_order(url, chunks) for url, chunks in batches.items()))
        else:
            # the batches (10 jobs, max_message_bytes in all) leave together: one round trip of
            # latency, not one per batch
            await asyncio.gather(
                *(send(url, chunk) for url, chunks in batches.items() for chunk in chunks)
            )
        unanswered = {
            str(i) for i in range(len(requests)) if str(i) not in stored and str(i) not in failed
        }
        failed.update(
            (i, errors.BrokerUnavailable("SQS answered nothing for this job", operation="enqueue"))
            for i in unanswered
        )
        if failed:
            raise _enqueue_failure(requests, stored, failed, whole_calls)
        return [base.EnqueueResult(job_id=r.envelope.id, created=True) for r in requests]

    # -- fetch ------------------------------------------------------------------------------

    async def _receive(self, url: str, count: int, wait: int) -> list[dict[str, Any]]:
        client = await self._ready_client()
        with _mapped("fetch"):
            reply = await client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=max(1, min(BATCH, count)),
                WaitTimeSeconds=wait,
                VisibilityTimeout=self.visibility,
                MessageAttributeNames=list(attributes.ALL),
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            )
        return list(reply.get("Messages", []))

    async def _receive_many(self, url: str, count: int) -> list[dict[str, Any]]:
        """Up to ``count`` messages of one queue without waiting. One ReceiveMessage first;
        only when it came back full (10) and more are wanted, one call per further 10, all at
        once: a busy queue fills a worker's free slots in two round trips, a quiet one costs a
        single call (SQS bills per request). When some of those calls fail and others
        received messages, these are returned (they are leased to us now: a raise would strand
        them until their visibility ends, counted as lost); the first error is raised only
        when nothing was received."""
        first = await self._receive(url, min(BATCH, count), 0)
        if len(first) < BATCH or count <= BATCH:
            return first
        sizes = [min(BATCH, count - start) for start in range(BATCH, count, BATCH)]
        replies = await asyncio.gather(
            *(self._receive(url, n, 0) for n in sizes), return_exceptions=True
        )
        return first + [m for reply in replies if isinstance(reply, list) for m in reply]

    async def fetch(
        self,
        worker_id: str,
        count: int,
        *,
        block: float = 0.0,
        wake: asyncio.Event | None = None,
        holding: Container[tuple[str, base.Receipt]] = (),
    ) -> list[base.Delivery]:
        if count <= 0:
            return []
        return await self._lease_into(
            lambda out: self._fetch_into(out, worker_id, count, block, wake, holding)
        )

    async def _lease_into(
        self, fill: Callable[[list[base.Delivery]], Awaitable[None]]
    ) -> list[base.Delivery]:
        """The deliveries ``fill`` adds to a list, in priority order, after the error a former
        fetch left (see ``_deferred``)."""
        self._raise_deferred()
        await self._ready_client()
        out: list[base.Delivery] = []
        try:
            await fill(out)
        except Exception as exc:
            if not out:
                raise
            # The jobs in out are leased to this worker now: raising would leave them invisible
            # for a whole lease, to come back as lost deliveries (towards poison) never having
            # run. They are handed out, and the next call says what failed.
            self._deferred = exc
        return sorted(out, key=self._priority_rank)

    def _raise_deferred(self) -> None:
        """Raise the error a fetch left for the next call (see ``_deferred``), once, before
        that call sends anything: a "no reply" error says so (``sent`` False). Raised as it
        was, the worker read the next call's acks, never sent, as possibly landed: it marked
        them unanswered and adopted after a fetch that had answered."""
        exc, self._deferred = self._deferred, None
        if isinstance(exc, errors.BrokerUnavailable) and exc.sent:
            raise errors.BrokerUnavailable(str(exc), operation=exc.operation, sent=False) from exc
        if exc is not None:
            raise exc

    async def _fetch_into(
        self,
        out: list[base.Delivery],
        worker_id: str,
        count: int,
        block: float,
        wake: asyncio.Event | None,
        holding: Container[tuple[str, base.Receipt]],
    ) -> None:
        """Add up to ``count`` deliveries to ``out``: the waiting ones first, then each queue
        in priority order, then (with ``block``) a long poll. ``out`` keeps what was leased
        when a later step fails."""
        deadline = time.monotonic() + max(0.0, block)
        while True:
            while self._buffer and len(out) < count:
                # a job dropped or handled here (poison, not due) leaves room for more of it
                for b in await self._take_buffered(count - len(out)):
                    await self._admit(
                        b.url, b.priority, [b.message], b.received, worker_id, holding, out
                    )
            for priority, name in self.names.by_priority:
                if len(out) >= count:
                    break
                url = self._urls[name]
                if url in self._polls:
                    continue  # a long poll of this queue is still out: its result comes next
                received = time.time()
                messages = await self._receive_many(url, count - len(out))
                await self._admit(url, priority, messages, received, worker_id, holding, out)
            remaining = deadline - time.monotonic()
            if out or remaining <= 0 or (wake is not None and wake.is_set()):
                return
            await self._long_poll(min(remaining, MAX_WAIT), wake, count - len(out))
            if self._closing.is_set():
                return

    def _priority_rank(self, delivery: base.Delivery) -> int:
        order = [p for p, _ in self.names.by_priority]
        return order.index(delivery.envelope.priority) if delivery.envelope.priority in order else 1

    async def _long_poll(self, wait: float, wake: asyncio.Event | None, count: int) -> None:
        """Long-poll every priority queue at once until one answers, ``wake`` or ``close``.
        Each poll asks for the ``count`` jobs the fetch wants, not a full batch: what a poll
        receives beyond what the fetch hands out waits here with its lease running, hidden from
        idle workers and from the autoscaler."""
        seconds = self._start_polls(wait, count)
        stoppers = [asyncio.create_task(self._closing.wait())]
        if wake is not None:
            stoppers.append(asyncio.create_task(wake.wait()))
        try:
            await asyncio.wait(
                [*self._polls.values(), *stoppers],
                timeout=seconds + 5,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for stopper in stoppers:
                stopper.cancel()
        await asyncio.sleep(0)  # let done callbacks move results into the buffer

    def _start_polls(self, wait: float, count: int) -> int:
        """A long poll of ``wait`` seconds (whole, 1 to 20) of each priority queue that has
        none out; their results go to the buffer. Returns the seconds asked."""
        seconds = max(1, min(MAX_WAIT, math.ceil(wait)))
        for priority, name in self.names.by_priority:
            url = self._urls[name]
            if url not in self._polls:
                task = asyncio.create_task(self._receive(url, count, seconds))
                task.add_done_callback(self._make_buffer_callback(url, priority))
                self._polls[url] = task
        return seconds

    async def _answer_polls(self) -> None:
        """Wait until every long poll out has answered (each is at most ``MAX_WAIT`` s), so
        what they received is in the buffer; raise the error of one that failed (what it
        would have received is unknown)."""
        polls = list(self._polls.values())
        if not polls:
            return
        await asyncio.wait(polls, timeout=MAX_WAIT + 5)
        await asyncio.sleep(0)  # let done callbacks move results into the buffer
        for task in polls:
            if not task.done():
                raise errors.BrokerUnavailable(
                    "a long poll of SQS did not answer", operation="fetch"
                )
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def fetch_confirming_empty(
        self,
        worker_id: str,
        count: int,
        *,
        holding: Container[tuple[str, base.Receipt]] = (),
    ) -> list[base.Delivery]:
        """Up to ``count`` jobs, where an empty answer means no job is ready: a burst's last
        look before it ends (the worker's normal fetches never come here).

        :meth:`fetch` is no such proof on SQS: it skips a queue whose long poll is still out
        (an interrupted wait leaves it out, and what it receives is served later), and a short
        poll (WaitTimeSeconds=0) reads only a sample of SQS's servers, so it can come back
        empty while messages exist. Here the polls out are waited for first, and when they and
        a look at each queue bring nothing, each queue is long-polled for
        :data:`CONFIRM_WAIT_SECONDS` (a long poll reads every server) and those are waited for
        too."""
        if count <= 0:
            return []

        async def look(out: list[base.Delivery]) -> None:
            await self._answer_polls()
            await self._fetch_into(out, worker_id, count, 0.0, None, holding)
            if not out:
                self._start_polls(CONFIRM_WAIT_SECONDS, count)
                await self._answer_polls()
                await self._fetch_into(out, worker_id, count, 0.0, None, holding)

        return await self._lease_into(look)

    def _make_buffer_callback(self, url: str, priority: envelope_mod.Priority) -> Any:
        def done(task: asyncio.Task[list[dict[str, Any]]]) -> None:
            if self._polls.get(url) is task:
                del self._polls[url]
            if task.cancelled() or task.exception() is not None:
                return
            now = time.time()
            for message in task.result():
                self._buffer.append(_Buffered(url, priority, message, now))

        return done

    async def _take_buffered(self, count: int) -> list[_Buffered]:
        """Up to ``count`` waiting jobs with enough lease left to be handed out: a job past
        :data:`BUFFERED_RENEW_SHARE` of its lease is renewed first, one too close to its end
        is dropped (SQS gives it out again when its visibility ends). Never a job whose lease
        ran out while it waited: SQS may have handed it to another worker since."""
        now = time.time()
        drop = min(BUFFERED_DROP_SECONDS, self.visibility / 4)
        ready: list[_Buffered] = []
        aging: list[_Buffered] = []
        dropped = 0
        while self._buffer and len(ready) + len(aging) < count:
            b = self._buffer.popleft()
            left = b.received + self.visibility - now
            if left <= drop:
                dropped += 1
            elif left < self.visibility * BUFFERED_RENEW_SHARE:
                aging.append(b)
            else:
                ready.append(b)
        if dropped:
            _log.warning(
                "jobs a long poll received waited past their lease here; SQS hands them out "
                "again (counted as a lost delivery)",
                extra={"queue": self.queue, "jobs": dropped},
            )
        try:
            renewed = await self._renew_buffered(aging)
        except BaseException:
            self._buffer.extendleft(reversed(ready))  # they wait for the next fetch, as before
            raise
        return ready + renewed

    async def _renew_buffered(self, waiting: list[_Buffered]) -> list[_Buffered]:
        """The waiting jobs whose lease SQS renewed, each with its new lease start; those SQS
        refused are dropped. A call that fails puts its jobs back to wait, and raises."""
        client = await self._ready_client()
        renewed: list[_Buffered] = []
        by_url: dict[str, list[_Buffered]] = collections.defaultdict(list)
        for b in waiting:
            by_url[b.url].append(b)
        chunks = [g[i : i + BATCH] for g in by_url.values() for i in range(0, len(g), BATCH)]
        for n, chunk in enumerate(chunks):
            started = time.time()
            entries = [
                {
                    "Id": str(i),
                    "ReceiptHandle": str(b.message["ReceiptHandle"]),
                    "VisibilityTimeout": self.visibility,
                }
                for i, b in enumerate(chunk)
            ]
            try:
                with _mapped("fetch"):
                    reply = await client.change_message_visibility_batch(
                        QueueUrl=chunk[0].url, Entries=entries
                    )
            except errors.BrokerError:
                self._buffer.extendleft(reversed([b for c in chunks[n:] for b in c]))
                self._buffer.extendleft(reversed(renewed))
                raise
            ok = {e["Id"] for e in reply.get("Successful", [])}
            renewed += [
                dataclasses.replace(b, received=started)
                for i, b in enumerate(chunk)
                if str(i) in ok
            ]
        return renewed

    async def _admit(
        self,
        url: str,
        priority: envelope_mod.Priority,
        messages: list[dict[str, Any]],
        received: float,
        worker_id: str,
        holding: Container[tuple[str, base.Receipt]],
        out: list[base.Delivery],
    ) -> None:
        """Add the deliveries of received messages to ``out``: poison, unparseable and
        still-delayed messages are handled here and never reach the worker. When handling one
        fails, the messages after it wait for the next fetch (they are leased to this worker:
        dropping them would strand them for a lease), and the error is raised."""
        for n, message in enumerate(messages):
            try:
                delivery = await self._admit_one(
                    url, priority, message, received, worker_id, holding
                )
            except BaseException:
                rest = [_Buffered(url, priority, m, received) for m in messages[n + 1 :]]
                self._buffer.extendleft(reversed(rest))
                raise
            if delivery is not None:
                out.append(delivery)

    async def _admit_one(
        self,
        url: str,
        priority: envelope_mod.Priority,
        message: dict[str, Any],
        received: float,
        worker_id: str,
        holding: Container[tuple[str, base.Receipt]],
    ) -> base.Delivery | None:
        """The delivery of one received message, or None when it was handled here."""
        body = str(message.get("Body", ""))
        receipt = str(message["ReceiptHandle"])
        carried = attributes.decode_carried(message.get("MessageAttributes") or {})
        receive_count = int((message.get("Attributes") or {}).get("ApproximateReceiveCount", 1))
        held = _Held(url, priority, body, carried, receive_count)
        if carried.not_before is not None and carried.not_before > time.time() + 0.5:
            await self._park(receipt, held)
            return None
        lost = carried.lost + receive_count - 1
        try:
            env = envelope_mod.parse_envelope(body)
        except envelope_mod.EnvelopeError as exc:
            await self._send_dead(receipt, _with_receives(held), exc.reason, worker_id=worker_id)
            await self._delete(url, receipt)
            self.dead_lettered_by_fetch[exc.reason] += 1
            return None
        delivery = base.Delivery(
            id=env.id,
            receipt=receipt,
            envelope=env,
            attempts=carried.attempts,
            deliveries=carried.deliveries + receive_count,
            lease_deadline=received + self.visibility,
            lost=lost,
            fetched_at=received,
        )
        previous = self._by_job.get(env.id)
        if previous is not None and (env.id, previous) not in holding:
            # that delivery ended without a settle: forget it
            self._held.pop(RECEIPT_ALIASES.pop(previous, previous), None)
        elif previous is not None:
            # This worker still runs the job (its lease ran out under it): keep the new
            # receipt's lease for the running delivery instead of handing out a second one.
            self._held.pop(RECEIPT_ALIASES.get(previous, previous), None)
            _set_alias(previous, receipt)
            self._held[receipt] = held
            await self._renew_receipts(url, [receipt])
            return None
        if lost >= self.options.max_deliveries:
            self._by_job.pop(env.id, None)
            reason = base.DeadLetterReason.MAX_DELIVERIES
            await self._send_dead(receipt, _with_receives(held), reason, worker_id=worker_id)
            await self._delete(url, receipt)
            self.dead_lettered_by_fetch[reason] += 1
            return None
        self._held[receipt] = held
        self._by_job[env.id] = receipt
        return delivery

    async def _park(self, receipt: str, held: _Held) -> None:
        """A job whose delay is not over yet: re-send it for the next step (not a delivery)."""
        assert held.carried.not_before is not None
        entry = self._send_entry(
            held.body,
            _with_receives(held).carried,
            delay=min(MAX_SQS_DELAY, held.carried.not_before - time.time()),
            job_id="parked",
            envelope=None,
        )
        entry.pop("Id")
        client = await self._ready_client()
        with _mapped("fetch"):
            await client.send_message(QueueUrl=held.queue_url, **entry)
        await self._delete(held.queue_url, receipt)

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
        # before the acks, as never sent: the worker sends them again after the error
        self._raise_deferred()
        answers = await asyncio.gather(*(self.ack(d) for d in deliveries), return_exceptions=True)
        failures = {
            d.id: a
            for d, a in zip(deliveries, answers, strict=True)
            if isinstance(a, BaseException)
        }
        if failures:
            raise self._acks_failed(deliveries, answers, failures)
        acked = [a is True for a in answers]
        try:
            fetched = await self.fetch(worker_id, count, block=block, wake=wake, holding=holding)
        except Exception as exc:
            # The acks are applied: raising would make the worker send them again, and an ack
            # of a deleted delivery answers False (counted as a lost lease). They are reported
            # done with no jobs, and the next call says what failed.
            self._deferred = exc
            return acked, []
        return acked, fetched

    def _acks_failed(
        self,
        deliveries: Sequence[base.Delivery],
        answers: Sequence[object],
        failures: dict[str, BaseException],
    ) -> BaseException:
        """The error of an ``ack_and_fetch`` some of whose acks failed. When SQS deleted others
        (DeleteMessageBatch answers each entry on its own), or answered some receipts gone, a
        BrokerPartlyApplied naming them (``applied``, ``refused``, ``lost``), and the deleted
        ones answer True when their acks are sent again: as a BrokerRejected ("nothing
        applied") they were re-sent, answered False, and counted as lost leases of jobs that
        had run to the end."""
        applied = [d for d, a in zip(deliveries, answers, strict=True) if a is True]
        # answered False: the receipt was gone (the lease had ended), as a whole answer says
        lost = tuple(d.id for d, a in zip(deliveries, answers, strict=True) if a is False)
        refused = {k: e for k, e in failures.items() if isinstance(e, errors.BrokerError)}
        if not (applied or lost) or len(refused) < len(failures):
            return next(iter(failures.values()))
        for d in applied:
            self._acked_unreported[(d.id, d.receipt)] = True
            while len(self._acked_unreported) > RETRY_DELAYS_KEPT:
                self._acked_unreported.popitem(last=False)
        return _partly_applied("ack", "deleted", tuple(d.id for d in applied), refused, lost=lost)

    # -- settling ---------------------------------------------------------------------------

    async def _delete(self, url: str, receipt: str) -> bool:
        """Delete one message; concurrent deletes leave together, 10 per call."""
        loop = asyncio.get_running_loop()
        pending = _Pending({"ReceiptHandle": receipt}, loop.create_future())
        self._deletes[url].append(pending)
        if self._delete_flush is None or self._delete_flush.done():
            self._delete_flush = asyncio.create_task(self._flush_deletes())
        return await pending.done

    async def _flush_deletes(self) -> None:
        await asyncio.sleep(0)  # gather the deletes made in this loop turn
        client = await self._ready_client()
        while any(self._deletes.values()):
            # every waiting delete, 10 per DeleteMessageBatch, all batches at once
            batches: list[tuple[str, list[_Pending]]] = []
            for url in list(self._deletes):
                waiting, self._deletes[url] = self._deletes[url], []
                batches += [(url, waiting[i : i + BATCH]) for i in range(0, len(waiting), BATCH)]
            await asyncio.gather(
                *(self._delete_batch(client, url, items) for url, items in batches)
            )

    async def _delete_batch(self, client: Any, url: str, items: list[_Pending]) -> None:
        entries = [{"Id": str(i), **p.entry} for i, p in enumerate(items)]
        try:
            with _mapped("ack"):
                reply = await client.delete_message_batch(QueueUrl=url, Entries=entries)
        except errors.WorkerfleetError as exc:
            for p in items:
                if not p.done.done():
                    p.done.set_exception(exc)
            return
        ok = {e["Id"] for e in reply.get("Successful", [])}
        failed = {str(f.get("Id")): f for f in reply.get("Failed", [])}
        for i, p in enumerate(items):
            if p.done.done():
                continue
            refusal = failed.get(str(i), {})
            if str(i) not in ok and refusal and not _is_lost_receipt(str(refusal.get("Code"))):
                # throttled, or refused for another reason than a gone receipt: not deleted,
                # and the lease is not lost either (the ack is re-sent)
                p.done.set_exception(_entry_error(refusal, "ack"))
            else:
                p.done.set_result(str(i) in ok)

    def _receipt(self, delivery: base.Delivery) -> str:
        """The receipt to settle ``delivery`` with (its alias when SQS issued a newer one)."""
        return RECEIPT_ALIASES.get(delivery.receipt, delivery.receipt)

    def _take(self, delivery: base.Delivery) -> tuple[str, _Held] | None:
        """The delivery's receipt and what is held for it, forgotten now (a second settle of
        it answers False); None when it is not held (settled, or its job came back)."""
        receipt = self._receipt(delivery)
        held = self._held.pop(receipt, None)
        if held is None:
            return None
        RECEIPT_ALIASES.pop(delivery.receipt, None)
        if self._by_job.get(delivery.id) == receipt:
            del self._by_job[delivery.id]
        return receipt, held

    @contextlib.contextmanager
    def _kept_on_error(self, delivery: base.Delivery, receipt: str, held: _Held) -> Iterator[None]:
        """Undo :meth:`_take` when the settle inside fails: the worker re-sends a settle that
        raised (its broker makes one attempt per call), and that re-send must find the
        delivery, not answer False ("lease lost") for a job that is still this worker's."""
        try:
            yield
        except BaseException:
            # setdefault: a fetch may have received the job again meanwhile (then it is not
            # this delivery's any more, and the newer one is kept)
            self._held.setdefault(receipt, held)
            self._by_job.setdefault(delivery.id, receipt)
            if receipt != delivery.receipt:
                RECEIPT_ALIASES.setdefault(delivery.receipt, receipt)
            raise

    async def ack(
        self,
        delivery: base.Delivery,
        *,
        done_key: str | None = None,
        done_ttl_seconds: float | None = None,
    ) -> bool:
        if done_key is not None and not self._warned_done_marker:
            # SQS has no store for done markers: the job is acked, the marker is not kept.
            self._warned_done_marker = True
            _log.warning(
                "done markers are not kept on SQS: a duplicate delivery will not see them",
                extra={"queue": self.queue},
            )
        taken = self._take(delivery)
        if taken is None:
            # deleted by a partly applied ack_and_fetch: this re-send is told it landed (once)
            return self._acked_unreported.pop((delivery.id, delivery.receipt), False)
        receipt, held = taken
        with self._kept_on_error(delivery, receipt, held):
            return await self._delete(held.queue_url, receipt)

    async def _replace(
        self,
        delivery: base.Delivery,
        receipt: str,
        held: _Held,
        send_copy: Callable[[], Awaitable[None]],
    ) -> bool:
        """Send a copy of the job (``send_copy``), then delete this message: a retry, release
        or dead-letter. Only while the delivery is still current: a copy sent for a delivery
        whose lease ran out (the job is someone else's, or done) would run the job once more.

        A step that fails keeps the delivery for the worker's re-send; once the copy is out,
        the re-send only deletes (a second copy would run the job twice). A copy whose send got
        no reply may be out or not: the re-send sends it (at-least-once)."""
        with self._kept_on_error(delivery, receipt, held):
            if not held.copy_sent:
                if not await self._change_visibility(held.queue_url, receipt, self.visibility):
                    return False
                await send_copy()
        sent = dataclasses.replace(held, copy_sent=True)
        with self._kept_on_error(delivery, receipt, sent):
            return await self._delete(held.queue_url, receipt)

    async def _resend(
        self,
        delivery: base.Delivery,
        receipt: str,
        held: _Held,
        carried: attributes.Carried,
        delay: float,
    ) -> bool:
        """Send the job again as a new message carrying ``carried``, then delete this one."""

        async def send_copy() -> None:
            entry = self._send_entry(
                held.body, carried, delay=delay, job_id=delivery.id, envelope=delivery.envelope
            )
            entry.pop("Id")
            client = await self._ready_client()
            with _mapped("retry"):
                await client.send_message(QueueUrl=held.queue_url, **entry)

        return await self._replace(delivery, receipt, held, send_copy)

    async def _change_visibility(self, url: str, receipt: str, seconds: int) -> bool:
        """Set the visibility of the message ``receipt`` names; False when SQS says that
        receipt is gone (the lease ran out, or the message was received again or deleted).
        With the lease's visibility it is the fence before a settle that sends a copy. SQS may
        also take an older receipt handle (``Capabilities.fenced_receipts`` is False);
        ElasticMQ refuses it."""
        client = await self._ready_client()
        with _mapped("renew"):
            try:
                await client.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=seconds
                )
            except botocore.exceptions.ClientError as exc:
                # only an answer that says the receipt is gone ends the delivery; a throttle,
                # a server error or a refused permission is raised (the settle is re-sent)
                if _is_lost_receipt(str(exc.response.get("Error", {}).get("Code", ""))):
                    return False
                raise
        return True

    def _failed(
        self, delivery: base.Delivery, held: _Held, failure: base.Failure | None, attempt: bool
    ) -> attributes.Carried:
        carried = held.carried
        attempts = carried.attempts + (1 if attempt else 0)
        history = carried.history
        if failure is not None:
            record = base.FailureRecord(
                error_type=failure.error_type,
                message=failure.message,
                traceback=failure.traceback,
                worker_id=failure.worker_id,
                at=time.time(),
                attempt=attempts,
                delivery=delivery.deliveries,
            )
            history = (*history, record)
        return dataclasses.replace(
            carried,
            attempts=attempts,
            deliveries=delivery.deliveries,
            lost=delivery.lost,
            history=history,
            not_before=None,
        )

    async def retry(
        self, delivery: base.Delivery, failure: base.Failure, *, delay_seconds: float
    ) -> bool:
        base.validate_delay(delay_seconds, "a retry delay")
        taken = self._take(delivery)
        if taken is None:
            return False
        receipt, held = taken
        carried = dataclasses.replace(
            self._failed(delivery, held, failure, attempt=True), previous_delay=delay_seconds
        )
        self._retry_delays[delivery.id] = delay_seconds
        while len(self._retry_delays) > RETRY_DELAYS_KEPT:
            self._retry_delays.popitem(last=False)
        return await self._resend(delivery, receipt, held, carried, delay_seconds)

    async def release(self, delivery: base.Delivery) -> bool:
        taken = self._take(delivery)
        if taken is None:
            return False
        receipt, held = taken
        if self.settings.fifo and delivery.lost + 1 < self.options.max_deliveries:
            # A copy would queue behind every job of its message group sent since: resetting
            # the visibility keeps the job at its group's head. SQS counts that as one more
            # receive, which the next delivery reads as a lost one (SQS keeps nothing else a
            # release could write), so only while that stays below the poison limit; the
            # release that would reach it sends the copy below, carrying the count as it is.
            with self._kept_on_error(delivery, receipt, held):
                return await self._change_visibility(held.queue_url, receipt, 0)
        carried = dataclasses.replace(
            held.carried, deliveries=delivery.deliveries, lost=delivery.lost, not_before=None
        )
        return await self._resend(delivery, receipt, held, carried, 0.0)

    async def dead_letter(
        self,
        delivery: base.Delivery,
        reason: str,
        *,
        failure: base.Failure | None = None,
        attempt: bool = True,
    ) -> bool:
        taken = self._take(delivery)
        if taken is None:
            return False
        receipt, held = taken
        worker = failure.worker_id if failure else ""
        dead = dataclasses.replace(held, carried=self._failed(delivery, held, failure, attempt))
        return await self._replace(
            delivery,
            receipt,
            held,
            lambda: self._send_dead(receipt, dead, reason, worker_id=worker),
        )

    async def _send_dead(self, receipt: str, held: _Held, reason: str, *, worker_id: str) -> None:
        """Send a copy of the message to the DLQ with its counters and history (the caller
        deletes the message). ``held.carried`` holds the counts the letter keeps: the fetch
        passes :func:`_with_receives`, a settle the counts of the delivery it settles."""
        carried = dataclasses.replace(
            held.carried,
            reason=str(reason),
            dead_lettered_at=time.time(),
            worker_id=worker_id,
            not_before=None,
        )
        entry: dict[str, Any] = {
            "MessageBody": held.body,
            "MessageAttributes": attributes.encode_carried(
                carried,
                body_bytes=len(held.body.encode()),
                max_bytes=self.settings.max_message_bytes,
            ),
        }
        if self.settings.fifo:
            entry["MessageGroupId"] = self.queue
            entry["MessageDeduplicationId"] = f"dead-{receipt[-40:]}-{time.time_ns()}"[:128]
        client = await self._ready_client()
        with _mapped("dead_letter"):
            await client.send_message(QueueUrl=self.dead_letter_url, **entry)

    async def renew(
        self,
        worker_id: str,
        deliveries: Sequence[base.Delivery],
        *,
        heartbeat: base.WorkerBeat | None = None,
    ) -> base.LeaseRenewal:
        client = await self._ready_client()
        kept: list[base.Delivery] = []
        lost: list[base.Delivery] = []
        refused_by_job: dict[str, errors.BrokerError] = {}
        by_url: dict[str, list[base.Delivery]] = collections.defaultdict(list)
        for d in deliveries:
            # A worker may renew through another broker instance than the one that fetched
            # (its control thread has its own): the queue follows from the job's priority.
            held = self._held.get(self._receipt(d))
            url = held.queue_url if held is not None else self._url(d.envelope.priority)
            by_url[url].append(d)
        for url, group in by_url.items():
            for start in range(0, len(group), BATCH):
                chunk = group[start : start + BATCH]
                entries = [
                    {
                        "Id": str(i),
                        "ReceiptHandle": self._receipt(d),
                        "VisibilityTimeout": self.visibility,
                    }
                    for i, d in enumerate(chunk)
                ]
                with _mapped("renew"):
                    reply = await asyncio.wait_for(
                        client.change_message_visibility_batch(QueueUrl=url, Entries=entries),
                        self.renew_timeout,
                    )
                ok = {e["Id"] for e in reply.get("Successful", [])}
                failed = {str(f.get("Id")): f for f in reply.get("Failed", [])}
                for i, d in enumerate(chunk):
                    refusal = failed.get(str(i), {})
                    if str(i) in ok:
                        kept.append(d)
                    elif refusal and not _is_lost_receipt(str(refusal.get("Code", ""))):
                        refused_by_job[d.id] = _entry_error(refusal, "renew")
                    else:
                        lost.append(d)
        if refused_by_job:
            # a throttled or refused entry is not a lost lease: the renewal round fails (after
            # every batch was sent) and the worker renews again shortly. Saying which leases
            # were renewed: "SQS refused renew" alone read as none was.
            # The leases SQS said are gone go in it too: the worker marks those jobs lost now,
            # and not only once a round has no refused entry (never, when one is refused for
            # good: their results were kept and acked as if the lease still held).
            if not kept and not lost:
                raise next(iter(refused_by_job.values()))
            raise _partly_applied(
                "renew",
                "renewed",
                tuple(d.id for d in kept),
                refused_by_job,
                lost=tuple(d.id for d in lost),
            )
        return base.LeaseRenewal(kept=tuple(kept), lost=tuple(lost))

    async def _renew_receipts(self, url: str, receipts: Sequence[str]) -> None:
        client = await self._ready_client()
        entries = [
            {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": self.visibility}
            for i, r in enumerate(receipts)
        ]
        with _mapped("renew"):
            await client.change_message_visibility_batch(QueueUrl=url, Entries=entries)

    async def recover(
        self, worker_id: str, held: Collection[tuple[str, base.Receipt]] = ()
    ) -> list[base.Delivery]:
        return []

    async def fetch_previous_delay(self, job_id: str) -> float | None:
        receipt = self._by_job.get(job_id)
        held = self._held.get(receipt) if receipt is not None else None
        if held is not None and held.carried.previous_delay is not None:
            return held.carried.previous_delay
        return self._retry_delays.get(job_id)

    async def fetch_is_done(self, done_key: str) -> bool:
        return False

    async def deregister(self, worker_id: str) -> None:
        return None

    async def close(self) -> None:
        """Close the client. A long poll still out is waited for (up to
        :data:`CLOSE_POLL_WAIT_SECONDS`) and what it received is put back with the jobs still
        waiting here: SQS hands a poll's messages out whether or not its caller still listens,
        so a poll cancelled here left the jobs it received invisible for a whole lease."""
        self._closing.set()
        polls = list(self._polls.values())
        if polls:
            _, late = await asyncio.wait(polls, timeout=CLOSE_POLL_WAIT_SECONDS)
            if late:
                _log.warning(
                    "closing with long polls of SQS still out: a job they receive waits for"
                    " its visibility timeout",
                    extra={"queue": self.queue, "polls": len(late)},
                )
            for task in late:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*polls, return_exceptions=True)
            await asyncio.sleep(0)  # let done callbacks move results into the buffer
        # Jobs received but never handed out go back without spending anything, all at once:
        # one after the other (up to three calls each) they outlasted the 3 s the worker gives
        # close after the polls' wait, which cancelled close with the later jobs still hidden.
        waiting, self._buffer = list(self._buffer), collections.deque()
        await asyncio.gather(*(self._put_back(b) for b in waiting))
        if self._delete_flush is not None:
            with contextlib.suppress(Exception):
                await self._delete_flush
        await self._stack.aclose()
        self._client = None

    async def _put_back(self, b: _Buffered) -> None:
        """Give back a job a poll received and no fetch handed out (on close)."""
        with contextlib.suppress(errors.WorkerfleetError):
            if d := await self._admit_one(b.url, b.priority, b.message, b.received, "", ()):
                await self.release(d)

    # -- QueueProbe -------------------------------------------------------------------------

    async def list_queues(self, *, limit: int = 1000) -> list[str]:
        """The workerfleet queues under this URL's prefix (``QueueListing``): those whose DLQ
        (``<prefix>Q-dlq``) and normal-priority queue both exist (ListQueues, page by page)."""
        client = await self._ready_client()
        end = ".fifo" if self.settings.fifo else ""
        names: set[str] = set()
        token: str | None = None
        with _mapped("queue list"):
            for _ in range(100):  # bounded: 100 pages of 1,000
                query: dict[str, Any] = {"MaxResults": 1000}
                if self.settings.prefix:
                    query["QueueNamePrefix"] = self.settings.prefix
                if token:
                    query["NextToken"] = token
                reply = await client.list_queues(**query)
                for url in reply.get("QueueUrls", []):
                    names.add(str(url).rstrip("/").rsplit("/", 1)[-1])
                token = reply.get("NextToken")
                if not token:
                    break
        found = set()
        for name in names:
            suffix = f"-dlq{end}"
            if name.endswith(suffix) and name.startswith(self.settings.prefix):
                queue = name[len(self.settings.prefix) : -len(suffix)]
                # a DLQ-looking name counts only beside its normal queue (a stray queue, or
                # one made before names ending in -dlq were refused, may look like a DLQ)
                if queue and f"{self.settings.prefix}{queue}{end}" in names:
                    found.add(queue)
        return sorted(found)[:limit]

    async def fetch_stats(self) -> base.QueueStats:
        """One GetQueueAttributes per SQS queue of this queue (priorities and DLQ); on a
        read-only probe a queue that does not exist (yet) counts as empty.

        The totals are None: SQS keeps no counters of what was sent, deleted or moved (only
        how many messages each queue holds now, and CloudWatch's per-queue metrics, a separate
        service minutes late), and no store of the broker's could keep them for every producer
        and worker. A DLQ's length is not a dead-lettered total (a replay or a purge shrinks
        it), so nothing stands in for one; the DLQ's length is ``dead_letter``.

        The oldest dead letter's age is None too: GetQueueAttributes has no message's age
        (CloudWatch's ApproximateAgeOfOldestMessage is that late service), and SQS has no peek:
        a ReceiveMessage of the DLQ would count a receive on its letters and hide them from
        ``dlq`` reads for a moment, and a standard queue does not even hand out its oldest
        first, so this read-only probe cannot tell it."""
        client = await self._ready_client()
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        visible = not_visible = delayed = 0
        with _mapped("stats"):
            if self.role is base.QueueRole.READER:
                await self._look_up_queues()
            # the calls go out together: a poll lasts one round trip, not four
            known = [n for _, n in self.names.by_priority if n in self._urls]
            dead = [self.names.dead_letter] if self.names.dead_letter in self._urls else []
            replies = await asyncio.gather(
                *(client.get_queue_attributes(QueueUrl=self._urls[n], AttributeNames=names)
                  for n in known),
                *(client.get_queue_attributes(QueueUrl=self._urls[n], AttributeNames=names[:2])
                  for n in dead),
            )  # fmt: skip
        for reply in replies[: len(known)]:
            a = reply.get("Attributes", {})
            visible += int(a.get("ApproximateNumberOfMessages", 0))
            not_visible += int(a.get("ApproximateNumberOfMessagesNotVisible", 0))
            delayed += int(a.get("ApproximateNumberOfMessagesDelayed", 0))
        d: dict[str, str] = replies[len(known)].get("Attributes", {}) if dead else {}
        return base.QueueStats(
            queue=self.queue,
            now=time.time(),
            backlog=visible,
            due_delayed=0,
            future_delayed=delayed,
            in_flight=not_visible,
            dead_letter=int(d.get("ApproximateNumberOfMessages", 0))
            + int(d.get("ApproximateNumberOfMessagesNotVisible", 0)),
            oldest_job_age_seconds=0.0,
            oldest_dead_letter_age_seconds=None,
            enqueued_total=None,
            completed_total=None,
            failed_total=None,
            retried_total=None,
            dead_lettered_total=None,
            cancelled_total=None,  # no cancel by id (Capabilities.cancel_by_id)
            workers_lost_total=None,
            workers_expired=0,
            workers=(),
        )

    # -- DeadLetters ------------------------------------------------------------------------

    async def _dead_letters_exist(self) -> bool:
        """Whether the DLQ exists: always for a consumer or producer (they create it); a
        reader, which creates nothing, looks a missing one up again (it may exist by now)."""
        await self._ready_client()
        if self.names.dead_letter not in self._urls and self.role is base.QueueRole.READER:
            with _mapped("dlq"):
                await self._look_up_queues()
        return self.names.dead_letter in self._urls

    async def count_dead_letters(self) -> int:
        client = await self._ready_client()
        if not await self._dead_letters_exist():
            return 0
        with _mapped("dlq"):
            reply = await client.get_queue_attributes(
                QueueUrl=self.dead_letter_url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                ],
            )
        a = reply.get("Attributes", {})
        return int(a.get("ApproximateNumberOfMessages", 0)) + int(
            a.get("ApproximateNumberOfMessagesNotVisible", 0)
        )

    async def _read_dead_letters(self) -> list[dlq.ScannedLetter]:
        """Every dead letter, oldest first, released again (a read changes nothing)."""
        client = await self._ready_client()
        if not await self._dead_letters_exist():
            return []
        with _mapped("dlq"):
            scanned = await dlq.scan_dead_letters(client, self.dead_letter_url)
            await dlq.release_scanned(client, self.dead_letter_url, scanned)
        return sorted(scanned, key=lambda s: s.letter.dead_lettered_at)

    async def list_dead_letters(self, *, offset: int = 0, limit: int = 50) -> list[base.DeadLetter]:
        newest_first = [s.letter for s in reversed(await self._read_dead_letters())]
        return newest_first[offset : offset + limit]

    async def show_dead_letter(self, job_id: str) -> base.DeadLetter | None:
        for scanned in await self._read_dead_letters():
            if scanned.letter.job_id == job_id:
                return scanned.letter
        return None

    async def _pick(
        self, job_ids: Sequence[str] | None, limit: int | None
    ) -> tuple[Any, list[dlq.ScannedLetter]]:
        """Scan the DLQ, release what is not picked, return the picked (oldest first)."""
        client = await self._ready_client()
        if not await self._dead_letters_exist():
            return client, []
        with _mapped("dlq"):
            scanned = sorted(
                await dlq.scan_dead_letters(client, self.dead_letter_url),
                key=lambda s: s.letter.dead_lettered_at,
            )
            if job_ids is not None:
                wanted = set(job_ids)
                picked = [s for s in scanned if s.letter.job_id in wanted]
            else:
                picked = scanned if limit is None else scanned[:limit]
            chosen = {id(s) for s in picked}
            await dlq.release_scanned(
                client, self.dead_letter_url, [s for s in scanned if id(s) not in chosen]
            )
        return client, picked

    def _replay_entry(
        self, body: str, carried: attributes.Carried, env: envelope_mod.JobEnvelope | None
    ) -> dict[str, Any]:
        entry = self._send_entry(
            body, carried, delay=0.0, job_id=env.id if env else "replayed", envelope=env
        )
        entry.pop("Id")
        return entry

    async def replay_dead_letters(
        self,
        *,
        job_ids: Sequence[str] | None = None,
        limit: int | None = None,
        reset_attempts: bool = False,
        rate_per_second: float = 100.0,
    ) -> list[str]:
        if not await self._dead_letters_exist():
            return []
        client, picked = await self._pick(job_ids, limit)
        with _mapped("dlq"):
            return await dlq.replay_scanned(
                client,
                self.dead_letter_url,
                picked,
                queue_url_for=self._url,
                send_entry=self._replay_entry,
                reset_attempts=reset_attempts,
                rate_per_second=rate_per_second,
            )

    async def purge_dead_letters(
        self,
        *,
        job_ids: Sequence[str] | None = None,
        older_than_seconds: float | None = None,
        everything: bool = False,
    ) -> int:
        if sum((job_ids is not None, older_than_seconds is not None, everything)) != 1:
            raise ValueError("give exactly one of job_ids, older_than_seconds, everything")
        if not await self._dead_letters_exist():
            return 0
        client, picked = await self._pick(job_ids, None)
        if older_than_seconds is not None:
            cutoff = time.time() - older_than_seconds
            keep = [s for s in picked if s.letter.dead_lettered_at > cutoff]
            picked = [s for s in picked if s.letter.dead_lettered_at <= cutoff]
            with _mapped("dlq"):
                await dlq.release_scanned(client, self.dead_letter_url, keep)
        with _mapped("dlq"):
            # what SQS deleted: a letter whose entry failed is still there
            return await dlq.delete_scanned(client, self.dead_letter_url, picked)


async def open_sqs_broker(
    url: str,
    queue: str,
    *,
    options: base.QueueOptions | None = None,
    socket_timeout: float | None = None,
    retries: int | None = None,
    role: base.QueueRole = base.QueueRole.CONSUMER,
) -> SqsBroker:
    """An :class:`SqsBroker` for ``queue`` at ``url`` (``sqs://...``), connected, queues created.

    ``socket_timeout`` (seconds, at least 25 for reads: a long poll lasts 20; a shorter one
    bounds each renewal call, see ``SqsBroker.renew_timeout``) and ``retries`` (re-sends of a
    call that got no reply) are the connection settings every broker takes.
    ``role`` (:class:`~worker_runtime.brokers.base.QueueRole`): the consumer creates the queues
    and sets its lease and redrive limit on them, a producer creates missing ones and changes no
    existing one, a reader (the operator's probe) only looks them up and reads a missing queue
    as empty."""
    broker = SqsBroker(
        queue,
        settings.parse_sqs_url(url),
        options=options,
        socket_timeout=socket_timeout,
        retries=retries,
        role=role,
    )
    await broker.connect()
    return broker
