"""Drain: stop fetching, let in-flight jobs finish within the budget, release the rest.

Started by SIGTERM/SIGINT through :meth:`worker_runtime.worker.core.Worker.request_drain` (the
signal handlers only set flags, so this is safe as PID 1): fetching stops at once, jobs a broker
fetched ahead go back to the queue (``base.stop_prefetching``), the worker reports not-ready,
in-flight jobs may finish until the budget
(``WORKERFLEET_DRAIN_TIMEOUT_SECONDS``) is almost spent, then the rest are released to the queue
without spending an attempt; the worker then deregisters and exits 0 before the budget ends.
A second signal releases immediately. Nothing keeps the worker's process past the budget (a
broker that does not answer, a thread of ``asyncio.to_thread``, a task that swallows its
cancellation): :meth:`Drain.arm_hard_exit`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from worker_runtime import logs
from worker_runtime.brokers import base
from worker_runtime.worker import held as held_mod
from worker_runtime.worker import transient

if TYPE_CHECKING:
    from worker_runtime.worker.core import Worker

log = logs.get_logger("worker")

MIN_EXIT_SECONDS = 1.0
"""The least time a draining worker process gets before the hard exit (a budget of 0 s still
releases its jobs: the drain's reserve is 1 s at least)."""

MAX_TIMER_SECONDS = 1e8
"""The longest wait a thread's timer takes (about 3 years): one of 1e10 s raised in its
thread (the platform's time_t overflowed), and a longer drain budget is one that never ends."""


class Drain:
    """The worker's drain: its request, its budget, and the release of unfinished jobs."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.started: float | None = None  # monotonic time of the first drain request
        self.hurry = False  # a second request: release now
        # Set by the process that owns the worker (run_worker with its signal handlers): the
        # drain then ends the process when its budget is spent, whatever is still running.
        self.hard_exit = False
        self.exit_timer: threading.Timer | None = None

    def request(self, signum: int | None = None) -> None:
        """First call: start draining. Second call: stop waiting and release now."""
        w = self.worker
        if w.draining:
            self.hurry = True
            log.info("second signal: releasing in-flight jobs now", extra={"signal": signum})
        else:
            w.draining = True
            self.started = time.monotonic()
            w.health.draining = True
            w.metrics.draining.set(1)
            log.info("draining", extra={"signal": signum, "in_flight": len(w.held)})
            if self.hard_exit:
                self.exit_timer = self.arm_hard_exit()
            if w.control is not None:
                w.control.wake()
        w.poke()
        w.fetcher.interrupt()  # a blocking fetch ends at once (between script calls)

    def _release_budget_end(self) -> float:
        w = self.worker
        # Keep a reserve for releasing, deregistering and exiting inside the budget.
        budget = w.settings.drain_timeout_seconds
        reserve = min(5.0, max(1.0, 0.2 * budget))
        start = self.started if self.started is not None else time.monotonic()
        return start + max(0.0, budget - reserve)

    def arm_hard_exit(self) -> threading.Timer:
        """End the process when the drain budget is spent, if it still runs then.

        Armed when the drain starts, for a process that owns the worker. Waiting on a broker
        that does not answer (frozen, partitioned away) took the release, the control thread's
        last renewal, the deregistration and the close 15 s past a 5 s budget, into the grace
        period's SIGKILL (budget + 15 s). Released handlers can outlive the worker too: a thread
        of ``asyncio.to_thread`` cannot be stopped (the loop's default executor, and then the
        interpreter, join it), and a task that swallows its cancellation never ends (the loop
        cancels and awaits every task). Jobs not released by then return after their lease.
        """
        budget = self.worker.settings.drain_timeout_seconds
        seconds = min(MAX_TIMER_SECONDS, max(MIN_EXIT_SECONDS, budget))
        timer = threading.Timer(seconds, self._exit_late)
        timer.name = "wf-exit-deadline"
        timer.daemon = True  # a process that exits by itself first is not held by it
        timer.start()
        return timer

    def _exit_late(self) -> None:
        # The burst's failure is exit 1 as it is for a worker that stops by itself.
        exit_now(1 if self.worker.burst_failed is not None else 0)

    async def run(self) -> None:
        """Wait for in-flight jobs within the budget, then release what is left."""
        w = self.worker
        assert w.wake is not None
        await self._stop_prefetching()
        end = self._release_budget_end()
        while w.held and not self.hurry:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            w.wake.clear()
            try:
                await asyncio.wait_for(w.wake.wait(), remaining)
            except TimeoutError:
                break
        await self._release_all()

    async def _stop_prefetching(self) -> None:
        # Jobs a broker fetched ahead (RabbitMQ's prefetch) go back now, so other workers run
        # them during this drain; kept until the broker closed, they waited for it and could
        # come back with a delivery spent.
        w = self.worker
        assert w.q is not None
        try:
            await asyncio.wait_for(base.stop_prefetching(w.q), timeout=3.0)
        except transient.BROKER_ERRORS as exc:
            log.warning(
                "giving back prefetched jobs failed; they return when the broker closes",
                extra={"error": transient.describe(exc)},
            )

    async def _release_all(self) -> None:
        w = self.worker
        with w.held_lock:
            to_release = [h for h in w.held.values() if not h.settling and not h.released]
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
                    "release failed; the job returns after its lease",
                    extra={"error": transient.describe(r)},
                )
        # Let cancelled handlers unwind (bounded: a handler that swallows cancellation is left).
        tasks = [h.task for h in to_release if h.task is not None and not h.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        # Settles in flight (handlers that finished just before the deadline) get a moment.
        settling = [h.task for h in w.held.values() if h.settling and h.task is not None]
        if settling:
            await asyncio.wait(settling, timeout=2.0)

    async def release_fetched(self, h: held_mod.Held) -> None:
        """Give back a job a fetch delivered after the drain began."""
        w = self.worker
        try:
            await self._release_one(h)
        finally:
            w.forget(h)

    async def _release_one(self, h: held_mod.Held) -> None:
        w = self.worker
        assert w.q is not None
        h.released = True
        ok = await asyncio.wait_for(w.q.release(h.job), timeout=3.0)
        task = h.spec.name if h.spec is not None else h.job.envelope.task
        if ok:
            w.metrics.job_finished(task, "released", None)


def exit_now(code: int) -> None:
    """Exit the process at once with ``code``, saying which threads were still running."""
    main = threading.main_thread()
    running = sorted(t.name for t in threading.enumerate() if not t.daemon and t is not main)
    log.warning(
        "the drain budget is spent: exiting without waiting for what still runs (a broker "
        "that does not answer, a handler task that ignores its cancellation, a thread)",
        extra={"exit_code": code, "threads": running},
    )
    # os._exit skips the interpreter's own flushing
    for handler in logging.getLogger().handlers:
        handler.flush()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
