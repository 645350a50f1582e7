"""Chaos: thousands of jobs, three worker processes, one SIGKILLed every ~2 s for the whole run.

A share of the jobs fails transiently and a few are poison. The run proves the runtime's
promise under crashes: every enqueued job ends completed or dead-lettered (nothing lost), and
duplicate executions stay within kills x concurrency (at-least-once, bounded). Runs in
``make test`` at the default size and alone as ``make chaos`` (``CHAOS_JOBS=50000`` for more).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import pytest
import redis
import redis.asyncio

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until
from worker_runtime import dlq, producer

WORKERS = 3
CONCURRENCY = 8
LEASE_SECONDS = 2.0
KILL_EVERY_SECONDS = 2.0
POISON_JOBS = 5
TRANSIENT_SHARE = 0.1


def _dead_letter_ids(url: str, queue: str) -> set[str]:
    async def go() -> set[str]:
        client = redis.asyncio.Redis.from_url(url, decode_responses=True)
        ids: set[str] = set()
        try:
            offset = 0
            while True:
                page = await dlq.fetch_dead_letters(client, queue, offset=offset, limit=500)
                ids.update(d.job_id for d in page)
                if len(page) < 500:
                    return ids
                offset += len(page)
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.mark.chaos
def test_chaos_kill_9_every_two_seconds_loses_nothing_and_bounds_duplicates(
    wf: workerproc.Testbed,
) -> None:
    rng = random.Random(7)
    n = int(os.environ.get("CHAOS_JOBS", "5000"))
    # Given n jobs (~100 ms of work each), a share failing transiently, a few poison ones
    specs: list[producer.JobSpec] = []
    poison_markers = {f"p{i}" for i in range(POISON_JOBS)}
    for i in range(n - POISON_JOBS):
        fail_first = rng.choice((1, 2)) if rng.random() < TRANSIENT_SHARE else 0
        payload = {"marker": str(i), "fail_first": fail_first, "work_ms": rng.uniform(50, 150)}
        specs.append(producer.JobSpec(task="chaos", payload=payload))
    specs += [
        producer.JobSpec(task="chaos", payload={"marker": m, "poison": True})
        for m in sorted(poison_markers)
    ]
    rng.shuffle(specs)
    marker_of: dict[str, str] = {}
    for start in range(0, len(specs), 500):
        chunk = specs[start : start + 500]
        for spec, result in zip(chunk, wf.producer.enqueue_many(chunk), strict=True):
            assert result.created
            marker_of[result.job_id] = str(dict(spec.payload)["marker"])
    assert len(marker_of) == n
    # (deliveries allowed per job are high enough that only the poison jobs end in the DLQ,
    # unless one job is unlucky enough to sit in killed workers ten times)
    env = {"WORKERFLEET_RETRY_MAX_DELIVERIES": "10", "WORKERFLEET_LOG_LEVEL": "warning"}

    def start_worker() -> workerproc.WorkerProc:
        return wf.spawn(
            concurrency=CONCURRENCY, lease_seconds=LEASE_SECONDS, drain_timeout=5.0, extra_env=env
        )

    # When three workers run them while one of them is SIGKILLed every ~2 s (and restarted)
    pool = [start_worker() for _ in range(WORKERS)]
    kills = 0
    t0 = time.monotonic()
    deadline = t0 + max(120.0, n / 40)
    next_kill = t0 + KILL_EVERY_SECONDS
    while True:
        s = wf.stats()
        if s.completed_total + s.dead_letter >= n and s.in_flight == 0 and s.backlog == 0:
            break
        assert time.monotonic() < deadline, f"chaos run did not finish: {s}"
        now = time.monotonic()
        if now >= next_kill:
            victim = rng.randrange(WORKERS)
            pool[victim].send(signal.SIGKILL)
            pool[victim].wait(10)
            kills += 1
            pool[victim] = start_worker()
            next_kill = now + KILL_EVERY_SECONDS
        for w in pool:
            if not w.alive():  # a worker must only die when we kill it
                raise AssertionError(f"worker exited by itself: {w.logs()[-3000:]}")
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    # (a worker restarted a moment ago may still be importing: let it come up first)
    wait_until(
        lambda: {w.pid for w in pool} <= workerproc.registered_pids(wf.client, wf.queue),
        20,
        "every worker to register",
    )
    for w in pool:
        w.send(signal.SIGTERM)
    for w in pool:
        assert w.wait(15) == 0
    # Then every job is completed or dead-lettered, nothing is lost, duplicates are bounded
    s = wf.stats()
    counts = wf.done_counts()
    dead_markers = {marker_of[j] for j in _dead_letter_ids(wf.redis.url, wf.queue)}
    lost = sum(1 for m in marker_of.values() if counts.get(m, 0) == 0 and m not in dead_markers)
    duplicates = sum(c - 1 for c in counts.values() if c > 1)
    print(f"\nchaos run: {elapsed:.1f} s, {WORKERS} workers x concurrency {CONCURRENCY}")
    print(
        f"chaos: enqueued={n} completed={s.completed_total} dead_lettered={s.dead_letter} "
        f"lost={lost} duplicates={duplicates} kills={kills}"
    )
    assert s.enqueued_total == n
    assert n == s.completed_total + s.dead_letter
    assert lost == 0
    assert duplicates <= kills * CONCURRENCY
    assert poison_markers <= dead_markers
    assert s.backlog == 0 and s.in_flight == 0 and s.future_delayed == 0
    assert kills >= 3
