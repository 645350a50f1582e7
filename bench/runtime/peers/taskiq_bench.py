"""taskiq peer for bench/runtime/driver.py: ``produce`` N no-op jobs, ``work`` runs them.

taskiq-redis's ``RedisStreamBroker`` (Redis streams + consumer group, acks after execution),
worker through taskiq's own CLI with ``--workers 1`` and its default ``--max-async-tasks 100``
(BENCH_CONCURRENCY overrides). No result backend. The producer calls ``broker.startup()`` first
so the consumer group exists before the first message (the group starts at ``$``) and gathers
``kiq`` 500 at a time (taskiq has no batch enqueue).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import common
from taskiq_redis import RedisStreamBroker

broker = RedisStreamBroker(url=common.REDIS_URL, queue_name=common.QUEUE)


@broker.task(task_name="noop")
async def noop(i: int) -> None:
    common.hit()


async def _produce() -> None:
    await broker.startup()
    start = time.perf_counter()
    for part in common.chunks(common.JOBS, 500):
        await asyncio.gather(*(noop.kiq(i) for i in part))
    common.report_enqueue(common.JOBS, time.perf_counter() - start)
    await broker.shutdown()


def produce() -> None:
    asyncio.run(_produce())


def work() -> None:
    tasks = str(common.CONCURRENCY or 100)
    args = [sys.executable, "-m", "taskiq", "worker", "taskiq_bench:broker", "--workers", "1"]
    args += ["--max-async-tasks", tasks, "--log-level", "WARNING"]
    os.execv(sys.executable, args)


if __name__ == "__main__":
    actions = {"produce": produce, "work": work}
    actions.get(sys.argv[1] if len(sys.argv) > 1 else "", lambda: common.usage("taskiq_bench"))()
