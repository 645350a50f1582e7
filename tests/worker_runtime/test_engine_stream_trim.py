"""An ack trims the ready stream below its oldest pending entry: what stays is exactly the work.

The invariant of the key schema (worker_runtime/brokers/redis/keys.py): a ready stream holds one
entry per undelivered job and one per leased job, nothing else. Acks trim below the consumer
group's oldest pending entry (XTRIM MINID) and delete the acknowledged ids above it; a worker
whose consumer is deleted (reaped after its heartbeat expired, or deregistered while it still
held jobs) first hands its pending entries to the ``workerfleet:orphaned`` consumer, so no
leased job's entry falls below the trim. On a real redis-server and a real Redis Cluster.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support import engine as es
from worker_runtime.brokers.redis import keys, queue


async def _stream_ids(client: Any, queue_name: str) -> set[str]:
    k = keys.build_keys(queue_name)
    ids: set[str] = set()
    for stream in k.ready:
        for entry_id, _fields in await client.xrange(stream):
            ids.add(entry_id.decode() if isinstance(entry_id, bytes) else entry_id)
    return ids


async def _entries_of(client: Any, queue_name: str, jobs: list[queue.Job]) -> set[str]:
    # the stream entry each delivered job holds, from the inflight record token|prio|entry|worker
    k = keys.build_keys(queue_name)
    raws = await client.hmget(k.inflight, [j.id for j in jobs])
    out: set[str] = set()
    for raw in raws:
        assert raw is not None
        text = raw.decode() if isinstance(raw, bytes) else raw
        out.add(text.split("|")[2])
    return out


async def _ack_all(engine: queue.QueueClient, jobs: list[queue.Job]) -> list[bool]:
    # acks sent together are coalesced into one ack.lua call
    return list(await asyncio.gather(*(engine.ack(j) for j in jobs)))


async def test_acks_in_any_order_leave_exactly_the_undelivered_and_leased_entries(
    engine_client: Any, queue_name: str
) -> None:
    # Given 30 jobs: worker a holds the 10 oldest, worker b the next 10, 10 are undelivered
    engine = es.make_engine(engine_client, queue_name)
    await engine.enqueue_many([es.request(payload={"n": n}) for n in range(30)])
    held_a = await engine.fetch("a", 10)
    held_b = await engine.fetch("b", 10)
    all_entries = await _stream_ids(engine_client, queue_name)
    undelivered = all_entries - await _entries_of(engine_client, queue_name, held_a + held_b)
    assert (len(held_a), len(held_b), len(undelivered)) == (10, 10, 10)
    a_older = await _entries_of(engine_client, queue_name, held_a[:5])
    a_newer = await _entries_of(engine_client, queue_name, held_a[5:])
    # When b acknowledges first (above the oldest pending entry), then a's newer half, then
    # a's older half
    assert await _ack_all(engine, held_b) == [True] * 10
    after_b = await _stream_ids(engine_client, queue_name)
    assert await _ack_all(engine, held_a[5:]) == [True] * 5
    after_newer_a = await _stream_ids(engine_client, queue_name)
    assert await _ack_all(engine, held_a[:5]) == [True] * 5
    after_all = await _stream_ids(engine_client, queue_name)
    # Then after each step the streams hold exactly the undelivered and still-leased entries
    assert after_b == undelivered | a_older | a_newer
    assert after_newer_a == undelivered | a_older
    assert after_all == undelivered
    # and the undelivered ones are still delivered, once each, and leave nothing behind
    rest = await engine.fetch("c", 20)
    assert sorted(j.envelope.payload["n"] for j in rest) == list(range(20, 30))
    assert await _ack_all(engine, rest) == [True] * 10
    assert await _stream_ids(engine_client, queue_name) == set()


@pytest.mark.parametrize("how", ["reaped", "deregistered"])
async def test_a_gone_workers_leased_jobs_keep_their_entries_through_other_workers_acks(
    engine_client: Any, queue_name: str, how: str
) -> None:
    # Given a worker "gone" holding the 2 oldest jobs (short lease) and a worker "live" the
    # 3 newer ones
    engine = es.make_engine(engine_client, queue_name, lease_seconds=0.5)
    await engine.enqueue_many([es.request(payload={"n": n}) for n in range(5)])
    await engine.heartbeat(es.beat("gone", 0.2))
    gone_jobs = await engine.fetch("gone", 2)
    live_jobs = await engine.fetch("live", 3)
    gone_entries = await _entries_of(engine_client, queue_name, gone_jobs)
    # When its consumer is deleted: reaped by another worker's heartbeat after its own expired,
    # or deregistered while it still held the jobs (a drain that ran out of time)
    if how == "reaped":
        await asyncio.sleep(0.3)
        await engine.heartbeat(es.beat("live", 5.0))
    else:
        await engine.deregister("gone")
    # and the live worker acknowledges its newer jobs (each ack trims below the oldest pending)
    assert await _ack_all(engine, live_jobs) == [True] * 3
    # Then the gone worker's two leased jobs still have their entries, and only they
    assert await _stream_ids(engine_client, queue_name) == gone_entries
    # and once their leases expire the live worker reclaims, runs and acknowledges them:
    # all five completed exactly once, nothing left in the streams
    await asyncio.sleep(0.6)
    reclaimed = await es.fetch_all(engine, "live", want=2)
    assert sorted(j.envelope.payload["n"] for j in reclaimed) == [0, 1]
    assert await _ack_all(engine, reclaimed) == [True, True]
    assert await _stream_ids(engine_client, queue_name) == set()
    k = keys.build_keys(queue_name)
    assert int(await engine_client.hget(k.counters, "completed")) == 5
