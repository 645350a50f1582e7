"""MemoryBroker: the broker contract as plain Python, in one process — its executable reference.

Opened by :func:`worker_runtime.brokers.open_broker` for ``memory://NAME`` (brokers opened on the
same NAME and queue in one process share their jobs, so a producer and a worker can meet) or
built directly with a fake clock. Used by the contract suite
(``tests/worker_runtime/brokers/test_contract.py``), where it runs the same checks as Redis,
and by tests of worker logic that need no server. Nothing here is durable or shared between
processes; it is not for production.

Every promise of :mod:`worker_runtime.brokers.base` is kept the simple way: one dict per
concern, a counter for receipts, and time read only from ``clock`` (pass a fake one to make
leases expire, delays come due and the rate limit refill without sleeping). A blocking fetch
re-checks every :data:`POLL_SECONDS` of real time, so an advanced fake clock is noticed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Container, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker_runtime import envelope as envelope_mod
from worker_runtime.brokers import base

POLL_SECONDS = 0.01
"""How often a blocking fetch looks again (real time) while it waits."""

REPLAY_BATCH = 100
"""Most dead letters replayed between two rate-limit pauses."""

PURGE_STEP = 1000
"""Most dead letters one step of ``purge_dead_letters_in_steps`` deletes (as on Redis)."""

CAPABILITIES = base.FULL_CONTRACT
"""The reference declares every promise it checks."""

Clock = Callable[[], float]

CONNECTION_SETTINGS = frozenset({"socket_timeout", "retries", "health_check_interval"})
"""Settings every broker is opened with (the worker passes them); nothing to connect here."""

_PRIORITIES = tuple(p.value for p in envelope_mod.Priority)  # high, normal, low


@dataclass
class _Job:
    envelope: envelope_mod.JobEnvelope
    attempts: int = 0
    deliveries: int = 0
    lost: int = 0
    history: list[base.FailureRecord] = field(default_factory=list)
    last_retry_in: float | None = None
    ready_since: float = 0.0


@dataclass
class _Lease:
    receipt: str
    worker_id: str
    deadline: float
    fetched_at: float


@dataclass
class _Queue:
    """The state of one queue, shared by every broker opened on it."""

    jobs: dict[str, _Job] = field(default_factory=dict)
    ready: dict[str, collections.deque[str]] = field(
        default_factory=lambda: {p: collections.deque() for p in _PRIORITIES}
    )
    delayed: dict[str, float] = field(default_factory=dict)
    leases: dict[str, _Lease] = field(default_factory=dict)
    dlq: dict[str, base.DeadLetter] = field(default_factory=dict)  # insertion = age order
    enqueued: dict[str, float] = field(default_factory=dict)
    idempotency: dict[str, tuple[str, float]] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    finished: dict[str, tuple[base.JobStatus, float]] = field(default_factory=dict)
    """Acknowledged jobs' records and when each expires, oldest first (keep_finished_seconds)."""
    sweep_at: int = 1024  # idempotency + done entries at which the expired ones are dropped
    counters: collections.Counter[str] = field(default_factory=collections.Counter)
    workers: dict[str, tuple[base.WorkerHeartbeat, float]] = field(default_factory=dict)
    bucket: tuple[float, float] | None = None  # (tokens, at)
    fence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    lock: threading.RLock = field(default_factory=threading.RLock)
    """Held by every call: a worker's control thread renews from its own event loop."""


_STORES: dict[tuple[str, str], _Queue] = {}

_TOPICS: dict[tuple[str, str], set[str]] = {}
"""(store, topic) → subscribed groups: the memory broker's subscription registry."""

_TRACES: dict[tuple[str, str], tuple[list[base.TraceEntry], float]] = {}
"""(store, correlation id) → (entries, expiry): the memory broker's trace index."""

_SWEEP_FLOOR = 1024
"""Entries with an expiry (idempotency keys, done markers, traces) are kept until there are
this many, or twice as many as after the last sweep; then the expired ones are dropped, so
the memory a long-lived process gives them follows the live ones (amortized: one pass per
doubling, never one per call)."""


def _sweep_expired(q: _Queue, now: float) -> None:
    """Drop ``q``'s expired idempotency keys and done markers when their count calls for it."""
    if len(q.idempotency) + len(q.done) <= q.sweep_at:
        return
    for key in [k for k, (_, until) in q.idempotency.items() if until <= now]:
        del q.idempotency[key]
    for key in [k for k, until in q.done.items() if until <= now]:
        del q.done[key]
    q.sweep_at = max(_SWEEP_FLOOR, 2 * (len(q.idempotency) + len(q.done)))


_traces_sweep_at = _SWEEP_FLOOR


def _sweep_expired_traces(now: float) -> None:
    """Drop the expired traces of every store when their count calls for it (see above)."""
    global _traces_sweep_at
    if len(_TRACES) <= _traces_sweep_at:
        return
    for key in [k for k, (_, until) in _TRACES.items() if until < now]:
        del _TRACES[key]
    _traces_sweep_at = max(_SWEEP_FLOOR, 2 * len(_TRACES))


def _add_jobs(
    q: _Queue,
    requests: Sequence[base.EnqueueRequest],
    now: float,
    window: float,
    *,
    keys: bool = True,
) -> list[base.EnqueueResult]:
    """Enqueue ``requests`` into ``q`` (its lock held): dedup by idempotency key and by job
    id within ``window`` seconds, exactly as ``enqueue_many`` promises. ``keys=False`` (a
    publish, as on Redis) dedups by job id only: the idempotency key is the handler's."""
    # ids are remembered in the order they came (the clock moves forward): forget from the
    # oldest until one is inside the window, instead of reading them all on every call
    while q.enqueued:
        job_id, at = next(iter(q.enqueued.items()))
        if now - at <= window:
            break
        del q.enqueued[job_id]
    _sweep_expired(q, now)
    out: list[base.EnqueueResult] = []
    for req in requests:
        env = req.envelope
        key = env.idempotency_key if keys else None
        if key is not None:
            first = q.idempotency.get(key)
            if first is not None and first[1] > now:
                out.append(base.EnqueueResult(first[0], False))
                continue
        if env.id in q.jobs or env.id in q.enqueued:
            out.append(base.EnqueueResult(env.id, False))
            continue
        if key is not None:
            ttl = req.idempotency_ttl_seconds or 86_400.0
            q.idempotency[key] = (env.id, now + ttl)
        if window > 0:
            q.enqueued[env.id] = now
        q.jobs[env.id] = _Job(envelope=env)
        q.counters["enqueued"] += 1
        if req.delay_seconds > 0:
            q.delayed[env.id] = now + req.delay_seconds
        else:
            _make_ready(q, env.id, now)
        out.append(base.EnqueueResult(env.id, True))
    return out


FINISHED_TRIM_EXTRA = 10
"""Expired finished records an ack drops beyond its own (the Redis ack's bound, keys.py)."""


def _keep_finished(
    q: _Queue, job_id: str, job: _Job, run_seconds: float, now: float, keep: float
) -> None:
    """Record acknowledged ``job`` for ``keep`` seconds (its lock held), first dropping at most
    1 + FINISHED_TRIM_EXTRA expired records, oldest first, as the Redis ack does."""
    for _ in range(1 + FINISHED_TRIM_EXTRA):
        oldest = next(iter(q.finished.items()), None)
        if oldest is None or oldest[1][1] > now:
            break
        del q.finished[oldest[0]]
    q.finished.pop(job_id, None)  # a record of an earlier run of this id: the newest is kept
    record = base.JobStatus(
        job_id=job_id,
        state=base.JobState.DONE,
        checked_at=now,
        task=job.envelope.task,
        attempts=job.attempts,
        deliveries=job.deliveries,
        finished_at=now,
        run_seconds=max(0.0, run_seconds),
    )
    q.finished[job_id] = (record, now + keep)


def _make_ready(q: _Queue, job_id: str, now: float) -> None:
    job = q.jobs[job_id]
    job.ready_since = now
    q.ready[job.envelope.priority.value].append(job_id)


def forget_stores() -> None:
    """Drop every named in-memory queue and topic (tests call this between cases)."""
    _STORES.clear()
    _TOPICS.clear()
    _TRACES.clear()


class MemoryBroker:
    """One queue held in this process (see the module docstring)."""

    capabilities = CAPABILITIES

    def __init__(
        self,
        queue: str,
        options: base.QueueOptions | None = None,
        *,
        clock: Clock = time.time,
        store: str | None = None,
    ) -> None:
        self.queue = base.validate_queue_name(queue)
        self.options = options if options is not None else base.QueueOptions()
        self.clock = clock
        self.dead_lettered_by_fetch: collections.Counter[str] = collections.Counter()
        if store is None:
            self._q = _Queue()
        else:
            self._q = _STORES.setdefault((store, queue), _Queue())
        # topics reach the subscription queues of the same store (a private broker gets a
        # store of its own: its subscriptions are reachable only through it)
        self._store = store if store is not None else f"private-{id(self)}"
        self._closed = False

    # -- helpers ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this broker was closed")

    def _make_ready(self, job_id: str, now: float) -> None:
        _make_ready(self._q, job_id, now)

    def _current(self, delivery: base.Delivery) -> _Job | None:
        lease = self._q.leases.get(delivery.id)
        if lease is None or lease.receipt != delivery.receipt:
            return None
        return self._q.jobs.get(delivery.id)

    def _record(self, job: _Job, failure: base.Failure, now: float) -> None:
        job.history.append(
            base.FailureRecord(
                error_type=failure.error_type,
                message=failure.message,
                traceback=failure.traceback,
                worker_id=failure.worker_id,
                at=now,
                attempt=job.attempts,
                delivery=job.deliveries,
            )
        )

    def _to_dlq(self, job_id: str, reason: str, worker_id: str, now: float) -> None:
        q = self._q
        job = q.jobs.pop(job_id)
        q.leases.pop(job_id, None)
        q.delayed.pop(job_id, None)
        env = job.envelope
        q.dlq[job_id] = base.DeadLetter(
            job_id=job_id,
            task=env.task,
            reason=reason,
            priority=env.priority.value,
            dead_lettered_at=now,
            attempts=job.attempts,
            deliveries=job.deliveries,
            lost=job.lost,
            worker_id=worker_id,
            correlation_id=env.correlation_id,
            first_failure_at=job.history[0].at if job.history else None,
            last_failure_at=job.history[-1].at if job.history else None,
            history=tuple(job.history),
            envelope_raw=envelope_mod.encode_envelope_text(env),
        )
        q.counters["dead_lettered"] += 1
        # retention, as on every insert: by age, then by length (oldest go first)
        for old_id, letter in list(q.dlq.items()):
            if now - letter.dead_lettered_at > self.options.dlq_retention_seconds:
                del q.dlq[old_id]
        while len(q.dlq) > self.options.dlq_max_length:
            del q.dlq[next(iter(q.dlq))]

    def _end_lost(self, job_id: str, now: float) -> bool:
        """A delivery that ended without a verdict: lost+1, back to ready or, at max
        deliveries, to the DLQ. True when dead-lettered."""
        job = self._q.jobs[job_id]
        lease = self._q.leases.pop(job_id)
        job.lost += 1
        if job.lost >= self.options.max_deliveries:
            reason = base.DeadLetterReason.MAX_DELIVERIES.value
            self._to_dlq(job_id, reason, lease.worker_id, now)
            self.dead_lettered_by_fetch[reason] += 1
            return True
        self._make_ready(job_id, now)
        return False

    def _grant(self, count: int, now: float) -> int:
        limit = self.options.rate_limit
        if limit is None:
            return count
        rate = limit.jobs / limit.per_seconds
        tokens, at = self._q.bucket or (float(limit.jobs), now)
        tokens = min(float(limit.jobs), tokens + max(0.0, now - at) * rate)
        granted = min(count, math.floor(tokens))
        self._q.bucket = (tokens - granted, now)
        return granted

    def _lease(self, job_id: str, worker_id: str, now: float) -> base.Delivery:
        job = self._q.jobs[job_id]
        job.deliveries += 1
        receipt = f"m:{next(self._q.fence)}"
        deadline = now + self.options.lease_seconds
        self._q.leases[job_id] = _Lease(receipt, worker_id, deadline, now)
        return base.Delivery(
            id=job_id,
            receipt=receipt,
            envelope=job.envelope,
            attempts=job.attempts,
            deliveries=job.deliveries,
            lease_deadline=deadline,
            lost=job.lost,
            fetched_at=now,
        )

    def _fetch_now(
        self, worker_id: str, count: int, holding: Container[tuple[str, str]]
    ) -> list[base.Delivery]:
        q = self._q
        now = self.clock()
        for job_id, due in list(q.delayed.items()):
            if due <= now:
                del q.delayed[job_id]
                self._make_ready(job_id, now)
        granted = self._grant(count, now)
        out: list[base.Delivery] = []
        for job_id, lease in list(q.leases.items()):
            if lease.deadline > now:
                continue
            if lease.worker_id == worker_id:
                # the caller is alive: its expired lease is renewed, never handed to it twice;
                # one it no longer holds ends as a lost delivery
                if (job_id, lease.receipt) in holding:
                    lease.deadline = now + self.options.lease_seconds
                else:
                    self._end_lost(job_id, now)
                continue
            if not self._end_lost(job_id, now) and len(out) < granted:
                # reclaimed for this caller at once, as the engine's reclaim does
                q.ready[q.jobs[job_id].envelope.priority.value].remove(job_id)
                out.append(self._lease(job_id, worker_id, now))
        for prio in _PRIORITIES:
            ready = q.ready[prio]
            while ready and len(out) < granted:
                out.append(self._lease(ready.popleft(), worker_id, now))
        if self.options.rate_limit is not None and len(out) < granted:
            tokens, at = q.bucket or (0.0, now)
            q.bucket = (tokens + granted - len(out), at)  # give back what was not used
        return out

    # -- Broker ----------------------------------------------------------------------------

    async def enqueue(self, request: base.EnqueueRequest) -> base.EnqueueResult:
        return (await self.enqueue_many([request]))[0]

    async def enqueue_many(
        self, requests: Sequence[base.EnqueueRequest]
    ) -> list[base.EnqueueResult]:
        base.validate_delays(requests)
        with self._q.lock:
            self._check_open()
            return _add_jobs(self._q, requests, self.clock(), self.options.enqueue_dedup_seconds)

    async def fetch(
        self,
        worker_id: str,
        count: int,
        *,
        block: float = 0.0,
        wake: asyncio.Event | None = None,
        holding: Container[tuple[str, base.Receipt]] = (),
    ) -> list[base.Delivery]:
        self._check_open()
        if count <= 0 or (wake is not None and wake.is_set()):
            return []
        deadline = time.monotonic() + block
        while True:
            with self._q.lock:
                out = self._fetch_now(worker_id, count, holding)
            if out or block <= 0 or time.monotonic() >= deadline:
                return out
            await asyncio.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            if wake is not None and wake.is_set():
                return []

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
        flags = [await self.ack(d) for d in deliveries]
        fetched = await self.fetch(worker_id, count, block=block, wake=wake, holding=holding)
        return flags, fetched

    async def ack(
        self,
        delivery: base.Delivery,
        *,
        done_key: str | None = None,
        done_ttl_seconds: float | None = None,
    ) -> bool:
        with self._q.lock:
            self._check_open()
            if self._current(delivery) is None:
                return False
            now = self.clock()
            lease = self._q.leases.pop(delivery.id)
            job = self._q.jobs.pop(delivery.id)
            self._q.counters["completed"] += 1
            if self.options.keep_finished_seconds > 0:
                _keep_finished(
                    self._q,
                    delivery.id,
                    job,
                    now - lease.fetched_at,
                    now,
                    self.options.keep_finished_seconds,
                )
            if done_key is not None:
                self._q.done[done_key] = now + (done_ttl_seconds or 86_400.0)
                _sweep_expired(self._q, now)
            return True

    async def retry(
        self, delivery: base.Delivery, failure: base.Failure, *, delay_seconds: float
    ) -> bool:
        with self._q.lock:
            base.validate_delay(delay_seconds, "a retry delay")
            self._check_open()
            job = self._current(delivery)
            if job is None:
                return False
            now = self.clock()
            del self._q.leases[delivery.id]
            job.attempts += 1
            self._record(job, failure, now)
            job.last_retry_in = delay_seconds
            self._q.counters["failed"] += 1
            self._q.counters["retried"] += 1
            if delay_seconds > 0:
                self._q.delayed[delivery.id] = now + delay_seconds
            else:
                self._make_ready(delivery.id, now)
            return True

    async def dead_letter(
        self,
        delivery: base.Delivery,
        reason: str,
        *,
        failure: base.Failure | None = None,
        attempt: bool = True,
    ) -> bool:
        with self._q.lock:
            self._check_open()
            job = self._current(delivery)
            if job is None:
                return False
            now = self.clock()
            if failure is not None:
                if attempt:
                    job.attempts += 1
                    self._q.counters["failed"] += 1
                self._record(job, failure, now)
            self._to_dlq(delivery.id, str(reason), failure.worker_id if failure else "", now)
            return True

    async def fetch_delivery_fate(self, delivery: base.Delivery) -> base.DeliveryFate:
        with self._q.lock:
            self._check_open()
            if self._current(delivery) is not None:
                return base.DeliveryFate.HELD
            job = self._q.jobs.get(delivery.id)
            if job is not None:
                return base.judge_delivery_fate(delivery, deliveries=job.deliveries, lost=job.lost)
            letter = self._q.dlq.get(delivery.id)
            if letter is None:
                return base.DeliveryFate.GONE  # acked: nothing of the job is kept
            return base.judge_delivery_fate(
                delivery,
                deliveries=letter.deliveries,
                lost=letter.lost,
                dead_lettered_at=letter.dead_lettered_at,
            )

    async def release(self, delivery: base.Delivery) -> bool:
        with self._q.lock:
            self._check_open()
            if self._current(delivery) is None:
                return False
            del self._q.leases[delivery.id]
            self._q.counters["released"] += 1
            self._make_ready(delivery.id, self.clock())
            return True

    async def renew(
        self,
        worker_id: str,
        deliveries: Sequence[base.Delivery],
        *,
        heartbeat: base.WorkerBeat | None = None,
    ) -> base.LeaseRenewal:
        with self._q.lock:
            self._check_open()
            now = self.clock()
            kept: list[base.Delivery] = []
            lost: list[base.Delivery] = []
            for d in deliveries:
                lease = self._q.leases.get(d.id)
                if (
                    lease is not None
                    and lease.receipt == d.receipt
                    and lease.worker_id == worker_id
                ):
                    lease.deadline = now + self.options.lease_seconds
                    kept.append(d)
                else:
                    lost.append(d)
            if heartbeat is not None:
                self._write_heartbeat(heartbeat, now)
            return base.LeaseRenewal(kept=tuple(kept), lost=tuple(lost))

    def _write_heartbeat(self, beat: base.WorkerBeat, now: float) -> None:
        workers = self._q.workers
        for other, (_, expires) in list(workers.items()):
            if expires <= now and other != beat.worker_id:
                del workers[other]  # reaped: it stopped without deregistering
                self._q.counters["workers_lost"] += 1
        record = base.WorkerHeartbeat(
            worker_id=beat.worker_id,
            pod_name=beat.pod_name,
            concurrency=beat.concurrency,
            in_flight=beat.in_flight,
            processed=beat.processed,
            busy_seconds=beat.busy_seconds,
            started_at=beat.started_at,
            last_seen=now,
            oldest_job_started_at=beat.oldest_job_started_at,
            draining=beat.draining,
        )
        workers[beat.worker_id] = (record, now + beat.ttl_seconds)

    async def recover(
        self, worker_id: str, held: Collection[tuple[str, base.Receipt]] = ()
    ) -> list[base.Delivery]:
        with self._q.lock:
            self._check_open()
            now = self.clock()
            out: list[base.Delivery] = []
            for job_id, lease in self._q.leases.items():
                if lease.worker_id != worker_id or (job_id, lease.receipt) in held:
                    continue
                lease.deadline = now + self.options.lease_seconds
                job = self._q.jobs[job_id]
                out.append(
                    base.Delivery(
                        id=job_id,
                        receipt=lease.receipt,
                        envelope=job.envelope,
                        attempts=job.attempts,
                        deliveries=job.deliveries,
                        lease_deadline=lease.deadline,
                        lost=job.lost,
                        fetched_at=lease.fetched_at,
                    )
                )
            return out

    async def fetch_previous_delay(self, job_id: str) -> float | None:
        with self._q.lock:
            job = self._q.jobs.get(job_id)
            return job.last_retry_in if job is not None else None

    async def fetch_is_done(self, done_key: str) -> bool:
        with self._q.lock:
            expires = self._q.done.get(done_key)
            return expires is not None and expires > self.clock()

    async def deregister(self, worker_id: str) -> None:
        with self._q.lock:
            self._q.workers.pop(worker_id, None)

    async def close(self) -> None:
        self._closed = True

    # -- Cancelling --------------------------------------------------------------------------

    async def cancel_jobs(self, job_ids: Sequence[str]) -> list[base.CancelOutcome]:
        """Cancel the named jobs that have not started (see :class:`base.Cancelling`): a job
        leaves its ready line or the delayed set and its record at once, under the lock every
        fetch takes. Its enqueue-dedup entry and idempotency key stay, as on Redis."""
        out: list[base.CancelOutcome] = []
        with self._q.lock:
            self._check_open()
            q = self._q
            for job_id in job_ids:
                job = q.jobs.get(job_id)
                if job_id in q.leases:
                    out.append(base.CancelOutcome.RUNNING)
                elif job is not None:
                    if q.delayed.pop(job_id, None) is None:
                        q.ready[job.envelope.priority.value].remove(job_id)
                    del q.jobs[job_id]
                    q.counters["cancelled"] += 1
                    out.append(base.CancelOutcome.CANCELLED)
                elif job_id in q.dlq:
                    out.append(base.CancelOutcome.DEAD_LETTERED)
                else:
                    out.append(base.CancelOutcome.UNKNOWN)
        return out

    # -- JobLookup ---------------------------------------------------------------------------

    async def fetch_job_status(self, job_ids: Sequence[str]) -> list[base.JobStatus]:
        """Where each named job is (see :class:`base.JobLookup`), all read under the lock every
        change takes; a due delayed job reads waiting, as on Redis (the next fetch moves it)."""
        with self._q.lock:
            self._check_open()
            return [self._read_status(job_id, self.clock()) for job_id in job_ids]

    def _read_status(self, job_id: str, now: float) -> base.JobStatus:
        q = self._q
        job = q.jobs.get(job_id)
        if job is None:
            letter = q.dlq.get(job_id)
            if letter is not None:
                return base.build_dead_letter_status(job_id, letter, now)
            kept = q.finished.get(job_id)
            if kept is not None and kept[1] > now:
                # as on Redis: the enqueue time only while the dedup record keeps it
                return dataclasses.replace(
                    kept[0], checked_at=now, enqueued_at=q.enqueued.get(job_id)
                )
            # still remembered for enqueue dedup: enqueued here, and gone since
            enqueued_at = q.enqueued.get(job_id)
            return base.JobStatus(job_id, base.JobState.UNKNOWN, now, enqueued_at=enqueued_at)
        lease = q.leases.get(job_id)
        due = q.delayed.get(job_id)
        if lease is not None:
            state = base.JobState.RUNNING
        elif due is not None and due > now:
            state = base.JobState.SCHEDULED
        else:
            state = base.JobState.WAITING
        env = job.envelope
        return base.JobStatus(
            job_id=job_id,
            state=state,
            checked_at=now,
            task=env.task,
            priority=env.priority.value,
            attempts=job.attempts,
            deliveries=job.deliveries,
            enqueued_at=env.enqueued_at,
            due_at=due,
            retry=state is base.JobState.SCHEDULED and job.attempts > 0,
            worker_id=lease.worker_id if lease is not None else None,
            lease_expires_at=lease.deadline if lease is not None else None,
            last_failure=job.history[-1] if job.history else None,
        )

    # -- Topics ----------------------------------------------------------------------------

    async def subscribe(self, topic: str, group: str) -> str:
        name = base.subscription_queue_name(topic, group)
        _TOPICS.setdefault((self._store, topic), set()).add(group)
        _STORES.setdefault((self._store, name), _Queue())
        return name

    async def unsubscribe(self, topic: str, group: str) -> bool:
        groups = _TOPICS.get((self._store, topic), set())
        if group not in groups:
            return False
        groups.discard(group)
        return True

    async def list_subscriptions(self, topic: str) -> list[str]:
        return sorted(_TOPICS.get((self._store, topic), set()))

    async def publish(self, request: base.PublishRequest) -> base.PublishResult:
        self._check_open()
        groups = sorted(_TOPICS.get((self._store, request.topic), set()))
        queues = [
            _STORES.setdefault(
                (self._store, base.subscription_queue_name(request.topic, g)), _Queue()
            )
            for g in groups
        ]
        now = self.clock()
        jobs = [
            base.EnqueueRequest(base.build_subscription_envelope(request, g, now=now))
            for g in groups
        ]
        # every subscription queue's lock held at once: the fan-out is one step (all or none)
        with contextlib.ExitStack() as held:
            for q in queues:
                held.enter_context(q.lock)
            created: list[str] = []
            duplicate: list[str] = []
            for group, q, job in zip(groups, queues, jobs, strict=True):
                [result] = _add_jobs(q, [job], now, self.options.enqueue_dedup_seconds, keys=False)
                (created if result.created else duplicate).append(group)
        return base.PublishResult(request.event_id, tuple(created), tuple(duplicate))

    async def fetch_topic_lag(self, topic: str) -> list[base.SubscriptionLag]:
        out = []
        for group in await self.list_subscriptions(topic):
            queue = base.subscription_queue_name(topic, group)
            sub = MemoryBroker(queue, self.options, clock=self.clock, store=self._store)
            out.append(base.SubscriptionLag.of(topic, group, await sub.fetch_stats()))
        return out

    async def record_trace(self, correlation_id: str, entry: base.TraceEntry) -> None:
        now = self.clock()
        entries, expiry = _TRACES.get((self._store, correlation_id), ([], now))
        if expiry < now:
            entries = []
        entries = [*entries, entry][-base.TRACE_KEEP :]
        _TRACES[(self._store, correlation_id)] = (entries, now + base.TRACE_TTL_SECONDS)
        _sweep_expired_traces(now)

    async def fetch_trace(self, correlation_id: str) -> list[base.TraceEntry]:
        entries, expiry = _TRACES.get((self._store, correlation_id), ([], 0.0))
        return list(entries) if expiry >= self.clock() else []

    # -- QueueProbe ------------------------------------------------------------------------

    async def fetch_stats(self) -> base.QueueStats:
        with self._q.lock:
            q = self._q
            now = self.clock()
            due = sum(1 for t in q.delayed.values() if t <= now)
            ready = [jid for prio in _PRIORITIES for jid in q.ready[prio]]
            oldest = min((q.jobs[jid].ready_since for jid in ready), default=now)
            oldest_dead = min((d.dead_lettered_at for d in q.dlq.values()), default=now)
            live = tuple(sorted((b for b, exp in q.workers.values() if exp > now), key=_worker_id))
            return base.QueueStats(
                queue=self.queue,
                now=now,
                backlog=len(ready) + due,
                due_delayed=due,
                future_delayed=len(q.delayed) - due,
                in_flight=len(q.leases),
                dead_letter=len(q.dlq),
                oldest_job_age_seconds=max(0.0, now - oldest),
                enqueued_total=q.counters["enqueued"],
                completed_total=q.counters["completed"],
                failed_total=q.counters["failed"],
                retried_total=q.counters["retried"],
                dead_lettered_total=q.counters["dead_lettered"],
                cancelled_total=q.counters["cancelled"],
                workers_lost_total=q.counters["workers_lost"],
                workers_expired=sum(1 for _, exp in q.workers.values() if exp <= now),
                workers=live,
                maxmemory_policy=None,
                oldest_dead_letter_age_seconds=max(0.0, now - oldest_dead),
            )

    # -- DeadLetters -----------------------------------------------------------------------

    async def count_dead_letters(self) -> int:
        with self._q.lock:
            return len(self._q.dlq)

    async def list_dead_letters(self, *, offset: int = 0, limit: int = 50) -> list[base.DeadLetter]:
        with self._q.lock:
            newest_first = list(reversed(self._q.dlq.values()))
            return newest_first[max(0, offset) : max(0, offset) + limit]

    async def show_dead_letter(self, job_id: str) -> base.DeadLetter | None:
        with self._q.lock:
            return self._q.dlq.get(job_id)

    async def replay_dead_letters(
        self,
        *,
        job_ids: Sequence[str] | None = None,
        limit: int | None = None,
        reset_attempts: bool = False,
        rate_per_second: float = 100.0,
    ) -> list[str]:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        q = self._q
        chosen = list(job_ids) if job_ids is not None else list(q.dlq)  # oldest first
        replayed: list[str] = []
        for job_id in chosen:
            if limit is not None and len(replayed) >= limit:
                break
            with q.lock:
                letter = q.dlq.get(job_id)
                if letter is None or job_id in q.jobs:
                    continue  # not dead-lettered, or live again: it stays where it is
                del q.dlq[job_id]
                env = envelope_mod.parse_envelope(letter.envelope_raw)
                q.jobs[job_id] = _Job(
                    envelope=env,
                    attempts=0 if reset_attempts else letter.attempts,
                    deliveries=letter.deliveries,
                    history=list(letter.history),
                )
                self._make_ready(job_id, self.clock())
                q.counters["replayed"] += 1
            replayed.append(job_id)
            if len(replayed) % REPLAY_BATCH == 0:
                await asyncio.sleep(REPLAY_BATCH / rate_per_second)
        return replayed

    async def purge_dead_letters(
        self,
        *,
        job_ids: Sequence[str] | None = None,
        older_than_seconds: float | None = None,
        everything: bool = False,
    ) -> int:
        _check_purge_selection(job_ids, older_than_seconds, everything)
        with self._q.lock:
            q = self._q
            if job_ids is not None:
                doomed = [j for j in job_ids if j in q.dlq]
            elif older_than_seconds is not None:
                cutoff = self.clock() - older_than_seconds
                doomed = [j for j, d in q.dlq.items() if d.dead_lettered_at <= cutoff]
            else:
                doomed = list(q.dlq)
            for job_id in doomed:
                del q.dlq[job_id]
            return len(doomed)

    # -- InFlightJobs, DeadLetterSteps -------------------------------------------------------

    async def list_queues(self, *, limit: int = 1000) -> list[str]:
        names = sorted(
            name
            for (store, name), q in list(_STORES.items())
            if store == self._store and q.counters["enqueued"] > 0
        )
        return names[:limit]

    async def list_in_flight_jobs(self, *, limit: int = 200) -> list[base.InFlightJob]:
        with self._q.lock:
            q = self._q
            now = self.clock()
            jobs = [
                base.InFlightJob(
                    job_id=job_id,
                    task=q.jobs[job_id].envelope.task,
                    priority=q.jobs[job_id].envelope.priority.value,
                    worker_id=lease.worker_id,
                    running_seconds=max(0.0, now - lease.fetched_at),
                    deliveries=q.jobs[job_id].deliveries,
                    lease_expires_in_seconds=max(0.0, lease.deadline - now),
                )
                for job_id, lease in q.leases.items()
                if job_id in q.jobs
            ]
        jobs.sort(key=lambda j: (-j.running_seconds, j.job_id))
        return jobs[: max(0, limit)]

    async def purge_dead_letters_in_steps(
        self,
        *,
        job_ids: Sequence[str] | None = None,
        older_than_seconds: float | None = None,
        everything: bool = False,
    ) -> AsyncIterator[int]:
        _check_purge_selection(job_ids, older_than_seconds, everything)
        if job_ids is not None:
            ids = list(job_ids)
            for start in range(0, len(ids), PURGE_STEP):
                yield await self.purge_dead_letters(job_ids=ids[start : start + PURGE_STEP])
            return
        while True:
            with self._q.lock:
                cutoff = math.inf if everything else self.clock() - (older_than_seconds or 0.0)
                doomed = [j for j, d in self._q.dlq.items() if d.dead_lettered_at <= cutoff]
                for job_id in doomed[:PURGE_STEP]:
                    del self._q.dlq[job_id]
            n = min(len(doomed), PURGE_STEP)
            yield n
            if n < PURGE_STEP:
                return
            await asyncio.sleep(0)  # a step at a time: let the caller see Ctrl-C

    async def count_dead_letters_older_than(self, older_than_seconds: float) -> int:
        with self._q.lock:
            cutoff = self.clock() - older_than_seconds
            return sum(1 for d in self._q.dlq.values() if d.dead_lettered_at <= cutoff)


def _check_purge_selection(
    job_ids: Sequence[str] | None, older_than_seconds: float | None, everything: bool
) -> None:
    """ValueError unless a purge names exactly one selection, as every broker requires: with
    two, "everything and older than D" meant everything here and only the old ones on Redis."""
    if sum((job_ids is not None, older_than_seconds is not None, everything)) != 1:
        raise ValueError(
            "say which dead letters to purge: exactly one of job_ids, older_than_seconds or "
            "everything"
        )


def _worker_id(beat: base.WorkerHeartbeat) -> str:
    return beat.worker_id


async def open_from_url(
    url: str,
    queue: str,
    *,
    options: base.QueueOptions,
    role: base.QueueRole = base.QueueRole.CONSUMER,
    **settings: Any,
) -> MemoryBroker:
    """``memory://NAME``: the in-process queue NAME (``memory://`` alone: a private one).

    ``clock`` may replace ``time.time``; the connection settings and ``role`` are accepted and
    unused (the queue keeps no settings of its own: each opener holds its options).
    """
    name = url.partition("://")[2].strip("/")
    clock = settings.pop("clock", time.time)
    unknown = set(settings) - CONNECTION_SETTINGS
    if unknown:
        raise TypeError(f"memory:// takes clock and the connection settings, not {sorted(unknown)}")
    return MemoryBroker(queue, options, clock=clock, store=name or None)
