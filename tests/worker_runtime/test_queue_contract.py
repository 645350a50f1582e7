"""The queue engine's contract, on a real redis-server AND on a real 3-master Redis Cluster.

Every test takes ``engine_client`` (parametrized in tests/conftest.py), so each behaviour is
proven on both. Time-based behaviour uses short real leases and delays (Redis server time).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis

from tests.support import engine as es
from tests.support.redis_servers import RedisClusterProcesses
from worker_runtime.brokers.redis import dlq, idempotency, keys, queue, stats


async def test_an_enqueued_job_is_fetched_leased_and_acknowledged_exactly_once(
    engine_client: Any, queue_name: str
) -> None:
    # Given a queue with one job
    engine = es.make_engine(engine_client, queue_name)
    [res] = await engine.enqueue_many([es.request(payload={"n": 1}, correlation_id="c-1")])
    assert res.created
    # When a worker fetches and acknowledges it
    [job] = await engine.fetch("w1", 10)
    acked = await engine.ack(job)
    # Then it was delivered once with its payload, and nothing remains
    assert (job.id, job.envelope.payload, job.envelope.correlation_id) == (
        res.job_id,
        {"n": 1},
        "c-1",
    )
    assert (job.attempts, job.deliveries, job.lost) == (0, 1, 0)
    assert acked is True
    assert await engine.fetch("w1", 10) == []
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    assert (s.backlog, s.in_flight, s.enqueued_total, s.completed_total) == (0, 0, 1, 1)
    # and its stream entry and state were deleted, not kept (no unbounded growth)
    k = keys.build_keys(queue_name)
    assert sum([await engine_client.xlen(r) for r in k.ready]) == 0
    assert await engine_client.hlen(k.env) == 0
    assert await engine_client.hlen(k.state) == 0


async def test_a_second_ack_of_the_same_delivery_is_rejected(
    engine_client: Any, queue_name: str
) -> None:
    # Given an acknowledged job
    engine = es.make_engine(engine_client, queue_name)
    await engine.enqueue(es.request())
    [job] = await engine.fetch("w1", 1)
    first = await engine.ack(job)
    # When it is acknowledged again (twice at once, too)
    again = await asyncio.gather(engine.ack(job), engine.ack(job))
    # Then only the first counted
    assert first is True
    assert again == [False, False]
    assert (await stats.fetch_queue_stats(engine_client, queue_name)).completed_total == 1


async def test_jobs_are_fetched_high_before_normal_before_low(
    engine_client: Any, queue_name: str
) -> None:
    # Given jobs enqueued low first, high last
    engine = es.make_engine(engine_client, queue_name)
    order = ["low", "normal", "high", "low", "high", "normal"]
    await engine.enqueue_many(
        [es.request(payload={"i": i}, priority=p) for i, p in enumerate(order)]
    )
    # When they are fetched two at a time
    got: list[tuple[str, int]] = []
    for _ in range(3):
        got += [
            (j.envelope.priority.value, j.envelope.payload["i"]) for j in await engine.fetch("w", 2)
        ]  # type: ignore[index,call-overload]
    # Then priority wins, FIFO inside a priority
    assert got == [("high", 2), ("high", 4), ("normal", 1), ("normal", 5), ("low", 0), ("low", 3)]


async def test_fetch_never_hands_out_more_jobs_than_asked(
    engine_client: Any, queue_name: str
) -> None:
    # Given 25 ready jobs
    engine = es.make_engine(engine_client, queue_name)
    await engine.enqueue_many([es.request(payload={"i": i}) for i in range(25)])
    # When a worker with 7 free slots fetches
    jobs = await engine.fetch("w", 7)
    # Then it holds exactly 7 and 18 stay in the backlog
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    assert len(jobs) == 7
    assert (s.in_flight, s.backlog) == (7, 18)


async def test_enqueue_many_keeps_order_across_script_batches(
    engine_client: Any, queue_name: str
) -> None:
    # Given more jobs than one enqueue script call takes
    engine = es.make_engine(engine_client, queue_name)
    reqs = [es.request(payload={"i": i}) for i in range(queue.MAX_BATCH * 2 + 7)]
    # When they are enqueued in one call
    results = await engine.enqueue_many(reqs)
    # Then every id comes back in input order and all are fetchable in order
    assert [r.job_id for r in results] == [r.envelope.id for r in reqs]
    jobs = await es.fetch_all(engine, "w", want=len(reqs))
    assert [j.envelope.payload["i"] for j in jobs] == list(range(len(reqs)))  # type: ignore[index,call-overload]


async def test_a_delayed_job_is_not_fetched_before_it_is_due(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job delayed by 1.5 s and one ready now
    engine = es.make_engine(engine_client, queue_name)
    [delayed] = await engine.enqueue_many([es.request(delay=1.5)])
    await engine.enqueue(es.request())
    # When fetched at once
    first = await engine.fetch("w", 10)
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    # Then only the ready one comes; the delayed one is "future delayed", not backlog
    assert len(first) == 1 and first[0].id != delayed.job_id
    assert (s.future_delayed, s.backlog) == (1, 0)
    # And after its due time it is delivered (a blocking fetch waits for it)
    started = time.monotonic()
    later = await engine.fetch("w", 10, block=4.0)
    assert [j.id for j in later] == [delayed.job_id]
    assert time.monotonic() - started < 4.0


async def test_an_idempotency_key_deduplicates_enqueues_until_its_ttl_expires(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job enqueued with an idempotency key and a short TTL
    engine = es.make_engine(engine_client, queue_name)
    a = await engine.enqueue(es.request(idempotency_key="order-7", idempotency_ttl=1.5))
    # When the same key is enqueued again inside the TTL (also twice in one batch)
    b = await engine.enqueue(es.request(idempotency_key="order-7", idempotency_ttl=1.5))
    c, d = await engine.enqueue_many(
        [es.request(idempotency_key="order-8"), es.request(idempotency_key="order-8")]
    )
    # Then the duplicates resolve to the first job and add nothing
    assert a.created and not b.created and b.job_id == a.job_id
    assert c.created and not d.created and d.job_id == c.job_id
    assert (await stats.fetch_queue_stats(engine_client, queue_name)).backlog == 2
    # And after the TTL the key is free again
    await asyncio.sleep(1.6)
    e = await engine.enqueue(es.request(idempotency_key="order-7"))
    assert e.created and e.job_id != a.job_id


async def test_an_expired_lease_is_reclaimed_on_the_next_fetch_and_counts_a_delivery(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job held by a worker that stops renewing (killed)
    engine = es.make_engine(engine_client, queue_name, lease_seconds=1.0)
    await engine.enqueue(es.request())
    [held] = await engine.fetch("dead-worker", 1)
    # When another worker fetches before and after the lease expires
    before = await engine.fetch("w2", 1)
    await asyncio.sleep(1.2)
    [again] = await engine.fetch("w2", 1)
    # Then it is delivered again only after expiry, as a new delivery with a new token
    assert before == []
    assert again.id == held.id
    assert (again.deliveries, again.lost, again.attempts) == (2, 1, 0)
    assert again.token != held.token


async def test_a_stale_worker_cannot_ack_retry_renew_release_or_dead_letter_after_reclaim(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job reclaimed from a worker whose lease expired (e.g. SIGSTOPped)
    engine = es.make_engine(engine_client, queue_name, lease_seconds=0.2)
    await engine.enqueue(es.request())
    [stale] = await engine.fetch("w1", 1)
    await asyncio.sleep(0.3)
    [fresh] = await engine.fetch("w2", 1)
    # When the stale holder wakes up and tries everything
    results = [
        await engine.ack(stale),
        await engine.retry(stale, es.failure(), delay_seconds=0),
        await engine.release(stale),
        await engine.dead_letter(stale, "non_retryable", failure=es.failure()),
    ]
    renewed = await engine.renew("w1", [stale])
    # Then all are rejected, and the new holder's ack counts exactly once
    assert results == [False, False, False, False]
    assert renewed.lost == (stale.id,) and renewed.renewed == ()
    assert await engine.ack(fresh) is True
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    assert (s.completed_total, s.retried_total, s.dead_lettered_total) == (1, 0, 0)


async def test_renewing_keeps_a_lease_alive_past_its_original_expiry(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job with a 0.3 s lease whose holder renews every 0.1 s
    engine = es.make_engine(engine_client, queue_name, lease_seconds=0.3)
    await engine.enqueue(es.request())
    [job] = await engine.fetch("w1", 1)
    stolen: list[queue.Job] = []
    for _ in range(9):  # 0.9 s: three times the lease
        await asyncio.sleep(0.1)
        assert (await engine.renew("w1", [job])).renewed == (job.id,)
        stolen += await engine.fetch("w2", 1)
    # Then nobody else got it and the holder can still ack
    assert stolen == []
    assert await engine.ack(job) is True


async def test_a_renew_by_another_worker_id_is_rejected(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job held by w1
    engine = es.make_engine(engine_client, queue_name)
    await engine.enqueue(es.request())
    [job] = await engine.fetch("w1", 1)
    # When w2 tries to renew it with w1's token
    result = await engine.renew("w2", [job])
    # Then it is reported lost for w2
    assert result.lost == (job.id,)


async def test_a_retried_job_waits_in_the_delayed_set_then_runs_again_with_the_attempt_counted(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job whose handler failed once
    engine = es.make_engine(engine_client, queue_name)
    await engine.enqueue(es.request())
    [job] = await engine.fetch("w1", 1)
    # When it is retried with a 0.3 s backoff
    assert await engine.retry(job, es.failure("first"), delay_seconds=0.3)
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    early = await engine.fetch("w1", 1)
    # Then it waits in Redis (future delayed, not in flight), and comes back after the delay
    assert (s.future_delayed, s.in_flight, s.backlog, s.retried_total, s.failed_total) == (
        1,
        0,
        0,
        1,
        1,
    )
    assert early == []
    [again] = await es.fetch_all(engine, "w1", want=1)
    assert (again.id, again.attempts, again.deliveries, again.lost) == (job.id, 1, 2, 0)


async def test_a_job_dead_lettered_after_its_last_attempt_keeps_payload_and_full_history(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job that fails every time, with max 3 attempts (the worker's rule)
    engine = es.make_engine(engine_client, queue_name)
    [res] = await engine.enqueue_many([es.request("send", {"to": "a@b"}, correlation_id="cid")])
    max_attempts = 3
    for n in range(1, max_attempts + 1):
        [job] = await es.fetch_all(engine, "w1", want=1)
        assert job.attempts == n - 1
        if job.attempts + 1 >= max_attempts:
            ok = await engine.dead_letter(job, "max_attempts", failure=es.failure(f"fail {n}"))
        else:
            ok = await engine.retry(job, es.failure(f"fail {n}"), delay_seconds=0)
        assert ok
    # Then the DLQ entry holds the payload and all three failures in order
    dead = await dlq.fetch_dead_letter(engine_client, queue_name, res.job_id)
    assert dead is not None
    assert (dead.reason, dead.task, dead.attempts, dead.deliveries, dead.lost) == (
        "max_attempts",
        "send",
        3,
        3,
        0,
    )
    assert dead.payload == {"to": "a@b"} and dead.correlation_id == "cid"
    assert [h.message for h in dead.history] == ["fail 1", "fail 2", "fail 3"]
    assert [h.attempt for h in dead.history] == [1, 2, 3]
    assert all(h.error_type == "RuntimeError" and h.worker_id == "w1" for h in dead.history)
    assert dead.first_failure_at is not None and dead.last_failure_at is not None
    assert dead.first_failure_at <= dead.last_failure_at
    assert dead.worker_id == "w1"
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    assert (s.dead_letter, s.dead_lettered_total, s.failed_total, s.retried_total) == (1, 1, 3, 2)


async def test_a_job_that_keeps_losing_its_lease_is_dead_lettered_before_it_runs_again(
    engine_client: Any, queue_name: str
) -> None:
    # Given max 3 deliveries and a job whose every holder dies (lease never renewed)
    engine = es.make_engine(engine_client, queue_name, lease_seconds=0.15, max_deliveries=3)
    [res] = await engine.enqueue_many([es.request()])
    deliveries = 0
    for _ in range(6):
        deliveries += len(await engine.fetch("crashy", 1))
        await asyncio.sleep(0.2)
    # When the next fetch sees the third expired lease
    final = await engine.fetch("w", 1)
    # Then it ran exactly 3 times and went to the DLQ as poison, never a 4th time
    assert deliveries == 3 and final == []
    assert engine.dead_lettered_by_fetch == {"max_deliveries": 1}
    dead = await dlq.fetch_dead_letter(engine_client, queue_name, res.job_id)
    assert dead is not None
    assert (dead.reason, dead.deliveries, dead.lost, dead.attempts) == ("max_deliveries", 3, 3, 0)
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    assert (s.in_flight, s.backlog, s.dead_letter) == (0, 0, 1)


async def test_release_gives_a_job_back_without_spending_an_attempt_or_a_lost_delivery(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job held by a draining worker
    engine = es.make_engine(engine_client, queue_name)
    await engine.enqueue(es.request())
    [job] = await engine.fetch("draining", 1)
    # When it releases the job
    assert await engine.release(job) is True
    # Then another worker gets it at once with attempts and lost unchanged
    [again] = await engine.fetch("w2", 1)
    assert (again.id, again.attempts, again.lost, again.deliveries) == (job.id, 0, 0, 2)
    assert await engine.ack(job) is False
    assert await engine.ack(again) is True


async def test_an_unparseable_envelope_is_dead_lettered_at_fetch_with_its_reason(
    engine_client: Any, queue_name: str
) -> None:
    # Given raw jobs written by something else: not JSON, and an unknown schema version
    engine = es.make_engine(engine_client, queue_name)
    k = keys.build_keys(queue_name)
    bad = {"bad-json": "{not json", "v99": json.dumps({"v": 99, "id": "v99", "task": "x"})}
    for job_id, raw in bad.items():
        await engine_client.hset(k.env, job_id, raw)
        await engine_client.hset(k.state, job_id, "normal|0|0|0")
        await engine_client.xadd(k.ready[1], {"j": job_id})
    await engine.enqueue(es.request(payload={"ok": True}))
    # When a worker fetches
    jobs = await engine.fetch("w1", 10)
    # Then only the valid job runs; the others are in the DLQ with their reasons
    assert [j.envelope.payload for j in jobs] == [{"ok": True}]
    reasons = {d.job_id: d.reason for d in await dlq.fetch_dead_letters(engine_client, queue_name)}
    assert reasons == {"bad-json": "unparseable_json", "v99": "unknown_schema_version"}
    assert engine.dead_lettered_by_fetch == {"unparseable_json": 1, "unknown_schema_version": 1}
    dead = await dlq.fetch_dead_letter(engine_client, queue_name, "bad-json")
    assert dead is not None and dead.envelope_raw == "{not json" and dead.attempts == 0


async def test_an_unknown_task_is_dead_lettered_without_counting_an_attempt(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job naming a task nobody registered
    engine = es.make_engine(engine_client, queue_name)
    [res] = await engine.enqueue_many([es.request("os.system", {"cmd": "true"})])
    [job] = await engine.fetch("w1", 1)
    # When the worker dead-letters it with the reason (no import, no run)
    note = queue.Failure("UnknownTask", "no task named 'os.system'", "", "w1")
    assert await engine.dead_letter(job, "unknown_task", failure=note, attempt=False)
    # Then it is in the DLQ with the note, attempts 0
    dead = await dlq.fetch_dead_letter(engine_client, queue_name, res.job_id)
    assert dead is not None
    assert (dead.reason, dead.attempts, [h.message for h in dead.history]) == (
        "unknown_task",
        0,
        ["no task named 'os.system'"],
    )
    assert (await stats.fetch_queue_stats(engine_client, queue_name)).failed_total == 0


async def test_the_done_key_is_recorded_atomically_with_the_ack_and_never_by_a_stale_ack(
    engine_client: Any, queue_name: str
) -> None:
    # Given two jobs; the first is acked with a done key
    engine = es.make_engine(engine_client, queue_name, lease_seconds=0.2)
    await engine.enqueue_many([es.request(), es.request()])
    first, second = await engine.fetch("w1", 2)
    assert not await idempotency.fetch_is_done(engine_client, queue_name, "charge-1")
    assert await idempotency.apply_done(engine, first, "charge-1", ttl_seconds=60)
    # When the second one's lease expires and its stale holder acks with another done key
    await asyncio.sleep(0.3)
    await engine.fetch("w2", 1)
    stale_ack = await engine.ack(second, done_key="charge-2", done_ttl_seconds=60)
    # Then only the real ack recorded "done"
    assert await idempotency.fetch_is_done(engine_client, queue_name, "charge-1")
    assert stale_ack is False
    assert not await idempotency.fetch_is_done(engine_client, queue_name, "charge-2")
    ttl = await engine_client.pttl(idempotency.build_done_key(queue_name, "charge-1"))
    assert 0 < ttl <= 60_000


async def test_a_blocking_fetch_wakes_up_when_a_job_arrives(
    engine_client: Any, queue_name: str
) -> None:
    # Given an idle worker blocked in fetch for up to 3 s
    engine = es.make_engine(engine_client, queue_name)
    waiter = asyncio.create_task(engine.fetch("w1", 5, block=3.0))
    await asyncio.sleep(0.2)
    # When a job is enqueued
    started = time.monotonic()
    await engine.enqueue(es.request(payload={"x": 1}))
    jobs = await waiter
    # Then the worker gets it long before its block timeout
    assert [j.envelope.payload for j in jobs] == [{"x": 1}]
    assert time.monotonic() - started < 1.5


async def test_an_idle_wait_on_a_redis_cluster_sends_no_command_getkeys(
    cluster_client: Any, redis_cluster: RedisClusterProcesses, queue_name: str
) -> None:
    # Given a worker fetching from an empty queue on a Redis Cluster (its client warmed up)
    engine = es.make_engine(cluster_client, queue_name)
    assert await engine.fetch("w1", 5) == []
    before = _cluster_calls(redis_cluster)
    # When it waits for work for a while (the idle wait re-checks every 2 s at most)
    assert await engine.fetch("w1", 5, block=2.5) == []
    # Then it waited in XREAD, and never asked the cluster for XREAD's keys (COMMAND GETKEYS)
    # to route it (the counts also hold what the fetch script runs inside Redis)
    sent = {k: v - before.get(k, 0) for k, v in _cluster_calls(redis_cluster).items()}
    assert sent.get("cmdstat_xread", 0) >= 1
    assert sent.get("cmdstat_command|getkeys", 0) == 0, sent


def _cluster_calls(cluster: RedisClusterProcesses) -> dict[str, int]:
    calls: dict[str, int] = {}
    for port in cluster.ports:
        with redis.Redis(port=port) as node:
            for name, stat in node.info("commandstats").items():
                calls[name] = calls.get(name, 0) + int(stat["calls"])
    return calls


async def test_a_blocking_fetch_on_an_empty_queue_returns_nothing_after_its_timeout(
    engine_client: Any, queue_name: str
) -> None:
    engine = es.make_engine(engine_client, queue_name)
    started = time.monotonic()
    jobs = await engine.fetch("w1", 5, block=0.3)
    elapsed = time.monotonic() - started
    assert jobs == []
    assert 0.25 <= elapsed < 2.0


async def test_a_global_rate_limit_caps_job_starts_across_workers(
    engine_client: Any, queue_name: str
) -> None:
    # Given 20 ready jobs and a limit of 5 starts per second shared by two workers
    limit = queue.RateLimit(jobs=5, per_seconds=1.0)
    w1 = es.make_engine(engine_client, queue_name, rate_limit=limit)
    w2 = es.make_engine(engine_client, queue_name, rate_limit=limit)
    await w1.enqueue_many([es.request() for _ in range(20)])
    # When both fetch greedily for 1 second
    started = time.monotonic()
    got = 0
    while time.monotonic() - started < 1.0:
        got += len(await w1.fetch("w1", 10, block=0.1))
        got += len(await w2.fetch("w2", 10, block=0.1))
    # Then at most the burst (5) plus one second of refill (5) started
    assert 5 <= got <= 11


async def test_worker_heartbeats_are_listed_and_an_expired_one_counts_as_lost(
    engine_client: Any, queue_name: str
) -> None:
    # Given two workers heartbeating; one will deregister cleanly, one dies
    engine = es.make_engine(engine_client, queue_name)
    await engine.heartbeat(es.beat("clean", 5.0))
    await engine.heartbeat(es.beat("killed", 0.2))
    s1 = await stats.fetch_queue_stats(engine_client, queue_name)
    # When the clean one deregisters and the killed one's heartbeat expires
    await engine.deregister("clean")
    await asyncio.sleep(0.3)
    s2 = await stats.fetch_queue_stats(engine_client, queue_name)
    await engine.heartbeat(es.beat("other", 5.0))  # a writer reaps the expired record
    s3 = await stats.fetch_queue_stats(engine_client, queue_name)
    # Then stats list live workers with their records; the killed one shows as expired until a
    # writer reaps it, then counts as lost (once)
    assert [(w.worker_id, w.pod_name, w.in_flight) for w in s1.workers] == [
        ("clean", "pod-clean", 3),
        ("killed", "pod-killed", 3),
    ]
    assert s1.workers[0].last_seen > 0
    assert (s2.workers, s2.workers_lost_total, s2.workers_expired) == ((), 0, 1)
    assert [w.worker_id for w in s3.workers] == ["other"]
    assert (s3.workers_lost_total, s3.workers_expired) == (1, 0)


async def test_queue_keys_all_live_in_one_cluster_slot(engine_client: Any, queue_name: str) -> None:
    # Given a queue that used every structure
    engine = es.make_engine(engine_client, queue_name)
    await engine.enqueue_many([es.request(idempotency_key="k"), es.request(delay=10)])
    [job] = await engine.fetch("w", 1)
    await engine.ack(job, done_key="d")
    # Then every key it created carries the queue's hash tag
    k = keys.build_keys(queue_name)
    names = [*k.script_keys(), k.idempotency("k"), k.done("d")]
    assert all(n.startswith("{wf:" + queue_name + "}:") for n in names)
    from redis.crc import key_slot

    assert len({key_slot(n.encode()) for n in names}) == 1


@pytest.mark.parametrize(
    "settle_seconds",
    [0.2, 0.0],
    ids=["during-the-idle-wait", "while-the-first-script-call-runs"],
)
async def test_setting_wake_ends_a_blocking_fetch_at_once(
    engine_client: Any, queue_name: str, settle_seconds: float
) -> None:
    # Given an idle worker blocked in fetch for up to 5 s (with a settle time of 0 it is
    # still in its first script call: a fresh client connects and loads the script first)
    engine = es.make_engine(engine_client, queue_name)
    wake = asyncio.Event()
    waiter = asyncio.create_task(engine.fetch("w1", 5, block=5.0, wake=wake))
    await asyncio.sleep(settle_seconds)
    # When the worker is told to stop fetching (SIGTERM)
    started = time.monotonic()
    wake.set()
    jobs = await waiter
    # Then fetch returns empty at once (not after its 2 s idle re-check), and later jobs
    # are not taken by it
    assert jobs == []
    assert time.monotonic() - started < 1.0
    assert await engine.fetch("w1", 5, wake=wake) == []
    await engine.enqueue(es.request())
    assert len(await engine.fetch("w2", 5)) == 1


async def test_concurrent_single_enqueues_each_get_their_own_result(
    engine_client: Any, queue_name: str
) -> None:
    # Given many producers enqueueing at the same moment (coalesced into few script calls)
    engine = es.make_engine(engine_client, queue_name)
    reqs = [es.request(payload={"i": i}, idempotency_key=f"k{i % 50}") for i in range(200)]
    # When they all enqueue concurrently
    results = await asyncio.gather(*(engine.enqueue(r) for r in reqs))
    # Then each got an answer for its own request: 50 created, 150 deduplicated to them
    created = {r.job_id for r in results if r.created}
    assert len(created) == 50
    assert all(r.job_id in created for r in results)
    assert [r.job_id for r in results[:50]] == [q.envelope.id for q in reqs[:50]]
    assert (await stats.fetch_queue_stats(engine_client, queue_name)).backlog == 50


async def test_a_huge_fetch_is_capped_instead_of_failing(
    engine_client: Any, queue_name: str
) -> None:
    engine = es.make_engine(engine_client, queue_name)
    await engine.enqueue_many([es.request() for _ in range(queue.MAX_FETCH + 20)])
    jobs = await engine.fetch("w", 50_000)
    assert len(jobs) == queue.MAX_FETCH


async def test_ack_and_fetch_settles_finished_jobs_and_hands_out_new_ones_in_one_call(
    engine_client: Any, queue_name: str
) -> None:
    # Given a worker holding two jobs, one of which was meanwhile reclaimed by another worker
    engine = es.make_engine(engine_client, queue_name, lease_seconds=0.2)
    await engine.enqueue_many([es.request(payload={"i": i}) for i in range(2)])
    first, second = await engine.fetch("w1", 2)
    await asyncio.sleep(0.3)
    await engine.renew("w1", [first])  # first keeps its lease; second expires
    [stolen] = await engine.fetch("w2", 1)
    await engine.enqueue_many([es.request(payload={"i": i}) for i in range(2, 5)])
    # When w1 acks both and asks for two more in one call
    acked, fresh = await engine.ack_and_fetch([first, second], "w1", 2)
    # Then the live ack counts, the stale one is rejected, and new work arrives
    assert stolen.id == second.id
    assert acked == [True, False]
    assert [j.envelope.payload for j in fresh] == [{"i": 2}, {"i": 3}]
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    assert (s.completed_total, s.in_flight, s.backlog) == (1, 3, 1)


async def test_ack_and_fetch_on_an_empty_queue_can_block_for_new_work(
    engine_client: Any, queue_name: str
) -> None:
    engine = es.make_engine(engine_client, queue_name)
    await engine.enqueue(es.request())
    [job] = await engine.fetch("w1", 1)
    later = asyncio.get_running_loop().call_later(
        0.2, lambda: asyncio.ensure_future(engine.enqueue(es.request(payload={"late": 1})))
    )
    acked, fresh = await engine.ack_and_fetch([job], "w1", 1, block=3.0)
    later.cancel()
    assert acked == [True]
    assert [j.envelope.payload for j in fresh] == [{"late": 1}]


async def test_deleting_a_queue_removes_all_its_keys_and_nothing_else(
    engine_client: Any, queue_name: str
) -> None:
    # Given a queue using every structure, and a neighbour queue
    engine = es.make_engine(engine_client, queue_name)
    neighbour = es.make_engine(engine_client, queue_name + "-n")
    await engine.enqueue_many(
        [es.request(idempotency_key="i1"), es.request(delay=30), es.request()]
    )
    a, b = await engine.fetch("w", 2)
    await engine.ack(a, done_key="d1")
    await engine.dead_letter(b, "non_retryable", failure=es.failure())
    await engine.heartbeat(
        queue.WorkerBeat("w", "p", 1, 0, 0, 0.0, time.time(), None, False, ttl_seconds=30)
    )
    await neighbour.enqueue(es.request())
    # When the queue is deleted
    deleted = await queue.delete_queue(engine_client, queue_name)
    # Then its stats are empty, its markers are gone, and the neighbour is untouched
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    assert deleted >= 8
    assert (s.backlog, s.future_delayed, s.dead_letter, s.enqueued_total, s.workers) == (
        0,
        0,
        0,
        0,
        (),
    )
    assert not await idempotency.fetch_is_done(engine_client, queue_name, "d1")
    assert (await engine.enqueue(es.request(idempotency_key="i1"))).created
    assert (await stats.fetch_queue_stats(engine_client, queue_name + "-n")).backlog == 1
