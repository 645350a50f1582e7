"""saq peer for bench/runtime/driver.py: ``produce`` N no-op jobs, ``work`` runs them.

One worker process with saq's default ``concurrency=10`` (BENCH_CONCURRENCY overrides); jobs
carry ``ttl=-1`` so finished job records are deleted (nothing kept, like workerfleet). saq has
no batch enqueue (``Queue.batch`` only groups aborts): the producer gathers 500 at a time.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import common
from saq import Queue, Worker

queue = Queue.from_url(common.REDIS_URL, name=common.QUEUE)


async def noop(ctx: dict[str, Any], *, i: int) -> None:
    common.hit()


async def _produce() -> None:
    await queue.connect()
    start = time.perf_counter()
    for part in common.chunks(common.JOBS, 500):
        await asyncio.gather(*(queue.enqueue("noop", i=i, ttl=-1) for i in part))
    common.report_enqueue(common.JOBS, time.perf_counter() - start)
    await queue.disconnect()


def produce() -> None:
    asyncio.run(_produce())


async def _work() -> None:
    worker = Worker(queue, functions=[noop], concurrency=common.CONCURRENCY or 10)
    await worker.start()


def work() -> None:
    asyncio.run(_work())


if __name__ == "__main__":
    actions = {"produce": produce, "work": work}
    actions.get(sys.argv[1] if len(sys.argv) > 1 else "", lambda: common.usage("saq_bench"))()
