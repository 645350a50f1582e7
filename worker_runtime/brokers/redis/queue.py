"""The queue engine: enqueue, fetch, renew, ack, retry, dead-letter and release jobs on Redis.

Every part of workerfleet that moves jobs goes through :class:`QueueClient`: the worker loop
(:mod:`worker_runtime.worker`), the producer (:mod:`worker_runtime.producer`) and the tests. Each
operation is one Lua script call (:mod:`worker_runtime.brokers.redis.scripts`) over the keys of
:mod:`worker_runtime.brokers.redis.keys`; the contract is docs/architecture.md, "Queue engine API".

Throughput comes from batching: ``fetch`` hands out up to ``count`` jobs in one call, and
``ack``/``retry``/``dead_letter``/``release`` calls made concurrently are coalesced into one
script call per kind (a batch leaves as soon as the previous one has returned, so an idle queue
adds no latency).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import math
import time
from collections.abc import Awaitable, Callable, Collection, Container, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pydantic
import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions

from worker_runtime import envelope as envelope_mod
from worker_runtime import expiry, logs
from worker_runtime.brokers import base
from worker_runtime.brokers.redis import keys as keys_mod
from worker_runtime.brokers.redis import scripts

AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster

_log = logs.get_logger("brokers.redis")


REDIS_CALL_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)
"""What a failed call to Redis raises (redis-py's errors, and socket errors it lets through)."""

MAX_BATCH = 500
"""Largest number of jobs one script call settles or enqueues (keeps each script short)."""

MAX_FETCH = 1000
"""Most jobs one fetch hands out (Lua's unpack limit and script run time stay small)."""

PROMOTE_LIMIT = 1000
"""Due delayed jobs moved to the ready streams per fetch (bounds the script's run time)."""

RateLimit = base.RateLimit
QueueOptions = base.QueueOptions
ENQUEUE_DEDUP_SECONDS = base.ENQUEUE_DEDUP_SECONDS
TRACEBACK_KEEP = base.TRACEBACK_KEEP


Token = str
"""A delivery's fencing token, ``<epoch>:<n>`` (opaque to callers: only compared and sent back;
the epoch names the server incarnation that issued it, see
:mod:`worker_runtime.brokers.redis.keys`)."""


@dataclass(frozen=True)
class Job(base.Delivery):
    """One delivery of a job to this worker; its receipt, the ``token``, fences every later call.

    It IS the seam's :class:`~worker_runtime.brokers.base.Delivery` (the broker hands it out as
    it is, with no copy per job on the worker's hot path); the engine reads only Delivery's
    fields, so any Delivery this broker made can be passed back. ``token`` and
    ``leased_until`` are the engine's names for ``receipt`` and ``lease_deadline``.
    """

    @classmethod
    def from_reply(
        cls,
        job_id: str,
        token: Token,
        envelope: envelope_mod.JobEnvelope,
        attempts: int,
        deliveries: int,
        lease_deadline: float,
        lost: int,
        fetched_at: float,
    ) -> Job:
        """The same Job as ``Job(id=..., ...)`` (arguments in field order), for the fetch loop.

        A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``: 2.6 us
        a job here, against 0.7 for filling the instance's ``__dict__`` directly (every field,
        so the result equals the ``__init__``-built one; a test holds the two to that).
        """
        job = object.__new__(cls)
        fields = job.__dict__
        fields["id"] = job_id
        fields["receipt"] = token
        fields["envelope"] = envelope
        fields["attempts"] = attempts
        fields["deliveries"] = deliveries
        fields["lease_deadline"] = lease_deadline
        fields["lost"] = lost
        fields["fetched_at"] = fetched_at
        return job

    @property
    def token(self) -> Token:
        """The fencing token (the delivery's receipt)."""
        return self.receipt

    @property
    def leased_until(self) -> float:
        """When the lease runs out (the delivery's ``lease_deadline``), epoch seconds."""
        return self.lease_deadline


Failure = base.Failure
EnqueueRequest = base.EnqueueRequest
EnqueueResult = base.EnqueueResult


@dataclass(frozen=True)
class RenewResult:
    """Which held jobs kept their lease and which were lost (token handed to someone else)."""

    renewed: tuple[str, ...]
    lost: tuple[str, ...]
    renewed_jobs: tuple[base.Delivery, ...] = ()
    """The renewed deliveries themselves (a worker may hold two deliveries of one job id)."""
    lost_jobs: tuple[base.Delivery, ...] = ()


WorkerBeat = base.WorkerBeat
DeadLetterReason = base.DeadLetterReason
build_failure = base.build_failure


def encode_failure(failure: Failure, *, retry_in_seconds: float | None = None) -> str:
    """The JSON the scripts append to a job's history (``retry_in``: the delay a retry chose)."""
    record: dict[str, object] = {
        "error_type": failure.error_type,
        "message": failure.message,
        "traceback": failure.traceback,
        "worker": failure.worker_id,
    }
    if retry_in_seconds is not None:
        record["retry_in"] = retry_in_seconds
    return json.dumps(record)


def _finished_fields(job: base.Delivery) -> tuple[int, str]:
    """A kept finished record's fields from the client: the delivery's fetch time (server ms,
    0 when unknown) and its task (control characters cleaned: they separate packed fields)."""
    fetched_ms = int(job.fetched_at * 1000) if job.fetched_at > 0 else 0
    return fetched_ms, job.envelope.task.translate(_CONTROL)


def _text(value: Any) -> str:
    # Replies carrying job data are read undecoded (see _build_jobs). An id that is not UTF-8
    # keeps its bytes as lone surrogates, which encode_packed turns back into the same bytes.
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


_RS = "\x1e"
_US = "\x1f"
_PRIORITY_TEXT = {p: p.value for p in envelope_mod.Priority}
_CONTROL = str.maketrans({c: " " for c in map(chr, range(32))})


def encode_job_ids(job_ids: Sequence[str]) -> list[bytes]:
    """Job ids as the bytes to send as script arguments (pure). An id named on a command line
    or read back from Redis that is not UTF-8 holds its bytes as lone surrogates: they are sent
    as exactly those bytes (a plain str argument would fail to encode, refusing the call)."""
    return [job_id.encode("utf-8", "surrogateescape") for job_id in job_ids]


def encode_packed(rows: Sequence[Sequence[object]]) -> bytes:
    """Pack per-job values into the one ARGV string the batch scripts split (RS/US separated).

    JSON never contains raw control characters and ids are checked by the envelope model, so
    the separators cannot occur inside a value; free text (reasons) is cleaned here. Encoded
    with ``surrogateescape``: an id read back from Redis as bytes that are not UTF-8 is sent
    as exactly those bytes.
    """
    return _RS.join(_US.join(map(str, row)) for row in rows).encode("utf-8", "surrogateescape")


T = TypeVar("T")
R = TypeVar("R")


class _Coalescer(Generic[T, R]):
    """Merges concurrent submissions into one flush call; each caller gets its own result."""

    # Five per queue client, and the operator holds a client per pool's queue.
    __slots__ = ("_flush", "_max", "_pending", "_task")

    def __init__(self, flush: Callable[[list[T]], Awaitable[list[R]]], max_batch: int) -> None:
        self._flush = flush
        self._max = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await fut

    async def _run(self) -> None:
        while self._pending:
            batch = self._pending[: self._max]
            del self._pending[: self._max]
            try:
                results = await self._flush([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
            except asyncio.CancelledError:
                for _, fut in batch + self._pending:
                    fut.cancel()
                self._pending.clear()
                raise
            except Exception as exc:
                # every caller of this batch sees the error (e.g. Redis unreachable)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)

    async def drain(self) -> None:
        """Wait until everything submitted so far has been flushed."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})


_AckItem = tuple[str, Token, str | None, float | None, base.Delivery]
_RetryItem = tuple[str, Token, float, str]
_DeadItem = tuple[str, Token, str, str, bool]
_ReleaseItem = tuple[str, Token, bool]  # id, token, lost (the holder dropped it)


class QueueClient:
    """The engine for one queue over one asyncio Redis (or Redis Cluster) client."""

    expiry_enforcement = expiry.Enforcement.WORKER_AT_START
    """Redis has no per-entry expiry on streams: job deadlines are checked by the worker."""

    def __init__(
        self,
        client: AsyncClient,
        queue: str,
        options: QueueOptions | None = None,
    ) -> None:
        self.client = client
        self.queue = keys_mod.build_queue_name(queue)
        self.options = options if options is not None else QueueOptions()
        self.keys = keys_mod.build_keys(queue)
        # The fixed KEYS and fetch arguments, encoded once: redis-py passes bytes through
        # untouched, and encoding ~25 arguments per script call was a visible share of a
        # worker's CPU per cycle.
        self._k: list[scripts.Key] = [k.encode() for k in self.keys.script_keys()]
        o = self.options
        rl = o.rate_limit
        fixed = (
            int(o.lease_seconds * 1000),
            o.max_deliveries,
            PROMOTE_LIMIT,
            rl.jobs if rl else 0,
            int(rl.per_seconds * 1000) if rl else 0,
            o.dlq_max_length,
            int(o.dlq_retention_seconds * 1000),
        )
        self._fetch_fixed = [str(v).encode() for v in fixed]  # fetch's ARGV[3..9]
        # Finished records (keep_finished_seconds > 0): the ack's KEYS[16..17] and its
        # ARGV[2..3]. Off (None), the ack sends exactly what it sent before the option existed.
        self._keep_finished: tuple[list[scripts.Key], list[scripts.Arg]] | None = None
        if o.keep_finished_seconds > 0:
            self._keep_finished = (
                [*self._k, self.keys.finished.encode(), self.keys.finished_expiry.encode()],
                [
                    str(max(1, int(o.keep_finished_seconds * 1000))).encode(),
                    str(keys_mod.FINISHED_TRIM_EXTRA).encode(),
                ],
            )
        self.dead_lettered_by_fetch: collections.Counter[str] = collections.Counter()
        """Jobs this client's fetches sent to the DLQ, by reason (poison, bad envelopes):
        they never reach the worker, so its metrics read them here."""
        self._acks: _Coalescer[_AckItem, bool] = _Coalescer(self._flush_acks, MAX_BATCH)
        self._retries: _Coalescer[_RetryItem, bool] = _Coalescer(self._flush_retries, MAX_BATCH)
        self._deads: _Coalescer[_DeadItem, bool] = _Coalescer(self._flush_deads, MAX_BATCH)
        self._releases: _Coalescer[_ReleaseItem, int] = _Coalescer(self._flush_releases, MAX_BATCH)
        self._enqueues: _Coalescer[EnqueueRequest, EnqueueResult] = _Coalescer(
            self.enqueue_many, MAX_BATCH
        )

    # -- enqueue -----------------------------------------------------------------------------

    async def enqueue(self, request: EnqueueRequest) -> EnqueueResult:
        """Add one job (see :meth:`enqueue_many`); concurrent calls share one script call.

        A non-finite delay raises ``ValueError`` here, before the call joins a batch: ``inf``
        could never come due (and failed the whole batch's encoding), ``nan`` ran at once.
        """
        base.validate_delay(request.delay_seconds)
        return await self._enqueues.submit(request)

    async def enqueue_many(self, requests: Sequence[EnqueueRequest]) -> list[EnqueueResult]:
        """Add jobs atomically per batch of ≤ MAX_BATCH; idempotency keys deduplicate."""
        for request in requests:  # all checked before any is sent: nothing is half-applied
            base.validate_delay(request.delay_seconds)
        out: list[EnqueueResult] = []
        for start in range(0, len(requests), MAX_BATCH):
            chunk = requests[start : start + MAX_BATCH]
            keys, args = build_enqueue_call(
                self.keys, chunk, dedup_seconds=self.options.enqueue_dedup_seconds
            )
            raw = await scripts.ENQUEUE(self.client, keys, args)
            out.extend(build_enqueue_results(raw))
        return out

    # -- fetch -------------------------------------------------------------------------------

    def _fetch_args(self, worker_id: str, count: int) -> list[scripts.Arg]:
        return [worker_id.encode(), count, *self._fetch_fixed]

    async def fetch(
        self,
        worker_id: str,
        count: int,
        *,
        block: float = 0.0,
        wake: asyncio.Event | None = None,
        holding: Container[tuple[str, Token]] = (),
    ) -> list[Job]:
        """Up to ``count`` jobs for ``worker_id``, leased and fenced, in priority order.

        One script call promotes due delayed jobs, reclaims expired leases (poison → DLQ) and
        reads new entries. With ``block`` > 0 and nothing to do, waits for new entries (or the
        next due/lease time) up to ``block`` seconds and tries again; [] on timeout. Setting
        ``wake`` (e.g. on SIGTERM) ends a wait at once with [].

        ``holding``: the (job id, token) deliveries the caller still holds. An expired lease of
        the caller's own is never handed to it again (that would start a second run next to
        the one still going): the script renews it, and a delivery the caller does not hold
        any more ends here as a lost delivery (lost+1: back on the queue, or to the DLQ as
        ``max_deliveries``), as a reclaim would end it.
        """
        if count <= 0 or (wake is not None and wake.is_set()):
            return []
        deadline = time.monotonic() + block
        args = self._fetch_args(worker_id, min(count, MAX_FETCH))
        while True:
            raw = await scripts.FETCH(self.client, self._k, args, decode=False)
            now_ms, poisoned, next_event, last_ids, flat, own = raw
            if int(poisoned):
                self.dead_lettered_by_fetch[DeadLetterReason.MAX_DELIVERIES.value] += int(poisoned)
            jobs, invalid = self._build_jobs(float(now_ms), flat)
            await self._follow_up_fetch(own, holding, invalid, worker_id)
            if jobs or block <= 0:
                return jobs
            if invalid:
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (wake is not None and wake.is_set()):
                return []
            wait = remaining
            if int(next_event) >= 0:
                wait = min(wait, max(0.001, (int(next_event) - int(now_ms)) / 1000.0))
            # an idle wait never outlives a typical socket timeout; the loop re-checks
            wait = min(wait, 2.0)
            if last_ids:
                waiting = self._wait_for_entries([_text(x) for x in last_ids], wait)
            else:
                waiting = asyncio.sleep(wait)
            if wake is None:
                await waiting
                continue
            if await _first_or_wake(waiting, wake):
                return []

    async def ack_and_fetch(
        self,
        jobs: Sequence[base.Delivery],
        worker_id: str,
        count: int,
        *,
        block: float = 0.0,
        wake: asyncio.Event | None = None,
        holding: Container[tuple[str, Token]] = (),
    ) -> tuple[list[bool], list[Job]]:
        """Acknowledge ``jobs`` and fetch up to ``count`` new ones in ONE round trip.

        The acks are applied first (fenced, exactly like :meth:`ack`), then the fetch runs as
        :meth:`fetch`; a worker whose slots just freed saves a round trip per cycle. With
        ``block`` > 0 and nothing fetched, it continues as ``fetch(block=...)``.
        """
        if not jobs:
            return [], await self.fetch(worker_id, count, block=block, wake=wake, holding=holding)
        if count <= 0 or (wake is not None and wake.is_set()):
            return [await self.ack(j) for j in jobs], []
        keys = self._k
        if self._keep_finished is None:
            # encode_packed's format (id, token, no done key, ttl 0), written directly: ~1 us
            # per job less on the worker's hot path, the same bytes
            packed = _RS.join([f"{j.id}{_US}{j.receipt}{_US}0{_US}0" for j in jobs]).encode(
                "utf-8", "surrogateescape"
            )
            ack_args: list[scripts.Arg] = [packed]
        else:
            keys, keep_args = self._keep_finished
            rows = [(j.id, j.receipt, 0, 0, *_finished_fields(j)) for j in jobs]
            ack_args = [encode_packed(rows), *keep_args]
        raw = await scripts.ACK_FETCH(
            self.client,
            keys,
            [*self._fetch_args(worker_id, min(count, MAX_FETCH)), *ack_args],
            decode=False,
        )
        now_ms, poisoned, _next_event, _last_ids, flat, own, acked = raw
        if int(poisoned):
            self.dead_lettered_by_fetch[DeadLetterReason.MAX_DELIVERIES.value] += int(poisoned)
        fetched, invalid = self._build_jobs(float(now_ms), flat)
        await self._follow_up_fetch(own, holding, invalid, worker_id)
        if not fetched and block > 0:
            fetched = await self.fetch(worker_id, count, block=block, wake=wake, holding=holding)
        return [int(f) == 1 for f in acked], fetched

    async def adopt(self, worker_id: str, held: Collection[tuple[str, Token]] = ()) -> list[Job]:
        """The jobs delivered to ``worker_id`` that it does not hold, with fresh leases.

        After a fetch that failed on a Redis error the worker cannot know whether the script
        ran: if it did, its jobs are leased to the worker but never reached it. This hands them
        over (same delivery, same token) instead of leaving them to expire (a lost delivery).
        ``held`` lists the (job id, token) deliveries the worker already has; they are skipped.
        """
        args: list[scripts.Arg] = [
            worker_id,
            int(self.options.lease_seconds * 1000),
            MAX_FETCH + len(held),
            encode_packed(list(held)),
        ]
        now_ms, flat = await scripts.ADOPT(self.client, self._k, args, decode=False)
        jobs, invalid = self._build_jobs(float(now_ms), flat)
        for job_id, token, error in invalid:
            await self._dead_letter_invalid(job_id, token, error, worker_id)
        return jobs

    async def _follow_up_fetch(
        self,
        own: Sequence[Any],
        holding: Container[tuple[str, Token]],
        invalid: Sequence[tuple[str, Token, envelope_mod.EnvelopeError]],
        worker_id: str,
    ) -> None:
        # The fetch script has run: its jobs are leased to the caller whatever happens next. A
        # Redis error in these follow-up calls must not be raised instead of returning them:
        # the caller would never see those jobs (and an error that says "never sent", e.g. a
        # refused connection, tells it there is nothing to adopt), so they would wait out
        # their lease and count a lost delivery towards the poison limit. What a failed
        # follow-up leaves undone is done later anyway: a renewed lease nobody holds expires
        # and is reclaimed, an unreadable envelope is dead-lettered on its next delivery.
        try:
            await self._release_unheld(own, holding)
        except REDIS_CALL_ERRORS as exc:
            _log.warning(
                "releasing leases this worker no longer holds failed; they expire instead",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )
        for job_id, token, error in invalid:
            try:
                await self._dead_letter_invalid(job_id, token, error, worker_id)
            except REDIS_CALL_ERRORS as exc:
                _log.warning(
                    "dead-lettering an unreadable envelope failed; it is tried again on its"
                    " next delivery",
                    extra={"job_id": job_id, "error": f"{type(exc).__name__}: {exc}"},
                )

    async def _release_unheld(
        self, own: Sequence[Any], holding: Container[tuple[str, Token]]
    ) -> None:
        # The caller's own expired leases, renewed by the fetch script: one it no longer holds
        # (e.g. it dropped the job after its settle kept failing) ends as a lost delivery, as
        # a reclaim would end it — back on the queue, or to the DLQ at max deliveries —
        # instead of being renewed for nobody. Fenced: a delivery acknowledged meanwhile is
        # left alone.
        for i in range(0, len(own), 2):
            job_id, token = _text(own[i]), _text(own[i + 1])
            if (job_id, token) in holding:
                continue
            if await self._releases.submit((job_id, token, True)) == 2:
                self.dead_lettered_by_fetch[DeadLetterReason.MAX_DELIVERIES.value] += 1

    async def _dead_letter_invalid(
        self, job_id: str, token: Token, error: envelope_mod.EnvelopeError, worker_id: str
    ) -> None:
        failure = Failure("EnvelopeError", str(error), "", worker_id)
        item = (job_id, token, error.reason, encode_failure(failure), False)
        if await self._deads.submit(item):
            self.dead_lettered_by_fetch[error.reason] += 1

    async def _wait_for_entries(self, last_ids: list[str], wait: float) -> None:
        block_ms = max(1, int(wait * 1000))
        try:
            if isinstance(self.client, redis.asyncio.cluster.RedisCluster):
                # Sent straight to the node of the queue's slot: to route an XREAD itself,
                # redis-py asks the server for its keys (COMMAND GETKEYS, twice) every time,
                # which doubled an idle worker's round trips. Redirects are still followed.
                node = self.client.get_node_from_key(self.keys.ready[0])
                await self.client.execute_command(
                    "XREAD",
                    "COUNT",
                    1,
                    "BLOCK",
                    block_ms,
                    "STREAMS",
                    *self.keys.ready,
                    *last_ids,
                    target_nodes=node,
                )
                return
            streams: dict[Any, Any] = dict(zip(self.keys.ready, last_ids, strict=True))
            await self.client.xread(streams, count=1, block=block_ms)
        except (TimeoutError, redis.exceptions.TimeoutError):
            return

    def _build_jobs(
        self, now_ms: float, flat: Sequence[Any]
    ) -> tuple[list[Job], list[tuple[str, Token, envelope_mod.EnvelopeError]]]:
        jobs: list[Job] = []
        invalid: list[tuple[str, Token, envelope_mod.EnvelopeError]] = []
        now = now_ms / 1000.0
        until = now + self.options.lease_seconds
        # ``flat`` comes undecoded (bytes): a stored envelope need not be UTF-8, and decoding the
        # whole reply would fail it for every job of the batch. The envelope model parses the
        # bytes itself; one that fails is dead-lettered alone (parse_envelope names why).
        # the model's own validator: model_validate_json is a wrapper costing ~1 us a job here
        validate = envelope_mod.JobEnvelope.__pydantic_validator__.validate_json
        new_job = Job.from_reply
        for i in range(0, len(flat), 6):
            # _text inlined: two calls per job on the hot path
            job_id, token = flat[i], flat[i + 1]
            if isinstance(job_id, bytes):
                job_id = job_id.decode("utf-8", "surrogateescape")
            if isinstance(token, bytes):
                token = token.decode("utf-8", "surrogateescape")
            raw_env = flat[i + 2]
            try:
                env = validate(raw_env)
            except pydantic.ValidationError:
                try:
                    env = envelope_mod.parse_envelope(raw_env)
                except envelope_mod.EnvelopeError as error:
                    invalid.append((job_id, token, error))
                    continue
            jobs.append(
                new_job(
                    job_id,
                    token,
                    env,
                    int(flat[i + 3]),
                    int(flat[i + 4]),
                    until,
                    int(flat[i + 5]),
                    now,
                )
            )
        return jobs, invalid

    # -- leases and heartbeats ---------------------------------------------------------------

    async def renew(
        self,
        worker_id: str,
        jobs: Sequence[base.Delivery],
        *,
        heartbeat: WorkerBeat | None = None,
    ) -> RenewResult:
        """Extend the leases of all ``jobs`` in one call; report the ones no longer ours."""
        args: list[scripts.Arg] = [
            worker_id,
            int(self.options.lease_seconds * 1000),
            encode_heartbeat(heartbeat) if heartbeat else "",
            int(heartbeat.ttl_seconds * 1000) if heartbeat else 0,
            encode_packed([(job.id, job.receipt) for job in jobs]),
        ]
        flags = await scripts.RENEW(self.client, self._k, args)
        renewed = tuple(j for j, f in zip(jobs, flags, strict=True) if int(f) == 1)
        lost = tuple(j for j, f in zip(jobs, flags, strict=True) if int(f) != 1)
        return RenewResult(
            renewed=tuple(j.id for j in renewed),
            lost=tuple(j.id for j in lost),
            renewed_jobs=renewed,
            lost_jobs=lost,
        )

    async def heartbeat(self, beat: WorkerBeat) -> None:
        """Write the worker's heartbeat record (and reap workers whose heartbeat expired)."""
        await self.renew(beat.worker_id, (), heartbeat=beat)

    async def deregister(self, worker_id: str) -> None:
        """Remove a worker's heartbeat on a clean exit (it is not counted as lost)."""
        await scripts.DEREGISTER(self.client, self._k, [worker_id])

    # -- settling a delivery -----------------------------------------------------------------

    async def ack(
        self,
        job: base.Delivery,
        *,
        done_key: str | None = None,
        done_ttl_seconds: float | None = None,
    ) -> bool:
        """Finish a job; False when the token is stale. ``done_key`` is set with the ack."""
        return await self._acks.submit((job.id, job.receipt, done_key, done_ttl_seconds, job))

    async def retry(self, job: base.Delivery, failure: Failure, *, delay_seconds: float) -> bool:
        """Record a failure (attempts+1) and make the job due again after ``delay_seconds``.

        A non-finite delay raises ``ValueError`` here, before the call joins a batch: it
        could never come due, and it must not fail the retries coalesced with it.
        """
        base.validate_delay(delay_seconds, "a retry delay")
        failure_json = encode_failure(failure, retry_in_seconds=delay_seconds)
        item = (job.id, job.receipt, delay_seconds, failure_json)
        return await self._retries.submit(item)

    async def fetch_previous_delay(self, job_id: str) -> float | None:
        """The delay the job's last retry waited (its history's last ``retry_in``), if any.

        Decorrelated jitter grows from the previous delay; a job's retries may run on any
        worker, so the delay is read back from the job's history (one read, on failures only).
        """
        raw = await self.client.hget(self.keys.history, job_id)
        try:
            history = json.loads(raw) if raw is not None else None
        except ValueError:
            return None
        if not isinstance(history, list) or not history or not isinstance(history[-1], dict):
            return None
        previous = history[-1].get("retry_in")
        if isinstance(previous, int | float) and math.isfinite(previous) and previous >= 0:
            return float(previous)
        return None

    async def fetch_delivery_fate(self, job: base.Delivery) -> base.DeliveryFate:
        """What became of ``job``'s delivery (read-only; see :class:`base.DeliveryFate`).

        Asked only after a settle of it was answered stale following a try that got no reply,
        never on the hot path. A delivery whose token is still in ``inflight`` is HELD; else
        the live job's ``state`` (``prio|attempts|deliveries|lost``) answers; a job that has
        none any more is read in its dead letter (which records the same counts); an acked job
        leaves nothing behind (its env, state and history are deleted): GONE. Plain reads in
        that order: a job moves from the live state to the DLQ in one script, so a job seen
        with no state is already where it ends.
        """
        flight = await self.client.hget(self.keys.inflight, job.id)
        if flight is not None and _text(flight).split("|", 1)[0] == job.receipt:
            return base.DeliveryFate.HELD
        raw = await self.client.hget(self.keys.state, job.id)
        if raw is not None:
            parts = _text(raw).split("|")
            if len(parts) != 4 or not (parts[2].isdigit() and parts[3].isdigit()):
                return base.DeliveryFate.UNKNOWN
            return base.judge_delivery_fate(job, deliveries=int(parts[2]), lost=int(parts[3]))
        letter = await self.client.hget(self.keys.dlq_data, job.id)
        if letter is None:
            return base.DeliveryFate.GONE
        try:
            record = json.loads(letter)
            return base.judge_delivery_fate(
                job,
                deliveries=int(record["deliveries"]),
                lost=int(record["lost"]),
                dead_lettered_at=float(record["dead_lettered_at"]),
            )
        except (ValueError, TypeError, KeyError):
            return base.DeliveryFate.UNKNOWN

    async def dead_letter(
        self,
        job: base.Delivery,
        reason: str,
        *,
        failure: Failure | None = None,
        attempt: bool = True,
    ) -> bool:
        """Move the job to the DLQ; with ``failure`` and ``attempt`` it counts as an attempt."""
        failure_json = encode_failure(failure) if failure else ""
        item = (job.id, job.receipt, str(reason), failure_json, bool(failure) and attempt)
        return await self._deads.submit(item)

    async def release(self, job: base.Delivery) -> bool:
        """Give the job back to the ready queue without spending an attempt (drain)."""
        return await self._releases.submit((job.id, job.receipt, False)) == 1

    async def cancel_jobs(self, job_ids: Sequence[str]) -> list[base.CancelOutcome]:
        """Cancel the named jobs that have not started (``lua/cancel.lua``: each judged and
        removed in one script step; :class:`base.Cancelling` says what each outcome means),
        ≤ MAX_BATCH ids per script call. One outcome per id, in order."""
        out: list[base.CancelOutcome] = []
        for start in range(0, len(job_ids), MAX_BATCH):
            chunk = encode_job_ids(job_ids[start : start + MAX_BATCH])
            out.extend(build_cancel_outcomes(await scripts.CANCEL(self.client, self._k, chunk)))
        return out

    async def aclose(self) -> None:
        """Wait for every batched settle call to reach Redis."""
        await self._enqueues.drain()
        for c in (self._acks, self._retries, self._deads, self._releases):
            await c.drain()

    async def _flush_acks(self, items: list[_AckItem]) -> list[bool]:
        keep = self._keep_finished
        fixed, extra_args = (self._k, []) if keep is None else keep
        keys: list[scripts.Key] = fixed
        rows: list[tuple[object, ...]] = []
        for job_id, token, done_key, ttl, job in items:
            # with finished records kept, each row also carries the delivery's fetch time and
            # task (ack.lua's ARGV[1]); without, the four fields it always had
            tail = () if keep is None else _finished_fields(job)
            if done_key is None:
                rows.append((job_id, token, 0, 0, *tail))
                continue
            if keys is fixed:
                keys = list(fixed)
            keys.append(self.keys.done(done_key))
            rows.append((job_id, token, len(keys), int((ttl or 86_400.0) * 1000), *tail))
        flags = await scripts.ACK(self.client, keys, [encode_packed(rows), *extra_args])
        return [int(f) == 1 for f in flags]

    async def _flush_retries(self, items: list[_RetryItem]) -> list[bool]:
        rows = [
            (job_id, token, int(max(0.0, delay) * 1000), failure_json)
            for job_id, token, delay, failure_json in items
        ]
        flags = await scripts.RETRY(self.client, self._k, [encode_packed(rows)])
        return [int(f) == 1 for f in flags]

    async def _flush_deads(self, items: list[_DeadItem]) -> list[bool]:
        o = self.options
        rows = [
            (job_id, token, reason.translate(_CONTROL), 1 if counts else 0, failure_json)
            for job_id, token, reason, failure_json, counts in items
        ]
        args: list[scripts.Arg] = [
            o.dlq_max_length,
            int(o.dlq_retention_seconds * 1000),
            encode_packed(rows),
        ]
        flags = await scripts.DEAD_LETTER(self.client, self._k, args)
        return [int(f) == 1 for f in flags]

    async def _flush_releases(self, items: list[_ReleaseItem]) -> list[int]:
        o = self.options
        args: list[scripts.Arg] = [
            o.max_deliveries,
            o.dlq_max_length,
            int(o.dlq_retention_seconds * 1000),
            encode_packed([(job_id, token, 1 if lost else 0) for job_id, token, lost in items]),
        ]
        return [int(f) for f in await scripts.RELEASE(self.client, self._k, args)]


async def delete_queue(client: AsyncClient, queue_name: str) -> int:
    """Delete every key of a queue (jobs, DLQ, counters, heartbeats, dedup and done markers).

    For an explicit "delete the queue's data" request only (deleting a WorkerPool keeps the
    data). Uses SCAN with the queue's hash-tag prefix, never KEYS. Returns keys deleted.
    """
    k = keys_mod.build_keys(queue_name)
    deleted = int(await client.delete(*k.script_keys()))
    batch: list[str] = []
    # idempotency and done markers are one key each; they share the prefix (and the slot)
    async for name in client.scan_iter(match=_glob_escape(k.prefix) + ":*", count=1000):
        batch.append(name.decode() if isinstance(name, bytes) else name)
        if len(batch) >= 500:
            deleted += int(await client.delete(*batch))
            batch.clear()
    if batch:
        deleted += int(await client.delete(*batch))
    return deleted


_CANCEL_ATTEMPTS = 100
_CANCEL_RECHECK_SECONDS = 0.01


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def _first_or_wake(waiting: Awaitable[Any], wake: asyncio.Event) -> bool:
    """Await ``waiting`` unless ``wake`` is set first (then cancel it); True if woken."""
    wait_task = asyncio.ensure_future(waiting)
    wake_task = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({wait_task, wake_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        wake_task.cancel()
        await _cancel_until_done(wait_task)
        # a cancelled blocking read makes redis-py drop that connection; nothing else leaks
        await asyncio.gather(wait_task, wake_task, return_exceptions=True)
    return wake.is_set()


async def _cancel_until_done(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` again until it ends (bounded).

    Python 3.11's ``asyncio.wait_for`` loses a cancel that lands in the same loop step as
    its inner future finishing, and redis-py wraps every socket write in one; a blocking
    read whose cancel was lost would then run to its end (up to 2 s) and delay a drain.
    A second cancel lands on the read itself.
    """
    for _ in range(_CANCEL_ATTEMPTS):
        if task.done():
            return
        task.cancel()
        await asyncio.wait({task}, timeout=_CANCEL_RECHECK_SECONDS)


def encode_heartbeat(beat: WorkerBeat) -> str:
    """The heartbeat record a worker writes (``last_seen`` is added from server time)."""
    data = dataclasses.asdict(beat)
    data.pop("ttl_seconds")
    return json.dumps(data)


def build_enqueue_call(
    queue_keys: keys_mod.QueueKeys,
    requests: Sequence[EnqueueRequest],
    *,
    dedup_seconds: float = ENQUEUE_DEDUP_SECONDS,
) -> tuple[list[str], list[scripts.Arg]]:
    """KEYS and ARGV of one enqueue script call (shared by the async and sync producers)."""
    keys = queue_keys.script_keys()
    keys.append(queue_keys.enqueued)
    enqueued_idx = len(keys)
    rows: list[str] = []
    envelopes: list[scripts.Arg] = []
    for req in requests:
        env = req.envelope
        idx = 0
        ttl_ms = 0
        if env.idempotency_key is not None:
            keys.append(queue_keys.idempotency(env.idempotency_key))
            idx = len(keys)
            ttl = req.idempotency_ttl_seconds if req.idempotency_ttl_seconds else 86_400.0
            ttl_ms = int(ttl * 1000)
        delay_ms = int(max(0.0, req.delay_seconds) * 1000)
        # One record of encode_packed's format, written directly (the producer's hot path):
        # id, priority, delay ms, idempotency key index, idempotency ttl ms.
        rows.append(
            f"{env.id}{_US}{_PRIORITY_TEXT[env.priority]}{_US}{delay_ms}{_US}{idx}{_US}{ttl_ms}"
        )
        # each envelope is its own argument: the script never copies it out of a packed string
        envelopes.append(req.envelope_bytes())
    packed = _RS.join(rows).encode("utf-8", "surrogateescape")
    return keys, [enqueued_idx, int(dedup_seconds * 1000), packed, *envelopes]


def build_cancel_outcomes(raw: Sequence[Any]) -> list[base.CancelOutcome]:
    """Parse the cancel script's reply (one outcome name per id)."""
    return [base.CancelOutcome(_text(value)) for value in raw]


def build_enqueue_results(raw: Sequence[Any]) -> list[EnqueueResult]:
    """Parse the enqueue script's reply."""
    return [
        EnqueueResult(job_id=_text(raw[i]), created=int(raw[i + 1]) == 1)
        for i in range(0, len(raw), 2)
    ]
