"""What stands between a job and its start under load: round trips per cycle, full collections.

Enqueue→start latency at moderate load is set by how many round trips (and thread wake-ups) a
cycle of the job loop costs — a job that finishes while a separate ack call is on its way keeps
its slot until that call returns — and by pauses of the job loop, of which a full garbage
collection over everything the process loaded was the longest. These tests count calls and
read the collector's state, never time anything.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pydantic
import redis.asyncio

from tests.support import engine as es
from worker_runtime import App, config, metrics, worker
from worker_runtime.brokers.redis import queue, stats


class Empty(pydantic.BaseModel):
    pass


async def _run_until_completed(
    w: worker.Worker,
    client: redis.asyncio.Redis,
    queue_name: str,
    n: int,
    produce: Any,
) -> stats.QueueStats:
    run = asyncio.create_task(w.run())
    try:
        await produce()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        s = await stats.fetch_queue_stats(client, queue_name)
        while loop.time() < deadline and not run.done() and s.completed_total < n:
            await asyncio.sleep(0.05)
            s = await stats.fetch_queue_stats(client, queue_name)
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 20) == 0
    return await stats.fetch_queue_stats(client, queue_name)


async def test_jobs_that_finish_at_once_are_acknowledged_with_the_next_fetch_not_apart(
    redis_server: Any, queue_name: str, monkeypatch: Any
) -> None:
    # Given a worker with 50 slots whose standalone ack calls (not riding on a fetch) are
    # counted, and jobs whose handler returns without waiting, arriving 5 at a time (fewer than
    # its free slots: moderate load, where each fetch comes back with a few jobs)
    app = App(queue=queue_name)
    ran: list[int] = []

    @app.task("instant", payload=Empty)
    async def instant(payload: Empty) -> None:
        ran.append(1)

    standalone: list[int] = []
    real_flush = queue.QueueClient._flush_acks

    async def counting_flush(self: queue.QueueClient, items: list[Any]) -> list[bool]:
        standalone.append(len(items))
        return await real_flush(self, items)

    monkeypatch.setattr(queue.QueueClient, "_flush_acks", counting_flush)
    client = redis.asyncio.Redis(port=redis_server.port, decode_responses=True)
    engine = es.make_engine(client, queue_name)
    n, burst = 200, 5

    async def trickle() -> None:
        for _ in range(n // burst):
            await engine.enqueue_many([es.request("instant", {}) for _ in range(burst)])
            await asyncio.sleep(0.01)

    settings = config.WorkerSettings(redis_url=redis_server.url, metrics_port=0, concurrency=50)
    w = worker.Worker(app, settings, install_signal_handlers=False)
    # When it works through them as they come
    try:
        s = await _run_until_completed(w, client, queue_name, n, trickle)
    finally:
        await client.aclose()
    # Then every job ran once and was acknowledged, each ack riding on a fetch
    # (ack_and_fetch): no job waited for an ack call of its own
    assert (s.completed_total, s.in_flight, s.backlog, s.dead_letter) == (n, 0, 0, 0)
    assert len(ran) == n
    assert sum(standalone) == 0, standalone


async def test_a_worker_takes_what_it_loaded_at_start_out_of_full_collections_before_its_jobs(
    redis_server: Any, queue_name: str
) -> None:
    # Given a process whose objects are all in the collector's generations, and a worker
    gc.unfreeze()
    app = App(queue=queue_name)
    frozen_at_first_job: list[int] = []

    @app.task("instant", payload=Empty)
    async def instant(payload: Empty) -> None:
        frozen_at_first_job.append(gc.get_freeze_count())

    client = redis.asyncio.Redis(port=redis_server.port, decode_responses=True)
    engine = es.make_engine(client, queue_name)

    async def one_job() -> None:
        await engine.enqueue_many([es.request("instant", {})])

    settings = config.WorkerSettings(redis_url=redis_server.url, metrics_port=0, concurrency=2)
    w = worker.Worker(app, settings, install_signal_handlers=False)
    # When it starts and runs a job
    try:
        s = await _run_until_completed(w, client, queue_name, 1, one_job)
    finally:
        await client.aclose()
        gc.unfreeze()  # the rest of the test process collects as before
    # Then by its first job the start-up objects (imports, the app, the clients) were frozen:
    # a full collection no longer walks them all while jobs wait (a pause of 50-200 ms)
    assert s.completed_total == 1
    assert frozen_at_first_job and frozen_at_first_job[0] > 10_000, frozen_at_first_job


def test_a_batch_of_completions_exports_exactly_what_one_call_per_job_exports() -> None:
    # Given two workers' metrics, and completions of two tasks whose durations fall on bucket
    # bounds, between them, beyond the last bound, and at zero
    one_by_one = metrics.WorkerMetrics("q")
    batched = metrics.WorkerMetrics("q")
    finished = [
        ("a", 0.0),
        ("a", 0.0005),
        ("b", 0.0007),
        ("a", 0.01),
        ("b", 2.5),
        ("a", 901.0),
        ("b", 1e-06),
    ]
    # When one records them one call per job and the other as one batch
    for task, seconds in finished:
        one_by_one.job_finished(task, "completed", seconds)
    batched.jobs_completed(finished)
    batched.jobs_completed([])

    # Then both export the same counts, buckets and sums
    def samples(m: metrics.WorkerMetrics) -> list[str]:
        return sorted(
            line for line in m.exposition().decode().splitlines() if "_created" not in line
        )

    assert samples(batched) == samples(one_by_one)
    assert any(
        'workerfleet_jobs_total{outcome="completed",queue="q",task="a"} 4.0' in line
        for line in samples(batched)
    )
