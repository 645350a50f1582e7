"""rq peer for bench/runtime/driver.py: ``produce`` N no-op jobs, ``work`` runs them.

One ``SimpleWorker`` (rq's no-fork worker: the only one-process mode; the default Worker forks
a child per job). Results are not kept (``result_ttl=0``), per-job INFO logs are off.
"""

from __future__ import annotations

import sys
import time

import common
import redis
from rq import Queue
from rq.worker import SimpleWorker


def noop(i: int) -> None:
    common.hit()


def produce() -> None:
    conn = redis.Redis.from_url(common.REDIS_URL)
    # Imported under its module name so the worker resolves "rq_bench.noop", not "__main__.noop".
    import rq_bench

    q = Queue(common.QUEUE, connection=conn)
    start = time.perf_counter()
    for part in common.chunks(common.JOBS, 1000):
        # enqueue_many + a pipeline is rq's batched enqueue.
        with conn.pipeline() as pipe:
            q.enqueue_many(
                [Queue.prepare_data(rq_bench.noop, args=(i,), result_ttl=0) for i in part],
                pipeline=pipe,
            )
            pipe.execute()
    common.report_enqueue(common.JOBS, time.perf_counter() - start)


def work() -> None:
    conn = redis.Redis.from_url(common.REDIS_URL)
    q = Queue(common.QUEUE, connection=conn)
    SimpleWorker([q], connection=conn).work(burst=False, logging_level="WARNING")


if __name__ == "__main__":
    actions = {"produce": produce, "work": work}
    actions.get(sys.argv[1] if len(sys.argv) > 1 else "", lambda: common.usage("rq_bench"))()
