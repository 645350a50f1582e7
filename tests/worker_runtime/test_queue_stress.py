"""Many engine clients at once, with crashes, retries and poison: every job is accounted for."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from tests.support import engine as es
from worker_runtime.brokers.redis import dlq, queue, stats


async def test_concurrent_workers_that_crash_and_fail_lose_nothing(
    engine_client: Any, queue_name: str
) -> None:
    # Given 600 jobs: 10% fail once, 5 are poison (always crash their worker)
    rng = random.Random(42)
    total = 600
    poison = {f"p{i}" for i in range(5)}
    flaky = {f"j{i}" for i in range(0, total - 5, 10)}
    ids = [f"j{i}" for i in range(total - 5)] + sorted(poison)
    reqs = []
    for job_id in ids:
        r = es.request(payload={"id": job_id})
        reqs.append(queue.EnqueueRequest(envelope=r.envelope.model_copy(update={"id": job_id})))
    options = {"lease_seconds": 0.3, "max_deliveries": 3}
    await es.make_engine(engine_client, queue_name, **options).enqueue_many(reqs)
    runs: Counter[str] = Counter()
    failed_once: set[str] = set()
    crashes = 0

    async def worker(n: int) -> None:
        nonlocal crashes
        engine = es.make_engine(engine_client, queue_name, **options)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        idle = 0
        while loop.time() < deadline and idle < 8:
            jobs = await engine.fetch(f"w{n}", 10, block=0.2)
            idle = 0 if jobs else idle + 1
            for job in jobs:
                runs[job.id] += 1
                if job.id in poison or rng.random() < 0.02:
                    crashes += 1  # the worker "dies" holding it: no ack, lease expires
                    continue
                if job.id in flaky and job.id not in failed_once:
                    failed_once.add(job.id)
                    await engine.retry(job, es.failure(), delay_seconds=0.05)
                    continue
                await engine.ack(job)

    # When 6 workers drain the queue concurrently
    await asyncio.gather(*(worker(n) for n in range(6)))
    # Then every job is completed or dead-lettered, never both, never lost
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    dead = {d.job_id for d in await dlq.fetch_dead_letters(engine_client, queue_name, limit=1000)}
    assert (s.backlog, s.in_flight, s.future_delayed) == (0, 0, 0)
    assert s.enqueued_total == total == s.completed_total + s.dead_lettered_total
    assert poison <= dead
    assert all(runs[p] == 3 for p in poison)  # exactly max_deliveries runs, then DLQ
    assert set(runs) == set(ids)
    # and extra runs come only from crashes and deliberate retries
    extra = sum(runs.values()) - total
    assert extra <= crashes + len(failed_once)
