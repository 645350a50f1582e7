"""The real worker runs on the memory broker: worker logic tested with no server at all.

The worker opens its brokers by URL (its job loop and its control thread each open one), so
``memory://NAME`` puts it on the in-process reference broker; a producer opened on the same URL
meets it there. The history below comes from the broker (what was enqueued, acknowledged and
dead-lettered) and from the handlers themselves (what ran), not from the worker's counters.
"""

from __future__ import annotations

import asyncio
import uuid

import pydantic

from tests.support.brokers import request
from worker_runtime import App, JobContext, Retry, backoff, config, worker
from worker_runtime.brokers import memory, open_broker


class Empty(pydantic.BaseModel):
    pass


async def test_a_worker_on_the_memory_broker_retries_acks_and_dead_letters() -> None:
    # Given a queue on memory://, a job that fails once and one that always fails (2 attempts)
    url = f"memory://{uuid.uuid4().hex}"
    app = App(queue="emails")
    runs: list[tuple[str, int]] = []
    quick = Retry(max_attempts=2, backoff=backoff.Backoff("fixed", 0.05, 0.05, "none"))

    @app.task("flaky", payload=Empty, retry=quick)
    async def flaky(payload: Empty, ctx: JobContext) -> None:
        runs.append(("flaky", ctx.attempt))
        if ctx.attempt == 1:
            raise RuntimeError("first try fails")

    @app.task("broken", payload=Empty, retry=quick)
    async def broken(payload: Empty, ctx: JobContext) -> None:
        runs.append(("broken", ctx.attempt))
        raise RuntimeError("always")

    producer = await open_broker(url, "emails")
    [ok, bad] = await producer.enqueue_many([request("flaky"), request("broken")])
    settings = config.WorkerSettings(redis_url=url, metrics_port=0, lease_seconds=5.0)
    w = worker.Worker(app, settings, install_signal_handlers=False)
    run = asyncio.create_task(w.run())
    try:
        # When the worker runs until both jobs are settled (bounded: 10 s)
        for _ in range(1000):
            stats = await producer.fetch_stats()
            if stats.completed_total + stats.dead_letter == 2 and stats.in_flight == 0:
                break
            await asyncio.sleep(0.01)
    finally:
        w.request_drain()
        exit_code = await asyncio.wait_for(run, 20)
        memory.forget_stores()
    # Then the flaky job ran twice and completed, the broken one ran twice and is a dead letter
    # with both failures, and the worker drained cleanly
    assert exit_code == 0
    assert sorted(runs) == [("broken", 1), ("broken", 2), ("flaky", 1), ("flaky", 2)]
    assert (stats.completed_total, stats.dead_letter, stats.backlog) == (1, 1, 0)
    letter = await producer.show_dead_letter(bad.job_id)
    assert letter is not None and letter.reason == "max_attempts"
    assert [h.message for h in letter.history] == ["always", "always"]
    assert await producer.show_dead_letter(ok.job_id) is None
