"""A settle whose reply is lost after it landed is no lost lease; a lease really taken over is.

The worker sends a settle again when its first try got no reply. Settles are fenced by the
delivery's token, so the re-send of one that had landed is answered stale, just as a settle of a
delivery whose lease was lost is; counting that as a lost lease raised WorkerPoolLeasesLost after
every Redis blip. Each test runs a worker in this process on a real redis-server behind a proxy
(tests/worker_runtime/cutting_proxy.py) that lets one settling script through to Redis and cuts
its reply, and reads the history Redis keeps (runs, acks, retries, dead letters) and the
worker's own series: ``workerfleet_leases_lost_total`` (what the alert counts) and
``workerfleet_settles_unconfirmed_total``.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic
import pytest
import redis.asyncio

from tests.support import engine as es
from tests.worker_runtime import cutting_proxy
from worker_runtime import App, JobContext, config, worker
from worker_runtime.brokers.redis import dlq, keys, queue, scripts, stats

T = TypeVar("T")


class Empty(pydantic.BaseModel):
    pass


async def _until(probe: Callable[[], Awaitable[T]], what: str) -> T:
    """Poll ``probe`` until it returns something truthy (fail after 20 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20.0
    while True:
        value = await probe()
        if value:
            return value
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _series(w: worker.Worker, name: str, **labels: str) -> float | None:
    """One sample of the worker's metrics (None: the series does not exist)."""
    return w.metrics.registry.get_sample_value(name, {"queue": w.metrics.queue, **labels})


def _leases_lost(w: worker.Worker) -> float | None:
    return _series(w, "workerfleet_leases_lost_total")


def _unconfirmed(w: worker.Worker, op: str) -> float | None:
    return _series(w, "workerfleet_settles_unconfirmed_total", op=op)


@pytest.fixture
async def client(redis_server: Any) -> AsyncIterator[redis.asyncio.Redis]:
    """A direct client (the test's own reads and writes: never through the proxy)."""
    c = redis.asyncio.Redis(port=redis_server.port, decode_responses=True)
    try:
        yield c
    finally:
        await c.aclose()


async def _proxy(
    redis_server: Any, client: redis.asyncio.Redis, script: scripts.Script
) -> cutting_proxy.CuttingProxy:
    """A proxy that, once armed, lets ``script``'s next call through and cuts its reply."""
    await client.script_load(script.source)  # loaded: the cut call runs (never NOSCRIPT)
    return cutting_proxy.CuttingProxy(redis_server.port, (script.sha.encode(),))


async def _run(
    app: App,
    url: str,
    body: Callable[[worker.Worker], Awaitable[object]],
    *,
    concurrency: int = 4,
    lease_seconds: float = 30.0,
) -> worker.Worker:
    """Run a worker of ``app`` on ``url`` while ``body`` runs, then drain it (exit 0)."""
    settings = config.WorkerSettings(
        redis_url=url,
        metrics_port=0,
        concurrency=concurrency,
        lease_seconds=lease_seconds,
        retry_backoff_base_seconds=0.05,
        retry_backoff_max_seconds=0.1,
    )
    w = worker.Worker(app, settings, install_signal_handlers=False)
    run = asyncio.create_task(w.run())
    try:
        await body(w)
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 20) == 0
    return w


@dataclass(frozen=True)
class Ran:
    """What a worker run behind a reply-cutting proxy left: the worker (its metrics), the
    proxy (what it let through and cut), the queue's stats and the enqueued job ids."""

    w: worker.Worker
    proxy: cutting_proxy.CuttingProxy
    stats: stats.QueueStats
    ids: list[str]


async def _run_with_reply_cut(
    redis_server: Any,
    client: redis.asyncio.Redis,
    app: App,
    script: scripts.Script,
    requests: Sequence[queue.EnqueueRequest],
    done: Callable[[worker.Worker], Awaitable[bool]],
) -> Ran:
    """Enqueue ``requests``, arm a proxy to cut the reply of ``script``'s next call, and run a
    worker through it until ``done``."""
    engine = es.make_engine(client, app.queue)
    ids = [r.job_id for r in await engine.enqueue_many(requests)]
    proxy = await _proxy(redis_server, client, script)
    proxy.armed.set()
    try:
        w = await _run(app, proxy.url, lambda w: _until(lambda: done(w), "the jobs to settle"))
    finally:
        proxy.close()
        await engine.aclose()
    return Ran(w, proxy, await stats.fetch_queue_stats(client, app.queue), ids)


async def test_an_ack_whose_reply_is_cut_after_it_landed_is_acked_once_and_no_lease_is_lost(
    redis_server: Any, client: redis.asyncio.Redis, queue_name: str
) -> None:
    # Given a job whose handler records it done with its ack (so the ack goes out at once, a
    # call of its own), and a worker reaching Redis through a proxy armed to cut the ack's reply
    app = App(queue=queue_name)
    runs: list[tuple[str, int]] = []

    @app.task("once", payload=Empty)
    async def once(payload: Empty, ctx: JobContext) -> None:
        runs.append((ctx.job_id, ctx.deliveries))
        ctx.mark_done_on_ack()

    # When the worker runs it: its ack lands in Redis, the reply is lost, the ack is sent again
    ran = await _run_with_reply_cut(
        redis_server,
        client,
        app,
        scripts.ACK,
        [es.request("once", idempotency_key="order-1")],
        lambda w: _settled(client, queue_name, w, completed=1),
    )
    s = ran.stats
    # Then the ack went out twice and the first reply never came back
    assert (ran.proxy.matched, ran.proxy.cuts) == (2, 1)
    # And the job ran once and was acked once, with its done marker
    assert runs == [(ran.ids[0], 1)]
    assert (s.completed_total, s.in_flight, s.backlog, s.dead_letter) == (1, 0, 0, 0)
    assert await client.exists(keys.build_keys(queue_name).done("order-1")) == 1
    # And no lease counts as lost: Redis cannot tell who acked a job it no longer keeps, so
    # the re-sent ack counts as unconfirmed
    assert _leases_lost(ran.w) == 0
    assert _unconfirmed(ran.w, "ack") == 1


async def test_acks_whose_ack_and_fetch_reply_is_cut_are_acked_once_and_no_lease_is_lost(
    redis_server: Any, client: redis.asyncio.Redis, queue_name: str
) -> None:
    # Given 20 jobs whose handlers return at once (their acks ride on the worker's next fetch,
    # one ack_and_fetch call), and a proxy armed to cut the reply of the first such call
    n = 20
    app = App(queue=queue_name)
    runs: collections.Counter[str] = collections.Counter()

    @app.task("quick", payload=Empty)
    async def quick(payload: Empty, ctx: JobContext) -> None:
        runs[ctx.job_id] += 1

    async def all_counted(w: worker.Worker) -> bool:
        # every job settled in Redis, and the worker counted each ack: completed, or
        # unconfirmed once the broker was asked about it
        completed = _series(w, "workerfleet_jobs_total", task="quick", outcome="completed")
        counted = (completed or 0) + (_unconfirmed(w, "ack") or 0) + (_leases_lost(w) or 0)
        return counted == n and await _settled(client, queue_name, w, completed=n)

    # When the worker runs them: the acks of the cut call land, their re-send is rejected
    ran = await _run_with_reply_cut(
        redis_server,
        client,
        app,
        scripts.ACK_FETCH,
        [es.request("quick") for _ in range(n)],
        all_counted,
    )
    s = ran.stats
    # Then one reply was lost, every job ran once and was acked once
    assert ran.proxy.cuts == 1
    assert runs == {job_id: 1 for job_id in ran.ids}
    assert (s.completed_total, s.in_flight, s.backlog, s.dead_letter) == (n, 0, 0, 0)
    # And no lease counts as lost: the acks of the cut call count as unconfirmed
    assert _leases_lost(ran.w) == 0
    assert (_unconfirmed(ran.w, "ack") or 0) >= 1


async def test_a_retry_whose_reply_is_cut_after_it_landed_counts_as_the_retry_it_was(
    redis_server: Any, client: redis.asyncio.Redis, queue_name: str
) -> None:
    # Given a job whose first run fails, and a proxy armed to cut the reply of its retry
    app = App(queue=queue_name)
    runs: list[int] = []

    @app.task("flaky", payload=Empty)
    async def flaky(payload: Empty, ctx: JobContext) -> None:
        runs.append(ctx.deliveries)
        if ctx.deliveries == 1:
            raise RuntimeError("first run fails")

    # When the worker runs it: the retry lands, its reply is lost, the retry is sent again
    ran = await _run_with_reply_cut(
        redis_server,
        client,
        app,
        scripts.RETRY,
        [es.request("flaky")],
        lambda w: _settled(client, queue_name, w, completed=1),
    )
    s = ran.stats
    # Then the retry went out twice, was applied once, and the job ran again and completed
    assert (ran.proxy.matched, ran.proxy.cuts) == (2, 1)
    assert runs == [1, 2]
    assert (s.failed_total, s.retried_total, s.completed_total) == (1, 1, 1)
    # And the worker counted the retry it made (Redis confirmed it), and no lost lease
    assert _series(ran.w, "workerfleet_jobs_total", task="flaky", outcome="retried") == 1
    assert _leases_lost(ran.w) == 0
    assert _unconfirmed(ran.w, "retry") == 0


async def test_a_dead_letter_whose_reply_is_cut_after_it_landed_counts_as_dead_lettered_once(
    redis_server: Any, client: redis.asyncio.Redis, queue_name: str
) -> None:
    # Given a job whose handler fails for good, and a proxy armed to cut its dead letter's reply
    app = App(queue=queue_name)
    runs: list[int] = []

    @app.task("doomed", payload=Empty, non_retryable=(KeyError,))
    async def doomed(payload: Empty, ctx: JobContext) -> None:
        runs.append(ctx.deliveries)
        raise KeyError("missing thing")

    async def dead_lettered(w: worker.Worker) -> bool:
        return (await stats.fetch_queue_stats(client, queue_name)).dead_letter == 1 and not w.held

    # When the worker runs it: the dead letter lands, its reply is lost, it is sent again
    ran = await _run_with_reply_cut(
        redis_server, client, app, scripts.DEAD_LETTER, [es.request("doomed")], dead_lettered
    )
    s = ran.stats
    # Then the job ran once and is in the DLQ once, with the one failure
    assert (ran.proxy.matched, ran.proxy.cuts) == (2, 1)
    assert runs == [1]
    assert (s.dead_letter, s.dead_lettered_total, s.in_flight, s.backlog) == (1, 1, 0, 0)
    letter = await dlq.fetch_dead_letter(client, queue_name, ran.ids[0])
    assert letter is not None and len(letter.history) == 1
    # And the worker counted the dead letter it made (its record says no delivery was lost)
    assert _series(ran.w, "workerfleet_dead_lettered_total", reason="non_retryable") == 1
    assert _leases_lost(ran.w) == 0
    assert _unconfirmed(ran.w, "dead_letter") == 0


async def test_a_lease_another_worker_took_over_counts_as_lost_even_when_the_ack_reply_was_cut(
    redis_server: Any, client: redis.asyncio.Redis, queue_name: str, monkeypatch: Any
) -> None:
    # Given a worker with one slot and a 1.5 s lease, whose renewals stall while its job runs
    lease = 1.5
    renewing = threading.Event()  # cleared: renewals hang (they run on the control thread)
    renewing.set()
    real_renew = queue.QueueClient.renew

    async def stalled_renew(self: queue.QueueClient, *args: Any, **kwargs: Any) -> Any:
        await asyncio.to_thread(renewing.wait, 20.0)
        return await real_renew(self, *args, **kwargs)

    monkeypatch.setattr(queue.QueueClient, "renew", stalled_renew)
    app = App(queue=queue_name)
    runs: list[tuple[str, int]] = []
    finish = asyncio.Event()

    @app.task("slow", payload=Empty)
    async def slow(payload: Empty, ctx: JobContext) -> None:
        runs.append((ctx.job_id, ctx.deliveries))
        renewing.clear()
        await finish.wait()

    engine = es.make_engine(client, queue_name)
    rival = es.make_engine(client, queue_name, lease_seconds=30.0)
    [job] = await engine.enqueue_many([es.request("slow")])
    proxy = await _proxy(redis_server, client, scripts.ACK_FETCH)
    taken: list[queue.Job] = []

    async def take_over_then_finish(w: worker.Worker) -> None:
        await _until(_async(lambda: bool(runs)), "the job to start")
        # When its lease expires and another worker fetches the job
        taken.extend(await _until(lambda: rival.fetch("rival", 1), "the takeover"))
        # and then the worker's handler returns, and the reply of the ack_and_fetch carrying
        # its (stale) ack is cut, so the ack is sent again
        proxy.armed.set()
        finish.set()
        await _until(_async(lambda: _leases_lost(w) == 1), "the lost lease to be counted")
        renewing.set()

    try:
        w = await _run(app, proxy.url, take_over_then_finish, concurrency=1, lease_seconds=lease)
        assert await rival.ack(taken[0]) is True
    finally:
        renewing.set()
        proxy.close()
        await engine.aclose()
        await rival.aclose()
    s = await stats.fetch_queue_stats(client, queue_name)
    # Then the other worker had the job as its second delivery, one lost
    assert [(t.id, t.deliveries, t.lost) for t in taken] == [(job.job_id, 2, 1)]
    assert runs == [(job.job_id, 1)]
    assert proxy.cuts == 1
    # And the worker's result was discarded: only the other worker's ack counts
    assert (s.completed_total, s.in_flight, s.backlog, s.dead_letter) == (1, 0, 0, 0)
    # And the lease counts as lost, not as an unconfirmed settle
    assert _leases_lost(w) == 1
    assert _unconfirmed(w, "ack") == 0


def _async(check: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def probe() -> T:
        return check()

    return probe


async def _settled(
    client: redis.asyncio.Redis, queue_name: str, w: worker.Worker, *, completed: int
) -> bool:
    """Redis counts ``completed`` acks, nothing is left in flight, and the worker holds nothing."""
    s = await stats.fetch_queue_stats(client, queue_name)
    return s.completed_total == completed and s.in_flight == 0 and not w.held
