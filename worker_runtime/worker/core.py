"""The worker process's :class:`Worker`: what it holds, and how its rooms are wired together.

Created by :func:`run_worker` (``workerfleet worker MODULE:APP``, the local fleet, tests). The
worker owns the state every room shares (settings, metrics, health, the jobs it holds, the queue
client) and composes the rooms of :mod:`worker_runtime.worker`: the fetch loop, the runner, the
settler with its retry policy, the drain and the control thread. :meth:`Worker.run` starts them
on the job loop (main thread, asyncio), fetches until a drain is requested, drains and shuts
down, and returns the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from worker_runtime import app as app_mod
from worker_runtime import backoff, brokers, config, errors, health, logs, metrics, startup
from worker_runtime.brokers import base
from worker_runtime.worker import control as control_mod
from worker_runtime.worker import drain as drain_mod
from worker_runtime.worker import fetching, running, settling, signals, transient
from worker_runtime.worker import held as held_mod
from worker_runtime.worker import policy as policy_mod

log = logs.get_logger("worker")

SUBSCRIPTION_RECHECK_SECONDS = 30.0
"""How often a subscription's worker registers its subscription again (one idempotent SADD on
Redis): a Redis restarted without its data forgets it, and publishes then reach no queue."""
T = TypeVar("T")


class Worker:
    """One worker process's job loop. Create, then ``await run()`` (returns the exit code).

    ``policy`` decides what happens to a failed attempt (retry after a delay, or dead-letter);
    by default :class:`worker_runtime.worker.policy.DefaultRetryPolicy` from ``settings``.
    """

    def __init__(
        self,
        app: app_mod.App,
        settings: config.WorkerSettings,
        *,
        worker_id: str | None = None,
        install_signal_handlers: bool = True,
        policy: policy_mod.RetryPolicy | None = None,
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
        self.default_timeout = settings.job_timeout_seconds
        # Keyed by delivery (job id, token), not by job id: a job lost to another worker can
        # come back to this one while the stale run still finishes, and the stale run's
        # rejected settle must not remove the live delivery's entry.
        self.held: dict[tuple[str, base.Receipt], held_mod.Held] = {}
        self.held_lock = threading.Lock()
        self.processed = 0
        self.busy_seconds = 0.0
        self.started_at = time.time()
        self.draining = False
        self.burst = settings.burst  # exit once the queue has nothing ready and nothing is held
        self.burst_ended = False
        self.burst_leftover: base.QueueStats | None = None  # the queue when a burst ended
        # Burst mode gives up (exit 1) once the broker has failed for longer than the lease:
        # a one-off Job must fail visibly, not retry forever (see note_broker_failure).
        self.burst_failed: str | None = None
        self.last_broker_error: str | None = None
        self._failing_since: float | None = None
        # A fetch-loop call failed since the last one answered: when calls answer again, a
        # subscription's worker registers its subscription again (see note_broker_ok), and
        # every SUBSCRIPTION_RECHECK_SECONDS anyway (see _tick_forever).
        self._broker_failed = False
        self._resubscribing: asyncio.Task[None] | None = None
        self._subscribed_at = time.monotonic()
        self.wake: asyncio.Event | None = None  # a slot freed or an ack queued
        self.loop: asyncio.AbstractEventLoop | None = None
        self.q: base.Broker | None = None
        self.control: control_mod.ControlThread | None = None
        self.settler = settling.Settler(self, policy or self._default_policy())
        self.runner = running.JobRunner(self, self.settler)
        self.fetcher = fetching.FetchLoop(self)
        self.drainer = drain_mod.Drain(self)
        rate = None
        if settings.rate_limit_jobs is not None and settings.rate_limit_per_seconds is not None:
            rate = base.RateLimit(
                jobs=settings.rate_limit_jobs, per_seconds=settings.rate_limit_per_seconds
            )
        self.options = base.QueueOptions(
            lease_seconds=settings.lease_seconds,
            max_deliveries=self.policy.max_deliveries,
            dlq_max_length=settings.dlq_max_length,
            dlq_retention_seconds=settings.dlq_retention_seconds,
            rate_limit=rate,
            keep_finished_seconds=settings.keep_finished_seconds,
        )

    def _default_policy(self) -> policy_mod.DefaultRetryPolicy:
        s = self.settings
        return policy_mod.DefaultRetryPolicy(
            max_attempts=s.retry_max_attempts,
            max_deliveries=s.retry_max_deliveries,
            backoff_policy=backoff.Backoff(
                strategy=s.retry_backoff_strategy,
                base_seconds=s.retry_backoff_base_seconds,
                max_seconds=s.retry_backoff_max_seconds,
                jitter=s.retry_backoff_jitter,
            ),
            previous_delay=self._fetch_previous_delay,
        )

    async def _fetch_previous_delay(self, job: base.Delivery) -> float | None:
        return await self.settler.fetch_previous_delay(job)

    @property
    def policy(self) -> policy_mod.RetryPolicy:
        """The retry-or-dead-letter policy for failed attempts."""
        return self.settler.policy

    # ---- control ---------------------------------------------------------------------------

    def request_drain(self, signum: int | None = None) -> None:
        """First call: start draining. Second call: stop waiting and release now."""
        self.drainer.request(signum)

    def end_burst(self) -> None:
        """The queue had no job ready and this worker held none: drain and exit (burst mode)."""
        if self.draining:  # a signal came first: that drain is the one under way
            return
        self.burst_ended = True
        log.info("burst over: the queue has no job ready", extra={"processed": self.processed})
        self.request_drain()

    def note_broker_failure(self, exc: BaseException) -> None:
        """A fetch-loop call (or opening the broker) failed. A burst worker whose calls have
        failed for longer than ``lease_seconds`` (when a long-running worker's /healthz turns
        red) stops retrying: it drains and :meth:`run` returns 1."""
        self.last_broker_error = transient.describe(exc)
        self._broker_failed = True
        self.health.fetch_failed()  # not ready while the job loop cannot fetch
        if not self.burst or self.burst_failed is not None:
            return
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            return
        failing = now - self._failing_since
        if failing <= self.settings.lease_seconds:
            return
        self.burst_failed = (
            f"burst failed: the broker has not answered for {failing:.1f} s (longer than "
            f"lease_seconds, {self.settings.lease_seconds:g} s); last error: "
            f"{self.last_broker_error}"
        )
        log.error(self.burst_failed, extra={"held": len(self.held), "processed": self.processed})
        self.request_drain()

    def note_broker_ok(self) -> None:
        """A fetch-loop call was answered: an outage (if any) is over."""
        self._failing_since = None
        self.health.fetch_ok()
        if self._broker_failed:
            self._broker_failed = False
            self._register_subscription_again()

    def _register_subscription_again(self) -> None:
        # A Redis restarted without its data, or a failover to a replica that never had it,
        # leaves the topic's registry without this subscription: every publish then reached no
        # queue (created nothing, silently) until the worker restarted, or up to 5 minutes with
        # the operator. A restart between two calls surfaces as no error at all (the client
        # reconnects a closed pooled connection before it sends), so besides after failed
        # calls the worker registers again every SUBSCRIPTION_RECHECK_SECONDS. Idempotent (a
        # set member); a failure is tried again at the next outage's end or period.
        if self.queue_name not in self.app.subscriptions or self.draining:
            return
        self._subscribed_at = time.monotonic()
        if self._resubscribing is not None and not self._resubscribing.done():
            return
        queue = self.queue_name

        async def register() -> None:
            try:
                await self.app.register_subscriptions(queue)
            except Exception as exc:
                self._broker_failed = True  # try again when the broker next answers
                self._subscribing_failed(exc)
            else:
                log.info("subscription registered again after a broker outage")

        self._resubscribing = asyncio.get_running_loop().create_task(register())

    def in_use(self) -> int:
        """Slots taken: held jobs plus timed-out sync handlers still running in a thread."""
        return len(self.held) + self.runner.zombies

    def poke(self) -> None:
        """Wake the fetch loop when it waits for a free slot (a slot freed, an ack queued)."""
        if self.wake is not None:
            self.wake.set()

    def forget(self, h: held_mod.Held) -> None:
        """The job is settled (or given up): free its slot."""
        self.forget_all((h,))

    def forget_all(self, hs: Iterable[held_mod.Held]) -> None:
        """These jobs are settled (or given up): free their slots, with one wake-up."""
        held = self.held
        finished = 0
        with self.held_lock:
            for h in hs:
                was_held = held.pop((h.job.id, h.job.receipt), None) is not None
                if was_held and not h.released and not h.lost:
                    finished += 1  # finished here: a job given back or lost runs elsewhere
            idle = not held
        self.processed += finished
        if idle:
            if self.control is not None:
                self.control.report_idle()
            if self.burst:
                # The fetch waiting for work was sent while jobs were held, so its empty answer
                # cannot end the burst: end that wait now rather than after FETCH_BLOCK_SECONDS.
                self.fetcher.interrupt()
        self.poke()

    # ---- main ------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until drained; returns the process exit code (0 after a clean drain)."""
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.wake = asyncio.Event()
        if self.install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_drain, int(sig))
            while (early := signals.take_early_signal()) is not None:
                self.request_drain(early)
        self.runner.open()
        # Probes and heartbeats from now on, whatever the job loop's broker is doing.
        self.control = control_mod.ControlThread(self)
        self.control.start()
        ticker = asyncio.create_task(self._tick_forever())
        watchdog = asyncio.create_task(self.runner.watch_timeouts())
        try:
            # No automatic re-send on this connection: a fetch whose reply was lost must not run
            # again blindly (its jobs would be held by nobody); the fetch loop retries and adopts.
            self.q = await transient.open_until_ready(
                self.settings.redis_url,
                self.queue_name,
                options=self.options,
                settings={"socket_timeout": fetching.FETCH_BLOCK_SECONDS + 5.0, "retries": 0},
                on_error=self._opening_failed,
                stopped=lambda: self.draining,
                wake=self.wake,
            )
            if self.q is not None:  # None: drained before the broker was ever reachable
                self.app.bind_broker(self.q)
                if self.queue_name in self.app.subscriptions:
                    # a subscription exists from its first worker on: publishes reach it now.
                    # Retried like opening the broker: a Redis that is down at start made a
                    # subscription's worker exit (a crash loop) where any other worker waits.
                    queue = self.queue_name
                    await transient.call_until_done(
                        lambda: self.app.register_subscriptions(queue),
                        on_error=self._subscribing_failed,
                        stopped=lambda: self.draining,
                        wake=self.wake,
                    )
                freeze_startup_objects()
                log.info(
                    "worker started",
                    extra={
                        "worker_id": self.worker_id,
                        "queue": self.queue_name,
                        # which server: a wrong host, port or db is the usual "no jobs come"
                        "broker": brokers.describe_target(self.settings.redis_url),
                        "concurrency": self.concurrency,
                        "tasks": sorted(self.app.tasks),
                        "lease_seconds": self.settings.lease_seconds,
                        # the loop this process really runs on (WORKERFLEET_EVENT_LOOP)
                        "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
                    },
                )
                await self.fetcher.run()
                if self.fetcher.unsure:  # jobs a failed fetch leased to us: adopt, release them
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.fetcher.adopt_orphans(), timeout=3.0)
                await self.drainer.run()
                if self.burst_ended:
                    self.burst_leftover = await self._fetch_leftover()
        finally:
            ticker.cancel()
            watchdog.cancel()
            await self._shutdown()
            if self.install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        extra: dict[str, object] = {"worker_id": self.worker_id, "processed": self.processed}
        if self.burst_ended:
            extra["burst"] = True
            left = self.burst_leftover
            if left is not None:  # what the burst did not wait for (delayed into the future)
                extra["still_delayed"] = left.future_delayed
                extra["still_queued"] = left.backlog + left.due_delayed
        if self.burst_failed is not None:
            extra["burst"] = True
            log.error("worker stopped", extra={**extra, "error": self.burst_failed})
            return 1
        log.info("worker stopped", extra=extra)
        return 0

    async def _fetch_leftover(self) -> base.QueueStats | None:
        # One stats read for the burst's exit line; a broker without stats, or one that does
        # not answer soon, leaves the counts out rather than delay or fail a clean exit.
        q = self.q
        if not isinstance(q, base.QueueProbe):
            return None
        try:
            return await asyncio.wait_for(q.fetch_stats(), timeout=3.0)
        except transient.BROKER_ERRORS as exc:
            log.info("no queue stats for the burst's end", extra={"error": transient.describe(exc)})
            return None

    def _subscribing_failed(self, exc: BaseException) -> None:
        self.metrics.redis_error("connect")
        log.warning(
            "cannot register the subscription; retrying", extra={"error": transient.describe(exc)}
        )

    def _opening_failed(self, exc: BaseException) -> None:
        # Start-up is over for now: retries through a long outage must not pile up garbage.
        startup.resume_gc()
        self.metrics.redis_error("connect")
        log.warning("cannot open the broker; retrying", extra={"error": transient.describe(exc)})
        self.note_broker_failure(exc)

    async def _tick_forever(self) -> None:
        # Proves to /healthz that the job loop's event loop is responsive (and exports what a
        # fetch that is still waiting in the broker has dead-lettered meanwhile).
        while True:
            self.health.loop_tick()
            if self.q is not None and self.q.dead_lettered_by_fetch:
                self.fetcher.export_fetch_dead_letters(self.q.dead_lettered_by_fetch)
            if (
                self.q is not None
                and time.monotonic() - self._subscribed_at >= SUBSCRIPTION_RECHECK_SECONDS
            ):
                self._register_subscription_again()
            await asyncio.sleep(0.5)

    async def _shutdown(self) -> None:
        # The broker's answers about acks sent without a reply are counted before it closes.
        await self.settler.finish_checks()
        # Every job is settled or released by now: stop the idle children, kill stragglers.
        await self.runner.close_processes()
        if self.control is not None:
            # The control thread writes the heartbeat record, so it removes it as it stops.
            self.control.stop()
            await asyncio.to_thread(self.control.join, 10.0)
        if self.q is not None:
            if self.control is None or not self.control.deregistered:
                # The control thread could not (stuck, or its broker never opened): from here.
                await control_mod.deregister(self.q, self.worker_id)
            try:
                await asyncio.wait_for(self.q.close(), timeout=3.0)
            except transient.BROKER_ERRORS as exc:
                log.warning("closing the broker failed", extra={"error": transient.describe(exc)})
        self.runner.close_threads()
        self.health.stopped = True


def freeze_startup_objects() -> None:
    """Take what the process loaded so far out of the cyclic collector's reach (gc.freeze).

    Imports, the app, its models and the clients live as long as the process. Left in the
    collector's generations, every full collection walked them all: a pause of 130-200 ms of
    the job loop on a loaded 2-core machine (bench/runtime/latency_probe.py --trace), i.e. the
    p99 of enqueue→start at moderate load. Frozen, a full collection walks only what jobs
    allocated since. Garbage of the start-up itself stays frozen too: a one-off, bounded cost.
    The collector, paused for the ``worker`` command's start-up (:mod:`worker_runtime.startup`),
    runs again from here.
    """
    gc.freeze()
    startup.resume_gc()


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
        # The process is this worker's: nothing may keep it past the drain budget (a broker
        # that does not answer, a thread, a task swallowing its cancellation).
        worker.drainer.hard_exit = install_signal_handlers
        if on_started is not None:
            on_started(worker)
        return await worker.run()

    return run_on_event_loop(main, settings.event_loop)


def run_on_event_loop(
    main: Callable[[], Coroutine[Any, Any, T]], event_loop: config.EventLoop
) -> T:
    """Run ``main()`` to completion on a fresh loop of the kind ``WORKERFLEET_EVENT_LOOP`` names.

    On asyncio this is ``asyncio.run``. On uvloop the loop is also made the current one for the
    run, as ``asyncio.run`` does for its own: a library asking the policy for the current loop
    gets the running one (a loop factory alone leaves the policy without it).
    """
    factory = select_loop_factory(event_loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        if factory is None:
            return runner.run(main())
        asyncio.set_event_loop(runner.get_loop())
        try:
            return runner.run(main())
        finally:
            asyncio.set_event_loop(None)


def select_loop_factory(
    event_loop: config.EventLoop,
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the job loop's event loop; None for asyncio's own (``asyncio.run``'s).

    uvloop runs the same asyncio tasks on libuv: measured on no-op jobs it cut the worker's CPU
    per job by ~8% (docs/runtime.md). It is an optional package: asking for it without it
    installed is a configuration error, never a silent fall back to asyncio.
    """
    if event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        msg = (
            "WORKERFLEET_EVENT_LOOP=uvloop needs the uvloop package: install "
            "'workerfleet[uvloop]', or unset it to run on asyncio's own loop"
        )
        raise errors.ConfigError(msg) from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
