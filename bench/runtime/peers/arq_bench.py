"""arq peer for bench/runtime/driver.py: ``produce`` N no-op jobs, ``work`` runs them.

One worker with arq's default ``max_jobs=10`` (BENCH_CONCURRENCY overrides) and ``poll_delay``
lowered from 0.5 s to 10 ms (with 0.5 s arq idles between polls). Results are not kept.
arq has no batch enqueue: the producer awaits ``enqueue_job`` 500 at a time with gather.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import common
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import run_worker

SETTINGS = RedisSettings.from_dsn(common.REDIS_URL)
QUEUE = "arq:bench"


async def noop(ctx: dict[str, Any], i: int) -> None:
    common.hit()


class WorkerSettings:
    functions = [noop]
    redis_settings = SETTINGS
    queue_name = QUEUE
    max_jobs = common.CONCURRENCY or 10
    poll_delay = 0.01
    keep_result = 0
    log_results = False
    handle_signals = True


async def _produce() -> None:
    pool = await create_pool(SETTINGS, default_queue_name=QUEUE)
    start = time.perf_counter()
    for part in common.chunks(common.JOBS, 500):
        await asyncio.gather(*(pool.enqueue_job("noop", i) for i in part))
    common.report_enqueue(common.JOBS, time.perf_counter() - start)
    await pool.aclose()


def produce() -> None:
    asyncio.run(_produce())


def work() -> None:
    run_worker(WorkerSettings)  # type: ignore[arg-type]


if __name__ == "__main__":
    actions = {"produce": produce, "work": work}
    actions.get(sys.argv[1] if len(sys.argv) > 1 else "", lambda: common.usage("arq_bench"))()
