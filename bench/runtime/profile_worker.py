"""Where the workerfleet worker spends its CPU on no-op jobs; run by hand, never by the tests.

    .venv/bin/python bench/runtime/profile_worker.py [JOBS] [CONCURRENCY] [RATE]
    PROFILE_BROKER=rabbitmq .venv/bin/python bench/runtime/profile_worker.py 5000 50
    PROFILE_BROKER=sqs .venv/bin/python bench/runtime/profile_worker.py 5000 50

Starts its own redis-server on a free loopback port (with PROFILE_BROKER=rabbitmq or sqs the
jobs travel through a private rabbitmq-server or ElasticMQ instead, started the way the broker
phase of bench-runtime starts them, and the redis-server only holds the bench's counters;
RATE is for Redis only), enqueues JOBS no-op jobs (default 50,000)
with the bench's wf_bench app (or, with RATE, has the paced producer send JOBS jobs at RATE
jobs/s while the worker runs: the light-load case, where batches are small), then runs the
real worker command (``worker_runtime.cli``) in this process under cProfile with the main
thread's CPU clock (``time.thread_time``), so time spent waiting for a core on a busy machine is
not charged to any function. When every job has been handled it sends itself SIGTERM (the
worker drains and returns) and writes the profile sorted by own time and by cumulative time to
bench/results/profile-worker-*.txt (and the raw .pstats). The profiler inflates the cost of
every Python call (about 4x on this worker's hot path): read the shares, not the times.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
sys.path.insert(0, str(HERE))

import broker_phase  # noqa: E402  (the private RabbitMQ / ElasticMQ servers)
import driver  # noqa: E402  (the bench's redis start/stop helpers)
import redis  # noqa: E402


def main() -> int:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    rate = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    kind = os.environ.get("PROFILE_BROKER", "redis")
    redis_proc, client, port = driver.start_redis()
    # one redis-server serves as both the Redis under test and the bench counters' Redis
    servers = driver.Servers(client, port, client, port)
    url = f"redis://127.0.0.1:{port}/0"
    extra = {"BENCH_RATE": str(rate), "BENCH_SECONDS": str(jobs / rate)} if rate else {}
    with contextlib.ExitStack() as stack:
        if kind != "redis":
            server = stack.enter_context(broker_phase.BROKERS[kind]())
            query = "&".join(
                q for q in (server.wf_settings, os.environ.get("PROFILE_QUERY", "")) if q
            )
            url = f"{server.url}?{query}" if query else server.url
            extra = {"BENCH_BROKER_URL": url, "BENCH_BROKER_ENDPOINT": server.endpoint}
        return profile(jobs, concurrency, rate, url, client, redis_proc, servers, extra)


def profile(
    jobs: int,
    concurrency: int,
    rate: float,
    url: str,
    client: redis.Redis,
    redis_proc: subprocess.Popen[bytes],
    servers: driver.Servers,
    extra: dict[str, str],
) -> int:
    env = driver.child_env(servers, jobs, concurrency, **extra)
    pacer: subprocess.Popen[str] | None = None
    try:
        if rate:
            # Starts after the worker is up (1 s head start), runs for JOBS / RATE seconds.
            pacer = subprocess.Popen(
                ["sh", "-c", f"sleep 1; exec {sys.executable} wf_bench.py pace"],
                env=env,
                cwd=HERE / "peers",
                stdout=subprocess.PIPE,
                text=True,
            )
        else:
            out = subprocess.run(
                [sys.executable, str(HERE / "peers" / "wf_bench.py"), "produce"],
                env=env,
                cwd=HERE / "peers",
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
            print(f"enqueued: {out.stdout.strip()}")
        os.environ.update(
            BENCH_STATS_URL=env["BENCH_STATS_URL"],
            BENCH_REDIS_URL=env["BENCH_REDIS_URL"],
            WORKERFLEET_REDIS_URL=url,
            WORKERFLEET_QUEUE="bench",
            WORKERFLEET_METRICS_PORT="0",
            WORKERFLEET_LOG_LEVEL="warning",
            WORKERFLEET_CONCURRENCY=str(concurrency),
        )
        stop_watch = threading.Event()

        def watch() -> None:
            # Bounded: gives up after 300 s; SIGTERM makes the worker drain and return.
            end = time.monotonic() + 300
            while not stop_watch.is_set() and time.monotonic() < end:
                if int(client.get("bench:done") or 0) >= jobs:
                    break
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)

        from worker_runtime import cli

        threading.Thread(target=watch, daemon=True).start()
        profiler = cProfile.Profile(timer=time.thread_time)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        profiler.enable()
        try:
            cli.main(["worker", "wf_bench:app"])
        finally:
            profiler.disable()
            stop_watch.set()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        done = int(client.get("bench:done") or 0)
    except (subprocess.SubprocessError, redis.RedisError, asyncio.CancelledError) as exc:
        print(f"profile failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if pacer is not None:
            pacer.kill()
            pacer.wait(timeout=10)
        driver.kill_group(redis_proc)

    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.strip_dirs()
    text.write(
        f"{done:,} jobs, concurrency {concurrency}, "
        f"{f'paced at {rate:,.0f} jobs/s' if rate else 'backlog enqueued first'}: "
        f"process CPU {cpu:.2f} s "
        f"({cpu / max(done, 1) * 1e6:.0f} us/job incl. start-up and profiler), wall {wall:.2f} s\n"
    )
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(60)
    driver.RESULTS.mkdir(parents=True, exist_ok=True)
    path = driver.RESULTS / time.strftime("profile-worker-%Y%m%dT%H%M%SZ.txt", time.gmtime())
    path.write_text(text.getvalue())
    profiler.dump_stats(path.with_suffix(".pstats"))  # for `python -m pstats` / snakeviz
    print(text.getvalue()[:6000])
    print(f"profile: {path} (+ .pstats)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
