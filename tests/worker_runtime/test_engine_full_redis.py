"""A Redis that is full (``maxmemory`` reached, ``noeviction``) refuses new jobs but keeps the
jobs it holds moving: leases are renewed, due retries do not stop fetches, done-key acks land.

docs/queue-engine.md requires ``noeviction``: a full Redis then refuses writes instead of
dropping keys. Redis refuses a script's first write that may grow memory, so the engine's
lease and settle scripts declare ``allow-oom``: the jobs already accepted run and their acks
free the memory, while an enqueue is still refused loudly. Before that, a full Redis refused
every renewal (a long job's lease ran out and another worker ran it a second time), every
fetch while a retry was due (no job could start, so nothing freed memory) and every ack that
recorded a done key. On a real redis-server; Redis' own clock decides the leases.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions

from tests.support import engine as es
from worker_runtime import errors
from worker_runtime.brokers import base
from worker_runtime.brokers.redis import broker as redis_broker
from worker_runtime.brokers.redis import idempotency, queue, ratelimit


async def _full_redis(
    redis_factory: Callable[..., Any], queue_name: str, *, jobs: int, **options: Any
) -> tuple[redis.asyncio.Redis, queue.QueueClient]:
    """A noeviction Redis holding ``jobs`` queued jobs, then made full: its maxmemory is set
    below the memory it uses (what a Redis that filled up looks like to every command)."""
    server = redis_factory(maxmemory_policy="noeviction")
    client = redis.asyncio.Redis(port=server.port, decode_responses=True)
    engine = es.make_engine(client, queue_name, **options)
    await engine.enqueue_many([es.request(payload={"n": n}) for n in range(jobs)])
    return client, engine


async def _make_full(client: redis.asyncio.Redis) -> None:
    await client.config_set("maxmemory", "100kb")
    with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
        await client.set("probe", "x")


async def _one_held_when_full(
    redis_factory: Callable[..., Any], queue_name: str, *, lease_seconds: float
) -> tuple[redis.asyncio.Redis, queue.QueueClient, queue.Job]:
    """One job, held by worker "a", when Redis becomes full."""
    client, engine = await _full_redis(
        redis_factory, queue_name, jobs=1, lease_seconds=lease_seconds
    )
    [job] = await engine.fetch("a", 1)
    await _make_full(client)
    return client, engine, job


async def test_a_long_job_keeps_its_lease_on_a_full_redis_and_runs_once(
    redis_factory: Callable[..., Any], queue_name: str
) -> None:
    # Given worker a running job J (lease 0.6 s) when Redis becomes full
    client, engine, job = await _one_held_when_full(redis_factory, queue_name, lease_seconds=0.6)
    # When a renews J every 0.2 s for 1.5 s (two and a half leases) while b asks for work
    # (a renewal that fails is tried again at the next beat, as the worker's control thread does)
    taken_by_b: list[queue.Job] = []
    renewal_errors: list[str] = []
    for _ in range(8):
        try:
            await engine.renew("a", [job], heartbeat=es.beat("a", 5.0))
        except redis.exceptions.ResponseError as exc:
            renewal_errors.append(str(exc))
        taken_by_b += await engine.fetch("b", 10)
        await asyncio.sleep(0.2)
    # Then b never got J, a's ack is accepted, and J is gone: it ran once, on a
    assert [j.id for j in taken_by_b] == []
    assert renewal_errors == []
    assert await engine.ack(job) is True
    assert await client.hget(engine.keys.state, job.id) is None
    # while a producer is still refused loudly: nothing new is accepted into a full Redis
    with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
        await engine.enqueue_many([es.request()])


async def test_a_due_retry_does_not_stop_a_full_redis_from_handing_out_its_jobs(
    redis_factory: Callable[..., Any], queue_name: str
) -> None:
    # Given three jobs, the first failed once and is due again at once, when Redis is full
    client, engine = await _full_redis(redis_factory, queue_name, jobs=3, lease_seconds=5.0)
    [first] = await engine.fetch("a", 1)
    assert await engine.retry(first, es.failure(), delay_seconds=0)
    await _make_full(client)
    # When worker b fetches
    ran = await engine.fetch("b", 10)
    # Then it gets all three (the retry among them), and its acks finish them (sent with its
    # next fetch, as a worker does: the combined script)
    assert sorted(j.envelope.payload["n"] for j in ran) == [0, 1, 2]
    assert [j.attempts for j in ran if j.id == first.id] == [1]
    assert await engine.ack_and_fetch(ran, "b", 10) == ([True, True, True], [])
    assert await client.hlen(engine.keys.state) == 0


async def test_an_ack_recording_a_done_key_is_accepted_on_a_full_redis(
    redis_factory: Callable[..., Any], queue_name: str
) -> None:
    # Given a job held by worker a when Redis becomes full
    client, engine, job = await _one_held_when_full(redis_factory, queue_name, lease_seconds=5.0)
    # When a acknowledges it recording the done key "charge-1"
    acked = await engine.ack(job, done_key="charge-1")
    # Then the ack is accepted with its done marker, and the job is gone
    assert acked is True
    assert await idempotency.fetch_is_done(client, queue_name, "charge-1")
    assert await client.hget(engine.keys.state, job.id) is None


async def test_a_full_redis_refuses_new_jobs_also_when_the_enqueue_forgets_old_ids(
    redis_factory: Callable[..., Any], queue_name: str
) -> None:
    # Given a queue that remembers enqueued ids for 0.1 s, one id already past that window,
    # when Redis becomes full (the enqueue's first write then forgets that id: a delete)
    client, engine = await _full_redis(redis_factory, queue_name, jobs=0, enqueue_dedup_seconds=0.1)
    [first] = await engine.enqueue_many([es.request(payload={"n": 0})])
    await asyncio.sleep(0.2)
    await _make_full(client)
    # When a producer enqueues 50 jobs of 1 KB
    with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
        await engine.enqueue_many([es.request(payload={"pad": "x" * 1000}) for _ in range(50)])
    # Then none was accepted: the queue holds the first job only, which still runs and finishes
    assert await client.hkeys(engine.keys.env) == [first.job_id]
    [job] = await engine.fetch("a", 10)
    assert job.id == first.job_id and await engine.ack(job)


async def test_a_handlers_token_bucket_still_grants_tokens_on_a_full_redis(
    redis_factory: Callable[..., Any], queue_name: str
) -> None:
    # Given a job held by worker a whose handler calls a service limited to 5 calls a second,
    # when Redis becomes full
    client, engine, job = await _one_held_when_full(redis_factory, queue_name, lease_seconds=5.0)
    limit = ratelimit.RateLimit(jobs=5, per_seconds=1.0)
    # When the handler takes a token from its named bucket
    granted, _wait = await ratelimit.apply_acquire(client, queue_name, limit, 1, name="smtp")
    # Then it gets one, and its job finishes
    assert granted == 1
    assert await engine.ack(job)


async def test_a_full_redis_refuses_a_publish_and_no_subscription_gets_a_part_of_it(
    redis_factory: Callable[..., Any], queue_name: str
) -> None:
    # Given a topic with two subscriptions on a noeviction Redis, one event published long
    # enough ago that the next publish first forgets its id (the dedup window is 0.1 s)
    server = redis_factory(maxmemory_policy="noeviction")
    client = redis.asyncio.Redis(port=server.port, decode_responses=True)
    options = base.QueueOptions(enqueue_dedup_seconds=0.1)
    publisher = redis_broker.RedisBroker(client, queue_name, options)
    topic = f"shop{queue_name[-6:]}.order.placed"
    for group in ("a", "b"):
        await publisher.subscribe(topic, group)
    first = await publisher.publish(
        base.PublishRequest(topic=topic, event_id=uuid.uuid4().hex, payload={"n": 0})
    )
    assert sorted(first.created) == ["a", "b"]
    await asyncio.sleep(0.2)
    # When Redis is full and 50 events of 1 KB are published
    await _make_full(client)
    refused = 0
    for n in range(50):
        try:
            await publisher.publish(
                base.PublishRequest(
                    topic=topic, event_id=uuid.uuid4().hex, payload={"n": n, "x": "y" * 1000}
                )
            )
        except errors.BrokerRejected:
            refused += 1
    # Then every publish is refused, and each subscription still holds only the first event
    assert refused == 50
    await client.config_set("maxmemory", "0")
    for group in ("a", "b"):
        sub = redis_broker.RedisBroker(client, base.subscription_queue_name(topic, group))
        assert (await sub.fetch_stats()).backlog == 1
