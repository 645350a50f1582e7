"""Micro-benchmark of the producer alone: its CPU per enqueued job, and Redis's, no worker.

Run: .venv/bin/python bench/producer_micro.py [--jobs 160000] [--batch 200] [--url redis://...]
Without --url it starts its own redis-server on a free loopback port (engine_micro.own_redis).
Each call is one ``Producer.enqueue_many`` of ``--batch`` fresh ``JobSpec``s (payload
``{"i": n, "t": now}``, as the paced bench producer sends), built inside the timed loop as an
application builds them. Prints the producer process's CPU per job (``time.process_time``),
the wall time per job and Redis's CPU per job (``INFO cpu`` deltas). To compare two trees, run
it with ``PYTHONPATH=DIR`` (DIR holding another ``worker_runtime``) and without, taking turns:
the CPU figures move by ~10% between runs on a shared machine. Never asserts timing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import engine_micro  # the bench's own module, next to this file
import redis

from worker_runtime import producer
from worker_runtime.brokers.redis import connection

sys.path.insert(0, str(Path(__file__).resolve().parent / "runtime"))

import driver  # bench-runtime's module: Redis's CPU counter, read as bench-runtime reads it


async def run(url: str, jobs: int, batch: int) -> None:
    client = connection.build_client(url)
    stats = redis.Redis.from_url(url)
    p = producer.Producer(client, "bench-producer")
    # one call first: connection, script load
    await p.enqueue_many([producer.JobSpec("noop", {"i": -1, "t": 0.0})])
    calls = max(1, jobs // batch)
    redis_before = driver.redis_cpu_seconds(stats)
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    for c in range(calls):
        now = time.time()
        await p.enqueue_many(
            [producer.JobSpec("noop", {"i": c * batch + i, "t": now}) for i in range(batch)]
        )
    cpu = time.process_time() - cpu_before
    wall = time.perf_counter() - wall_before
    redis_cpu = driver.redis_cpu_seconds(stats) - redis_before
    sent = calls * batch
    print(
        f"producer: {sent:,} jobs in calls of {batch}: producer CPU {cpu / sent * 1e6:.2f} us/job, "
        f"wall {wall / sent * 1e6:.2f} us/job ({sent / wall:,.0f} jobs/s), "
        f"redis CPU {redis_cpu / sent * 1e6:.2f} us/job"
    )
    await client.aclose()
    stats.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=160_000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--url")
    args = ap.parse_args()
    if args.url:
        asyncio.run(run(args.url, args.jobs, args.batch))
        return
    with engine_micro.own_redis() as url:
        asyncio.run(run(url, args.jobs, args.batch))


if __name__ == "__main__":
    main()
