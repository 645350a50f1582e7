"""The worker process: fetch jobs into free slots, run handlers, settle them, drain on SIGTERM.

Started by ``workerfleet worker MODULE:APP`` (:mod:`worker_runtime.cli`) or by tests and the
local fleet through :func:`run_worker`. Two threads:

* the **job loop** (main thread, asyncio): fetches at most as many jobs as it has free slots
  (one script call for the whole batch; the engine folds promotion of due retries, reclaim of
  expired leases and poison detection into it), runs async handlers as tasks and sync handlers
  in a bounded pool of daemon threads, acknowledges finished jobs together with the next fetch
  (``ack_and_fetch``: one round trip per cycle under load), and records failures with
  ``retry``/``dead_letter`` (the engine coalesces concurrent settles into one script call);
  timeouts are enforced by one watchdog task, not a timer per job;
* the **control thread** (its own event loop and Redis connection): renews the leases of all
  held jobs and writes the worker heartbeat in one call every ``lease/3``, and serves
  ``/metrics``, ``/healthz``, ``/readyz``. A handler that blocks the job loop's event loop, or a
  sync handler hogging a thread, therefore cannot stop lease renewal (a failure mode of several
  peers); ``/healthz`` reports a stalled job loop instead.

Counting and fencing: a job whose renewal reports it lost (the lease expired and the job was
handed to someone else) is never acknowledged; the engine rejects such a stale settle anyway.

Timeouts: an async handler past its timeout is cancelled and the attempt fails with outcome
``timeout``. A sync handler cannot be killed (Python threads cannot be interrupted): at the
timeout its attempt is recorded as failed (``timeout``) and retried or dead-lettered like any
failure, its eventual result is discarded, and its thread keeps its slot until the function
returns, so the worker never runs more than ``concurrency`` handlers at once.

Drain (SIGTERM/SIGINT; handlers only set flags, so this is safe as PID 1): stop fetching at
once, report not-ready, let in-flight jobs finish until the budget
(``WORKERFLEET_DRAIN_TIMEOUT_SECONDS``) is almost spent, release the rest to the queue without
spending an attempt, deregister and return exit code 0 before the budget ends. A second signal
releases immediately.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import os
import queue as stdlib_queue
import random
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.exceptions
from pydantic import ValidationError

from worker_runtime import app as app_mod
from worker_runtime import (
    backoff,
    config,
    connection,
    expiry,
    health,
    logs,
    metrics,
    processes,
    stats,
)
from worker_runtime import queue as queue_mod

log = logs.get_logger("worker")

# Errors that mean "Redis is unreachable or stalled right now": retried with backoff.
# Errors of a Redis call that the worker survives by retrying with backoff: the connection
# dropped or stalled, a restarted server still loading, a replica promoted (READONLY), or any
# error reply. A persistent one turns /healthz red (no successful round trip) instead of
# crashing the pod in a loop.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    OSError,
    TimeoutError,
)

FETCH_BLOCK_SECONDS = 1.0  # how long an idle fetch waits in Redis before the loop looks around
EVICTION_POLICY_CHECK_SECONDS = 300.0  # maxmemory-policy re-read (it can change at run time)
WATCHDOG_SECONDS = 0.05  # job timeouts are enforced with this precision


_early_signals: list[int] = []


def _remember_signal(signum: int, frame: object) -> None:
    # Only records the signal (async-signal-safe enough: one list append).
    _early_signals.append(signum)


def install_early_signal_handlers() -> None:
    """Remember SIGTERM/SIGINT that arrive before the worker's loop installs its handlers."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _remember_signal)


class DaemonThreadPool:
    """A bounded pool of daemon threads running fire-and-forget calls (sync handlers).

    ``ThreadPoolExecutor`` joins its threads at interpreter exit, so one stuck sync handler
    would keep a drained worker alive past its grace period; daemon threads do not. Threads
    are started on demand, up to ``max_workers``; calls must not raise (the worker's wrapper
    catches everything).
    """

    def __init__(self, max_workers: int, name: str = "wf-sync") -> None:
        self._max = max_workers
        self._name = name
        self._work: stdlib_queue.SimpleQueue[Callable[[], None] | None] = stdlib_queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._shutdown = False

    def run(self, call: Callable[[], None]) -> None:
        """Run ``call`` on a pool thread (queued while all threads are busy)."""
        with self._lock:
            if self._shutdown:
                msg = "pool is shut down"
                raise RuntimeError(msg)
            if self._idle > 0:
                self._idle -= 1
            elif len(self._threads) < self._max:
                t = threading.Thread(
                    target=self._loop, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(t)
                t.start()
        self._work.put(call)

    def _loop(self) -> None:
        while True:
            call = self._work.get()
            if call is None:
                return
            call()
            with self._lock:
                self._idle += 1

    @property
    def size(self) -> int:
        """Threads started so far (never more than ``max_workers``)."""
        return len(self._threads)

    def shutdown(self) -> None:
        """Let idle threads exit; busy ones finish their call first (they are daemons)."""
        with self._lock:
            self._shutdown = True
            for _ in self._threads:
                self._work.put(None)


class _Held:
    """One job this worker holds, from fetch until its settle returned.

    It doubles as the job's log context (:class:`worker_runtime.logs.JobLogFields`): the
    fields are read only when a record is actually written, so binding it costs nothing.
    """

    __slots__ = (
        "ack_pending",
        "ctx",
        "deadline",
        "job",
        "lost",
        "queue",
        "ran",
        "released",
        "settling",
        "spec",
        "started",
        "started_wall",
        "task",
        "timed_out",
        "zombie",
    )

    def __init__(
        self, job: queue_mod.Job, spec: app_mod.TaskSpec | None, queue: str, now: float
    ) -> None:
        self.job = job
        self.spec = spec
        self.queue = queue
        self.ctx: app_mod.JobContext | None = None
        self.started_wall = now
        self.started = 0.0
        self.deadline = 0.0  # monotonic; 0 = not running a handler (yet)
        self.task: asyncio.Task[None] | None = None
        self.lost = False  # renewal found the lease gone: never settle
        self.released = False  # drain released it: the handler's result is discarded
        self.settling = False  # the handler finished; its settle call is on its way
        self.timed_out = False  # the watchdog cancelled it at its timeout
        self.ack_pending = False  # finished; waits for the fetch loop's next ack_and_fetch
        self.ran = 0.0  # handler seconds (for the duration metric at ack time)
        self.zombie = False  # a sync call given up on (timeout/drain) still running

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def task_name(self) -> str:
        return self.job.envelope.task

    @property
    def correlation_id(self) -> str | None:
        return self.job.envelope.correlation_id

    @property
    def attempt(self) -> int:
        return self.job.attempts + 1


class Worker:
    """One worker process's job loop. Create, then ``await run()`` (returns the exit code)."""

    def __init__(
        self,
        app: app_mod.App,
        settings: config.WorkerSettings,
        *,
        worker_id: str | None = None,
        install_signal_handlers: bool = True,
    ) -> None:
        self.app = app
        self.settings = settings
        self.queue_name = settings.queue or app.queue
        self.worker_id = worker_id or f"{settings.pod_name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.concurrency = settings.concurrency
        self.install_signal_handlers = install_signal_handlers
        self.metrics = metrics.WorkerMetrics(self.queue_name)
        self.metrics.in_flight.set_function(lambda: len(self.held))
        self.health = health.HealthState(settings.health_stale_after_seconds)
        rate = None
        if settings.rate_limit_jobs is not None and settings.rate_limit_per_seconds is not None:
            rate = queue_mod.RateLimit(
                jobs=settings.rate_limit_jobs, per_seconds=settings.rate_limit_per_seconds
            )
        self.options = queue_mod.QueueOptions(
            lease_seconds=settings.lease_seconds,
            max_deliveries=settings.retry_max_deliveries,
            dlq_max_length=settings.dlq_max_length,
            dlq_retention_seconds=settings.dlq_retention_seconds,
            rate_limit=rate,
        )
        self.default_backoff = backoff.Backoff(
            strategy=settings.retry_backoff_strategy,
            base_seconds=settings.retry_backoff_base_seconds,
            max_seconds=settings.retry_backoff_max_seconds,
            jitter=settings.retry_backoff_jitter,
        )
        self.default_timeout = settings.job_timeout_seconds
        # Keyed by delivery (job id, token), not by job id: a job lost to another worker can
        # come back to this one while the stale run still finishes, and the stale run's
        # rejected settle must not remove the live delivery's entry.
        self.held: dict[tuple[str, queue_mod.Token], _Held] = {}
        self._held_lock = threading.Lock()
        self._zombies = 0  # timed-out sync handlers still occupying a thread (and a slot)
        self.processed = 0
        self.busy_seconds = 0.0
        self.started_at = time.time()
        self.draining = False
        self.drain_started: float | None = None
        self._hurry = False
        self._wake: asyncio.Event | None = None
        self._fetch_wake: asyncio.Event | None = None  # interrupts the fetch in flight (drain)
        self._fetch_blocking = False  # the fetch loop waits in Redis for new work
        self._ack_queue: list[_Held] = []  # finished jobs to ack with the next fetch
        self._fetch_unsure = False  # a fetch failed after it may have leased jobs to us
        self._sync_done: collections.deque[
            tuple[_Held, asyncio.Future[None], BaseException | None]
        ] = collections.deque()  # finished sync calls, collected on the loop thread
        self._sync_notify = False
        self._exported_dead_letters: collections.Counter[str] = collections.Counter()
        self._pool: DaemonThreadPool | None = None
        self._procs: processes.ProcessPool | None = None
        self._prestart: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self.q: queue_mod.QueueClient | None = None
        self.control: _ControlThread | None = None
        self._rng = random.Random()

    # ---- control ---------------------------------------------------------------------------

    def request_drain(self, signum: int | None = None) -> None:
        """First call: start draining. Second call: stop waiting and release now."""
        if self.draining:
            self._hurry = True
            log.info("second signal: releasing in-flight jobs now", extra={"signal": signum})
        else:
            self.draining = True
            self.drain_started = time.monotonic()
            self.health.draining = True
            self.metrics.draining.set(1)
            log.info("draining", extra={"signal": signum, "in_flight": len(self.held)})
            if self.control is not None:
                self.control.wake()
        self._poke()
        if self._fetch_wake is not None:
            self._fetch_wake.set()  # a blocking fetch ends at once (between script calls)

    def _in_use(self) -> int:
        return len(self.held) + self._zombies

    def build_beat(self) -> queue_mod.WorkerBeat:
        """The heartbeat record this worker publishes (read by the autoscaler)."""
        with self._held_lock:
            starts = [h.started_wall for h in self.held.values()]
            in_flight = len(self.held)
        return queue_mod.WorkerBeat(
            worker_id=self.worker_id,
            pod_name=self.settings.pod_name,
            concurrency=self.concurrency,
            in_flight=in_flight,
            processed=self.processed,
            busy_seconds=round(self.busy_seconds, 6),
            started_at=self.started_at,
            oldest_job_started_at=min(starts) if starts else None,
            draining=self.draining,
            ttl_seconds=self.settings.lease_seconds,
        )

    def snapshot_jobs(self) -> list[queue_mod.Job]:
        """The held jobs whose leases must be renewed (called from the control thread)."""
        with self._held_lock:
            return [h.job for h in self.held.values() if not h.lost and not h.released]

    def apply_renewal(self, result: queue_mod.RenewResult) -> None:
        """Mark jobs whose lease was lost (control thread); their results will be discarded."""
        if result.renewed:
            self.metrics.lease_renewals.inc(len(result.renewed))
        leased_until = time.time() + self.settings.lease_seconds
        with self._held_lock:
            for job in result.renewed_jobs:
                h = self.held.get((job.id, job.token))
                if h is not None and h.ctx is not None:
                    h.ctx.leased_until = leased_until
            for job in result.lost_jobs:
                job_id = job.id
                h = self.held.get((job_id, job.token))
                # A job whose settle is on its way may already be acked (the snapshot raced
                # the ack): its settle's own result decides, not the renewal.
                if h is not None and not h.lost and not h.settling:
                    h.lost = True
                    if h.ctx is not None:
                        h.ctx.lease_lost = True
                    self.metrics.leases_lost.inc()
                    log.warning(
                        "lease lost: the job was handed to another worker; result discarded",
                        extra={"job_id": job_id},
                    )

    # ---- main ------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until drained; returns the process exit code (0 after a clean drain)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_call_soon_threadsafe = loop.call_soon_threadsafe
        self._wake = asyncio.Event()
        if self.install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_drain, int(sig))
            while _early_signals:
                self.request_drain(_early_signals.pop(0))
        # No automatic re-send on this connection: a fetch whose reply was lost must not run
        # again blindly (its jobs would be held by nobody); the fetch loop retries and adopts.
        self._client = connection.fetch_client(
            self.settings.redis_url, socket_timeout=FETCH_BLOCK_SECONDS + 5.0, retries=0
        )
        self.q = queue_mod.QueueClient(self._client, self.queue_name, self.options)
        self.app.bind(self._client, queue=self.queue_name)
        self._pool = DaemonThreadPool(self.concurrency)
        if any(spec.executor == "process" for spec in self.app.tasks.values()):
            self._start_process_pool()
        self.control = _ControlThread(self)
        self.control.start()
        ticker = asyncio.create_task(self._tick_forever())
        watchdog = asyncio.create_task(self._watch_timeouts())
        log.info(
            "worker started",
            extra={
                "worker_id": self.worker_id,
                "queue": self.queue_name,
                "concurrency": self.concurrency,
                "tasks": sorted(self.app.tasks),
                "lease_seconds": self.settings.lease_seconds,
            },
        )
        try:
            await self._fetch_loop()
            if self._fetch_unsure:  # jobs a failed fetch leased to us: adopt and release them
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._adopt_orphans(), timeout=3.0)
            await self._drain()
        finally:
            ticker.cancel()
            watchdog.cancel()
            await self._shutdown()
            if self.install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        log.info(
            "worker stopped",
            extra={"worker_id": self.worker_id, "processed": self.processed},
        )
        return 0

    def _start_process_pool(self) -> None:
        s = self.settings
        self._procs = processes.ProcessPool(
            s.process_pool_size or processes.default_size(self.concurrency),
            max_jobs_per_child=s.process_max_jobs_per_child,
            max_memory_growth_bytes=int(s.process_max_memory_growth_mb * 1024 * 1024),
            log=(s.log_level, s.log_format),
            on_child_retired=self.metrics.child_exited,
        )
        self._prestart = asyncio.create_task(self._prestart_children(self._procs))

    async def _prestart_children(self, pool: processes.ProcessPool) -> None:
        # Boot the children while the first fetch runs; a failure here is only logged: the
        # jobs themselves start children on demand and fail (and retry) with the reason.
        try:
            await pool.prestart()
        except Exception as exc:
            log.error("starting the process pool failed", extra={"error": repr(exc)})
        else:
            log.info("process pool started", extra={"children": pool.size, "pids": pool.pids})

    async def _tick_forever(self) -> None:
        # Proves to /healthz that the job loop's event loop is responsive (and exports what a
        # fetch that is still waiting in Redis has dead-lettered meanwhile).
        while True:
            self.health.loop_tick()
            if self.q is not None and self.q.fetch_dead_lettered:
                self._export_fetch_dead_letters(self.q.fetch_dead_lettered)
            await asyncio.sleep(0.5)

    def _poke(self) -> None:
        """Wake the fetch loop when it waits for a free slot (a slot freed, an ack queued)."""
        if self._wake is not None:
            self._wake.set()

    async def _fetch_loop(self) -> None:
        # Each cycle acknowledges the jobs that finished since the last one AND fetches jobs
        # for the slots they free, in one script call (ack_and_fetch); when nothing finished it
        # is a plain fetch that waits in Redis when the queue is empty. The drain interrupts
        # that wait (between script calls, never inside one).
        assert self.q is not None and self._wake is not None
        q = self.q
        failures = 0
        while not self.draining:
            if self._fetch_unsure and not await self._adopt_orphans():
                failures += 1
                await self._sleep_unless_draining(self._error_delay(failures))
                continue
            acks = self._ack_queue
            free = self.concurrency - self._in_use() + len(acks)
            if free <= 0:
                self._wake.clear()
                full = self.concurrency - self._in_use() + len(self._ack_queue) <= 0
                if full and not self.draining:
                    await self._wake.wait()
                continue
            self._fetch_wake = wake = asyncio.Event()
            if self.draining:
                break
            self._ack_queue = []
            t0 = time.monotonic()
            try:
                if acks:
                    flags, jobs = await q.ack_and_fetch(
                        [h.job for h in acks],
                        self.worker_id,
                        free,
                        block=0.0,
                        wake=wake,
                        holding=self.held,
                    )
                    self._finish_acks(acks, flags)
                else:
                    self._fetch_blocking = True
                    try:
                        jobs = await q.fetch(
                            self.worker_id,
                            free,
                            block=FETCH_BLOCK_SECONDS,
                            wake=wake,
                            holding=self.held,
                        )
                    finally:
                        self._fetch_blocking = False
            except Exception as exc:
                # Only a deliberate shutdown (cancellation) ends this loop: any other error,
                # foreseen (Redis) or not (a bug, a reply nobody expected), is retried with
                # backoff, so one bad reply can never stop a worker with jobs leased to it.
                # Acks are fenced, so sending them again is safe: they go back in the queue.
                self._ack_queue[:0] = acks
                # Without a reply the script may still have run: adopt what it leased to us.
                # (An error reply, e.g. READONLY, is an answer: nothing to adopt.)
                self._fetch_unsure = not isinstance(exc, redis.exceptions.ResponseError)
                failures += 1
                self.metrics.fetch_errors.inc()
                delay = self._error_delay(failures)
                extra = {"error": repr(exc), "retry_in_seconds": round(delay, 3)}
                if isinstance(exc, REDIS_ERRORS):
                    self.metrics.redis_error("fetch")
                    log.warning("fetch failed; retrying", extra=extra)
                else:
                    log.error("fetch failed unexpectedly; retrying", extra=extra, exc_info=True)
                await self._sleep_unless_draining(delay)
                continue
            finally:
                self._fetch_wake = None
            failures = 0
            self.health.redis_ok()
            if q.fetch_dead_lettered:
                self._export_fetch_dead_letters(q.fetch_dead_lettered)
            for job in jobs:
                self._start(job)
            if not jobs and not acks and not wake.is_set() and time.monotonic() - t0 < 0.005:
                # A fetch that came back empty at once (rate limited, Redis answered early)
                # must not become a busy loop.
                await self._sleep_unless_draining(0.01)
        self._flush_queued_acks()

    def _error_delay(self, failures: int) -> float:
        # Exponential backoff with jitter after consecutive failed fetch-loop calls.
        return min(5.0, 0.1 * 2.0 ** min(failures, 6)) * (0.5 + self._rng.random() / 2)

    async def _adopt_orphans(self) -> bool:
        # A fetch failed on a Redis error after it may have run: the jobs it leased to this
        # worker never arrived. Take them over now rather than let them wait out their lease
        # (counted as lost deliveries). True when Redis answered.
        assert self.q is not None
        try:
            jobs = await self.q.adopt(self.worker_id, list(self.held))
        except Exception as exc:  # like the fetch itself: retried, never the end of the loop
            if isinstance(exc, REDIS_ERRORS):
                self.metrics.redis_error("adopt")
                log.warning("adopting after a failed fetch failed", extra={"error": repr(exc)})
            else:
                log.error("adopting failed unexpectedly", extra={"error": repr(exc)}, exc_info=True)
            return False
        self._fetch_unsure = False
        if jobs:
            log.warning(
                "a failed fetch had leased jobs to this worker; adopted them",
                extra={"count": len(jobs)},
            )
        for job in jobs:
            self._start(job)
        return True

    def _export_fetch_dead_letters(self, counts: collections.Counter[str]) -> None:
        # Poison jobs (max_deliveries) and unreadable envelopes are dead-lettered inside the
        # engine's fetch and never reach a handler; count them in this worker's metrics too.
        for reason, total in counts.items():
            delta = total - self._exported_dead_letters[reason]
            if delta > 0:
                self.metrics.dead_lettered.labels(self.queue_name, reason).inc(delta)
                self._exported_dead_letters[reason] = total

    def _finish_acks(self, acks: list[_Held], flags: list[bool]) -> None:
        for h, ok in zip(acks, flags, strict=True):
            h.ack_pending = False
            if ok:
                name = h.spec.name if h.spec is not None else h.job.envelope.task
                self.metrics.job_finished(name, "completed", h.ran)
            else:
                self._stale(h)
            self._forget(h)

    def _flush_queued_acks(self) -> None:
        # Acks queued for the next cycle when there will be none (drain): send them directly.
        acks, self._ack_queue = self._ack_queue, []
        for h in acks:
            h.task = asyncio.create_task(self._ack_directly(h))

    async def _ack_directly(self, h: _Held) -> None:
        assert self.q is not None
        q = self.q
        try:
            ok = await self._settle("ack", lambda: q.ack(h.job))
            self._finish_acks([h], [ok])
        finally:
            if h.ack_pending:  # the settle raised: forget it; the lease returns the job
                h.ack_pending = False
                self._forget(h)

    async def _sleep_unless_draining(self, seconds: float) -> None:
        assert self._wake is not None
        self._wake.clear()
        if self.draining:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # ---- running one job -------------------------------------------------------------------

    def _start(self, job: queue_mod.Job) -> None:
        h = _Held(job, self.app.tasks.get(job.envelope.task), self.queue_name, time.time())
        with self._held_lock:
            self.held[(job.id, job.token)] = h
        if self.draining:
            # A fetch that was already on its way when the drain began: give the job back.
            h.task = asyncio.create_task(self._release_fetched(h))
            return
        h.task = asyncio.create_task(self._run(h))

    def _build_context(self, h: _Held, spec: app_mod.TaskSpec) -> app_mod.JobContext:
        job = h.job
        env = job.envelope
        h.ctx = app_mod.JobContext(
            job_id=job.id,
            task=env.task,
            queue=self.queue_name,
            attempt=job.attempts + 1,
            deliveries=job.deliveries,
            correlation_id=env.correlation_id,
            idempotency_key=env.idempotency_key,
            enqueued_at=env.enqueued_at,
            headers=env.headers,
            priority=env.priority,
            leased_until=job.leased_until,
            worker_id=self.worker_id,
            logger=spec.logger,
            idempotency=self._is_done,
            loop=self._loop,
        )
        return h.ctx

    async def _is_done(self, key: str) -> bool:
        from worker_runtime import idempotency

        return await idempotency.fetch_is_done(self._client, self.queue_name, key)

    async def _run(self, h: _Held) -> None:
        # The hot path: keep it to one coroutine frame for async handlers.
        env = h.job.envelope
        spec = h.spec
        token = logs.bind_job(h)
        try:
            if spec is None:
                # Never import anything a message names: unknown tasks go to the DLQ.
                await self._dead_letter(
                    h,
                    queue_mod.DeadLetterReason.UNKNOWN_TASK,
                    error_type="UnknownTask",
                    message=f"no task named {env.task!r} is registered on this worker",
                )
                return
            if env.expires_at is not None or spec.ttl is not None:
                late = expiry.seconds_past(
                    expiry.deadline_of(env.expires_at, env.enqueued_at, spec.ttl), time.time()
                )
                if late is not None:  # never start a job past its deadline
                    await self._expired(h, spec, late)
                    return
            try:
                payload = spec.payload_adapter.validate_python(env.payload)
            except ValidationError as exc:
                await self._dead_letter(
                    h,
                    queue_mod.DeadLetterReason.INVALID_PAYLOAD,
                    error_type="ValidationError",
                    message=str(exc)[:4000],
                )
                return
            limit = spec.timeout if spec.timeout is not None else self.default_timeout
            h.started = time.perf_counter()
            h.deadline = time.monotonic() + limit
            if not spec.is_async:
                if spec.handler_ref is not None:
                    await self._run_process(h, spec, payload, limit)
                else:
                    await self._run_sync(h, spec, payload, limit)
                return
            try:
                if spec.wants_context:
                    await spec.handler(payload, self._build_context(h, spec))
                else:
                    await spec.handler(payload)
            except asyncio.CancelledError as exc:
                current = asyncio.current_task()
                if not h.released and current is not None and current.cancelling() == 0:
                    # Nobody cancelled this task: the handler let an inner cancellation
                    # escape. That is a failure of the handler, not a reason to drop the job.
                    await self._failed(h, spec, exc, False)
                    return
                if not h.timed_out or h.released:
                    raise
                await self._timed_out(h, spec, f"after {limit}s (cancelled)")
                return
            except BaseException as exc:
                await self._failed(h, spec, exc, False)
                return
            if h.timed_out:  # the handler swallowed the cancellation: still a timeout
                await self._timed_out(h, spec, f"after {limit}s")
                return
            await self._completed(h, spec)
        except asyncio.CancelledError:
            if not h.released:
                raise
        finally:
            logs.unbind_job(token)
            if not h.ack_pending:
                self._forget(h)

    async def _timed_out(self, h: _Held, spec: app_mod.TaskSpec, detail: str) -> None:
        # The watchdog's cancellation is handled here, so later awaits must work again; the
        # attempt fails with a TimeoutError (outcome ``timeout``).
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        await self._failed(h, spec, TimeoutError(f"{spec.name} timed out {detail}"), True)

    async def _run_sync(self, h: _Held, spec: app_mod.TaskSpec, payload: Any, limit: float) -> None:
        assert self._pool is not None and self._loop is not None
        args = (payload, self._build_context(h, spec)) if spec.wants_context else (payload,)
        fut: asyncio.Future[None] = self._loop.create_future()
        context = contextvars.copy_context()  # carries the job's log fields into the thread
        handler = spec.handler

        def call() -> None:
            error: BaseException | None = None
            if not fut.cancelled():  # released or timed out before a thread was free
                try:
                    context.run(handler, *args)
                except BaseException as exc:
                    error = exc
            self._sync_done.append((h, fut, error))
            if not self._sync_notify:
                # One wake-up of the loop for all the calls that finish meanwhile.
                self._sync_notify = True
                self._loop_call_soon_threadsafe(self._collect_sync)

        self._pool.run(call)
        try:
            await fut
        except asyncio.CancelledError:
            # The thread cannot be stopped: it keeps its slot until the function returns.
            h.zombie = True
            self._zombies += 1
            if not h.timed_out or h.released:
                raise
            await self._timed_out(h, spec, f"after {limit}s (thread left to finish)")
            return
        except BaseException as exc:
            await self._failed(h, spec, exc, False)
            return
        await self._completed(h, spec)

    async def _run_process(
        self, h: _Held, spec: app_mod.TaskSpec, payload: Any, limit: float
    ) -> None:
        assert self._procs is not None and spec.handler_ref is not None
        pool = self._procs
        h.deadline = 0.0  # the timeout starts when a child takes the job, not while it waits
        try:
            child = await pool.acquire()
        except processes.ProcessPoolError as exc:
            await self._failed(h, spec, exc, False)
            return
        ctx = self._build_context(h, spec)
        fields = None
        if spec.wants_context:
            fields = {
                "job_id": ctx.job_id,
                "task": ctx.task,
                "queue": ctx.queue,
                "attempt": ctx.attempt,
                "deliveries": ctx.deliveries,
                "correlation_id": ctx.correlation_id,
                "idempotency_key": ctx.idempotency_key,
                "enqueued_at": ctx.enqueued_at,
                "headers": dict(ctx.headers),
                "priority": ctx.priority,
                "leased_until": ctx.leased_until,
                "worker_id": ctx.worker_id,
            }
        module, qualname = spec.handler_ref
        h.started = time.perf_counter()
        h.deadline = time.monotonic() + limit
        try:
            reply = await pool.run(child, processes.Call(module, qualname, payload, fields))
        except asyncio.CancelledError:
            # pool.run killed the child: a timed-out CPU-bound job really stops.
            if not h.timed_out or h.released:
                raise
            self.metrics.child_exited("timeout")
            await self._timed_out(h, spec, f"after {limit}s (child process killed)")
            return
        except processes.ProcessPoolError as exc:
            if isinstance(exc, processes.ChildProcessDied):
                self.metrics.child_exited("died")
                log.warning("the child process running the job died", extra={"error": str(exc)})
            await self._failed(h, spec, exc, False)
            return
        if reply.error is not None:
            await self._failed(h, spec, reply.error, False)
            return
        if reply.done_key is not None:
            ctx.mark_done_on_ack(reply.done_key, ttl_seconds=reply.done_ttl or 86_400.0)
        await self._completed(h, spec)

    def _collect_sync(self) -> None:
        # On the loop thread: hand finished sync calls their results (clear the flag first, so
        # a call finishing during the collection schedules another one).
        self._sync_notify = False
        done = self._sync_done
        while done:
            h, fut, error = done.popleft()
            if fut.cancelled():
                if h.zombie:  # a timed-out or released call finally returned: free its slot
                    h.zombie = False
                    self._zombies -= 1
                    self._poke()
            elif error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

    async def _watch_timeouts(self) -> None:
        # One watchdog instead of a timer per job: cancels handlers past their deadline
        # (precision: WATCHDOG_SECONDS).
        while True:
            await asyncio.sleep(WATCHDOG_SECONDS)
            if not self.held:
                continue
            now = time.monotonic()
            for h in list(self.held.values()):
                if (
                    h.deadline
                    and now >= h.deadline
                    and not (h.timed_out or h.settling or h.released or h.lost)
                    and h.task is not None
                ):
                    h.timed_out = True
                    h.task.cancel()

    def _ran_for(self, h: _Held) -> float:
        seconds = time.perf_counter() - h.started
        self.busy_seconds += seconds
        return seconds

    async def _completed(self, h: _Held, spec: app_mod.TaskSpec) -> None:
        seconds = self._ran_for(h)
        if h.released:
            return
        if h.lost:
            return
        assert self.q is not None
        h.settling = True
        done_key, done_ttl = h.ctx.done_key if h.ctx is not None else (None, None)
        if done_key is None and not self.draining and not self._fetch_blocking:
            # The common case under load: the fetch loop acks it with its next fetch, in one
            # call. (While the loop waits in a blocking fetch — the queue is empty — the ack
            # goes out directly instead, so it neither waits nor interrupts that fetch.)
            h.ran = seconds
            h.ack_pending = True
            self._ack_queue.append(h)
            self._poke()
            return
        q = self.q
        ok = await self._settle(
            "ack", lambda: q.ack(h.job, done_key=done_key, done_ttl_seconds=done_ttl)
        )
        if ok:
            self.metrics.job_finished(spec.name, "completed", seconds)
        else:
            self._stale(h)

    async def _failed(
        self, h: _Held, spec: app_mod.TaskSpec, exc: BaseException, timed_out: bool
    ) -> None:
        seconds = self._ran_for(h)
        if h.released or h.lost:
            return
        assert self.q is not None
        h.settling = True
        q = self.q
        job = h.job
        failure = queue_mod.build_failure(exc, worker_id=self.worker_id)
        attempt = job.attempts + 1
        if isinstance(exc, app_mod.Reject) or (
            spec.non_retryable and isinstance(exc, spec.non_retryable)
        ):
            reason = queue_mod.DeadLetterReason.NON_RETRYABLE
            ok = await self._settle(
                "dead_letter", lambda: q.dead_letter(job, reason, failure=failure)
            )
            outcome = "dead_lettered"
        else:
            max_attempts = (
                job.envelope.max_attempts
                or (spec.retry.max_attempts if spec.retry is not None else None)
                or self.settings.retry_max_attempts
            )
            if attempt >= max_attempts:
                reason = queue_mod.DeadLetterReason.MAX_ATTEMPTS
                ok = await self._settle(
                    "dead_letter", lambda: q.dead_letter(job, reason, failure=failure)
                )
                outcome = "dead_lettered"
            else:
                delay = await self._retry_delay(spec, exc, job)
                ok = await self._settle("retry", lambda: q.retry(job, failure, delay_seconds=delay))
                outcome = "retried"
                if ok:
                    self.metrics.retried(spec.name)
        if not ok:
            self._stale(h)
            self.metrics.job_finished(spec.name, "failed", seconds)
            return
        if outcome == "dead_lettered":
            self.metrics.dead_letter(str(reason))
        self.metrics.job_finished(spec.name, "timeout" if timed_out else outcome, seconds)
        log.info(
            "job failed",
            extra={
                "error_type": failure.error_type,
                "error": failure.message[:500],
                "outcome": outcome,
                "timed_out": timed_out,
            },
        )

    async def _retry_delay(
        self, spec: app_mod.TaskSpec, exc: BaseException, job: queue_mod.Job
    ) -> float:
        policy = (
            spec.retry.backoff
            if spec.retry is not None and spec.retry.backoff is not None
            else self.default_backoff
        )
        if isinstance(exc, app_mod.RetryLater) and exc.delay is not None:
            requested: float | None = exc.delay
        else:
            requested = _retry_after_hint(exc)
        if requested is not None:
            # a requested delay waits at most the backoff maximum; inf/nan never come due
            bounded = backoff.clamp_delay(policy, requested)
            if bounded is not None:
                return bounded
            log.warning(
                "ignoring a non-finite retry delay; the backoff decides",
                extra={"requested": repr(requested)},
            )
        previous = None
        if policy.jitter == "decorrelated" and job.attempts > 0:
            previous = await self._previous_delay(job)
        return backoff.build_delay(policy, job.attempts + 1, previous=previous, rng=self._rng)

    async def _previous_delay(self, job: queue_mod.Job) -> float | None:
        assert self.q is not None
        try:
            return await self.q.fetch_previous_delay(job.id)
        except REDIS_ERRORS as exc:
            # the retry itself is what matters: without the history, jitter restarts at base
            self.metrics.redis_error("history")
            log.warning("could not read the previous retry delay", extra={"error": repr(exc)})
            return None

    async def _expired(self, h: _Held, spec: app_mod.TaskSpec, late: float) -> None:
        # The handler never runs; the task says whether the job is kept (DLQ) or dropped.
        message = f"not started: its deadline passed {late:.3f}s before a worker took it"
        if spec.on_expire == "drop":
            assert self.q is not None
            q = self.q
            h.settling = True
            if not await self._settle("ack", lambda: q.ack(h.job)):
                self._stale(h)
                return
            self.metrics.job_expired(spec.name, "dropped")
            log.info("expired job dropped", extra={"late_seconds": round(late, 3)})
            return
        if await self._dead_letter(
            h, queue_mod.DeadLetterReason.EXPIRED, error_type="Expired", message=message
        ):
            self.metrics.job_expired(spec.name, "dead_lettered")

    async def _dead_letter(
        self, h: _Held, reason: queue_mod.DeadLetterReason, *, error_type: str, message: str
    ) -> bool:
        assert self.q is not None
        h.settling = True
        failure = queue_mod.Failure(
            error_type=error_type, message=message, worker_id=self.worker_id
        )
        q = self.q
        # Not a handler failure (the handler never ran): recorded in the history, but it
        # spends no attempt and does not count in failed_total.
        ok = await self._settle(
            "dead_letter", lambda: q.dead_letter(h.job, reason, failure=failure, attempt=False)
        )
        task = h.job.envelope.task if h.spec is not None else "<unknown>"
        if ok:
            self.metrics.dead_letter(str(reason))
            self.metrics.job_finished(task, "dead_lettered", None)
            log.warning("job dead-lettered", extra={"reason": str(reason), "error": message[:500]})
        else:
            self._stale(h)
        return ok

    async def _settle(self, op: str, make_call: Callable[[], Awaitable[bool]]) -> bool:
        # A settle that fails on a Redis error is retried until the lease would have run out:
        # settles are fenced by the delivery's token, so a retry of one that did land is
        # rejected as stale instead of being applied twice. After that the job simply returns
        # to the queue when its lease expires (at-least-once).
        deadline = time.monotonic() + self.settings.lease_seconds
        attempt = 0
        while True:
            try:
                result = bool(await make_call())
            except REDIS_ERRORS as exc:
                self.metrics.redis_error(op)
                attempt += 1
                if time.monotonic() > deadline:
                    log.warning(
                        "giving up a settle; the job returns after its lease",
                        extra={"op": op, "error": repr(exc)},
                    )
                    return False
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
                continue
            self.health.redis_ok()
            return result

    def _stale(self, h: _Held) -> None:
        if not h.lost:
            h.lost = True
            self.metrics.leases_lost.inc()
        log.warning("settle rejected: the lease was lost; result discarded")

    def _forget(self, h: _Held) -> None:
        with self._held_lock:
            self.held.pop((h.job.id, h.job.token), None)
        self.processed += 1
        self._poke()

    # ---- drain -----------------------------------------------------------------------------

    def _release_budget_end(self) -> float:
        # Keep a reserve for releasing, deregistering and exiting inside the budget.
        budget = self.settings.drain_timeout_seconds
        reserve = min(5.0, max(1.0, 0.2 * budget))
        start = self.drain_started if self.drain_started is not None else time.monotonic()
        return start + max(0.0, budget - reserve)

    async def _drain(self) -> None:
        assert self._wake is not None
        end = self._release_budget_end()
        while self.held and not self._hurry:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                break
        await self._release_all()

    async def _release_all(self) -> None:
        with self._held_lock:
            to_release = [h for h in self.held.values() if not h.settling and not h.released]
        if not to_release:
            return
        log.info("releasing unfinished jobs", extra={"count": len(to_release)})
        for h in to_release:
            h.released = True
            if h.task is not None and not h.task.done():
                h.task.cancel()
        results = await asyncio.gather(
            *(self._release_one(h) for h in to_release if not h.lost), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException):
                log.warning(
                    "release failed; the job returns after its lease", extra={"error": repr(r)}
                )
        # Let cancelled handlers unwind (bounded: a handler that swallows cancellation is left).
        tasks = [h.task for h in to_release if h.task is not None and not h.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        # Settles in flight (handlers that finished just before the deadline) get a moment.
        settling = [h.task for h in self.held.values() if h.settling and h.task is not None]
        if settling:
            await asyncio.wait(settling, timeout=2.0)

    async def _release_fetched(self, h: _Held) -> None:
        try:
            await self._release_one(h)
        finally:
            self._forget(h)

    async def _release_one(self, h: _Held) -> None:
        assert self.q is not None
        h.released = True
        ok = await asyncio.wait_for(self.q.release(h.job), timeout=3.0)
        task = h.spec.name if h.spec is not None else h.job.envelope.task
        if ok:
            self.metrics.job_finished(task, "released", None)

    async def _shutdown(self) -> None:
        if self._prestart is not None:
            self._prestart.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._prestart
        if self._procs is not None:
            # Every job is settled or released by now: stop the idle children, kill stragglers.
            await self._procs.close(wait_seconds=3.0)
        if self.control is not None:
            self.control.stop()
            await asyncio.to_thread(self.control.join, 10.0)
        if self.q is not None:
            try:
                await asyncio.wait_for(self.q.deregister(self.worker_id), timeout=3.0)
            except REDIS_ERRORS as exc:
                log.warning("deregister failed", extra={"error": repr(exc)})
            try:
                await asyncio.wait_for(self.q.aclose(), timeout=3.0)
            except REDIS_ERRORS as exc:
                log.warning("closing the queue client failed", extra={"error": repr(exc)})
        if self._client is not None:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._client.aclose()
        if self._pool is not None:
            self._pool.shutdown()
        self.health.stopped = True


def _retry_after_hint(exc: BaseException) -> float | None:
    """A delay the error itself asks for: ``exc.retry_after`` or an HTTP ``Retry-After`` header."""
    value: Any = getattr(exc, "retry_after", None)
    if value is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        if headers is not None:
            try:
                value = headers.get("Retry-After")
            except (AttributeError, TypeError):
                value = None
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return backoff.parse_retry_after(str(value))


class _ControlThread(threading.Thread):
    """Lease renewal, heartbeat and the probe server, on their own thread and event loop."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(name="wf-control", daemon=True)
        self.worker = worker
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_event: asyncio.Event | None = None
        self._stopping = False
        self.started_event = threading.Event()
        self.server: health.HealthServer | None = None
        self._reported_policy: str | None = None  # the maxmemory-policy last logged

    def wake(self) -> None:
        """Send a heartbeat now (thread-safe), e.g. to publish ``draining`` at once."""
        loop, event = self._loop, self._wake_event
        if loop is not None and event is not None:
            loop.call_soon_threadsafe(event.set)

    def stop(self) -> None:
        """Stop after a last round (thread-safe)."""
        self._stopping = True
        self.wake()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _check_eviction_policy(self, client: connection.AsyncClient) -> None:
        """Read the server's maxmemory-policy; anything but noeviction is an ERROR and a metric.

        Under allkeys-* Redis may evict a queue's jobs, under volatile-* its idempotency and
        done markers: the at-least-once promise no longer holds, and nothing else would say so.
        """
        w = self.worker
        try:
            policy = (await stats.fetch_queue_stats(client, w.queue_name)).maxmemory_policy
        except Exception as exc:  # a check, never a reason to stop renewing
            log.debug("maxmemory-policy check failed", extra={"error": repr(exc)})
            return
        if policy is None:
            return  # not readable with this user's rights: unknown, not unsafe
        warning = stats.build_eviction_warning(policy)
        w.metrics.eviction_policy(policy, warning is not None)
        if warning is not None and policy != self._reported_policy:
            log.error(warning, extra={"maxmemory_policy": policy})
        self._reported_policy = policy

    async def _main(self) -> None:
        w = self.worker
        self._loop = asyncio.get_running_loop()
        self._wake_event = asyncio.Event()
        interval = w.settings.heartbeat_interval_seconds
        client = connection.fetch_client(
            w.settings.redis_url, socket_timeout=max(0.5, min(5.0, interval))
        )
        q = queue_mod.QueueClient(client, w.queue_name, w.options)
        if w.settings.metrics_port:
            self.server = health.HealthServer(
                w.health, w.metrics, w.settings.metrics_host, w.settings.metrics_port
            )
            try:
                await self.server.start()
            except OSError as exc:
                log.error("cannot serve metrics/health", extra={"error": repr(exc)})
                self.server = None
        self.started_event.set()
        failures = 0
        next_policy_check = 0.0
        try:
            while not self._stopping:
                try:
                    result = await q.renew(w.worker_id, w.snapshot_jobs(), heartbeat=w.build_beat())
                except Exception as exc:  # never let the renewal thread die
                    failures += 1
                    w.metrics.redis_error("renew")
                    log.warning("lease renewal failed", extra={"error": repr(exc)})
                    wait = min(interval, 0.25 * failures)
                else:
                    failures = 0
                    w.health.redis_ok()
                    w.apply_renewal(result)
                    wait = interval
                if failures == 0 and time.monotonic() >= next_policy_check:
                    next_policy_check = time.monotonic() + EVICTION_POLICY_CHECK_SECONDS
                    await self._check_eviction_policy(client)
                self._wake_event.clear()
                if self._stopping:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake_event.wait(), wait)
        finally:
            if self.server is not None:
                await self.server.stop()
            try:
                await q.aclose()
                await client.aclose()
            except REDIS_ERRORS:
                pass


def run_worker(
    app: app_mod.App,
    settings: config.WorkerSettings,
    *,
    install_signal_handlers: bool = True,
    on_started: Callable[[Worker], None] | None = None,
) -> int:
    """Run a worker to completion in a fresh event loop; returns the exit code."""

    async def main() -> int:
        worker = Worker(app, settings, install_signal_handlers=install_signal_handlers)
        if on_started is not None:
            on_started(worker)
        return await worker.run()

    return asyncio.run(main())
