"""No-op throughput of the workerfleet worker, before/after side by side; run by hand.

    .venv/bin/python bench/runtime/throughput_probe.py --jobs 100000 --rounds 5 \\
        --source base=/tmp/wf-base --source new=

Each ``--source NAME=DIR`` is a worker_runtime to measure (DIR holds a ``worker_runtime``
package, e.g. ``git archive main worker_runtime | tar -x -C DIR``; empty = this checkout).
A NAME of ``bare-loop`` (DIR empty) measures the bare loop instead, and ``bare-loop-N`` the bare
loop reading N entries per cycle (``BENCH_BARE_READ``, peers/bare_bench.py): with
``--source bare-loop= --source bare-loop-25= --source wf=`` it shows how much of the distance
to the bare loop is the worker's smaller batches (bench/README.md). A NAME ending in ``+uvloop``
runs that worker with ``WORKERFLEET_EVENT_LOOP=uvloop`` (``--source asyncio= --source
uvloop+uvloop=`` compares the two loops on this checkout).
The variants take turns round by round (so a burst of load from elsewhere lands on each of
them) and each round is driver.py's ``measure``: the backlog enqueued first, then one worker at
concurrency 50, timed from its first job start to its last. Prints per round and the medians of
jobs/s and of the worker's and Redis's CPU per job. Not part of ``make bench-runtime``; no
timing is asserted: it measures and prints.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import driver  # the benchmark's own module, next to this file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--source", action="append", default=[], help="NAME=DIR (DIR may be empty)")
    args = parser.parse_args()
    variants = [tuple(s.split("=", 1)) for s in args.source] or [("checkout", "")]
    wf = driver.SYSTEMS[0]
    bare = next(s for s in driver.SYSTEMS if s.name == "bare-loop")
    runs: dict[str, list[driver.Run]] = {name: [] for name, _ in variants}
    with driver.running_servers() as servers:
        header = f"{args.jobs:,} no-op jobs, concurrency {args.concurrency}, {args.rounds} rounds"
        print(f"throughput-probe: {header}, load {os.getloadavg()[0]:.1f}", flush=True)
        for i in range(args.rounds):
            for name, source in variants:
                system, env = wf, {"BENCH_WF_SOURCE": source}
                if name.endswith("+uvloop"):  # the worker with WORKERFLEET_EVENT_LOOP=uvloop
                    env["BENCH_WF_EVENT_LOOP"] = "uvloop"
                if name.startswith("bare-loop"):
                    read = name.removeprefix("bare-loop").removeprefix("-")
                    system, env = bare, ({"BENCH_BARE_READ": read} if read else {})
                run = driver.measure(
                    system,
                    servers,
                    args.jobs,
                    args.concurrency,
                    f"probe-{name}-{i + 1}",
                    **env,
                )
                runs[name].append(run)
                print(
                    f"  round {i + 1} {name}: {run.jps:,.0f} jobs/s, worker CPU "
                    f"{run.cpu_us_per_job:.1f} us/job, redis CPU {run.redis_cpu_us_per_job:.1f} "
                    f"us/job, waited for a core {run.runqueue_wait_share:.0%}, "
                    f"load {os.getloadavg()[0]:.1f} ({run.status})",
                    flush=True,
                )
    for name, got in runs.items():
        ok = [r for r in got if r.status == "ok"]
        if not ok:
            print(f"{name}: no complete run")
            continue
        med: dict[str, Any] = {
            "jps": statistics.median(r.jps for r in ok),
            "cpu": statistics.median(r.cpu_us_per_job for r in ok),
            "redis": statistics.median(r.redis_cpu_us_per_job for r in ok),
        }
        print(
            f"{name}: median of {len(ok)}: {med['jps']:,.0f} jobs/s, worker CPU "
            f"{med['cpu']:.1f} us/job, redis CPU {med['redis']:.1f} us/job"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
