"""The dead-letter queue: list, show, replay (rate-limited), purge, and retention on insert."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.support import engine as es
from worker_runtime.brokers.redis import dlq, queue, stats


async def dead_letter_n(
    engine: queue.QueueClient, n: int, *, reason: str = "non_retryable"
) -> list[str]:
    """Enqueue n jobs and dead-letter each after one failure; returns ids oldest first."""
    ids: list[str] = []
    for i in range(n):
        [res] = await engine.enqueue_many([es.request("t", {"i": i})])
        [job] = await engine.fetch("w", 1)
        assert await engine.dead_letter(job, reason, failure=es.failure(f"f{i}"))
        ids.append(res.job_id)
        await asyncio.sleep(0.002)  # distinct dead-letter times
    return ids


async def test_dead_letters_are_listed_newest_first_in_pages(
    engine_client: Any, queue_name: str
) -> None:
    # Given five dead letters
    engine = es.make_engine(engine_client, queue_name)
    ids = await dead_letter_n(engine, 5)
    # When they are listed two at a time
    pages = [
        [
            d.job_id
            for d in await dlq.fetch_dead_letters(engine_client, queue_name, offset=o, limit=2)
        ]
        for o in (0, 2, 4, 6)
    ]
    # Then pages run newest to oldest and end empty
    assert pages == [[ids[4], ids[3]], [ids[2], ids[1]], [ids[0]], []]
    assert await dlq.fetch_dead_letter_count(engine_client, queue_name) == 5


async def test_showing_an_unknown_dead_letter_returns_nothing(
    engine_client: Any, queue_name: str
) -> None:
    assert await dlq.fetch_dead_letter(engine_client, queue_name, "nope") is None


async def test_replay_puts_dead_letters_back_with_history_and_optionally_fresh_attempts(
    engine_client: Any, queue_name: str
) -> None:
    # Given two dead letters (one failure each)
    engine = es.make_engine(engine_client, queue_name)
    a, b = await dead_letter_n(engine, 2)
    # When one is replayed keeping attempts and the other with attempts reset
    assert await dlq.apply_replay(engine_client, queue_name, job_ids=[a]) == [a]
    assert await dlq.apply_replay(engine_client, queue_name, job_ids=[b], reset_attempts=True) == [
        b
    ]
    # Then both run again: attempts kept for a, reset for b; lost deliveries always reset
    jobs = {j.id: j for j in await es.fetch_all(engine, "w2", want=2)}
    assert (jobs[a].attempts, jobs[b].attempts) == (1, 0)
    assert jobs[a].lost == 0 and jobs[a].envelope.payload == {"i": 0}
    assert await dlq.fetch_dead_letter_count(engine_client, queue_name) == 0
    # and a's history survived the round trip: failing again shows both failures
    assert await engine.dead_letter(jobs[a], "max_attempts", failure=es.failure("again"))
    dead = await dlq.fetch_dead_letter(engine_client, queue_name, a)
    assert dead is not None and [h.message for h in dead.history] == ["f0", "again"]


async def test_replay_without_ids_takes_the_oldest_up_to_the_limit(
    engine_client: Any, queue_name: str
) -> None:
    engine = es.make_engine(engine_client, queue_name)
    ids = await dead_letter_n(engine, 4)
    replayed = await dlq.apply_replay(engine_client, queue_name, limit=3)
    assert replayed == ids[:3]
    assert [d.job_id for d in await dlq.fetch_dead_letters(engine_client, queue_name)] == [ids[3]]


async def test_replay_is_rate_limited(redis_client: Any, queue_name: str) -> None:
    # Given 30 dead letters
    engine = es.make_engine(redis_client, queue_name)
    await dead_letter_n(engine, 30)
    # When all are replayed at 40 per second
    started = time.monotonic()
    replayed = await dlq.apply_replay(redis_client, queue_name, rate_per_second=40.0)
    elapsed = time.monotonic() - started
    # Then all came back, and not faster than the rate allows (30/40 s)
    assert len(replayed) == 30
    assert elapsed >= 0.7
    assert (await stats.fetch_queue_stats(redis_client, queue_name)).backlog == 30


async def test_purge_deletes_by_id_by_age_or_everything(
    engine_client: Any, queue_name: str
) -> None:
    engine = es.make_engine(engine_client, queue_name)
    old = await dead_letter_n(engine, 3)
    await asyncio.sleep(1.0)
    new = await dead_letter_n(engine, 3)
    # by id
    assert await dlq.delete_dead_letters(engine_client, queue_name, job_ids=[old[0], "nope"]) == 1
    # by age: only the ones older than 0.7 s (the new ones are that old only after a stall)
    assert await dlq.delete_dead_letters(engine_client, queue_name, older_than_seconds=0.7) == 2
    left = [d.job_id for d in await dlq.fetch_dead_letters(engine_client, queue_name)]
    assert sorted(left) == sorted(new)
    # everything
    assert await dlq.delete_dead_letters(engine_client, queue_name, everything=True) == 3
    assert await dlq.fetch_dead_letter_count(engine_client, queue_name) == 0
    with pytest.raises(ValueError):
        await dlq.delete_dead_letters(engine_client, queue_name)


async def test_the_dlq_keeps_at_most_max_length_entries_dropping_the_oldest(
    engine_client: Any, queue_name: str
) -> None:
    engine = es.make_engine(engine_client, queue_name, dlq_max_length=3)
    ids = await dead_letter_n(engine, 5)
    left = [d.job_id for d in await dlq.fetch_dead_letters(engine_client, queue_name)]
    assert left == ids[:1:-1]  # the three newest
    assert (await stats.fetch_queue_stats(engine_client, queue_name)).dead_lettered_total == 5


async def test_dead_letters_older_than_the_retention_are_dropped_on_the_next_insert(
    engine_client: Any, queue_name: str
) -> None:
    engine = es.make_engine(engine_client, queue_name, dlq_retention_seconds=0.3)
    first = await dead_letter_n(engine, 2)
    await asyncio.sleep(0.4)
    last = await dead_letter_n(engine, 1)
    left = [d.job_id for d in await dlq.fetch_dead_letters(engine_client, queue_name)]
    assert left == last
    assert await dlq.fetch_dead_letter(engine_client, queue_name, first[0]) is None


def test_a_dead_letter_record_with_a_broken_envelope_still_parses() -> None:
    rec = dlq.build_dead_letter(
        '{"id":"x","reason":"unparseable_json","envelope":"{oops","history":{},"attempts":0}'
    )
    assert (rec.job_id, rec.task, rec.payload, rec.history) == ("x", None, None, ())


async def test_replay_skips_a_dead_letter_whose_job_id_is_live_again(
    engine_client: Any, queue_name: str
) -> None:
    # Given a dead letter whose id was enqueued again meanwhile
    engine = es.make_engine(engine_client, queue_name)
    [job_id] = await dead_letter_n(engine, 1)
    env = es.request().envelope.model_copy(update={"id": job_id})
    await es.enqueue_again(engine, env)
    # When the DLQ is replayed
    replayed = await dlq.apply_replay(engine_client, queue_name, job_ids=[job_id])
    # Then nothing is replayed (no second copy) and the record stays
    assert replayed == []
    assert await dlq.fetch_dead_letter(engine_client, queue_name, job_id) is not None
    assert len(await engine.fetch("w", 10)) == 1


async def test_replay_all_keeps_paging_past_a_batch_of_dead_letters_that_are_live_again(
    redis_client: Any, queue_name: str
) -> None:
    # Given five dead letters whose two oldest ids were enqueued again meanwhile
    engine = es.make_engine(redis_client, queue_name)
    ids = await dead_letter_n(engine, 5)
    for job_id in ids[:2]:
        env = es.request().envelope.model_copy(update={"id": job_id})
        await es.enqueue_again(engine, env)
    # When everything is replayed two per batch (--all --rate 2), the first batch all skipped
    replayed = await dlq.apply_replay(redis_client, queue_name, rate_per_second=2.0)
    # Then the three others are replayed, and the live-again ones stay in the DLQ
    assert replayed == ids[2:]
    left = await dlq.fetch_dead_letters(redis_client, queue_name)
    assert sorted(d.job_id for d in left) == sorted(ids[:2])
