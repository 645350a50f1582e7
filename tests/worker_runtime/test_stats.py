"""Queue stats: one read-only round trip that works with no worker running."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.connection

from tests.support import engine as es
from tests.support.redis_servers import RedisServer
from worker_runtime.brokers.redis import broker as redis_broker
from worker_runtime.brokers.redis import stats


async def test_stats_take_exactly_one_command_and_need_no_worker(
    redis_server: RedisServer, queue_name: str
) -> None:
    # Given a queue with work and no worker process anywhere
    client = es.build_counting_client(redis_server.port)
    engine = es.make_engine(client, queue_name)
    await engine.enqueue_many([es.request() for _ in range(3)])
    await stats.fetch_queue_stats(client, queue_name)  # connection handshake, script load
    es.CountingConnection.sent.clear()
    # When stats are read
    s = await stats.fetch_queue_stats(client, queue_name)
    # Then it was one command (EVALSHA of the read-only script) and the numbers are right
    assert es.CountingConnection.sent == ["EVALSHA"]
    assert (s.backlog, s.in_flight, s.enqueued_total, s.workers) == (3, 0, 3, ())
    await client.aclose()


async def test_stats_run_on_a_read_only_replica(redis_factory: Any, queue_name: str) -> None:
    # Given a primary with jobs and a read-only replica that has caught up with it (the first
    # full sync waits repl-diskless-sync-delay, 5 s by default: set to 0 here)
    primary = redis_factory(repl_diskless_sync_delay="0")
    replica = redis_factory()
    p = redis.asyncio.Redis(port=primary.port, decode_responses=True)
    r = redis.asyncio.Redis(port=replica.port, decode_responses=True)
    await r.replicaof("127.0.0.1", primary.port)
    engine = es.make_engine(p, queue_name)
    await engine.enqueue_many([es.request() for _ in range(4)])
    written = int((await p.info("replication"))["master_repl_offset"])
    deadline = time.monotonic() + 30.0
    while True:
        link = await r.info("replication")
        if link.get("master_link_status") == "up" and int(link["slave_repl_offset"]) >= written:
            break
        assert time.monotonic() < deadline, f"the replica never caught up: {link}"
        await asyncio.sleep(0.05)
    # When the stats script runs on the replica (writes would fail there with READONLY)
    s = await stats.fetch_queue_stats(r, queue_name)
    # Then it succeeds: the script is declared and proven read-only
    assert s.backlog == 4
    with pytest.raises(redis.exceptions.ReadOnlyError):
        await es.make_engine(r, queue_name).fetch("w", 1)
    await p.aclose()
    await r.aclose()


async def test_stats_count_every_state_of_a_job_consistently(
    engine_client: Any, queue_name: str
) -> None:
    # Given: 4 ready, 1 due-delayed (retry with 0 delay), 2 future-delayed, 2 in flight, 1 dead
    engine = es.make_engine(engine_client, queue_name)
    await engine.enqueue_many([es.request() for _ in range(8)])
    await engine.enqueue_many([es.request(delay=60), es.request(delay=60)])
    held = await engine.fetch("w1", 4)
    assert await engine.retry(held[0], es.failure(), delay_seconds=0)
    assert await engine.dead_letter(held[1], "non_retryable", failure=es.failure())
    await asyncio.sleep(0.01)
    # When stats are read
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    # Then every job is counted once, in the right place
    assert (s.backlog, s.due_delayed, s.future_delayed, s.in_flight, s.dead_letter) == (
        5,
        1,
        2,
        2,
        1,
    )
    assert (s.enqueued_total, s.completed_total, s.failed_total, s.retried_total) == (10, 0, 2, 1)
    assert s.dead_lettered_total == 1


async def test_the_oldest_unstarted_job_age_grows_until_it_starts(
    engine_client: Any, queue_name: str
) -> None:
    # Given an empty queue, then a job that waits 0.3 s
    engine = es.make_engine(engine_client, queue_name)
    empty = await stats.fetch_queue_stats(engine_client, queue_name)
    await engine.enqueue(es.request())
    await asyncio.sleep(0.3)
    waiting = await stats.fetch_queue_stats(engine_client, queue_name)
    # When it starts
    await engine.fetch("w", 1)
    started = await stats.fetch_queue_stats(engine_client, queue_name)
    # Then the age was 0 when empty, ≥ 0.3 s while waiting, and 0 once it started
    assert empty.oldest_job_age_seconds == 0.0
    assert 0.25 <= waiting.oldest_job_age_seconds < 5.0
    assert started.oldest_job_age_seconds == 0.0
    assert started.now >= waiting.now


def test_the_blocking_stats_call_reads_the_same_numbers(
    redis_server: RedisServer, queue_name: str
) -> None:
    # Given jobs enqueued by the sync producer
    from worker_runtime import producer

    client = redis.Redis(port=redis_server.port, decode_responses=True)
    producer.SyncProducer(client, queue_name).enqueue_many(
        [producer.JobSpec("t", {"i": i}) for i in range(3)]
    )
    # When the blocking stats call reads them
    s = stats.fetch_queue_stats_sync(client, queue_name)
    # Then the backlog is there
    assert (s.queue, s.backlog, s.enqueued_total) == (queue_name, 3, 3)
    client.close()


def test_a_corrupt_heartbeat_record_is_ignored_not_fatal() -> None:
    assert stats.build_worker_heartbeat("{not json") is None
    assert stats.build_worker_heartbeat('{"pod_name": "no id"}') is None
    beat = stats.build_worker_heartbeat('{"worker_id": "w", "last_seen": 5}')
    assert beat is not None and (beat.worker_id, beat.last_seen) == ("w", 5.0)


async def test_a_worker_that_stalls_past_its_heartbeat_and_renews_never_steps_the_lost_count_back(
    redis_server: RedisServer, queue_name: str
) -> None:
    # Given one worker heartbeating with a 0.2 s TTL
    client = redis.asyncio.Redis(port=redis_server.port, socket_timeout=2)
    engine = es.make_engine(client, queue_name)
    await engine.heartbeat(es.beat("stall", 0.2))
    before = await stats.fetch_queue_stats(client, queue_name)
    # When it stalls past its TTL (no one reaps it) and then renews its heartbeat
    await asyncio.sleep(0.3)
    stalled = await stats.fetch_queue_stats(client, queue_name)
    await engine.heartbeat(es.beat("stall", 5.0))
    after = await stats.fetch_queue_stats(client, queue_name)
    # Then the lost counter never went down (it mirrors Redis' monotonic count only), and the
    # stall showed as one expired, not yet reaped, heartbeat
    lost = [s.workers_lost_total for s in (before, stalled, after)]
    assert lost == sorted(lost) == [0, 0, 0]
    assert [s.workers_expired for s in (before, stalled, after)] == [0, 1, 0]
    await client.aclose()


async def test_a_broker_that_only_reads_statistics_builds_no_queue_engine(
    redis_server: RedisServer, queue_name: str
) -> None:
    # Given a Redis broker opened only to read its queue's statistics (the operator holds one
    # per pool), on a queue with work
    client = redis.asyncio.Redis(port=redis_server.port)
    await es.make_engine(client, queue_name).enqueue_many([es.request() for _ in range(2)])
    broker = redis_broker.RedisBroker(client, queue_name)
    # When it reads them and is closed
    s = await broker.fetch_stats()
    await broker.close()
    # Then it read the numbers without building the engine (encoded keys, five batchers) a
    # worker needs
    assert s.backlog == 2
    assert "engine" not in vars(broker)
    # while a broker that fetches builds it on first use
    worker = redis_broker.RedisBroker(client, queue_name)
    assert await worker.fetch("w1", 1) and "engine" in vars(worker)
    await worker.close()
    await client.aclose()
