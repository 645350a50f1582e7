"""An enqueue whose reply is lost and that is sent again never runs a finished job twice.

Producers keep redis-py's automatic re-send (a timed-out or cut reply sends the command again).
A job's envelope is deleted when it is acknowledged, so the envelope alone cannot tell a re-send
from a new job: the engine remembers every job id it enqueued for a documented window
(``queue.ENQUEUE_DEDUP_SECONDS``) and a re-send inside it is a no-op. A proxy on loopback loses
the first enqueue's reply and holds the re-send until the job has run and been acknowledged.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import redis.asyncio

from tests.support import engine as es
from tests.worker_runtime import cutting_proxy
from worker_runtime import envelope, producer
from worker_runtime.brokers.redis import connection, queue, scripts, stats


async def test_a_resent_enqueue_of_a_job_that_already_ran_is_a_no_op(
    redis_factory: Callable[..., Any], queue_name: str
) -> None:
    # Given a producer with the default automatic re-send, behind a proxy armed to lose the
    # reply of the next enqueue and to hold the connection until the test says so
    server = redis_factory()
    direct = redis.asyncio.Redis(port=server.port, decode_responses=True)
    engine = es.make_engine(direct, queue_name)
    await engine.enqueue_many([es.request()])  # loads the script: the cut EVALSHA really runs
    [warmup] = await es.fetch_all(engine, "w0", want=1)
    assert await engine.ack(warmup)
    hold = threading.Event()
    proxy = cutting_proxy.CuttingProxy(server.port, (scripts.ENQUEUE.sha.encode(),), hold=hold)
    client = connection.build_client(proxy.url, socket_timeout=5.0)  # retries=3, as producers
    p = producer.Producer(client, queue_name)
    try:
        proxy.armed.set()
        # When job J is enqueued, its reply is lost ...
        sent = asyncio.create_task(p.enqueue("t", {"n": 1}, job_id="job-J"))
        jobs: list[queue.Job] = []
        for _ in range(100):  # bounded: 5 s
            jobs = await engine.fetch("w1", 10)
            if jobs or sent.done():
                break
            await asyncio.sleep(0.05)
        # ... J runs and is acknowledged meanwhile, and only then the enqueue is sent again
        assert [j.id for j in jobs] == ["job-J"]
        assert await engine.ack(jobs[0])
        hold.set()
        result = await asyncio.wait_for(sent, 20)
        # Then the producer got J's id, the re-send reached Redis, and J exists nowhere again:
        # enqueued once, completed once, nothing to run a second time
        assert result.job_id == "job-J"
        assert proxy.cuts == 1 and proxy.matched == 2
        s = await stats.fetch_queue_stats(direct, queue_name)
        assert (s.backlog, s.in_flight, s.future_delayed) == (0, 0, 0)
        assert (s.enqueued_total, s.completed_total) == (2, 2)  # the warm-up job and J
        assert await engine.fetch("w1", 10) == []
    finally:
        hold.set()
        proxy.close()
        await client.aclose()
        await direct.aclose()


async def test_a_job_id_is_remembered_for_the_window_only(
    engine_client: Any, queue_name: str
) -> None:
    # Given a queue whose enqueue window is 0.5 s and a job that ran and was acknowledged
    engine = es.make_engine(engine_client, queue_name, enqueue_dedup_seconds=0.5)
    env = envelope.build_envelope("t", {}, job_id="job-K")
    [first] = await engine.enqueue_many([queue.EnqueueRequest(env)])
    [job] = await es.fetch_all(engine, "w", want=1)
    assert await engine.ack(job)
    # When the same id is enqueued inside the window, then after it
    [inside] = await engine.enqueue_many([queue.EnqueueRequest(env)])
    await asyncio.sleep(0.7)
    [after] = await engine.enqueue_many([queue.EnqueueRequest(env)])
    # Then the first is a no-op and the second a new job
    assert (first.created, inside.created, after.created) == (True, False, True)
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    assert (s.backlog, s.enqueued_total) == (1, 2)


async def test_the_remembered_ids_never_outgrow_the_window(
    redis_client: redis.asyncio.Redis, queue_name: str
) -> None:
    # Given 300 jobs enqueued with a 0.3 s window
    engine = es.make_engine(redis_client, queue_name, enqueue_dedup_seconds=0.3)
    await engine.enqueue_many([es.request(payload={"i": i}) for i in range(300)])
    remembered = engine.keys.enqueued
    assert await redis_client.zcard(remembered) == 300
    # When the window has passed and one more job is enqueued
    await asyncio.sleep(0.5)
    await engine.enqueue_many([es.request()])
    # Then only that job's id is still remembered (the expired ones were trimmed)
    assert await redis_client.zcard(remembered) == 1


async def test_an_id_past_the_window_is_new_even_before_the_trim_reaches_it(
    redis_client: redis.asyncio.Redis, queue_name: str
) -> None:
    # Given 2,100 remembered ids, all past a 0.3 s window (a call trims at most 2,000); they are
    # enqueued under a long window, so that a later batch of the set-up, on a loaded machine
    # more than 0.3 s after the first, cannot already trim the first (each call trims)
    setup = es.make_engine(redis_client, queue_name, enqueue_dedup_seconds=60.0)
    engine = es.make_engine(redis_client, queue_name, enqueue_dedup_seconds=0.3)
    envs = [envelope.build_envelope("t", {}, job_id=f"id-{i}") for i in range(2100)]
    await setup.enqueue_many([queue.EnqueueRequest(e) for e in envs])
    assert await redis_client.zcard(engine.keys.enqueued) == 2100
    jobs = await es.fetch_all(engine, "w", want=2100)
    assert all(await asyncio.gather(*(engine.ack(j) for j in jobs)))
    await asyncio.sleep(0.5)
    # When the newest of them is enqueued again (its entry is among the 100 left untrimmed)
    [again] = await engine.enqueue_many([queue.EnqueueRequest(envs[-1])])
    # Then it is a new job, and its entry is fresh (the call trimmed 2,000 of the others)
    assert again.created
    remembered = engine.keys.enqueued
    assert await redis_client.zcard(remembered) == 100
    fresh = await redis_client.zscore(remembered, "id-2099")
    stale = await redis_client.zscore(remembered, "id-2098")
    assert fresh is not None and stale is not None and fresh - stale >= 300
