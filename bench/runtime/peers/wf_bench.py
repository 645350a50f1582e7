"""workerfleet for bench/runtime/driver.py: ``produce``, ``pace`` and ``work`` (run in .venv).

``produce`` enqueues BENCH_JOBS no-op jobs with ``Producer.enqueue_many`` (the batched API; on
the broker at BENCH_BROKER_URL when it is set, RabbitMQ or SQS, else on Redis) for
the async task ``noop``, or the sync task ``noop-sync`` with BENCH_WF_TASK=noop-sync;
``pace`` produces at BENCH_RATE jobs/s for BENCH_SECONDS, each job stamped with its enqueue time
so the handler can record enqueue→start latency; ``work`` execs the real worker command,
``python -m worker_runtime worker wf_bench:app``, configured through WORKERFLEET_* like a pod;
``argv`` prints that command and its settings (the cold-start test spawns it directly).

Bench-only trace (``bench/runtime/latency_probe.py``): with BENCH_WF_TRACE=1 the paced jobs go to
``noop-trace``, which also records, per job, the Redis clock of the fetch that leased it (its
lease deadline minus the lease) and the wall clock it started at, flushed to the stats Redis's
list ``bench:trace`` as ``t fetched started`` — so enqueue→start splits into "waiting in Redis
until a fetch" and "fetch reply → handler start" — and every garbage collection's generation
and pause (``gc.callbacks``) to ``bench:gc``. Nothing of this is in the worker itself.
BENCH_WF_SOURCE=DIR runs the worker from the ``worker_runtime`` in DIR (a before/after copy).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time

import common
import pydantic

from worker_runtime import App, JobContext, brokers, producer
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
TRACE = os.environ.get("BENCH_WF_TRACE") == "1"
_trace: list[str] = []
_trace_lock = threading.Lock()
_trace_flusher: threading.Thread | None = None
_gc_started = 0.0
_gc_pauses: list[str] = []  # "generation seconds" of each collection (trace mode)


def _note_gc(phase: str, info: dict[str, int]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        _gc_pauses.append(f"{info['generation']} {time.perf_counter() - _gc_started!r}")


if TRACE:
    import gc

    gc.callbacks.append(_note_gc)


@app.task("noop-trace")
async def noop_trace(payload: Noop, ctx: JobContext) -> None:
    global _trace_flusher
    common.hit(payload.t)
    started = time.time()
    fetched = ctx.leased_until - float(os.environ.get("WORKERFLEET_LEASE_SECONDS", "30"))
    with _trace_lock:
        _trace.append(f"{payload.t!r} {fetched!r} {started!r}")
    if _trace_flusher is None:
        _trace_flusher = threading.Thread(target=_flush_trace, daemon=True)
        _trace_flusher.start()


def _flush_trace() -> None:
    import redis

    client = redis.Redis.from_url(common.STATS_URL)
    while True:
        time.sleep(0.1)
        with _trace_lock:
            rows = _trace[:]
            _trace.clear()
        if rows:
            client.rpush("bench:trace", *rows)
        pauses, _gc_pauses[:] = _gc_pauses[:], []
        if pauses:
            client.rpush("bench:gc", *pauses)


async def _produce() -> None:
    if common.BROKER_URL:
        await _produce_on_broker()
        return
    client = connection.build_client(common.REDIS_URL)
    p = producer.Producer(client, common.QUEUE)
    start = time.perf_counter()
    await p.enqueue_many([producer.JobSpec(TASK, {"i": i}) for i in range(common.JOBS)])
    common.report_enqueue(common.JOBS, time.perf_counter() - start)
    await client.aclose()


async def _produce_on_broker() -> None:
    # RabbitMQ or SQS: the same Producer over the broker the worker will open from the same
    # URL (persistent messages with publisher confirms / SendMessageBatch), 500 per call.
    broker = await brokers.open_broker(common.BROKER_URL, common.QUEUE)
    try:
        p = producer.Producer.on_broker(broker)
        specs = [producer.JobSpec(TASK, {"i": i}) for i in range(common.JOBS)]
        start = time.perf_counter()
        for part in common.chunks(len(specs), 500):
            await p.enqueue_many(specs[part.start : part.stop])
        common.report_enqueue(common.JOBS, time.perf_counter() - start)
    finally:
        await broker.close()


async def _pace() -> None:
    # A paced open-loop producer: every TICK it sends the jobs due by now (one enqueue_many),
    # each stamped with the wall-clock time just before the call.
    rate = float(os.environ["BENCH_RATE"])
    seconds = float(os.environ.get("BENCH_SECONDS", "5"))
    tick = 0.005
    paced = "noop-trace" if TRACE else "noop"
    client = connection.build_client(common.REDIS_URL)
    p = producer.Producer(client, common.QUEUE)
    start = time.perf_counter()
    sent = 0
    total = int(rate * seconds)
    durations: list[float] = []
    while sent < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        if due > sent:
            now = time.time()
            await p.enqueue_many(
                [producer.JobSpec(paced, {"i": i, "t": now}) for i in range(sent, due)]
            )
            durations.append(time.time() - now)
            sent = due
        await asyncio.sleep(tick)
    elapsed = time.perf_counter() - start
    common.report_enqueue(sent, elapsed, rate=rate, **common.call_stats(durations, sent))
    await client.aclose()


def worker_command() -> tuple[list[str], dict[str, str]]:
    """The pod's worker command and the WORKERFLEET_* settings it runs with here."""
    env = {
        # the worker opens whichever broker the URL names (any scheme works under this name)
        "WORKERFLEET_REDIS_URL": common.BROKER_URL or common.REDIS_URL,
        "WORKERFLEET_QUEUE": common.QUEUE,
        "WORKERFLEET_METRICS_PORT": "0",
        "WORKERFLEET_LOG_LEVEL": "warning",
    }
    if common.CONCURRENCY:
        env["WORKERFLEET_CONCURRENCY"] = str(common.CONCURRENCY)
    if os.environ.get("BENCH_WF_EVENT_LOOP"):  # the probes' "+uvloop" variants
        env["WORKERFLEET_EVENT_LOOP"] = os.environ["BENCH_WF_EVENT_LOOP"]
    return [sys.executable, "-m", "worker_runtime", "worker", "wf_bench:app"], env


def work() -> None:
    args, env = worker_command()
    for name, value in env.items():
        os.environ.setdefault(name, value)
    source = os.environ.get("BENCH_WF_SOURCE")
    if source:
        os.environ["PYTHONPATH"] = os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])
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
