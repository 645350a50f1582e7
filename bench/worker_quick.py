"""Quick throughput check of ONE worker process on no-op jobs (not a timed test; prints only).

Starts its own redis-server on a free loopback port (or uses ``--redis-url``), enqueues N no-op
jobs with the batched producer, then starts ``python -m worker_runtime worker`` exactly as a pod
would and measures from the first to the last acknowledgement (polling the queue stats), plus
the worker's CPU time per job from /proc. Repeats for each ``--concurrency`` value.

    .venv/bin/python bench/worker_quick.py --jobs 50000 --concurrency 1 8 50 --handler async
    .venv/bin/python bench/worker_quick.py --latency-rate 5000 --concurrency 50   # p50/p99
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator")]

from worker_runtime import producer  # noqa: E402
from worker_runtime.brokers.redis import stats  # noqa: E402

APP_MODULE = """
from pydantic import BaseModel
from worker_runtime import App, JobContext
import os
app = App(queue=os.environ["WORKERFLEET_QUEUE"])
class Noop(BaseModel):
    i: int
@app.task("noop")
async def noop(payload: Noop) -> None:
    return None
@app.task("noop-sync")
def noop_sync(payload: Noop) -> None:
    return None
import redis, time
_r = redis.Redis.from_url(os.environ["WORKERFLEET_REDIS_URL"])
_lat = []
@app.task("stamp")
async def stamp(payload: Noop, ctx: JobContext) -> None:
    _lat.append(time.time() - ctx.enqueued_at)
    if len(_lat) >= 200:
        _r.rpush("wfquick:latency", *_lat)
        _lat.clear()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server on a free loopback port (no persistence); (process, URL)."""
    binary = shutil.which("redis-server")
    assert binary is not None, "redis-server not found (make deps)"
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    probe = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            probe.ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    probe.close()
    return server, url


def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (live ones, and those it has reaped)."""
    fields = _stat_fields(pid)
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = _stat_fields(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(child[1]) == pid:  # ppid
            ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def spawn_worker(
    url: str,
    queue: str,
    concurrency: int,
    app_dir: str,
    *,
    app: str = "wfquick_app:app",
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start one `python -m worker_runtime worker` on the bench's no-op app (or ``app``)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([app_dir, str(REPO), str(REPO / "operator")]),
        "WORKERFLEET_REDIS_URL": url,
        "WORKERFLEET_QUEUE": queue,
        "WORKERFLEET_CONCURRENCY": str(concurrency),
        "WORKERFLEET_METRICS_PORT": "0",
        "WORKERFLEET_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "worker_runtime", "worker", app], env=env, cwd=REPO
    )


def run_once(
    url: str, jobs: int, concurrency: int, task: str, app_dir: str, **spawn_options: Any
) -> dict[str, float]:
    """Throughput of one worker on ``jobs`` queued jobs (``spawn_options``: spawn_worker's)."""
    queue = f"bench-{concurrency}-{int(time.time() * 1000) % 100000}"
    client = redis.Redis.from_url(url, decode_responses=True)
    p = producer.SyncProducer(client, queue)
    t = time.perf_counter()
    for start in range(0, jobs, 5000):
        p.enqueue_many(
            [producer.JobSpec(task, {"i": i}) for i in range(start, min(jobs, start + 5000))]
        )
    enqueue_rate = jobs / (time.perf_counter() - t)
    proc = spawn_worker(url, queue, concurrency, app_dir, **spawn_options)
    try:
        first = None
        cpu0 = 0.0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            done = stats.fetch_queue_stats_sync(client, queue).completed_total
            if first is None and done > 0:
                first, first_done, cpu0 = time.perf_counter(), done, cpu_seconds(proc.pid)
            if done >= jobs:
                break
            time.sleep(0.01)
        assert first is not None
        elapsed = time.perf_counter() - first
        cpu = cpu_seconds(proc.pid) - cpu0
        measured = jobs - first_done
    finally:
        proc.terminate()
        proc.wait(30)
        client.close()
    return {
        "jobs_per_second": measured / elapsed,
        "cpu_us_per_job": cpu / measured * 1e6,
        "enqueue_per_second": enqueue_rate,
    }


def run_latency(url: str, rate: float, seconds: float, concurrency: int, app_dir: str) -> None:
    """Pace jobs at ``rate``/s for ``seconds`` and report enqueue→start latency percentiles."""
    queue = f"lat-{int(time.time() * 1000) % 100000}"
    client = redis.Redis.from_url(url, decode_responses=True)
    client.delete("wfquick:latency")
    proc = spawn_worker(url, queue, concurrency, app_dir)
    p = producer.SyncProducer(client, queue)
    try:
        while not stats.fetch_queue_stats_sync(client, queue).workers:
            time.sleep(0.05)
        total = int(rate * seconds)
        sent = 0
        start = time.perf_counter()
        while sent < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            if due > sent:
                p.enqueue_many([producer.JobSpec("stamp", {"i": i}) for i in range(sent, due)])
                sent = due
            time.sleep(0.002)
        deadline = time.monotonic() + 60
        want = total - total % 200
        while client.llen("wfquick:latency") < want and time.monotonic() < deadline:
            time.sleep(0.05)
        lat = sorted(float(x) for x in client.lrange("wfquick:latency", 0, -1))
    finally:
        proc.terminate()
        proc.wait(30)
        client.close()
    if not lat:
        print("no latencies recorded")
        return
    p50 = lat[len(lat) // 2] * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    print(
        f"latency at {rate:,.0f} jobs/s, concurrency {concurrency}: "
        f"p50={p50:.2f} ms p99={p99:.2f} ms over {len(lat):,} jobs"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 50])
    parser.add_argument("--handler", choices=("async", "sync"), default="async")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="instead of throughput: pace jobs at this rate and report enqueue→start p50/p99",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="pacing time (latency mode)")
    args = parser.parse_args()
    app_dir = tempfile.mkdtemp(prefix="wfquick-")
    Path(app_dir, "wfquick_app.py").write_text(APP_MODULE)
    server = None
    url = args.redis_url
    if url is None:
        if shutil.which("redis-server") is None:
            print("redis-server not found (make deps)", file=sys.stderr)
            return 1
        server, url = start_redis(app_dir)
    task = "noop" if args.handler == "async" else "noop-sync"
    try:
        if args.latency_rate is not None:
            for c in args.concurrency:
                run_latency(url, args.latency_rate, args.seconds, c, app_dir)
            return 0
        print(f"{'concurrency':>11} {'jobs/s':>9} {'cpu us/job':>10} {'enqueue/s':>10}")
        for c in args.concurrency:
            r = run_once(url, args.jobs, c, task, app_dir)
            print(
                f"{c:>11} {r['jobs_per_second']:>9,.0f} {r['cpu_us_per_job']:>10.1f} "
                f"{r['enqueue_per_second']:>10,.0f}"
            )
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        shutil.rmtree(app_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
