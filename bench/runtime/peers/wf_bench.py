"""workerfleet for bench/runtime/driver.py: ``produce``, ``pace`` and ``work`` (run in .venv).

``produce`` enqueues BENCH_JOBS no-op jobs with ``Producer.enqueue_many`` (the batched API) for
the async task ``noop``, or the sync task ``noop-sync`` with BENCH_WF_TASK=noop-sync;
``pace`` produces at BENCH_RATE jobs/s for BENCH_SECONDS, each job stamped with its enqueue time
so the handler can record enqueue→start latency; ``work`` execs the real worker command,
``python -m worker_runtime worker wf_bench:app``, configured through WORKERFLEET_* like a pod;
``argv`` prints that command and its settings (the cold-start test spawns it directly).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import common
import pydantic

from worker_runtime import App, producer
from worker_runtime.brokers.redis import connection

app = App(queue=common.QUEUE)


class Noop(pydantic.BaseModel):
    i: int
    t: float | None = None


@app.task("noop")
async def noop(payload: Noop) -> None:
    common.hit(payload.t)


@app.task("noop-sync")
def noop_sync(payload: Noop) -> None:
    # A plain function: the worker runs it in its bounded thread pool (one thread per slot).
    common.hit(payload.t)


TASK = os.environ.get("BENCH_WF_TASK", "noop")


async def _produce() -> None:
    client = connection.fetch_client(common.REDIS_URL)
    p = producer.Producer(client, common.QUEUE)
    start = time.perf_counter()
    await p.enqueue_many([producer.JobSpec(TASK, {"i": i}) for i in range(common.JOBS)])
    common.report_enqueue(common.JOBS, time.perf_counter() - start)
    await client.aclose()


async def _pace() -> None:
    # A paced open-loop producer: every TICK it sends the jobs due by now (one enqueue_many),
    # each stamped with the wall-clock time just before the call.
    rate = float(os.environ["BENCH_RATE"])
    seconds = float(os.environ.get("BENCH_SECONDS", "5"))
    tick = 0.005
    client = connection.fetch_client(common.REDIS_URL)
    p = producer.Producer(client, common.QUEUE)
    start = time.perf_counter()
    sent = 0
    total = int(rate * seconds)
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        if due > sent:
            now = time.time()
            await p.enqueue_many(
                [producer.JobSpec("noop", {"i": i, "t": now}) for i in range(sent, due)]
            )
            sent = due
        await asyncio.sleep(tick)
    common.report_enqueue(sent, time.perf_counter() - start, rate=rate)
    await client.aclose()


def worker_command() -> tuple[list[str], dict[str, str]]:
    """The pod's worker command and the WORKERFLEET_* settings it runs with here."""
    env = {
        "WORKERFLEET_REDIS_URL": common.REDIS_URL,
        "WORKERFLEET_QUEUE": common.QUEUE,
        "WORKERFLEET_METRICS_PORT": "0",
        "WORKERFLEET_LOG_LEVEL": "warning",
    }
    if common.CONCURRENCY:
        env["WORKERFLEET_CONCURRENCY"] = str(common.CONCURRENCY)
    return [sys.executable, "-m", "worker_runtime", "worker", "wf_bench:app"], env


def work() -> None:
    args, env = worker_command()
    for name, value in env.items():
        os.environ.setdefault(name, value)
    os.execv(sys.executable, args)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "produce":
        asyncio.run(_produce())
    elif cmd == "pace":
        asyncio.run(_pace())
    elif cmd == "work":
        work()
    elif cmd == "argv":
        # For the cold-start test: the command to spawn directly (no wrapper process).
        args, env = worker_command()
        common.report_command(args, env)
    else:
        common.usage("wf_bench")
