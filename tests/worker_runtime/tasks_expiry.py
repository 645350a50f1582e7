"""Task module for the job time-to-live tests: ``tests.worker_runtime.tasks_expiry:app``.

Worker subprocesses import it; handlers record what ran with the shared fixture's ``record``
(Redis list ``test:{queue}:events``), so a job that never started leaves no event.
"""

from __future__ import annotations

from tests.worker_runtime import tasks_fixture
from worker_runtime import App, JobContext, Retry, RetryLater

app = App(queue=tasks_fixture.QUEUE)


@app.task("run")
async def run(payload: tasks_fixture.Empty, ctx: JobContext) -> None:
    tasks_fixture.record("start", ctx)


@app.task("drop-when-late", ttl=2.0, on_expire="drop")
async def drop_when_late(payload: tasks_fixture.Empty, ctx: JobContext) -> None:
    tasks_fixture.record("start", ctx)


@app.task("late-retry", retry=Retry(max_attempts=5))
async def late_retry(payload: tasks_fixture.Empty, ctx: JobContext) -> None:
    # The first attempt asks for a retry that becomes due after the job's own deadline.
    tasks_fixture.record("start", ctx)
    if ctx.attempt == 1:
        raise RetryLater(2.5)
