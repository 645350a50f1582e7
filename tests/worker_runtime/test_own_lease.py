"""A worker never reclaims a job it still holds: its fetch renews that lease instead.

When a worker's renewals stall (a blocked connection, a long GC) its leases can expire while it
is still fetching for free slots. Reclaiming its own running job would start a second run next
to the first; the first run's rejected ack used to remove the second run's bookkeeping (held
jobs were keyed by id), renewals stopped, and the job was reclaimed again and again until it
was dead-lettered although every run succeeded. Held jobs are keyed by (id, token) now.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pydantic
import redis.asyncio

from tests.support import engine as es
from worker_runtime import App, JobContext, config, worker
from worker_runtime.brokers.redis import queue, stats


async def test_a_fetch_renews_the_callers_own_expired_lease_instead_of_reclaiming_it(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job held by w1 whose 0.5 s lease expired (w1's renewals stalled)
    engine = es.make_engine(engine_client, queue_name, lease_seconds=0.5)
    await engine.enqueue(es.request())
    [job] = await engine.fetch("w1", 1)
    await asyncio.sleep(0.7)
    # When w1 fetches again for a free slot, still holding the job
    again = await engine.fetch("w1", 5, holding={(job.id, job.token)})
    # Then it does not get its own job a second time: the lease was renewed instead
    assert again == []
    assert await engine.fetch("w2", 5) == []
    # and its original delivery is still the live one
    assert await engine.ack(job) is True
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    assert (s.completed_total, s.in_flight, s.dead_letter) == (1, 0, 0)


async def test_an_expired_lease_the_caller_no_longer_holds_ends_as_a_lost_delivery(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job delivered to w1 that w1 dropped (it holds nothing), its lease expired
    engine = es.make_engine(engine_client, queue_name, lease_seconds=0.5)
    await engine.enqueue(es.request(payload={"n": 1}))
    [dropped] = await engine.fetch("w1", 1)
    await asyncio.sleep(0.7)
    # When w1 fetches again
    mine = await engine.fetch("w1", 5, holding={})
    await engine.aclose()
    # Then the job is not renewed for nobody: it is back on the queue for anyone, its lost
    # delivery counted (so a job its worker keeps dropping still reaches max deliveries)
    [other] = await es.fetch_all(engine, "w2", want=1)
    assert mine == [] and other.id == dropped.id
    assert (other.deliveries, other.lost) == (2, 1) and other.token != dropped.token
    assert await engine.ack(dropped) is False
    assert await engine.ack(other) is True


async def test_a_stalled_renewal_does_not_make_a_worker_run_its_own_job_again(
    redis_server: Any, queue_name: str, monkeypatch: Any
) -> None:
    # Given one worker (concurrency 2, lease 1.5 s) whose renewals stall for 2 s once its
    # only job, which runs 3 s, has started
    app = App(queue=queue_name)
    starts: list[tuple[str, int]] = []
    finishes: list[str] = []
    blocked_until = [0.0]

    class Empty(pydantic.BaseModel):
        pass

    @app.task("long", payload=Empty)
    async def long(payload: Empty, ctx: JobContext) -> None:
        starts.append((ctx.job_id, ctx.deliveries))
        blocked_until[0] = time.monotonic() + 2.0
        await asyncio.sleep(3.0)
        finishes.append(ctx.job_id)

    real_renew = queue.QueueClient.renew

    async def stalled_renew(self: queue.QueueClient, *args: Any, **kwargs: Any) -> Any:
        wait = blocked_until[0] - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # the renewal connection hangs, then recovers
        return await real_renew(self, *args, **kwargs)

    monkeypatch.setattr(queue.QueueClient, "renew", stalled_renew)
    client = redis.asyncio.Redis(port=redis_server.port, decode_responses=True)
    engine = es.make_engine(client, queue_name)
    [job] = await engine.enqueue_many([es.request("long", {})])
    settings = config.WorkerSettings(
        redis_url=redis_server.url, metrics_port=0, lease_seconds=1.5, concurrency=2
    )
    w = worker.Worker(app, settings, install_signal_handlers=False)
    run = asyncio.create_task(w.run())
    try:
        # When it runs until the job is acknowledged (or 20 s pass)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        done = None
        while loop.time() < deadline and not run.done():
            done = await stats.fetch_queue_stats(client, queue_name)
            if done.completed_total + done.dead_letter >= 1 and not w.held:
                break
            await asyncio.sleep(0.1)
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 20) == 0
    try:
        s = await stats.fetch_queue_stats(client, queue_name)
    finally:
        await client.aclose()
    # Then the job completed, was never dead-lettered, and ran at most twice (here: once)
    assert (s.completed_total, s.dead_letter, s.in_flight, s.backlog) == (1, 0, 0, 0)
    assert [job_id for job_id, _ in starts] == [job.job_id] * len(starts)
    assert 1 <= len(starts) <= 2, starts
    assert finishes and set(finishes) == {job.job_id}
