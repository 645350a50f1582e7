"""Helpers for tests that run the real Worker on the in-process memory broker.

Used by the worker tests (tests/worker_runtime/test_worker_on_memory_broker.py,
test_worker_job_tasks.py): the worker's settings, enqueueing one job through a probe broker,
and running a worker until a check holds (then draining it, which must exit 0).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from worker_runtime import config
from worker_runtime import envelope as envelope_mod
from worker_runtime import worker as worker_mod
from worker_runtime.brokers import base


def settings(memory_store_url: str, **overrides: Any) -> config.WorkerSettings:
    """Settings for a worker on queue "jobs": four slots, fast retries without jitter."""
    values: dict[str, Any] = {
        "redis_url": memory_store_url,
        "queue": "jobs",
        "metrics_port": 0,
        "concurrency": 4,
        "retry_backoff_base_seconds": 0.01,
        "retry_backoff_jitter": "none",
        "log_level": "warning",
    }
    values.update(overrides)
    return config.WorkerSettings(**values)


async def enqueue(broker: Any, task: str, payload: dict[str, Any] | None = None) -> str:
    """Enqueue one job of ``task`` through ``broker``; its id."""
    env = envelope_mod.build_envelope(task, payload or {})
    result = await broker.enqueue(base.EnqueueRequest(envelope=env))
    return str(result.job_id)


async def until(check: Callable[[], Any], seconds: float, what: str) -> None:
    """Wait (bounded) until the async ``check`` is true; AssertionError naming ``what``."""
    for _ in range(int(seconds / 0.01)):  # bounded
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def run_until(w: worker_mod.Worker, check: Callable[[], Any], what: str) -> None:
    """Run ``w`` until ``check`` holds (10 s at most), then drain it: it must exit 0."""
    run = asyncio.create_task(w.run())
    try:
        await until(check, 10.0, what)
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 10) == 0
