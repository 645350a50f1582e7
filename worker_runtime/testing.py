"""Run an App's queued jobs in a test: :func:`run_burst`, a burst worker in this process.

An application's tests enqueue jobs (on ``memory://NAME`` no server is needed), call
``run_burst(app)``, which runs a worker until the queue has no job ready and the worker holds
none, and then assert on what the tasks did and on the returned :class:`BurstResult`::

    result = run_burst(app)
    assert result.completed == 2

The worker is the real one (``workerfleet worker --burst``): the same fetching, retries and
dead-lettering, on its own event loop, without signal handlers or the metrics server.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from worker_runtime import app as app_mod
from worker_runtime import config, errors
from worker_runtime.worker import core

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "BurstResult", "run_burst"]

DEFAULT_TIMEOUT_SECONDS = 120.0
"""How long :func:`run_burst` lets a burst run before it stops it and raises TimeoutError."""


@dataclass(frozen=True)
class BurstResult:
    """What one burst worker did, as its own metrics counted it.

    The counts come from the worker under test (its ``workerfleet_*`` counters), not from the
    queue: to prove a job really ran, assert on what the task did too. A job retried twice and
    then dead-lettered counts 2 in ``retried`` and 1 in ``dead_lettered``.
    """

    completed: int
    """Attempts that returned and were acknowledged."""
    retried: int
    """Failed attempts scheduled for another try (run within the burst when due at once)."""
    dead_lettered: int
    """Jobs moved to the dead-letter queue (out of attempts, poison, unknown task, expired)."""
    processed: int
    """Deliveries this worker finished, whatever their outcome."""
    still_delayed: int | None
    """Jobs left delayed into the future (not waited for); None when the broker cannot tell."""
    still_queued: int | None
    """Jobs ready when the burst ended (enqueued meanwhile); None when the broker cannot tell."""


def run_burst(
    app: app_mod.App,
    broker_url: str | None = None,
    *,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    **settings: Any,
) -> BurstResult:
    """Run ``app``'s jobs that are ready, in this process, until none is ready and none is held.

    ``broker_url`` defaults to the App's own (``App(redis_url=...)``, else
    ``WORKERFLEET_BROKER_URL``); ``settings`` override :class:`~worker_runtime.config.
    WorkerSettings` fields (``retry_max_attempts=3``, ``retry_backoff_base_seconds=0``, ...).
    Jobs delayed into the future are left queued. Blocks; call it outside an event loop.

    A burst still running after ``timeout_seconds`` is stopped (the worker releases what it
    holds and exits) and :class:`TimeoutError` names what was left: the jobs held, how many
    ran, the broker's last error. A broker that does not answer for longer than
    ``lease_seconds`` ends the burst sooner, with :class:`~worker_runtime.errors.
    BrokerUnavailable` (as ``workerfleet worker --burst`` exits 1 then).
    """
    url = (
        broker_url
        or app.redis_url
        or os.environ.get("WORKERFLEET_BROKER_URL")
        or os.environ.get("WORKERFLEET_REDIS_URL")
    )
    if not url:
        msg = "no broker URL: pass run_burst(app, broker_url=...) or App(redis_url=...)"
        raise ValueError(msg)
    options: dict[str, Any] = {"metrics_port": 0, **settings, "redis_url": url, "burst": True}
    worker_settings = config.WorkerSettings(**options)
    started: list[core.Worker] = []
    left_at_timeout: list[str] = []

    def stop_at_timeout(worker: core.Worker) -> None:
        if worker.burst_ended or worker.burst_failed is not None:
            return  # already on its way out
        held = sorted(f"{h.job.envelope.task} {h.job.id}" for h in list(worker.held.values()))
        left_at_timeout.append(
            f"run_burst: the burst did not end within {timeout_seconds:g} s; it had run "
            f"{worker.processed} job(s) and held {len(held)}"
            + (f" ({', '.join(held[:10])})" if held else "")
            + (
                f"; the broker's last error: {worker.last_broker_error}"
                if worker.last_broker_error
                else ""
            )
        )
        worker.request_drain()
        worker.request_drain()  # a second request releases what is held at once

    def on_started(worker: core.Worker) -> None:
        started.append(worker)
        asyncio.get_running_loop().call_later(timeout_seconds, stop_at_timeout, worker)

    code = core.run_worker(
        app, worker_settings, install_signal_handlers=False, on_started=on_started
    )
    worker = started[0]
    if left_at_timeout:
        raise TimeoutError(left_at_timeout[0])
    if code != 0:
        raise errors.BrokerUnavailable(worker.burst_failed or f"the burst worker exited {code}")
    left = worker.burst_leftover
    return BurstResult(
        completed=_count(worker, "workerfleet_jobs_total", outcome="completed"),
        retried=_count(worker, "workerfleet_job_retries_total"),
        dead_lettered=_count(worker, "workerfleet_dead_lettered_total"),
        processed=worker.processed,
        still_delayed=left.future_delayed if left is not None else None,
        still_queued=left.backlog + left.due_delayed if left is not None else None,
    )


def _count(worker: core.Worker, name: str, **labels: str) -> int:
    # Summed over the labels not given (every task, every reason).
    total = 0.0
    for metric in worker.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return int(total)
