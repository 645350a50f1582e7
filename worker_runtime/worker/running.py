"""Running one job: its handler as an asyncio task, in a pool thread, or in a child process.

The fetch loop (:mod:`worker_runtime.worker.fetching`) hands every fetched job to
:meth:`JobRunner.start`; the runner checks the job can run at all (its lease not found lost
meanwhile, a known task, not past its deadline, a valid payload), calls the handler and hands
the outcome to the settler (:mod:`worker_runtime.worker.settling`). Async handlers run as tasks
on the job loop, sync ones in the bounded daemon-thread pool, ``executor="process"`` ones in the
child-process pool (:mod:`worker_runtime.worker.pool`).

Timeouts are enforced by one watchdog task, not a timer per job: an async handler past its
timeout is cancelled and the attempt fails with outcome ``timeout``. A sync handler cannot be
killed (Python threads cannot be interrupted): at the timeout its attempt is recorded as failed
(``timeout``) and retried or dead-lettered like any failure, its eventual result is discarded,
and its thread keeps its slot until the function returns, so the worker never runs more than
``concurrency`` handlers at once. An async handler that ignores its cancellation gets
``UNWIND_SECONDS`` to end, then is treated the same way. A process handler's child is killed at
its timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from worker_runtime import app as app_mod
from worker_runtime import expiry, logs
from worker_runtime.brokers import base
from worker_runtime.worker import held as held_mod
from worker_runtime.worker import pool as pool_mod

if TYPE_CHECKING:
    from worker_runtime import processes
    from worker_runtime.worker.core import Worker
    from worker_runtime.worker.settling import Settler

log = logs.get_logger("worker")

WATCHDOG_SECONDS = 0.05  # job timeouts are enforced with this precision

UNWIND_SECONDS = 1.0
"""How long an async handler cancelled at its timeout may take to end before its attempt is
recorded as timed out without it (it swallowed the cancellation and runs on)."""


class JobRunner:
    """Runs the handlers of held jobs; owns the thread pool and the child-process pool."""

    def __init__(self, worker: Worker, settler: Settler) -> None:
        self.worker = worker
        self.settler = settler
        self.zombies = 0  # timed-out sync handlers still occupying a thread (and a slot)
        self._sync_done: collections.deque[
            tuple[held_mod.Held, asyncio.Future[None], BaseException | None]
        ] = collections.deque()  # finished sync calls, collected on the loop thread
        self._sync_notify = False
        self.pool: pool_mod.DaemonThreadPool | None = None
        self.procs: processes.ProcessPool | None = None
        self._prestart: asyncio.Task[None] | None = None
        self._abandoning: set[asyncio.Task[None]] = set()  # settles of abandoned handlers

    def open(self) -> None:
        """Create the pools (on the job loop); process children boot in the background."""
        w = self.worker
        self.pool = pool_mod.DaemonThreadPool(w.concurrency)
        if any(spec.executor == "process" for spec in w.app.tasks.values()):
            self.procs = pool_mod.start_process_pool(w.settings, w.concurrency, w.metrics)
            self._prestart = asyncio.create_task(pool_mod.prestart_children(self.procs))

    async def close_processes(self) -> None:
        """Stop booting children; stop the idle ones and kill stragglers (all jobs settled)."""
        if self._prestart is not None:
            self._prestart.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._prestart
        if self.procs is not None:
            await self.procs.close(wait_seconds=3.0)

    def close_threads(self) -> None:
        """Let the idle threads exit (busy ones finish their call: they are daemons)."""
        if self.pool is not None:
            self.pool.shutdown()

    def start(self, jobs: Sequence[base.Delivery]) -> None:
        """Hold the jobs of one fetch and run each as a task of its own (or give them back when
        draining).

        A task per job, on purpose: starting a batch's jobs one after another in one task
        saved about a seventh of the worker's CPU on a no-op job, but a handler's task is part
        of what it sees. State keyed by ``asyncio.current_task()`` (SQLAlchemy's
        ``async_scoped_session(scopefunc=current_task)``), a done-callback on it, or a timer
        that cancels it later reached the next job of the batch.
        """
        w = self.worker
        loop = w.loop
        assert loop is not None
        held: list[held_mod.Held] = []
        now = time.time()
        tasks = w.app.tasks
        with w.held_lock:
            first = not w.held
            for job in jobs:
                h = held_mod.Held(job, tasks.get(job.envelope.task), w.queue_name, now)
                w.held[(job.id, job.receipt)] = h
                held.append(h)
        if first and held and w.control is not None:
            w.control.report_busy()  # beats at once if its last beat called it idle
        if w.draining:
            # A fetch that was already on its way when the drain began: give the jobs back.
            for h in held:
                h.task = asyncio.create_task(w.drainer.release_fetched(h))
            return
        # the loop's own create_task: asyncio.create_task looks the running loop up and names
        # the task on every call, a measurable share of a no-op job's cost
        run = self.run
        for h in held:
            h.task = loop.create_task(run(h))

    def build_context(self, h: held_mod.Held, spec: app_mod.TaskSpec) -> app_mod.JobContext:
        """The JobContext handed to a handler that asks for one."""
        job = h.job
        env = job.envelope
        h.ctx = app_mod.JobContext(
            job_id=job.id,
            task=env.task,
            queue=self.worker.queue_name,
            attempt=job.attempts + 1,
            deliveries=job.deliveries,
            correlation_id=env.correlation_id,
            idempotency_key=env.idempotency_key,
            enqueued_at=env.enqueued_at,
            headers=env.headers,
            priority=env.priority,
            leased_until=job.lease_deadline,
            worker_id=self.worker.worker_id,
            logger=spec.logger,
            idempotency=self.is_done,
            loop=self.worker.loop,
        )
        # A renewal may have found the lease lost before this context existed (a job is held
        # from its fetch on, its context built at its task's first step): it could set h.lost
        # alone. Read after h.ctx is set, so a loss the control thread records meanwhile
        # reaches one or the other.
        if h.lost:
            h.ctx.lease_lost = True
        return h.ctx

    async def is_done(self, key: str) -> bool:
        """Whether a job with this idempotency key was marked done (``ctx.is_done``)."""
        broker = self.worker.q
        assert broker is not None
        return await broker.fetch_is_done(key)

    async def run(self, h: held_mod.Held) -> None:
        """Run one held job's handler and hand its outcome to the settler."""
        # The hot path: keep it to one coroutine frame for async handlers.
        env = h.job.envelope
        spec = h.spec
        token = logs.bind_job(h)
        try:
            if h.lost:
                # A renewal found the lease lost before the handler started (the job is held
                # from its fetch on): another worker may run it already, and this result would
                # be discarded. Counted as a lost lease where it was found; the job comes back
                # by its lease (SQS: its visibility timeout), not a second run here.
                log.info("lease lost before the handler started; not started")
                return
            if spec is None:
                # Never import anything a message names: unknown tasks go to the DLQ.
                await self.settler.dead_letter(
                    h,
                    base.DeadLetterReason.UNKNOWN_TASK,
                    error_type="UnknownTask",
                    message=f"no task named {env.task!r} is registered on this worker",
                )
                return
            if env.expires_at is not None or spec.ttl is not None:
                late = expiry.seconds_past(
                    expiry.deadline_of(env.expires_at, env.enqueued_at, spec.ttl), time.time()
                )
                if late is not None:  # never start a job past its deadline
                    await self.settler.expired(h, spec, late)
                    return
            try:
                # the adapter's validator itself: its validate_python wraps it (~0.4 us a job)
                payload = spec.payload_adapter.validator.validate_python(env.payload)
            except ValidationError as exc:
                await self.settler.dead_letter(
                    h,
                    base.DeadLetterReason.INVALID_PAYLOAD,
                    error_type="ValidationError",
                    message=str(exc)[:4000],
                )
                return
            limit = spec.timeout if spec.timeout is not None else self.worker.default_timeout
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
                    await spec.handler(payload, self.build_context(h, spec))
                else:
                    await spec.handler(payload)
            except asyncio.CancelledError as exc:
                if h.abandoned:  # its attempt was settled without it (watch_timeouts)
                    return
                current = asyncio.current_task()
                if not h.released and current is not None and current.cancelling() == 0:
                    # Nobody cancelled this task: the handler let an inner cancellation
                    # escape. That is a failure of the handler, not a reason to drop the job.
                    await self.settler.failed(h, spec, exc, False)
                    return
                if not h.timed_out or h.released:
                    raise
                await self._timed_out(h, spec, f"after {limit}s (cancelled)")
                return
            except BaseException as exc:
                if not h.abandoned:
                    await self.settler.failed(h, spec, exc, False)
                return
            if h.timed_out:  # the handler swallowed the cancellation: still a timeout
                if not h.abandoned:
                    await self._timed_out(h, spec, f"after {limit}s")
                return
            if time.monotonic() > h.deadline:
                # It returned past its timeout without the watchdog seeing it: it blocked the
                # event loop the watchdog runs on (a sync call in async code). Still a timeout.
                await self._timed_out(h, spec, f"after {limit}s (it blocked its event loop)")
                return
            await self.settler.completed(h, spec)
        except asyncio.CancelledError:
            if not h.released:
                raise
        finally:
            logs.unbind_job(token)
            if not h.ack_pending:
                self.worker.forget(h)

    async def _timed_out(self, h: held_mod.Held, spec: app_mod.TaskSpec, detail: str) -> None:
        # The watchdog's cancellation is handled here, so later awaits must work again; the
        # attempt fails with a TimeoutError (outcome ``timeout``).
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        await self.settler.failed(h, spec, TimeoutError(f"{spec.name} timed out {detail}"), True)

    async def _run_sync(
        self, h: held_mod.Held, spec: app_mod.TaskSpec, payload: Any, limit: float
    ) -> None:
        loop = self.worker.loop
        assert self.pool is not None and loop is not None
        args = (payload, self.build_context(h, spec)) if spec.wants_context else (payload,)
        fut: asyncio.Future[None] = loop.create_future()
        context = contextvars.copy_context()  # carries the job's log fields into the thread
        handler = spec.handler

        def call() -> None:
            error: BaseException | None = None
            # released, timed out or its lease lost before a thread was free: never started
            if not fut.cancelled() and not h.lost:
                try:
                    context.run(handler, *args)
                except BaseException as exc:
                    error = exc
            self._sync_done.append((h, fut, error))
            if not self._sync_notify:
                # One wake-up of the loop for all the calls that finish meanwhile.
                self._sync_notify = True
                loop.call_soon_threadsafe(self._collect_sync)

        self.pool.run(call)
        try:
            await fut
        except asyncio.CancelledError:
            # The thread cannot be stopped: it keeps its slot until the function returns.
            # Unless it already has: a call that returned in the same loop turn as the
            # watchdog's cancel was collected before this ran (with its result, or dropped as
            # cancelled), and no later collection would ever give that slot back.
            if not h.sync_returned:
                h.zombie = True
                self.zombies += 1
            if not h.timed_out or h.released:
                raise
            await self._timed_out(h, spec, f"after {limit}s (thread left to finish)")
            return
        except BaseException as exc:
            await self.settler.failed(h, spec, exc, False)
            return
        await self.settler.completed(h, spec)

    async def _run_process(
        self, h: held_mod.Held, spec: app_mod.TaskSpec, payload: Any, limit: float
    ) -> None:
        assert self.procs is not None and spec.handler_ref is not None
        # Deferred for cold start: only an App with a process task gets here (see open()).
        from worker_runtime import processes

        pool = self.procs
        h.deadline = 0.0  # the timeout starts when a child takes the job, not while it waits
        try:
            child = await pool.acquire()
        except processes.ProcessPoolError as exc:
            await self.settler.failed(h, spec, exc, False)
            return
        if h.lost:
            # A renewal found the lease lost while the job waited for a child (run() checked
            # before the wait): another worker may run it already. The child goes back unused;
            # the lost lease was counted where it was found.
            await pool.release(child)
            log.info("lease lost while waiting for a child process; not started")
            return
        ctx = self.build_context(h, spec)
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
            self.worker.metrics.child_exited("timeout")
            await self._timed_out(h, spec, f"after {limit}s (child process killed)")
            return
        except processes.ProcessPoolError as exc:
            if isinstance(exc, processes.ChildProcessDied):
                self.worker.metrics.child_exited("died")
                log.warning("the child process running the job died", extra={"error": str(exc)})
            await self.settler.failed(h, spec, exc, False)
            return
        if reply.error is not None:
            await self.settler.failed(h, spec, reply.error, False)
            return
        if reply.done_key is not None:
            ctx.mark_done_on_ack(reply.done_key, ttl_seconds=reply.done_ttl or 86_400.0)
        await self.settler.completed(h, spec)

    def _collect_sync(self) -> None:
        # On the loop thread: hand finished sync calls their results (clear the flag first, so
        # a call finishing during the collection schedules another one).
        self._sync_notify = False
        done = self._sync_done
        while done:
            h, fut, error = done.popleft()
            h.sync_returned = True
            if fut.cancelled():
                if h.zombie:  # a timed-out or released call finally returned: free its slot
                    h.zombie = False
                    self.zombies -= 1
                    self.worker.poke()
            elif error is None:
                fut.set_result(None)
            else:
                fut.set_exception(error)

    async def watch_timeouts(self) -> None:
        """Cancel handlers past their deadline (runs for the worker's whole life)."""
        # One watchdog instead of a timer per job: cancels handlers past their deadline
        # (precision: WATCHDOG_SECONDS).
        while True:
            await asyncio.sleep(WATCHDOG_SECONDS)
            if not self.worker.held:
                continue
            now = time.monotonic()
            for h in list(self.worker.held.values()):
                if (
                    not h.deadline
                    or now < h.deadline
                    or h.settling
                    or h.released
                    or h.lost
                    or h.task is None
                ):
                    continue
                if not h.timed_out:
                    h.timed_out = True
                    h.task.cancel()
                elif (
                    now >= h.deadline + UNWIND_SECONDS
                    and not h.abandoned
                    and h.spec is not None
                    and h.spec.is_async
                ):
                    self._abandon(h, h.spec, h.task)

    def _abandon(self, h: held_mod.Held, spec: app_mod.TaskSpec, task: asyncio.Task[None]) -> None:
        # The handler swallowed its timeout's cancellation and runs on. Waiting for it held the
        # job (its lease renewed) for as long as it ran, forever for a handler that loops. Its
        # attempt fails now, as a timed-out sync handler's does; its task keeps its slot until
        # it ends, and what it does then is discarded.
        h.abandoned = True
        self.zombies += 1
        task.add_done_callback(self._abandoned_ended)
        settle = asyncio.get_running_loop().create_task(self._settle_abandoned(h, spec))
        self._abandoning.add(settle)
        settle.add_done_callback(self._abandoning.discard)

    def _abandoned_ended(self, task: asyncio.Task[None]) -> None:
        self.zombies -= 1
        self.worker.poke()

    async def _settle_abandoned(self, h: held_mod.Held, spec: app_mod.TaskSpec) -> None:
        limit = spec.timeout if spec.timeout is not None else self.worker.default_timeout
        error = TimeoutError(
            f"{spec.name} timed out after {limit}s (it ignored its cancellation; left to finish)"
        )
        token = logs.bind_job(h)
        try:
            await self.settler.failed(h, spec, error, True)
        finally:
            logs.unbind_job(token)
            self.worker.forget(h)
