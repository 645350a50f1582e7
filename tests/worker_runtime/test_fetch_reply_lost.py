"""A fetch whose reply never arrives: the script ran, its jobs are leased, the worker saw nothing.

Neither the client (no blind re-send of the non-idempotent script) nor the worker (it adopts
what the failed fetch leased to it) may leave those jobs to wait out their lease. A paused
redis-server (SIGSTOP) makes the reply time out; a proxy that cuts the connection after the
fetch went through loses the reply of a script that did run.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.exceptions

from tests.worker_runtime import cutting_proxy, workerproc
from tests.worker_runtime.workerproc import wait_until
from worker_runtime import envelope, producer
from worker_runtime.brokers.redis import connection, scripts, stats
from worker_runtime.brokers.redis import queue as queue_mod


@contextlib.contextmanager
def _paused(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_jobs_leased_by_a_fetch_whose_reply_timed_out_are_adopted_by_that_worker(
    redis_factory: Callable[..., Any], queue_name: str
) -> None:
    # Given a redis-server of our own, five queued jobs and a worker-style client that does
    # not re-send commands (retries=0) with a short reply timeout
    server = redis_factory()
    options = queue_mod.QueueOptions(lease_seconds=60.0)
    client = connection.build_client(server.url, socket_timeout=0.5, retries=0)
    q = queue_mod.QueueClient(client, queue_name, options)
    assert await q.fetch("w0", 1) == []  # the fetch script is loaded (EVALSHA will find it)
    ids = [
        (await q.enqueue(queue_mod.EnqueueRequest(envelope.build_envelope("noop", {})))).job_id
        for _ in range(5)
    ]
    # When the server is paused while a fetch is on its way, so its reply times out, and then
    # resumes (and runs the buffered script)
    with _paused(server.pid), pytest.raises(redis.exceptions.TimeoutError):
        await q.fetch("w1", 10)
    sync = redis.Redis(port=server.port, decode_responses=True)
    try:
        wait_until(lambda: stats.fetch_queue_stats_sync(sync, queue_name).in_flight == 5, 5, "run")
        # Then that one script ran once: one batch of five leased, nothing fetched twice
        assert int(sync.hget(q.keys.counters, "fence") or 0) == 5
    finally:
        sync.close()
    # And another worker can neither fetch nor adopt them
    assert await q.fetch("w2", 10) == []
    assert await q.adopt("w2") == []
    # And the worker that lost the reply adopts all five: same delivery, nothing counted lost
    adopted = await q.adopt("w1")
    assert sorted(j.id for j in adopted) == sorted(ids)
    assert {(j.deliveries, j.lost, j.attempts) for j in adopted} == {(1, 0, 0)}
    # And what it already holds is not handed over twice
    assert await q.adopt("w1", held=[(j.id, j.token) for j in adopted]) == []
    # And the adopted deliveries are the real ones: their acks are accepted
    assert all([await q.ack(j) for j in adopted])
    final = await _stats(client, queue_name)
    assert (final.in_flight, final.completed_total, final.backlog) == (0, 5, 0)
    await q.aclose()
    await client.aclose()


async def _stats(client: connection.AsyncClient, queue: str) -> stats.QueueStats:
    return await stats.fetch_queue_stats(client, queue)


FETCH_SHAS = (scripts.FETCH.sha.encode(), scripts.ACK_FETCH.sha.encode())
"""What the proxy recognises a fetch (or ack-and-fetch) by: the script's SHA in the command."""


@pytest.mark.parametrize(("retries", "sent"), [(0, 1), (3, 2)])
async def test_only_a_client_without_automatic_retries_never_sends_a_fetch_twice(
    retries: int, sent: int, redis_factory: Callable[..., Any], queue_name: str
) -> None:
    # Given ten queued jobs and a proxy armed to lose the reply of the next fetch
    server = redis_factory()
    options = queue_mod.QueueOptions(lease_seconds=60.0)
    direct = connection.build_client(server.url)
    setup = queue_mod.QueueClient(direct, queue_name, options)
    assert await setup.fetch("w0", 1) == []  # loads the script: the cut fetch really runs
    for _ in range(10):
        await setup.enqueue(queue_mod.EnqueueRequest(envelope.build_envelope("noop", {})))
    proxy = cutting_proxy.CuttingProxy(server.port, FETCH_SHAS)
    client = connection.build_client(proxy.url, socket_timeout=2.0, retries=retries)
    q = queue_mod.QueueClient(client, queue_name, options)
    try:
        proxy.armed.set()
        # When a worker-style fetch of 4 jobs loses its reply
        try:
            got = await q.fetch("w1", 4)
        except redis.exceptions.ConnectionError:
            got = []
        # Then with retries=0 the script ran once and the caller sees the error; with
        # automatic retries redis-py sent it again, leasing a second batch while the first
        # four are held by nobody until their lease expires
        assert proxy.matched == sent
        held_in_redis = (await _stats(direct, queue_name)).in_flight
        assert held_in_redis == 4 * sent
        assert len(got) == 4 * (sent - 1)
        # And only the worker's own adopt (what the job loop does after the error) brings the
        # lost batch back at once
        adopted = await setup.adopt("w1", held=[(j.id, j.token) for j in got])
        assert len(adopted) == 4
    finally:
        proxy.close()
        await client.aclose()
        await setup.aclose()
        await direct.aclose()


# 4 slots: one fetch call out at a time; 16: two lanes, whose adoption of the lost fetch's jobs
# must wait for the other lane's fetch (it would take, and run twice, the jobs that one brings)
@pytest.mark.parametrize("slots", [4, 16])
def test_a_worker_whose_fetch_reply_is_lost_runs_those_jobs_at_once_and_exactly_once(
    wf: workerproc.Testbed, slots: int
) -> None:
    # Given 40 queued jobs, a proxy armed to lose the reply of the next fetch, and a worker
    # behind it whose leases last 30 s
    n = 40
    wf.producer.enqueue_many(
        [
            producer.JobSpec(task="sleep", payload={"seconds": 0.01, "marker": str(i)})
            for i in range(n)
        ]
    )
    for script in (scripts.FETCH, scripts.ACK_FETCH):  # the cut fetch must run, not NOSCRIPT
        wf.client.script_load(script.source)
    proxy = cutting_proxy.CuttingProxy(wf.redis.port, FETCH_SHAS)
    try:
        proxy.armed.set()
        worker = wf.spawn(redis_url=proxy.url, concurrency=slots, lease_seconds=30.0)
        # When its first fetch runs in Redis but the reply never arrives
        wait_until(lambda: proxy.cuts == 1, 20, "the fetch whose reply is lost")
        # Then every job completes long before a 30 s lease could expire, each exactly once,
        # on its first delivery (the lost fetch's jobs were neither re-fetched nor left to expire)
        wait_until(
            lambda: wf.stats().completed_total == n,
            15,
            "all jobs, well inside one lease",
        )
        done = [e for e in wf.events() if e["event"] == "done"]
        assert sorted(e["marker"] for e in done) == sorted(str(i) for i in range(n))
        assert {e["deliveries"] for e in done} == {1}
        final = wf.stats()
        assert (final.in_flight, final.backlog, final.dead_letter) == (0, 0, 0)
        # And the worker said what happened, and is still serving
        assert any("adopted" in r.get("msg", "") for r in worker.log_records())
        worker.send(signal.SIGTERM)
        assert worker.wait(10) == 0
    finally:
        proxy.close()
