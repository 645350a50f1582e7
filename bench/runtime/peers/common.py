"""Shared plumbing for the per-system benchmark scripts (imported by every ``*_bench.py`` here).

Runs inside each peer's own venv, so it needs nothing but the standard library and redis-py.

The no-op job handlers call :func:`hit`. Counting happens in process memory (a lock and two
``time.time()`` calls, the same for every system) and a daemon thread flushes it every
``FLUSH_SECONDS`` in one transaction to a SEPARATE Redis (``BENCH_STATS_URL``; the driver starts
one next to the Redis under test), so no system pays an extra Redis round trip per job and the
Redis under test sees only the system's own commands (its CPU and commands per job are the
system's alone):

- ``bench:done``          INCRBY of jobs handled, summed over every worker process;
- ``bench:ts:<pid>``      hash ``first``/``last``: wall-clock time of the first and the latest job
                          this process handled (the driver takes min(first) and max(last));
- ``bench:lat``           list of enqueue→start latencies (seconds) for jobs whose payload
                          carried the producer's timestamp ``t``.

Counters always go to the stats Redis; with BENCH_BROKER_URL set (the driver's RabbitMQ and
SQS phase) the jobs themselves travel through that broker instead of the Redis under test.

Producers print exactly one JSON line on stdout: ``{"enqueued": N, "seconds": S}``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

FLUSH_SECONDS = 0.02
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
STATS_URL = os.environ.get("BENCH_STATS_URL", REDIS_URL)
JOBS = int(os.environ.get("BENCH_JOBS", "1000"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "0"))
QUEUE = os.environ.get("BENCH_QUEUE", "bench")
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "")
"""The broker under test when it is not Redis (``amqp://...`` or ``sqs://...``; the driver's
broker phase sets it, with a fresh BENCH_QUEUE per run); empty = the Redis at REDIS_URL."""
BROKER_ENDPOINT = os.environ.get("BENCH_BROKER_ENDPOINT", "")
"""For SQS: the server's HTTP endpoint (the URL peers' own SQS clients are pointed at)."""

_lock = threading.Lock()
_pending = 0
_first: float | None = None
_last = 0.0
_latencies: list[float] = []
_flusher: threading.Thread | None = None
_flusher_pid = 0


def hit(enqueued_at: float | None = None) -> None:
    """Record one handled job (called first thing in every no-op handler)."""
    global _pending, _first, _last
    now = time.time()
    with _lock:
        _pending += 1
        if _first is None:
            _first = now
        _last = now
        if enqueued_at is not None:
            _latencies.append(now - enqueued_at)
    if _flusher_pid != os.getpid():
        _start_flusher()


def _start_flusher() -> None:
    # Started lazily on the first job, in whichever process runs handlers (prefork/fork children
    # included), so producers importing the same module never start one.
    global _flusher, _flusher_pid
    with _lock:
        if _flusher_pid == os.getpid():
            return
        _flusher_pid = os.getpid()
        _flusher = threading.Thread(target=_flush_forever, name="bench-flush", daemon=True)
        _flusher.start()


def _flush_forever() -> None:
    import redis

    client = redis.Redis.from_url(STATS_URL)
    key = f"bench:ts:{os.getpid()}"
    while True:
        time.sleep(FLUSH_SECONDS)
        _flush_once(client, key)


def _flush_once(client: Any, key: str) -> None:
    global _pending, _latencies
    with _lock:
        n, first, last, lats = _pending, _first, _last, _latencies
        _pending, _latencies = 0, []
    if n == 0:
        return
    pipe = client.pipeline(transaction=True)
    pipe.hset(key, mapping={"first": repr(first), "last": repr(last)})
    if lats:
        pipe.rpush("bench:lat", *[repr(x) for x in lats])
    pipe.incrby("bench:done", n)
    pipe.execute()


def report_enqueue(enqueued: int, seconds: float, **extra: Any) -> None:
    """Print the producer's one-line JSON result for the driver."""
    print(json.dumps({"enqueued": enqueued, "seconds": seconds, **extra}), flush=True)


def call_stats(durations: list[float], jobs: int) -> dict[str, float]:
    """p50 / p99 / max (ms) of a paced producer's enqueue calls and the jobs per call.

    Every paced job is stamped just before the call that sends it, so a call's own duration is
    part of each of its jobs' enqueue→start latency: the driver reports it beside the latency.
    """
    if not durations:
        return {}
    ordered = sorted(durations)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000

    return {
        "call_p50_ms": pct(50),
        "call_p99_ms": pct(99),
        "call_max_ms": ordered[-1] * 1000,
        "jobs_per_call": jobs / len(ordered),
    }


def report_command(argv: list[str], env: dict[str, str]) -> None:
    """Print the worker's own command line and extra environment as one JSON line (``argv``)."""
    print(json.dumps({"argv": argv, "env": env}), flush=True)


def chunks(n: int, size: int) -> list[range]:
    """Split ``range(n)`` into consecutive ranges of at most ``size``."""
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def usage(name: str) -> None:
    print(f"usage: {name} produce|work", file=sys.stderr)
    raise SystemExit(2)
