"""Where Redis spends its time on the worker's fetch and ack; run by hand, never by the tests.

    .venv/bin/python bench/runtime/redis_commandstats.py [--jobs 100000] [--concurrency 50]
        [--source DIR]

Starts its own redis-server on a free loopback port (the bench driver's), enqueues ``--jobs``
no-op jobs with the bench's wf_bench app, resets Redis's statistics, runs one real worker
process (``wf_bench.py work``) until every job is done, then prints Redis's CPU per job (``INFO
cpu``) and ``INFO commandstats`` per command: calls, microseconds per call and per job. The
script call (``evalsha``) includes the commands it runs; what the listed commands do not
account for is the Lua interpreter's own time. ``--source DIR`` runs the worker_runtime in DIR
instead (both the producer and the worker), for a before/after comparison taking turns. For a
view inside Redis itself, ``perf record -g -p <redis pid>`` while it runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import driver  # noqa: E402  (the bench's redis start/stop helpers)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--source", default="", help="a directory holding another worker_runtime")
    args = ap.parse_args()
    proc, client, port = driver.start_redis()
    worker = None
    try:
        servers = driver.Servers(client, port, client, port)
        env = driver.child_env(servers, args.jobs, args.concurrency)
        if args.source:
            env["PYTHONPATH"] = f"{args.source}:{env['PYTHONPATH']}"
            env["BENCH_WF_SOURCE"] = args.source
        system = driver.SYSTEMS[0]
        produced = driver.produce(system, env)
        print(f"enqueued {produced['enqueued']:,} jobs")
        client.config_resetstat()
        cpu_before = driver.redis_cpu_seconds(client)
        log = HERE.parent / "results" / "redis-commandstats-worker.log"
        log.parent.mkdir(exist_ok=True)
        worker = driver.start_worker(system, env, log)
        deadline = time.monotonic() + 300  # bounded: a stuck worker ends the run
        while driver.done_count(client) < args.jobs and time.monotonic() < deadline:
            time.sleep(0.05)
        done = driver.done_count(client)
        cpu = driver.redis_cpu_seconds(client) - cpu_before
        print(f"done {done:,} of {args.jobs:,}; Redis CPU {cpu / max(done, 1) * 1e6:.2f} us/job")
        stats = client.info("commandstats")
        for name, v in sorted(stats.items(), key=lambda kv: -kv[1]["usec"]):
            if v["usec"] < 1000:
                continue
            print(
                f"  {name.removeprefix('cmdstat_'):20s} calls {v['calls']:8,d}  "
                f"{v['usec_per_call']:8.2f} us/call  {v['usec'] / max(done, 1):6.2f} us/job"
            )
        return 0 if done >= args.jobs else 1
    finally:
        if worker is not None:
            driver.kill_group(worker)
        driver.kill_group(proc)


if __name__ == "__main__":
    sys.exit(main())
