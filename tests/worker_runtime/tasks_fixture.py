"""Example task module for the subprocess tests: ``tests.worker_runtime.tasks_fixture:app``.

Worker subprocesses import it through ``workerfleet worker`` / ``python -m worker_runtime
worker``. Handlers write what they did to Redis (list ``test:{queue}:events`` and hash
``test:{queue}:done``) with a plain client of their own, so tests can assert on executions,
duplicates and attempts without trusting the worker under test.

Queue name: ``WORKERFLEET_QUEUE`` (the worker's own setting) else ``fixture``.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import time

import redis
from pydantic import BaseModel

from worker_runtime import App, JobContext, Reject, Retry, RetryLater, backoff

QUEUE = os.environ.get("WORKERFLEET_QUEUE", "fixture")
app = App(queue=QUEUE)

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["WORKERFLEET_REDIS_URL"])
    return _client


def record(event: str, ctx: JobContext, **extra: object) -> None:
    """Append one event to ``test:{queue}:events`` (JSON with job id, attempt, deliveries)."""
    doc = {
        "event": event,
        "job": ctx.job_id,
        "attempt": ctx.attempt,
        "deliveries": ctx.deliveries,
        "worker": ctx.worker_id,
        "pid": os.getpid(),
        "t": time.time(),
        **extra,
    }
    _redis().rpush(f"test:{ctx.queue}:events", json.dumps(doc))


def mark_done(ctx: JobContext, marker: str) -> None:
    """Count one completed execution of ``marker`` (duplicates show as counts > 1)."""
    _redis().hincrby(f"test:{ctx.queue}:done", marker, 1)


class Empty(BaseModel):
    pass


class Sleep(BaseModel):
    seconds: float
    marker: str = ""
    later_seconds: float | None = None  # how long later deliveries sleep (default: seconds)

    def for_delivery(self, deliveries: int) -> float:
        if deliveries > 1 and self.later_seconds is not None:
            return self.later_seconds
        return self.seconds


class Flaky(BaseModel):
    fail_times: int
    marker: str = ""


class Crash(BaseModel):
    mode: str = "exit"  # exit | segv


class Later(BaseModel):
    delay: float | None = None
    retry_after: str | None = None
    marker: str = ""


class Order(BaseModel):
    order_id: int
    amount: float


class Chaos(BaseModel):
    marker: str
    fail_first: int = 0  # transient failures before success
    poison: bool = False
    work_ms: float = 0.0


@app.task("noop")
async def noop(payload: Empty) -> None:
    return None


@app.task("noop-sync")
def noop_sync(payload: Empty) -> None:
    return None


@app.task("sleep")
async def sleep(payload: Sleep, ctx: JobContext) -> None:
    record("start", ctx, marker=payload.marker)
    await asyncio.sleep(payload.for_delivery(ctx.deliveries))
    record("done", ctx, marker=payload.marker)
    mark_done(ctx, payload.marker or ctx.job_id)


@app.task("sleep-sync")
def sleep_sync(payload: Sleep, ctx: JobContext) -> None:
    record("start", ctx, marker=payload.marker)
    time.sleep(payload.for_delivery(ctx.deliveries))
    record("done", ctx, marker=payload.marker)
    mark_done(ctx, payload.marker or ctx.job_id)


@app.task("block-loop")
async def block_loop(payload: Sleep, ctx: JobContext) -> None:
    # A badly written async handler: blocks the event loop with a synchronous sleep.
    record("start", ctx, marker=payload.marker)
    time.sleep(payload.seconds)  # noqa: ASYNC251 - the point of this task
    record("done", ctx, marker=payload.marker)
    mark_done(ctx, payload.marker or ctx.job_id)


@app.task("cpu-hog")
def cpu_hog(payload: Sleep, ctx: JobContext) -> None:
    # Pure-Python busy loop in a worker thread: competes for the GIL with the control thread.
    record("start", ctx, marker=payload.marker)
    end = time.monotonic() + payload.seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    record("done", ctx, marker=payload.marker)
    mark_done(ctx, payload.marker or ctx.job_id)


@app.task(
    "flaky",
    retry=Retry(max_attempts=3, backoff=backoff.Backoff(base_seconds=0.05, max_seconds=0.2)),
)
async def flaky(payload: Flaky, ctx: JobContext) -> None:
    record("start", ctx, marker=payload.marker)
    if ctx.attempt <= payload.fail_times:
        raise RuntimeError(f"transient failure {ctx.attempt} of {payload.fail_times}")
    mark_done(ctx, payload.marker or ctx.job_id)


@app.task("reject")
async def reject(payload: Empty, ctx: JobContext) -> None:
    record("start", ctx)
    raise Reject("not for us")


@app.task("non-retryable", non_retryable=(KeyError,))
async def non_retryable(payload: Empty, ctx: JobContext) -> None:
    record("start", ctx)
    raise KeyError("missing thing")


@app.task("crash")
def crash(payload: Crash, ctx: JobContext) -> None:
    record("start", ctx)
    if payload.mode == "segv":
        ctypes.string_at(0)  # a real segmentation fault in C code
    os.kill(os.getpid(), signal.SIGKILL) if payload.mode == "kill" else os._exit(3)


@app.task(
    "later",
    # requested delays are capped at the backoff maximum: room for the seconds tests ask for
    retry=Retry(max_attempts=5, backoff=backoff.Backoff(base_seconds=0.05, max_seconds=10.0)),
)
async def later(payload: Later, ctx: JobContext) -> None:
    record("start", ctx, marker=payload.marker)
    if ctx.attempt == 1:
        raise RetryLater(payload.delay, retry_after=payload.retry_after)
    mark_done(ctx, payload.marker or ctx.job_id)


@app.task("order")
async def order(payload: Order, ctx: JobContext) -> None:
    record("start", ctx, order_id=payload.order_id)
    mark_done(ctx, str(payload.order_id))


@app.task(
    "timeout-async",
    timeout=0.5,
    retry=Retry(max_attempts=2, backoff=backoff.Backoff(base_seconds=0.05)),
)
async def timeout_async(payload: Sleep, ctx: JobContext) -> None:
    record("start", ctx, marker=payload.marker)
    try:
        await asyncio.sleep(payload.seconds)
    except asyncio.CancelledError:
        record("cancelled", ctx, marker=payload.marker)
        raise
    record("done", ctx, marker=payload.marker)


@app.task(
    "timeout-sync",
    timeout=0.5,
    retry=Retry(max_attempts=2, backoff=backoff.Backoff(base_seconds=0.05)),
)
def timeout_sync(payload: Sleep, ctx: JobContext) -> None:
    record("start", ctx, marker=payload.marker)
    time.sleep(payload.seconds)
    record("done", ctx, marker=payload.marker)


@app.task(
    "timeout-blocking",
    timeout=0.5,
    retry=Retry(max_attempts=2, backoff=backoff.Backoff(base_seconds=0.05)),
)
async def timeout_blocking(payload: Sleep, ctx: JobContext) -> None:
    # An async handler that blocks its event loop (a sync call in async code): nothing can
    # cancel it, it returns by itself after the timeout
    record("start", ctx, marker=payload.marker)
    time.sleep(payload.seconds)  # noqa: ASYNC251 (blocking the loop is the point)
    record("done", ctx, marker=payload.marker)


@app.task("idempotent")
async def idempotent(payload: Sleep, ctx: JobContext) -> None:
    if await ctx.already_done():
        record("skipped", ctx, marker=payload.marker)
        return
    record("start", ctx, marker=payload.marker)
    mark_done(ctx, payload.marker or ctx.job_id)
    ctx.mark_done_on_ack()


@app.task(
    "chaos",
    retry=Retry(max_attempts=4, backoff=backoff.Backoff(base_seconds=0.02, max_seconds=0.2)),
)
async def chaos(payload: Chaos, ctx: JobContext) -> None:
    if payload.work_ms:
        await asyncio.sleep(payload.work_ms / 1000.0)
    if payload.poison:
        raise RuntimeError("poison job")
    if ctx.attempt <= payload.fail_first:
        raise RuntimeError("transient failure")
    mark_done(ctx, payload.marker)


@app.task("log")
async def log_async(payload: Empty, ctx: JobContext) -> None:
    ctx.logger.info("handler says hello", extra={"custom": "async"})


@app.task("log-sync")
def log_sync(payload: Empty, ctx: JobContext) -> None:
    ctx.logger.info("handler says hello", extra={"custom": "sync"})


class Fanout(BaseModel):
    children: int


@app.task("fanout")
async def fanout(payload: Fanout, ctx: JobContext) -> None:
    # Follow-up jobs go through the worker's own connection, to the queue it serves.
    record("start", ctx)
    for i in range(payload.children):
        await app.enqueue(
            "order", {"order_id": 100 + i, "amount": 1.0}, correlation_id=ctx.correlation_id
        )


@app.task("idempotent-sync")
def idempotent_sync(payload: Sleep, ctx: JobContext) -> None:
    if ctx.already_done_sync():
        record("skipped", ctx, marker=payload.marker)
        return
    record("start", ctx, marker=payload.marker)
    mark_done(ctx, payload.marker or ctx.job_id)
    ctx.mark_done_on_ack()


@app.task("inner-cancel", retry=Retry(max_attempts=2, backoff=backoff.Backoff(base_seconds=0.05)))
async def inner_cancel(payload: Empty, ctx: JobContext) -> None:
    # A handler that lets the cancellation of something it awaited escape.
    record("start", ctx)
    inner = asyncio.ensure_future(asyncio.sleep(10))
    inner.cancel()
    await inner
