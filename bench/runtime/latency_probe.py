"""Enqueue→start latency of the workerfleet worker at one paced rate, before/after side by side.

By hand (not part of ``make bench-runtime``); run with the project's .venv from the repo root:

    .venv/bin/python bench/runtime/latency_probe.py --rate 7000 --rounds 5 \\
        --source base=/tmp/wf-base --source new= [--trace]

Each ``--source NAME=DIR`` is a worker_runtime to measure (DIR holds a ``worker_runtime``
package, e.g. ``git archive main worker_runtime | tar -x -C DIR``; empty = this checkout);
``--source bare-loop=`` measures the bare loop (peers/bare_bench.py) at the same rate, and a
NAME ending in ``+uvloop`` runs that worker with ``WORKERFLEET_EVENT_LOOP=uvloop``. The
variants take turns round by round, so a burst of load from elsewhere on the machine lands on
each of them, and the medians over rounds are printed. Each measurement is driver.py's
``measure_latency`` (one worker at concurrency 50, a paced producer, BENCH_LAT_SECONDS long).

``--trace`` uses the bench-only ``noop-trace`` task (peers/wf_bench.py), which splits each job's
latency at the Redis clock of the fetch that leased it: "queued" = fetch time - producer stamp
(the producer's call plus the wait in Redis until a fetch ran), "handoff" = handler start -
fetch time (the reply's way back, parsing, the task's turn on the loop). It asks for a
JobContext, so it costs the worker a little more per job than the plain ``noop``.
No timing is asserted: it measures and prints.
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


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def read_trace(servers: driver.Servers) -> dict[str, float]:
    rows = [r.split() for r in servers.stats.lrange("bench:trace", 0, -1)]
    queued = [(float(f) - float(t)) * 1000 for t, f, _ in rows]
    handoff = [(float(s) - float(f)) * 1000 for _, f, s in rows]
    total = [q + h for q, h in zip(queued, handoff, strict=True)]
    cut = pct(total, 99)
    tail = [(q, h) for q, h, x in zip(queued, handoff, total, strict=True) if x >= cut]
    pauses: dict[str, list[float]] = {}
    for row in servers.stats.lrange("bench:gc", 0, -1):
        gen, seconds = row.split()
        pauses.setdefault(gen, []).append(float(seconds) * 1000)
    return {
        "gc": {g: (len(v), round(max(v), 2), round(sum(v), 1)) for g, v in sorted(pauses.items())},
        "traced": len(rows),
        "queued_p50": pct(queued, 50),
        "queued_p99": pct(queued, 99),
        "handoff_p50": pct(handoff, 50),
        "handoff_p99": pct(handoff, 99),
        "tail_queued_mean": statistics.mean(q for q, _ in tail) if tail else 0.0,
        "tail_handoff_mean": statistics.mean(h for _, h in tail) if tail else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, required=True, help="paced jobs/s")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--source", action="append", default=[], help="NAME=DIR (DIR may be empty)")
    parser.add_argument("--trace", action="store_true")
    args = parser.parse_args()
    variants = [tuple(s.split("=", 1)) for s in args.source] or [("checkout", "")]
    plain_env = driver.child_env

    wf = driver.SYSTEMS[0]
    bare = next(s for s in driver.SYSTEMS if s.name == "bare-loop")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    print(
        f"latency-probe: {args.rate:,.0f} jobs/s for {driver.LAT_SECONDS} s, "
        f"{args.rounds} rounds, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    with driver.running_servers() as servers:
        for i in range(args.rounds):
            for name, source in variants:

                def env_with_source(
                    *a: Any, _src: str = source, _name: str = name, **kw: Any
                ) -> dict[str, str]:
                    env = plain_env(*a, **kw)
                    env["BENCH_WF_SOURCE"] = _src
                    if _name.endswith("+uvloop"):  # WORKERFLEET_EVENT_LOOP=uvloop
                        env["BENCH_WF_EVENT_LOOP"] = "uvloop"
                    env["BENCH_WF_TRACE"] = "1" if args.trace else "0"
                    return env

                driver.child_env = env_with_source
                system = bare if name == "bare-loop" else wf
                got = driver.measure_latency(servers, args.rate, system)
                calls = driver.redis_command_calls(servers.sut)
                sent = max(1, int(got.get("samples", 1)))
                got["script_calls_per_job"] = (
                    sum(calls.get(c, 0) for c in driver.SCRIPT_COMMANDS) / sent
                )
                got["commands_per_job"] = sum(calls.values()) / sent
                if args.trace and system is wf:
                    got.update(read_trace(servers))
                results[name].append(got)
                line = (
                    f"  round {i + 1} {name}: p50={got.get('p50_ms', 0):.1f} ms "
                    f"p99={got.get('p99_ms', 0):.1f} ms max={got.get('max_ms', 0):.1f} ms, "
                    f"worker CPU {got.get('worker_cpu_us_per_job', 0):.0f} us/job, "
                    f"waited for a core {got.get('worker_runqueue_wait_share', 0):.0%}, "
                    f"load {os.getloadavg()[0]:.1f} ({got['status']}); "
                    f"script calls/job {got['script_calls_per_job']:.3f}, "
                    f"commands/job {got['commands_per_job']:.2f}"
                    f"{driver.describe_producer_calls(got)}"
                    f"\n    p50 by tenth {got.get('p50_ms_by_tenth')}"
                    f"\n    max by tenth {got.get('max_ms_by_tenth')}"
                )
                if args.trace and system is wf:
                    line += (
                        f"\n    queued p50/p99 {got['queued_p50']:.1f}/{got['queued_p99']:.1f} ms,"
                        f" handoff p50/p99 {got['handoff_p50']:.1f}/{got['handoff_p99']:.1f} ms;"
                        f" slowest 1%: queued {got['tail_queued_mean']:.1f} + handoff "
                        f"{got['tail_handoff_mean']:.1f} ms (mean); gc by generation "
                        f"(count, max ms, total ms): {got['gc']}"
                    )
                print(line, flush=True)
    for name, runs in results.items():
        ok = [r for r in runs if "p99_ms" in r]
        if not ok:
            print(f"{name}: no samples")
            continue
        print(
            f"{name}: median of {len(ok)}: "
            f"p50={statistics.median(r['p50_ms'] for r in ok):.1f} ms "
            f"p99={statistics.median(r['p99_ms'] for r in ok):.1f} ms "
            f"worker CPU {statistics.median(r['worker_cpu_us_per_job'] for r in ok):.0f} us/job "
            f"(p99 per round: {', '.join(format(r['p99_ms'], '.1f') for r in ok)})"
            + (
                f"; producer calls p99 {statistics.median(r['call_p99_ms'] for r in ok):.1f} ms"
                if all("call_p99_ms" in r for r in ok)
                else ""
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
