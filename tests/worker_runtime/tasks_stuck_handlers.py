"""Task module of the stuck-handler tests: ``tests.worker_runtime.tasks_stuck_handlers:app``.

Async handlers that do not let go when the worker cancels them: one blocked in a thread of
``asyncio.to_thread`` (the thread cannot be stopped), one that swallows every cancellation. Both
record their start in ``test:{queue}:events`` through the fixture tasks' ``record``.
"""

from __future__ import annotations

import asyncio
import time

from tests.worker_runtime.tasks_fixture import QUEUE, Sleep, record
from worker_runtime import App, JobContext, Retry, backoff

app = App(queue=QUEUE)


@app.task("blocked-in-thread")
async def blocked_in_thread(payload: Sleep, ctx: JobContext) -> None:
    record("start", ctx, marker=payload.marker)
    await asyncio.to_thread(time.sleep, payload.seconds)
    record("done", ctx, marker=payload.marker)


async def swallow_cancellations(payload: Sleep, ctx: JobContext) -> None:
    """Sleep for the payload's seconds, catching every cancellation on the way."""
    record("start", ctx, marker=payload.marker)
    end = time.monotonic() + payload.for_delivery(ctx.attempt)
    while time.monotonic() < end:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            record("swallowed", ctx, marker=payload.marker)
    record("done", ctx, marker=payload.marker)


app.task("swallows-cancel")(swallow_cancellations)
app.task(
    "swallows-cancel-timeout",
    timeout=0.5,
    retry=Retry(max_attempts=3, backoff=backoff.Backoff(base_seconds=0.05, max_seconds=0.05)),
)(swallow_cancellations)
