"""Process-pool tasks for the subprocess tests: ``tests.worker_runtime.tasks_processes:app``.

Every task here is ``executor="process"``: the worker runs it in a spawned child, which imports
this module by name. Handlers record what they did (with their pid) through the shared fixture's
``record``/``mark_done``, from inside the child, so the tests see which process ran what.
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

from tests.worker_runtime import tasks_fixture
from worker_runtime import App, JobContext, Retry, backoff

app = App(queue=tasks_fixture.QUEUE)

FAST_RETRY = Retry(max_attempts=3, backoff=backoff.Backoff(base_seconds=0.05, max_seconds=0.2))


class Spin(BaseModel):
    marker: str
    barrier: int = 0  # spin until this many jobs of the test have started (0 = no barrier)
    seconds: float = 0.0  # then burn this much CPU
    megabytes: int = 0  # and keep this much memory allocated in the child


_kept: list[bytes] = []


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1


@app.task("cpu", executor="process", retry=FAST_RETRY)
def cpu(payload: Spin, ctx: JobContext) -> None:
    tasks_fixture.record("start", ctx, marker=payload.marker)
    if payload.barrier:
        # Finishes only if `barrier` jobs run at the same time (bounded: fails after 30 s).
        client = tasks_fixture._redis()
        client.incr(f"test:{ctx.queue}:barrier")
        deadline = time.monotonic() + 30.0
        while int(client.get(f"test:{ctx.queue}:barrier") or 0) < payload.barrier:
            if time.monotonic() > deadline:
                raise TimeoutError("the other jobs never ran alongside this one")
            _burn(0.01)
    _burn(payload.seconds)
    if payload.megabytes:
        _kept.append(os.urandom(payload.megabytes * 1024 * 1024))
    tasks_fixture.record("done", ctx, marker=payload.marker)
    tasks_fixture.mark_done(ctx, payload.marker)


@app.task("crash-once", executor="process", retry=FAST_RETRY)
def crash_once(payload: Spin, ctx: JobContext) -> None:
    tasks_fixture.record("start", ctx, marker=payload.marker)
    if ctx.attempt == 1:
        _burn(payload.seconds)
        os._exit(3)  # the child dies mid-job
    tasks_fixture.record("done", ctx, marker=payload.marker)
    tasks_fixture.mark_done(ctx, payload.marker)


@app.task(
    "spin-forever",
    executor="process",
    timeout=1.0,
    retry=Retry(max_attempts=2, backoff=backoff.Backoff(base_seconds=0.05)),
)
def spin_forever(payload: Spin, ctx: JobContext) -> None:
    tasks_fixture.record("start", ctx, marker=payload.marker)
    _burn(120.0)
    tasks_fixture.record("done", ctx, marker=payload.marker)


@app.task("done-on-ack", executor="process")
def done_on_ack(payload: Spin, ctx: JobContext) -> None:
    tasks_fixture.record("start", ctx, marker=payload.marker, key=ctx.idempotency_key)
    ctx.mark_done_on_ack()


@app.task("asks-already-done", executor="process")
def asks_already_done(payload: Spin, ctx: JobContext) -> None:
    try:
        ctx.already_done_sync()
    except RuntimeError as exc:
        tasks_fixture.record("refused", ctx, marker=payload.marker, error=str(exc))
        return
    tasks_fixture.record("answered", ctx, marker=payload.marker)


@app.task("no-context", executor="process")
def no_context(payload: Spin) -> None:
    tasks_fixture._redis().rpush(f"test:{tasks_fixture.QUEUE}:plain", str(os.getpid()))


class CodedError(Exception):
    """An ordinary handler error that does not pickle back: ``cls(*args)`` needs two."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


@app.task("coded-error", executor="process", retry=FAST_RETRY)
def coded_error(payload: Spin, ctx: JobContext) -> None:
    tasks_fixture.record("start", ctx, marker=payload.marker)
    raise CodedError(404, f"no such thing as {payload.marker}")
