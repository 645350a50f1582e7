"""CPU-bound jobs: throughput of sync handlers in threads vs ``executor="process"`` (prints only).

One worker process (``python -m worker_runtime worker``, as a pod runs it) on a throwaway
redis-server; N jobs of a pure-Python CPU-bound task (a fixed loop of about 0.1 s of one
core); each run measures from the first to the last acknowledgement, so start-up and the
children's boot are not counted. Threads share the worker's GIL; process tasks run each job
in one of ``concurrency`` spawned children (``WORKERFLEET_PROCESS_POOL_SIZE`` = concurrency).
Besides jobs/s it prints "cores busy": CPU seconds of the worker and its children per second of the
run, which shows the GIL's ceiling (about 1) even on a machine others keep busy. Rounds are
interleaved and the median of ``--repeat`` runs is reported.

    .venv/bin/python bench/process_pool.py                      # 1/2/4, threads and processes
    .venv/bin/python bench/process_pool.py --jobs 200 --concurrency 1 2 4 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator"), str(REPO / "bench")]

import worker_quick  # noqa: E402

APP_MODULE = """
import os
from pydantic import BaseModel
from worker_runtime import App

app = App(queue=os.environ["WORKERFLEET_QUEUE"])
LOOPS = int(os.environ.get("WFCPU_LOOPS", "1000000"))


class Work(BaseModel):
    i: int


def _spin(i: int) -> int:
    total = 0
    for k in range(LOOPS):
        total += (k ^ i) & 7
    return total


@app.task("cpu-thread")
def cpu_thread(payload: Work) -> None:
    _spin(payload.i)


@app.task("cpu-process", executor="process")
def cpu_process(payload: Work) -> None:
    _spin(payload.i)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=80)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--loops", type=int, default=1_000_000, help="loop iterations per job")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the median counts")
    args = parser.parse_args()
    app_dir = tempfile.mkdtemp(prefix="wfcpu-")
    Path(app_dir, "wfcpu_app.py").write_text(APP_MODULE)
    server, url = worker_quick.start_redis(app_dir)
    cells = [(e, c) for c in args.concurrency for e in ("thread", "process")]
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {cell: [] for cell in cells}
    try:
        print(f"cores={os.cpu_count()} jobs={args.jobs} loops/job={args.loops:,}")
        # Interleaved rounds, so a machine that gets busier or quieter affects both executors.
        for round_no in range(args.repeat):
            for executor, c in cells:
                load = os.getloadavg()[0]
                r = worker_quick.run_once(
                    url,
                    args.jobs,
                    c,
                    f"cpu-{executor}",
                    app_dir,
                    app="wfcpu_app:app",
                    extra_env={
                        "WFCPU_LOOPS": str(args.loops),
                        "WORKERFLEET_PROCESS_POOL_SIZE": str(c),
                    },
                )
                jps = r["jobs_per_second"]
                cores = jps * r["cpu_us_per_job"] / 1e6
                runs[(executor, c)].append((jps, cores))
                print(
                    f"round {round_no + 1}: {executor:>7} c={c}: {jps:6.2f} jobs/s, "
                    f"{cores:4.2f} cores busy (load average before: {load:.1f})"
                )
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(app_dir, ignore_errors=True)
    print(f"{'executor':>9} {'concurrency':>11} {'jobs/s':>8} {'cores busy':>10}  (medians)")
    figures = []
    for executor in ("thread", "process"):
        for c in args.concurrency:
            jps = statistics.median(j for j, _ in runs[(executor, c)])
            cores = statistics.median(k for _, k in runs[(executor, c)])
            print(f"{executor:>9} {c:>11} {jps:>8.2f} {cores:>10.2f}")
            figures.append(f"{executor}_c{c}={jps:.2f}")
    print(f"process_pool: {' '.join(figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
