"""Scripts that pass a list to one Redis command stay correct at the largest list allowed.

Lua's ``unpack`` fails at about 8,000 values ("too many results to unpack"), so every script
that hands a list to a command slices it. These tests run each such list at the largest size
the configuration admits: a worker's concurrency (``WORKERFLEET_CONCURRENCY`` ≤ 10,000) is the
number of jobs one renewal carries, ``dlq ls --limit`` is whatever the operator types, and the
stats read every live worker of the queue.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis.asyncio

from tests.support import engine as es
from tests.support.cli import run_cli
from worker_runtime import config
from worker_runtime.brokers.redis import dlq, keys, queue, scripts, stats

MAX_CONCURRENCY = 10_000
"""The largest ``WORKERFLEET_CONCURRENCY`` the settings accept: one renewal holds this many."""

DLQ_PAGE = 8_500
"""A ``dlq ls --limit`` above Lua's unpack limit."""


def test_the_concurrency_bound_used_here_is_the_settings_maximum() -> None:
    # The renewal test below is only "at the maximum" while this holds.
    field = config.WorkerSettings.model_fields["concurrency"]
    bounds = [m.le for m in field.metadata if hasattr(m, "le")]
    assert bounds == [MAX_CONCURRENCY]


async def _hold(engine: queue.QueueClient, worker: str, n: int) -> list[queue.Job]:
    for start in range(0, n, queue.MAX_BATCH):
        await engine.enqueue_many([es.request() for _ in range(min(queue.MAX_BATCH, n - start))])
    held: list[queue.Job] = []
    for _ in range(n // queue.MAX_FETCH + 2):
        held += await engine.fetch(worker, n - len(held))
        if len(held) == n:
            break
    assert len(held) == n
    return held


async def test_one_renewal_keeps_the_leases_of_a_worker_at_maximum_concurrency(
    redis_client: Any, queue_name: str
) -> None:
    # Given a worker holding as many jobs as the largest concurrency allows, with a 30 s lease
    engine = es.make_engine(redis_client, queue_name, lease_seconds=30.0)
    held = await _hold(engine, "w1", MAX_CONCURRENCY)
    leases = keys.build_keys(queue_name).leases
    before = min(score for _, score in await redis_client.zrange(leases, 0, 0, withscores=True))
    await asyncio.sleep(0.05)
    # When it renews them all in one call
    result = await engine.renew("w1", held)
    # Then every lease was extended and none reported lost
    assert len(result.renewed) == MAX_CONCURRENCY and result.lost == ()
    after = min(score for _, score in await redis_client.zrange(leases, 0, 0, withscores=True))
    assert after > before
    # and a second worker finds nothing to reclaim
    assert await engine.fetch("w2", 10) == []


async def test_a_dead_letter_page_above_the_unpack_limit_lists_every_entry(
    redis_client: Any, queue_name: str
) -> None:
    # Given 8,500 dead letters
    engine = es.make_engine(redis_client, queue_name)
    held = await _hold(engine, "w1", DLQ_PAGE)
    flags = await asyncio.gather(
        *(engine.dead_letter(j, "non_retryable", failure=es.failure()) for j in held)
    )
    assert all(flags)
    # When the list script is asked for all of them in one page
    total, records = await scripts.DLQ_LIST(
        redis_client, keys.build_keys(queue_name).script_keys(), [0, DLQ_PAGE]
    )
    # Then it returns them all, and so does the library call
    assert (total, len(records)) == (DLQ_PAGE, DLQ_PAGE)
    listed = await dlq.fetch_dead_letters(redis_client, queue_name, limit=DLQ_PAGE)
    assert {d.job_id for d in listed} == {j.id for j in held}


def test_dlq_ls_with_a_limit_above_the_unpack_limit_lists_every_entry(
    redis_server: Any, queue_name: str
) -> None:
    # Given 8,500 dead letters
    async def given() -> list[str]:
        client = redis.asyncio.Redis(port=redis_server.port, decode_responses=True)
        try:
            engine = es.make_engine(client, queue_name)
            held = await _hold(engine, "w1", DLQ_PAGE)
            await asyncio.gather(*(engine.dead_letter(j, "non_retryable") for j in held))
            return [j.id for j in held]
        finally:
            await client.aclose()

    ids = asyncio.run(given())
    # When the operator lists them all from the command line
    out = run_cli(
        "dlq", "ls", "--limit", str(DLQ_PAGE), "--json",
        redis_url=redis_server.url, queue_name=queue_name,
    )  # fmt: skip
    # Then every one is listed (and the command did not fail)
    assert out.returncode == 0, out.stderr[-2000:]
    assert {d["job_id"] for d in json.loads(out.stdout)} == set(ids)


async def test_queue_stats_read_more_live_workers_than_one_unpack_holds(
    redis_client: Any, queue_name: str
) -> None:
    # Given 9,000 live worker heartbeats on one queue (far above a pool's 1,000 replicas)
    k = keys.build_keys(queue_name)
    now = time.time()
    pipe = redis_client.pipeline(transaction=False)
    for i in range(9_000):
        beat = queue.WorkerBeat(f"w{i}", f"pod-{i}", 1, 0, 0, 0.0, now, None, False, 30.0)
        pipe.hset(k.workers, f"w{i}", queue.encode_heartbeat(beat))
        pipe.zadd(k.workers_expiry, {f"w{i}": (now + 600) * 1000})
    await pipe.execute()
    # When the stats are read
    s = await stats.fetch_queue_stats(redis_client, queue_name)
    # Then every worker is in them
    assert len(s.workers) == 9_000
