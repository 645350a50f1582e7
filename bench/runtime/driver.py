"""Side-by-side runtime throughput benchmark; run by bench/runtime/run.sh (``make bench-runtime``).

One redis-server on a free loopback port, flushed between systems. For each system: the
producer enqueues N no-op jobs (enqueue rate measured, batched where the library offers it),
then ONE worker process starts and the no-op handlers count jobs (see peers/common.py). A
system's jobs/s is (N - 1) / (last job start - first job start), so interpreter start-up and
imports are not counted; the wall time from spawn to the last job and the CPU per job of the
worker's process group and of redis-server are reported too. Workers are killed by their
process group id afterwards; every wait has a deadline. bench/README.md explains every choice.

workerfleet and BullMQ run BENCH_REPEATS times (median reported); the other peers once. Then
workerfleet alone at concurrency 1 and 8 (its default), and enqueue→start latency at a quarter
and at half of its measured max rate (paced producer, start timestamps taken in the handler).

Env: BENCH_JOBS (N, default 20000), BENCH_REPEATS (3), BENCH_SYSTEMS (comma list), BENCH_OUT
(JSON path), BENCH_LAT_SECONDS (5), BENCH_DEADLINE_SECONDS (per worker run, 120).
Prints a table and ends with the line
``runtime: workerfleet_jps=X best_python_peer=NAME best_python_jps=Y ratio=Z bullmq_jps=W``.
No timing is asserted anywhere: it measures and reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PEERS = HERE / "peers"
RESULTS = ROOT / "bench" / "results"
LOGS = RESULTS / "logs"

JOBS = int(os.environ.get("BENCH_JOBS", "20000"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
DEADLINE = float(os.environ.get("BENCH_DEADLINE_SECONDS", "120"))
LAT_SECONDS = float(os.environ.get("BENCH_LAT_SECONDS", "5"))
PRODUCE_DEADLINE = 180.0


@dataclass(frozen=True)
class System:
    name: str
    kind: str  # "python" (a venv from run.sh, or the project's .venv) | "node"
    script: str  # peers/<script>.py or bullmq/bench.js
    venv_env: str | None  # env var holding the peer venv; None = the project's .venv
    package: str  # distribution whose version is reported
    jobs_factor: float  # share of N this system gets (slow systems get fewer jobs)
    repeats: int
    concurrency: str  # what "typical concurrency" means for it, for the table


SYSTEMS: tuple[System, ...] = (
    System(
        "workerfleet",
        "python",
        "wf_bench",
        None,
        "workerfleet",
        2.5,  # ~17k jobs/s here: 2.5 N keeps its timed window at seconds, like BullMQ's
        REPEATS,
        "1 process, concurrency 50 (async)",
    ),
    System("bullmq", "node", "bench.js", None, "bullmq", 1.0, REPEATS, "1 process, concurrency 50"),
    System(
        "dramatiq",
        "python",
        "dramatiq_bench",
        "BENCH_VENV_DRAMATIQ",
        "dramatiq",
        1.0,
        1,
        "1 process x 8 threads",
    ),
    System(
        "taskiq",
        "python",
        "taskiq_bench",
        "BENCH_VENV_TASKIQ",
        "taskiq-redis",
        0.5,
        1,
        "1 process, 100 async tasks (streams)",
    ),
    System(
        "saq", "python", "saq_bench", "BENCH_VENV_SAQ", "saq", 0.5, 1, "1 process, concurrency 10"
    ),
    System(
        "arq",
        "python",
        "arq_bench",
        "BENCH_VENV_ARQ",
        "arq",
        0.5,
        1,
        "1 process, max_jobs 10, poll 10 ms",
    ),
    System(
        "celery",
        "python",
        "celery_bench",
        "BENCH_VENV_CELERY",
        "celery",
        0.5,
        1,
        "1 process, --pool=solo",
    ),
    System(
        "rq",
        "python",
        "rq_bench",
        "BENCH_VENV_RQ",
        "rq",
        0.1,
        1,
        "1 SimpleWorker (1 job at a time)",
    ),
)


@dataclass
class Run:
    system: str
    jobs: int
    concurrency: int | None
    enqueue_seconds: float = 0.0
    enqueue_rate: float = 0.0
    processed: int = 0
    jps: float = 0.0
    wall_seconds: float = 0.0  # from spawning the worker to the last job seen
    span_seconds: float = 0.0  # first job start to last job start: the timed window
    status: str = "ok"
    cpu_us_per_job: float = 0.0
    redis_cpu_us_per_job: float = 0.0
    runqueue_wait_share: float = 0.0
    load_before: float = 0.0
    log: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---- processes -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_redis() -> tuple[subprocess.Popen[bytes], redis.Redis, int]:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("bench-runtime: redis-server not found (run: make deps)")
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis(port=port, host="127.0.0.1", decode_responses=True)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                # Make sure the server answering is the one we started (the port could race).
                if client.info("server")["process_id"] == proc.pid:
                    return proc, client, port
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        kill_group(proc)
    sys.exit("bench-runtime: could not start redis-server on a free loopback port")


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group we created for ``proc`` (its pid), then reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def command(system: System, action: str) -> list[str]:
    if system.kind == "node":
        return [shutil.which("node") or "node", str(HERE / "bullmq" / system.script), action]
    return [python_of(system), str(PEERS / f"{system.script}.py"), action]


def python_of(system: System) -> str:
    if system.venv_env is None:
        return sys.executable
    venv = os.environ.get(system.venv_env)
    if not venv:
        raise RuntimeError(f"{system.venv_env} not set: run through bench/runtime/run.sh")
    return str(Path(venv) / "bin" / "python")


def child_env(port: int, jobs: int, concurrency: int | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERFLEET_")}
    env.update(
        BENCH_REDIS_URL=f"redis://127.0.0.1:{port}/0",
        BENCH_JOBS=str(jobs),
        BENCH_CONCURRENCY=str(concurrency or 0),
        PYTHONPATH=str(PEERS),
        PYTHONUNBUFFERED="1",
        NODE_PATH=os.environ.get("BENCH_NODE_MODULES", ""),
        **extra,
    )
    return env


def version_of(system: System) -> str:
    if system.kind == "node":
        pkg = Path(os.environ.get("BENCH_NODE_MODULES", "")) / system.package / "package.json"
        try:
            return str(json.loads(pkg.read_text())["version"])
        except (OSError, ValueError, KeyError):
            return "?"
    if system.venv_env is None:
        # workerfleet from this checkout: the commit says which runtime was measured.
        try:
            rev = subprocess.run(
                ["git", "-C", str(ROOT), "log", "-1", "--format=%h", "--", "worker_runtime"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--", "worker_runtime"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            return f"{rev}{'+dirty' if dirty else ''}"
        except (subprocess.SubprocessError, OSError):
            return "?"
    code = f"import importlib.metadata as m; print(m.version({system.package!r}))"
    try:
        out = subprocess.run(
            [python_of(system), "-c", code], capture_output=True, text=True, timeout=30, check=True
        )
        return out.stdout.strip()
    except (subprocess.SubprocessError, RuntimeError, OSError):
        return "?"


def available(system: System) -> str | None:
    """Why the system cannot run here, or None."""
    if system.kind == "node":
        if shutil.which("node") is None:
            return "node not found"
        modules = Path(os.environ.get("BENCH_NODE_MODULES", ""))
        if not ((modules / "bullmq").is_dir() and (modules / "ioredis").is_dir()):
            return "bullmq/ioredis not installed (run through run.sh)"
        return None
    try:
        python_of(system)
    except RuntimeError as exc:
        return str(exc)
    return None


# ---- one measurement -------------------------------------------------------------------------


def produce(system: System, env: dict[str, str], action: str = "produce") -> dict[str, Any]:
    out = subprocess.run(
        command(system, action),
        env=env,
        cwd=PEERS,
        capture_output=True,
        text=True,
        timeout=PRODUCE_DEADLINE,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{system.name} {action} failed: {out.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def read_span(client: redis.Redis) -> tuple[float, float]:
    firsts, lasts = [], []
    for key in client.scan_iter("bench:ts:*"):
        h = client.hgetall(key)
        firsts.append(float(h["first"]))
        lasts.append(float(h["last"]))
    return (min(firsts), max(lasts)) if firsts else (0.0, 0.0)


def done_count(client: redis.Redis) -> int:
    return int(client.get("bench:done") or 0)


def start_worker(system: System, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(
            command(system, "work"),
            env=env,
            cwd=PEERS,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user+system, reaped children included) of every process in group ``pgid``."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            data = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2 :].split()
        # after "pid (comm)": state ppid pgrp ... utime(14) stime cutime cstime (1-based)
        if int(fields[2]) == pgid:
            ticks += sum(int(x) for x in fields[11:15])
    return ticks / CLOCK_TICKS


def group_runqueue_wait_seconds(pgid: int) -> float:
    """Seconds the threads of group ``pgid`` spent runnable but waiting for a core (schedstat).

    Over a run, its share of the wall time says how much a busy machine held the worker back.
    """
    waited = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            data = Path(entry.path, "stat").read_text()
            if int(data[data.rindex(")") + 2 :].split()[2]) != pgid:
                continue
            for task in os.scandir(Path(entry.path, "task")):
                waited += int(Path(task.path, "schedstat").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return waited / 1e9


def redis_cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass
class Progress:
    """Where a worker run ended, plus CPU use between the first observed job and the end."""

    status: str = "deadline"
    cpu_us_per_job: float = 0.0  # worker process group
    redis_cpu_us_per_job: float = 0.0
    runqueue_wait_share: float = 0.0  # worker threads' wait for a core / wall time


def wait_for(
    client: redis.Redis, target: int, proc: subprocess.Popen[bytes], deadline: float
) -> Progress:
    # CPU per job is measured from the first job seen to the end, so start-up (imports) is
    # excluded; on a shared, busy machine it is a steadier figure than jobs/s.
    out = Progress()
    end = time.monotonic() + deadline
    start: tuple[int, float, float, float, float] | None = None
    while time.monotonic() < end:
        done = done_count(client)
        if start is None and done > 0:
            start = (
                done,
                group_cpu_seconds(proc.pid),
                redis_cpu_seconds(client),
                group_runqueue_wait_seconds(proc.pid),
                time.monotonic(),
            )
        if done >= target:
            out.status = "ok"
            break
        if proc.poll() is not None:
            out.status = f"worker exited ({proc.returncode})"
            return out
        time.sleep(0.02)
    done = done_count(client)
    if start is not None and done > start[0]:
        n = done - start[0]
        out.cpu_us_per_job = (group_cpu_seconds(proc.pid) - start[1]) / n * 1e6
        out.redis_cpu_us_per_job = (redis_cpu_seconds(client) - start[2]) / n * 1e6
        wall = max(1e-6, time.monotonic() - start[4])
        out.runqueue_wait_share = (group_runqueue_wait_seconds(proc.pid) - start[3]) / wall
    return out


def measure(
    system: System,
    client: redis.Redis,
    port: int,
    jobs: int,
    concurrency: int | None,
    label: str,
    **extra_env: str,
) -> Run:
    client.flushall()
    run = Run(system.name, jobs, concurrency, load_before=os.getloadavg()[0])
    env = child_env(port, jobs, concurrency, **extra_env)
    log = LOGS / f"{label}.log"
    run.log = str(log.relative_to(ROOT))
    try:
        enq = produce(system, env)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        run.status = f"producer failed: {str(exc)[:300]}"
        return run
    run.enqueue_seconds = float(enq["seconds"])
    run.enqueue_rate = jobs / run.enqueue_seconds if run.enqueue_seconds else 0.0
    spawned = time.monotonic()
    proc = start_worker(system, env, log)
    try:
        progress = wait_for(client, jobs, proc, DEADLINE)
        run.status = progress.status
        run.cpu_us_per_job = progress.cpu_us_per_job
        run.redis_cpu_us_per_job = progress.redis_cpu_us_per_job
        run.runqueue_wait_share = progress.runqueue_wait_share
        run.wall_seconds = time.monotonic() - spawned
    finally:
        kill_group(proc)
    time.sleep(0.05)
    run.processed = done_count(client)
    first, last = read_span(client)
    if run.processed > 1 and last > first:
        run.span_seconds = last - first
        run.jps = (run.processed - 1) / run.span_seconds
    return run


def measure_latency(
    client: redis.Redis, port: int, rate: float, system: System = SYSTEMS[0]
) -> dict[str, Any]:
    """Enqueue→start latency of ``system`` (concurrency 50) under a paced load of ``rate``."""
    client.flushall()
    env = child_env(port, 1, 50, BENCH_RATE=f"{rate:.1f}", BENCH_SECONDS=str(LAT_SECONDS))
    proc = start_worker(system, env, LOGS / f"{system.name}-latency-{rate:.0f}.log")
    try:
        # Warm-up: one unstamped job proves the worker is up before the paced load starts.
        produce(system, env)
        status = wait_for(client, 1, proc, 60).status
        if status != "ok":
            return {"status": f"warm-up: {status}"}
        cpu_before = group_cpu_seconds(proc.pid)
        waited_before, wall_before = group_runqueue_wait_seconds(proc.pid), time.monotonic()
        paced = produce(system, env, "pace")
        sent = int(paced["enqueued"])
        produced_at = time.monotonic()
        status = wait_for(client, 1 + sent, proc, DEADLINE).status
        cpu_us_per_job = (group_cpu_seconds(proc.pid) - cpu_before) / max(sent, 1) * 1e6
        waited = group_runqueue_wait_seconds(proc.pid) - waited_before
        wait_share = waited / max(1e-6, time.monotonic() - wall_before)
        # How long the backlog took to clear once the producer stopped: ~0 when keeping up.
        drain_seconds = time.monotonic() - produced_at
    finally:
        kill_group(proc)
    time.sleep(0.05)
    in_order = [float(x) for x in client.lrange("bench:lat", 0, -1)]  # ~ job start order
    lat = sorted(in_order)
    if not lat:
        return {"status": status, "samples": 0}
    # p50 and max per tenth of the run: tells a steadily growing backlog (the worker cannot
    # keep up) from short spikes (another process took the cores for a moment).
    tenth = max(1, len(in_order) // 10)
    parts = [
        in_order[i : i + tenth] for i in range(0, tenth * 10, tenth) if in_order[i : i + tenth]
    ]

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, round(p / 100 * (len(lat) - 1)))]

    return {
        "status": status,
        "target_rate": rate,
        "achieved_rate": sent / float(paced["seconds"]),
        "samples": len(lat),
        "p50_ms": pct(50) * 1000,
        "p90_ms": pct(90) * 1000,
        "p99_ms": pct(99) * 1000,
        "max_ms": lat[-1] * 1000,
        "worker_cpu_us_per_job": cpu_us_per_job,
        "worker_runqueue_wait_share": wait_share,
        "backlog_drain_seconds": drain_seconds,
        "p50_ms_by_tenth": [round(statistics.median(x) * 1000, 1) for x in parts],
        "max_ms_by_tenth": [round(max(x) * 1000, 1) for x in parts],
    }


# ---- report ----------------------------------------------------------------------------------


def median_run(runs: list[Run]) -> Run:
    ok = [r for r in runs if r.jps > 0] or runs
    return sorted(ok, key=lambda r: r.jps)[(len(ok) - 1) // 2]


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x else "-"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ["system", "version", "concurrency", "jobs", "enqueue/s", "jobs/s", "runs"]
    head += ["worker CPU us/job", "jobs/CPU-s", "redis CPU us/job", "waited for core", "status"]
    table = [head] + [
        [
            r["system"],
            r["version"],
            r["concurrency"],
            f"{r['jobs']:,}",
            fmt(r["enqueue_rate"]),
            fmt(r["jps"]),
            r["runs_text"],
            fmt(r["cpu_us_per_job"]),
            fmt(1e6 / r["cpu_us_per_job"] if r["cpu_us_per_job"] else 0.0),
            fmt(r["redis_cpu_us_per_job"]),
            f"{r['runqueue_wait_share']:.0%}",
            r["status"],
        ]
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for n, row in enumerate(table):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def main() -> int:
    wanted = {s.strip() for s in os.environ.get("BENCH_SYSTEMS", "").split(",") if s.strip()}
    systems = [s for s in SYSTEMS if not wanted or s.name in wanted]
    LOGS.mkdir(parents=True, exist_ok=True)
    redis_proc, client, port = start_redis()
    started = time.time()
    rows: list[dict[str, Any]] = []
    all_runs: dict[str, list[dict[str, Any]]] = {}
    extras: dict[str, Any] = {}
    print(
        f"bench-runtime: N={JOBS:,} no-op jobs, redis-server 127.0.0.1:{port} "
        f"(v{client.info('server')['redis_version']}), {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    try:
        for system in systems:
            why = available(system)
            version = version_of(system) if why is None else "-"
            jobs = max(100, int(JOBS * system.jobs_factor))
            conc = 50 if system.name in ("workerfleet", "bullmq") else None
            runs: list[Run] = []
            if why is None:
                for i in range(system.repeats):
                    run = measure(system, client, port, jobs, conc, f"{system.name}-{i + 1}")
                    runs.append(run)
                    print(
                        f"  {system.name} run {i + 1}/{system.repeats}: {fmt(run.jps)} jobs/s, "
                        f"enqueue {fmt(run.enqueue_rate)}/s, {run.processed:,}/{jobs:,} "
                        f"in {run.span_seconds:.2f} s, "
                        f"worker CPU {run.cpu_us_per_job:.0f} us/job, waited for a core "
                        f"{run.runqueue_wait_share:.0%} of the time "
                        f"({run.status}, load {run.load_before:.1f})",
                        flush=True,
                    )
            all_runs[system.name] = [asdict(r) for r in runs]
            best = median_run(runs) if runs else Run(system.name, jobs, conc, status=why or "")
            rows.append(
                {
                    "system": system.name,
                    "version": version,
                    "concurrency": system.concurrency,
                    "jobs": jobs,
                    "enqueue_rate": statistics.median([r.enqueue_rate for r in runs])
                    if runs
                    else 0.0,
                    "jps": best.jps,
                    "cpu_us_per_job": statistics.median([r.cpu_us_per_job for r in runs])
                    if runs
                    else 0.0,
                    "redis_cpu_us_per_job": statistics.median(
                        [r.redis_cpu_us_per_job for r in runs]
                    )
                    if runs
                    else 0.0,
                    "runqueue_wait_share": statistics.median([r.runqueue_wait_share for r in runs])
                    if runs
                    else 0.0,
                    "runs_text": f"median of {len(runs)}" if len(runs) > 1 else str(len(runs)),
                    "status": best.status if runs else f"unavailable: {why}",
                }
            )

        wf = next((r for r in rows if r["system"] == "workerfleet"), None)
        if wf is not None and wf["jps"] > 0:
            wf_sys = SYSTEMS[0]
            # (concurrency, share of N, task): async at 1 and 8 (the default), and the same
            # no-op as a plain sync function at 8 (the worker's thread pool, one per slot).
            for conc, factor, task in ((1, 0.25, "noop"), (8, 1.0, "noop"), (8, 0.5, "noop-sync")):
                key = f"workerfleet_c{conc}" + ("_sync" if task == "noop-sync" else "")
                run = measure(
                    wf_sys,
                    client,
                    port,
                    max(100, int(JOBS * factor)),
                    conc,
                    key.replace("_", "-"),
                    BENCH_WF_TASK=task,
                )
                extras[key] = asdict(run)
                print(
                    f"  workerfleet concurrency {conc}"
                    f"{' (sync handler, thread pool)' if task == 'noop-sync' else ''}: "
                    f"{fmt(run.jps)} jobs/s, "
                    f"worker CPU {run.cpu_us_per_job:.0f} us/job ({run.status})",
                    flush=True,
                )
            for share, key in ((0.25, "latency_quarter_load"), (0.5, "latency_half_load")):
                lat = measure_latency(client, port, wf["jps"] * share)
                extras[key] = lat
                print(
                    f"  workerfleet latency at {fmt(wf['jps'] * share)} jobs/s: "
                    + ", ".join(
                        f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in lat.items()
                    ),
                    flush=True,
                )
            bull = next((r for r in rows if r["system"] == "bullmq"), None)
            if bull is not None and bull["jps"] > 0:
                # Both at one paced rate that each sustains: half of the slower one's max.
                rate = 0.5 * min(wf["jps"], bull["jps"])
                same: dict[str, Any] = {"rate": rate}
                for sys_ in (SYSTEMS[0], SYSTEMS[1]):
                    same[sys_.name] = measure_latency(client, port, rate, sys_)
                    got = same[sys_.name]
                    print(
                        f"  {sys_.name} latency at {fmt(rate)} jobs/s: "
                        f"p50={got.get('p50_ms', 0):.1f} ms p99={got.get('p99_ms', 0):.1f} ms "
                        f"({got['status']})",
                        flush=True,
                    )
                extras["latency_same_load"] = same
    finally:
        kill_group(redis_proc)

    print()
    print_table(rows)
    wf_jps = next((r["jps"] for r in rows if r["system"] == "workerfleet"), 0.0)
    bull_jps = next((r["jps"] for r in rows if r["system"] == "bullmq"), 0.0)
    peers = [r for r in rows if r["system"] not in ("workerfleet", "bullmq") and r["jps"] > 0]
    best = max(peers, key=lambda r: r["jps"]) if peers else {"system": "none", "jps": 0.0}
    ratio = wf_jps / best["jps"] if best["jps"] else 0.0
    print()
    if "workerfleet_c1" in extras:
        print(
            f"workerfleet concurrency 1: {fmt(extras['workerfleet_c1']['jps'])} jobs/s; "
            f"concurrency 8 (default): {fmt(extras['workerfleet_c8']['jps'])} jobs/s; "
            f"concurrency 50: {fmt(wf_jps)} jobs/s; sync handler at concurrency 8: "
            f"{fmt(extras['workerfleet_c8_sync']['jps'])} jobs/s"
        )
    for key, name in (("latency_quarter_load", "quarter"), ("latency_half_load", "half")):
        lat = extras.get(key)
        if lat and "p50_ms" in lat:
            print(
                f"workerfleet enqueue->start latency at {name} load "
                f"({fmt(lat['achieved_rate'])} jobs/s paced, {lat['samples']:,} jobs): "
                f"p50={lat['p50_ms']:.1f} ms p99={lat['p99_ms']:.1f} ms "
                f"max={lat['max_ms']:.1f} ms, "
                f"worker CPU {lat['worker_cpu_us_per_job']:.0f} us/job, "
                f"waited for a core {lat['worker_runqueue_wait_share']:.0%} of the time"
            )

    same = extras.get("latency_same_load")
    if same and all("p50_ms" in same[n] for n in ("workerfleet", "bullmq")):
        wfl, bql = same["workerfleet"], same["bullmq"]
        print(
            f"enqueue->start latency at the same load ({fmt(same['rate'])} jobs/s paced): "
            f"workerfleet p50={wfl['p50_ms']:.1f} ms p99={wfl['p99_ms']:.1f} ms; "
            f"BullMQ p50={bql['p50_ms']:.1f} ms p99={bql['p99_ms']:.1f} ms"
        )

    out = Path(
        os.environ.get("BENCH_OUT")
        or RESULTS / time.strftime("runtime-%Y%m%dT%H%M%SZ.json", time.gmtime(started))
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "workerfleet_jps": wf_jps,
        "best_python_peer": best["system"],
        "best_python_jps": best["jps"],
        "ratio": ratio,
        "bullmq_jps": bull_jps,
    }
    out.write_text(
        json.dumps(
            {
                "started": started,
                "jobs": JOBS,
                "cores": os.cpu_count(),
                "duration_seconds": time.time() - started,
                "summary": summary,
                "table": rows,
                "runs": all_runs,
                "workerfleet_extras": extras,
            },
            indent=2,
        )
    )
    print(
        f"goals (issue 2, informational): ratio >= 1.5 {'met' if ratio >= 1.5 else 'NOT met'}; "
        f"workerfleet >= BullMQ {'met' if wf_jps >= bull_jps > 0 else 'NOT met'}"
    )
    print(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    print(
        f"runtime: workerfleet_jps={wf_jps:.0f} best_python_peer={best['system']} "
        f"best_python_jps={best['jps']:.0f} ratio={ratio:.2f} bullmq_jps={bull_jps:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
