"""celery peer for bench/runtime/driver.py: ``produce`` N no-op jobs, ``work`` runs them.

The benchmark allows ONE worker process per system, so celery's default prefork pool (a parent
plus one child per core) is out; BENCH_CELERY_POOL picks ``solo`` (default: one process runs
tasks inline, the fastest one-process pool for no-op tasks) or ``threads`` (BENCH_CONCURRENCY
threads, default 8). Results are ignored, gossip/mingle/heartbeat are off, prefetch multiplier
is celery's default 4. celery's Redis transport has no batch publish: the producer loops
``apply_async`` on one held producer connection.
"""

from __future__ import annotations

import os
import sys
import time

import common
from celery import Celery

app = Celery("bench", broker=common.REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    task_default_queue=common.QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop(i: int) -> None:
    common.hit()


def produce() -> None:
    start = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(common.JOBS):
            noop.apply_async((i,), producer=producer)
    common.report_enqueue(common.JOBS, time.perf_counter() - start)


def work() -> None:
    pool = os.environ.get("BENCH_CELERY_POOL", "solo")
    argv = ["worker", f"--pool={pool}", "--loglevel=WARNING", "-Q", common.QUEUE]
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    if pool != "solo":
        argv.append(f"--concurrency={common.CONCURRENCY or 8}")
    app.worker_main(argv)


if __name__ == "__main__":
    actions = {"produce": produce, "work": work}
    actions.get(sys.argv[1] if len(sys.argv) > 1 else "", lambda: common.usage("celery_bench"))()
