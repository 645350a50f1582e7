"""Side-by-side runtime throughput benchmark; run by bench/runtime/run.sh (``make bench-runtime``).

One redis-server on a free loopback port, flushed between systems. For each system: the
producer enqueues N no-op jobs (enqueue rate measured, batched where the library offers it),
then ONE worker process starts and the no-op handlers count jobs (see peers/common.py). A
system's jobs/s is (N - 1) / (last job start - first job start), so interpreter start-up and
imports are not counted; the wall time from spawn to the last job and the CPU per job of the
worker's process group and of redis-server are reported too. Workers are killed by their
process group id afterwards; every wait has a deadline. bench/README.md explains every choice.

Then the broker phase (broker_phase.py): workerfleet on RabbitMQ against celery and dramatiq on
one private rabbitmq-server, and on SQS against celery on one private ElasticMQ.

workerfleet and BullMQ run BENCH_REPEATS times (median reported); the other peers once. Then
workerfleet alone at concurrency 1 and 8 (its default), and enqueue→start latency at a quarter
and at half of its measured max rate (paced producer, start timestamps taken in the handler).

Env: BENCH_JOBS (N, default 20000), BENCH_REPEATS (5), BENCH_SYSTEMS (comma list), BENCH_OUT
(JSON path), BENCH_LAT_SECONDS (5), BENCH_DEADLINE_SECONDS (per worker run, 120); by hand
only, BENCH_REDIS_ARGS (extra redis-server arguments, e.g. ``--stream-node-max-entries 10``:
the reported runs use the server's defaults, as every peer gets them).
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
from collections.abc import Iterator
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
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
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
        "bare-loop",
        "python",
        "bare_bench",
        None,
        "redis",
        2.5,
        REPEATS,
        "1 coroutine, batches of 500 (no features)",
    ),
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
    redis_commands_per_job: float = 0.0  # every command Redis executed, scripts' own included
    redis_script_calls_per_job: float = 0.0  # EVAL/EVALSHA/FCALL calls
    redis_enqueue_cpu_us_per_job: float = 0.0  # Redis CPU of the producer's enqueue, per job
    redis_enqueue_commands_per_job: float = 0.0
    load_before: float = 0.0
    log: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ---- processes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    """The Redis under test and the stats Redis where the bench counters go (peers/common.py)."""

    sut: redis.Redis
    sut_port: int
    stats: redis.Redis
    stats_port: int

    def flush(self) -> None:
        self.sut.flushall()
        self.stats.flushall()
        self.sut.config_resetstat()


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
                *os.environ.get("BENCH_REDIS_ARGS", "").split(),
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


@contextlib.contextmanager
def running_servers() -> Iterator[Servers]:
    """The Redis under test and the counters' Redis, each on a free loopback port; both are
    killed when the block ends (the by-hand probes' set-up; ``main`` keeps its own)."""
    sut_proc, sut, sut_port = start_redis()
    try:
        stats_proc, stats, stats_port = start_redis()
        try:
            LOGS.mkdir(parents=True, exist_ok=True)
            yield Servers(sut, sut_port, stats, stats_port)
        finally:
            kill_group(stats_proc)
    finally:
        kill_group(sut_proc)


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


def child_env(servers: Servers, jobs: int, concurrency: int | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERFLEET_")}
    # Every system runs from compiled modules, as in an image (build-images.sh compiles them)
    # and as the peers' site-packages were at install: with this variable inherited, the
    # checkout's modules were compiled again on every cold start, the peers' never.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(
        BENCH_REDIS_URL=f"redis://127.0.0.1:{servers.sut_port}/0",
        BENCH_STATS_URL=f"redis://127.0.0.1:{servers.stats_port}/0",
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
    if system.name == "bare-loop":
        return f"redis-py {redis.__version__}"
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


SCRIPT_COMMANDS = ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")


def redis_command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (INFO commandstats).

    Commands a Lua script runs are counted under their own names as well as the EVALSHA that
    ran them: the total is every command Redis executed, which is what its CPU pays for.
    """
    info = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(stat["calls"])
        for name, stat in info.items()
        if isinstance(stat, dict)
    }


@dataclass(frozen=True)
class RedisSnapshot:
    cpu_seconds: float
    calls: dict[str, int]

    @staticmethod
    def take(client: redis.Redis) -> RedisSnapshot:
        # Two INFO calls: the next snapshot's command count includes them (subtracted there).
        return RedisSnapshot(redis_cpu_seconds(client), redis_command_calls(client))

    def commands_since(self, earlier: RedisSnapshot) -> tuple[int, int]:
        """(all commands, script calls) executed between ``earlier`` and this snapshot."""
        total = sum(self.calls.values()) - sum(earlier.calls.values()) - 2
        scripts = sum(self.calls.get(c, 0) - earlier.calls.get(c, 0) for c in SCRIPT_COMMANDS)
        return total, scripts


@dataclass
class Progress:
    """Where a worker run ended, plus CPU use between the first observed job and the end."""

    status: str = "deadline"
    cpu_us_per_job: float = 0.0  # worker process group
    redis_cpu_us_per_job: float = 0.0
    runqueue_wait_share: float = 0.0  # worker threads' wait for a core / wall time
    redis_commands_per_job: float = 0.0
    redis_script_calls_per_job: float = 0.0


def wait_for(
    servers: Servers, target: int, proc: subprocess.Popen[bytes], deadline: float
) -> Progress:
    # CPU and commands per job are measured from the first job seen to the end, so start-up
    # (imports, connecting, creating groups) is excluded; on a shared, busy machine CPU per job
    # is a steadier figure than jobs/s.
    out = Progress()
    end = time.monotonic() + deadline
    start: tuple[int, float, RedisSnapshot, float, float] | None = None
    while time.monotonic() < end:
        done = done_count(servers.stats)
        if start is None and done > 0:
            start = (
                done,
                group_cpu_seconds(proc.pid),
                RedisSnapshot.take(servers.sut),
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
    done = done_count(servers.stats)
    if start is not None and done > start[0]:
        n = done - start[0]
        out.cpu_us_per_job = (group_cpu_seconds(proc.pid) - start[1]) / n * 1e6
        now = RedisSnapshot.take(servers.sut)
        out.redis_cpu_us_per_job = (now.cpu_seconds - start[2].cpu_seconds) / n * 1e6
        commands, scripts = now.commands_since(start[2])
        out.redis_commands_per_job = commands / n
        out.redis_script_calls_per_job = scripts / n
        wall = max(1e-6, time.monotonic() - start[4])
        out.runqueue_wait_share = (group_runqueue_wait_seconds(proc.pid) - start[3]) / wall
    return out


def measure(
    system: System,
    servers: Servers,
    jobs: int,
    concurrency: int | None,
    label: str,
    **extra_env: str,
) -> Run:
    servers.flush()
    run = Run(system.name, jobs, concurrency, load_before=os.getloadavg()[0])
    env = child_env(servers, jobs, concurrency, **extra_env)
    log = LOGS / f"{label}.log"
    run.log = str(log.relative_to(ROOT))
    before = RedisSnapshot.take(servers.sut)
    try:
        enq = produce(system, env)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        run.status = f"producer failed: {str(exc)[:300]}"
        return run
    after = RedisSnapshot.take(servers.sut)
    # Redis's side of enqueueing (the processing window below measures fetch + ack): the two
    # together are what one job costs the single-threaded server (docs/scaling.md).
    run.redis_enqueue_cpu_us_per_job = (after.cpu_seconds - before.cpu_seconds) / jobs * 1e6
    run.redis_enqueue_commands_per_job = after.commands_since(before)[0] / jobs
    run.enqueue_seconds = float(enq["seconds"])
    run.enqueue_rate = jobs / run.enqueue_seconds if run.enqueue_seconds else 0.0
    spawned = time.monotonic()
    proc = start_worker(system, env, log)
    try:
        progress = wait_for(servers, jobs, proc, DEADLINE)
        run.status = progress.status
        run.cpu_us_per_job = progress.cpu_us_per_job
        run.redis_cpu_us_per_job = progress.redis_cpu_us_per_job
        run.runqueue_wait_share = progress.runqueue_wait_share
        run.redis_commands_per_job = progress.redis_commands_per_job
        run.redis_script_calls_per_job = progress.redis_script_calls_per_job
        run.wall_seconds = time.monotonic() - spawned
    finally:
        kill_group(proc)
    time.sleep(0.05)
    run.processed = done_count(servers.stats)
    first, last = read_span(servers.stats)
    if run.processed > 1 and last > first:
        run.span_seconds = last - first
        run.jps = (run.processed - 1) / run.span_seconds
    return run


PRODUCER_CALL_FIELDS = ("call_p50_ms", "call_p99_ms", "call_max_ms", "jobs_per_call")


def measure_latency(servers: Servers, rate: float, system: System = SYSTEMS[0]) -> dict[str, Any]:
    """Enqueue→start latency of ``system`` (concurrency 50) under a paced load of ``rate``."""
    servers.flush()
    env = child_env(servers, 1, 50, BENCH_RATE=f"{rate:.1f}", BENCH_SECONDS=str(LAT_SECONDS))
    proc = start_worker(system, env, LOGS / f"{system.name}-latency-{rate:.0f}.log")
    try:
        # Warm-up: one unstamped job proves the worker is up before the paced load starts.
        produce(system, env)
        status = wait_for(servers, 1, proc, 60).status
        if status != "ok":
            return {"status": f"warm-up: {status}"}
        cpu_before = group_cpu_seconds(proc.pid)
        waited_before, wall_before = group_runqueue_wait_seconds(proc.pid), time.monotonic()
        paced = produce(system, env, "pace")
        sent = int(paced["enqueued"])
        produced_at = time.monotonic()
        status = wait_for(servers, 1 + sent, proc, DEADLINE).status
        cpu_us_per_job = (group_cpu_seconds(proc.pid) - cpu_before) / max(sent, 1) * 1e6
        waited = group_runqueue_wait_seconds(proc.pid) - waited_before
        wait_share = waited / max(1e-6, time.monotonic() - wall_before)
        # How long the backlog took to clear once the producer stopped: ~0 when keeping up.
        drain_seconds = time.monotonic() - produced_at
    finally:
        kill_group(proc)
    time.sleep(0.05)
    in_order = [float(x) for x in servers.stats.lrange("bench:lat", 0, -1)]  # ~ start order
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
        # The producer's own enqueue calls (each job is stamped before its call), when the
        # system's pacer reports them (workerfleet, BullMQ and the bare loop).
        **{k: paced[k] for k in PRODUCER_CALL_FIELDS if k in paced},
    }


def describe_producer_calls(got: dict[str, Any]) -> str:
    """``, producer calls p50/p99 X/Y ms (N jobs each)`` when the pacer reported them."""
    if "call_p50_ms" not in got:
        return ""
    return (
        f", producer calls p50/p99 {got['call_p50_ms']:.1f}/{got['call_p99_ms']:.1f} ms "
        f"({got['jobs_per_call']:.0f} jobs each)"
    )


# ---- cold start ------------------------------------------------------------------------------

COLD_RUNS = int(os.environ.get("BENCH_COLD_RUNS", "10"))
COLD_SYSTEMS = ("workerfleet", "celery", "dramatiq", "bullmq", "bare-loop")


def cold_command(system: System, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The worker's own command (no wrapper process that would start an interpreter twice)."""
    if system.name not in ("workerfleet", "dramatiq"):
        return command(system, "work"), env
    out = subprocess.run(
        command(system, "argv"), env=env, cwd=PEERS, capture_output=True, text=True, timeout=60
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{system.name} argv failed: {out.stderr.strip()[-2000:]}")
    spec = json.loads(lines[-1])
    return list(spec["argv"]), {**env, **spec["env"]}


def measure_cold_start(system: System, servers: Servers, runs: int) -> dict[str, Any]:
    """Worker process spawn → first job started, ``runs`` times with one job already waiting.

    The clock starts just before the worker's own command is spawned and stops at the wall
    clock the no-op handler reads for its first job: interpreter start, imports, connecting and
    the first fetch are all inside. The .pyc caches are warm after the first run (as in a pod
    whose image was built with them); the p50 is the figure.
    """
    samples: list[float] = []
    statuses: list[str] = []
    conc = 50 if system.name in ("workerfleet", "bullmq") else None
    for i in range(runs):
        servers.flush()
        env = child_env(servers, 1, conc)
        try:
            produce(system, env)
            argv, run_env = cold_command(system, env)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            statuses.append(f"set-up failed: {str(exc)[:200]}")
            continue
        with (LOGS / f"{system.name}-cold-{i + 1}.log").open("wb") as fh:
            spawned = time.time()
            proc = subprocess.Popen(
                argv,
                env=run_env,
                cwd=PEERS,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            status = wait_for(servers, 1, proc, 60).status
        finally:
            kill_group(proc)
        first, _ = read_span(servers.stats)
        statuses.append(status)
        if status == "ok" and first > 0:
            samples.append(first - spawned)
    return {
        "runs": runs,
        "samples_s": [round(x, 4) for x in samples],
        "p50_s": statistics.median(samples) if samples else 0.0,
        "min_s": min(samples, default=0.0),
        "max_s": max(samples, default=0.0),
        "status": "ok" if len(samples) == runs else "; ".join(sorted(set(statuses))),
    }


# ---- report ----------------------------------------------------------------------------------


def median_run(runs: list[Run]) -> Run:
    ok = [r for r in runs if r.jps > 0] or runs
    return sorted(ok, key=lambda r: r.jps)[(len(ok) - 1) // 2]


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x else "-"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ["system", "version", "concurrency", "jobs", "enqueue/s", "jobs/s", "runs"]
    head += ["worker CPU us/job", "jobs/CPU-s", "redis CPU us/job", "redis cmds/job"]
    head += ["redis CPU us/job enqueue", "redis cmds/job enqueue"]
    head += ["scripts/job", "waited for core", "status"]
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
            f"{r['redis_commands_per_job']:.3f}",
            fmt(r["redis_enqueue_cpu_us_per_job"]),
            f"{r['redis_enqueue_commands_per_job']:.3f}",
            f"{r['redis_script_calls_per_job']:.3f}",
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


def summarize(system: System, version: str, runs: list[Run], why: str | None) -> dict[str, Any]:
    """One table row: the median run's jobs/s, the medians of the per-job costs."""
    jobs = max(100, int(JOBS * system.jobs_factor))

    def med(attr: str) -> float:
        return statistics.median([getattr(r, attr) for r in runs]) if runs else 0.0

    best = median_run(runs) if runs else Run(system.name, jobs, None, status=why or "")
    return {
        "system": system.name,
        "version": version,
        "concurrency": system.concurrency,
        "jobs": jobs,
        "enqueue_rate": med("enqueue_rate"),
        "jps": best.jps,
        "cpu_us_per_job": med("cpu_us_per_job"),
        "redis_cpu_us_per_job": med("redis_cpu_us_per_job"),
        "redis_commands_per_job": med("redis_commands_per_job"),
        "redis_script_calls_per_job": med("redis_script_calls_per_job"),
        "redis_enqueue_cpu_us_per_job": med("redis_enqueue_cpu_us_per_job"),
        "redis_enqueue_commands_per_job": med("redis_enqueue_commands_per_job"),
        "runqueue_wait_share": med("runqueue_wait_share"),
        "runs_text": f"median of {len(runs)}" if len(runs) > 1 else str(len(runs)),
        "status": best.status if runs else f"unavailable: {why}",
    }


LOAD_SHARES = ((0.25, "quarter"), (0.5, "half"), (0.75, "three-quarter"))


def goal(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> int:
    wanted = {s.strip() for s in os.environ.get("BENCH_SYSTEMS", "").split(",") if s.strip()}
    systems = [s for s in SYSTEMS if not wanted or s.name in wanted]
    by_name = {s.name: s for s in systems}
    LOGS.mkdir(parents=True, exist_ok=True)
    sut_proc, sut, sut_port = start_redis()
    stats_proc, stats, stats_port = start_redis()
    servers = Servers(sut, sut_port, stats, stats_port)
    started = time.time()
    extras: dict[str, Any] = {}
    print(
        f"bench-runtime: N={JOBS:,} no-op jobs, redis-server 127.0.0.1:{sut_port} "
        f"(v{sut.info('server')['redis_version']}; counters on a second one, :{stats_port}), "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    why = {s.name: available(s) for s in systems}
    versions = {s.name: version_of(s) if why[s.name] is None else "-" for s in systems}
    runs: dict[str, list[Run]] = {s.name: [] for s in systems}
    try:
        # The repeated systems (workerfleet, BullMQ, the bare loop) take turns round by round,
        # so a burst of load from elsewhere on the machine lands on each of them, not on one:
        # their ratios are the steady figures.
        for i in range(max((s.repeats for s in systems), default=0)):
            for system in systems:
                if why[system.name] is not None or i >= system.repeats:
                    continue
                jobs = max(100, int(JOBS * system.jobs_factor))
                conc = 50 if system.name in ("workerfleet", "bullmq") else None
                run = measure(system, servers, jobs, conc, f"{system.name}-{i + 1}")
                runs[system.name].append(run)
                print(
                    f"  {system.name} run {i + 1}/{system.repeats}: {fmt(run.jps)} jobs/s, "
                    f"enqueue {fmt(run.enqueue_rate)}/s, {run.processed:,}/{jobs:,} "
                    f"in {run.span_seconds:.2f} s, worker CPU {run.cpu_us_per_job:.0f} us/job, "
                    f"redis CPU {run.redis_cpu_us_per_job:.0f} us/job "
                    f"(+{run.redis_enqueue_cpu_us_per_job:.0f} to enqueue), "
                    f"{run.redis_commands_per_job:.3f} redis commands/job, waited for a core "
                    f"{run.runqueue_wait_share:.0%} of the time "
                    f"({run.status}, load {run.load_before:.1f})",
                    flush=True,
                )
        rows = [summarize(s, versions[s.name], runs[s.name], why[s.name]) for s in systems]

        wf = next((r for r in rows if r["system"] == "workerfleet"), None)
        bull = next((r for r in rows if r["system"] == "bullmq" and r["jps"] > 0), None)
        if wf is not None and wf["jps"] > 0:
            wf_sys = by_name["workerfleet"]
            # (concurrency, share of N, task): async at 1 and 8 (the default), and the same
            # no-op as a plain sync function at 8 (the worker's thread pool, one per slot).
            for conc, factor, task in ((1, 0.25, "noop"), (8, 1.0, "noop"), (8, 0.5, "noop-sync")):
                key = f"workerfleet_c{conc}" + ("_sync" if task == "noop-sync" else "")
                run = measure(
                    wf_sys,
                    servers,
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
            # Enqueue→start latency at fixed shares of workerfleet's saturated rate; BullMQ
            # at the very same paced rates (above its own max it falls behind: the backlog and
            # its drain time say so).
            latency: dict[str, Any] = {}
            for share, name in LOAD_SHARES:
                rate = wf["jps"] * share
                point: dict[str, Any] = {"share": share, "rate": rate}
                for sys_ in (wf_sys, by_name.get("bullmq")):
                    if (
                        sys_ is None
                        or why[sys_.name] is not None
                        or (sys_.name == "bullmq" and bull is None)
                    ):
                        continue
                    got = measure_latency(servers, rate, sys_)
                    point[sys_.name] = got
                    print(
                        f"  {sys_.name} latency at {name} load ({fmt(rate)} jobs/s): "
                        f"p50={got.get('p50_ms', 0):.1f} ms p99={got.get('p99_ms', 0):.1f} ms, "
                        f"achieved {fmt(got.get('achieved_rate', 0))} jobs/s, backlog drained "
                        f"{got.get('backlog_drain_seconds', 0):.2f} s after the producer"
                        f"{describe_producer_calls(got)} ({got['status']})",
                        flush=True,
                    )
                latency[name] = point
            extras["latency"] = latency
        cold: dict[str, Any] = {}
        for name in COLD_SYSTEMS:
            sys_ = by_name.get(name)
            if sys_ is None or why[name] is not None or COLD_RUNS <= 0:
                continue
            cold[name] = measure_cold_start(sys_, servers, COLD_RUNS)
            print(
                f"  {name} cold start (spawn -> first job started): "
                f"p50={cold[name]['p50_s']:.3f} s min={cold[name]['min_s']:.3f} s "
                f"max={cold[name]['max_s']:.3f} s of {COLD_RUNS} ({cold[name]['status']})",
                flush=True,
            )
        extras["cold_start"] = cold
        # RabbitMQ and SQS: workerfleet against the peers on one server of each (its own module)
        import broker_phase

        brokers = broker_phase.run_all(wanted, servers)
    finally:
        kill_group(sut_proc)
        kill_group(stats_proc)

    print()
    print_table(rows)
    jps = {r["system"]: r["jps"] for r in rows}
    wf_jps, bull_jps, bare_jps = (jps.get(n, 0.0) for n in ("workerfleet", "bullmq", "bare-loop"))
    peers = [
        r
        for r in rows
        if r["system"] not in ("workerfleet", "bullmq", "bare-loop") and r["jps"] > 0
    ]
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
    for name, point in extras.get("latency", {}).items():
        parts = []
        for sys_name in ("workerfleet", "bullmq"):
            lat = point.get(sys_name)
            if lat and "p50_ms" in lat:
                parts.append(
                    f"{sys_name} p50={lat['p50_ms']:.1f} ms p99={lat['p99_ms']:.1f} ms "
                    f"(worker CPU {lat['worker_cpu_us_per_job']:.0f} us/job, waited for a core "
                    f"{lat['worker_runqueue_wait_share']:.0%}{describe_producer_calls(lat)})"
                )
        print(
            f"enqueue->start at {name} load ({fmt(point['rate'])} jobs/s paced): "
            + ("; ".join(parts) or "no samples")
        )
    cold = extras.get("cold_start", {})
    if cold:
        print(
            f"cold start, worker spawn -> first job started (p50 of {COLD_RUNS}): "
            + ", ".join(f"{n} {c['p50_s']:.3f} s" for n, c in cold.items() if c["p50_s"])
        )
    half = extras.get("latency", {}).get("half", {}).get("workerfleet", {})
    p99_half = float(half.get("p99_ms", 0.0))
    cold_wf = float(cold.get("workerfleet", {}).get("p50_s", 0.0))
    share = wf_jps / bare_jps if bare_jps else 0.0
    # The same ratio by worker CPU per job (bare loop's over workerfleet's): on a loaded
    # machine jobs/s swings 2x between repeats, CPU per job by a few per cent.
    cpu = {r["system"]: r["cpu_us_per_job"] for r in rows}
    wf_cpu, bare_cpu = cpu.get("workerfleet", 0.0), cpu.get("bare-loop", 0.0)
    share_cpu = bare_cpu / wf_cpu if wf_cpu and bare_cpu else 0.0
    vs_bull = wf_jps / bull_jps if bull_jps else 0.0

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
        "bare_loop_jps": bare_jps,
        "share_of_bare_loop": share,
        "share_of_bare_loop_by_cpu": share_cpu,
        "vs_bullmq": vs_bull,
        "p99_half_ms": p99_half,
        "cold_start_s": cold_wf,
        "load_average_end": os.getloadavg(),
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
                "runs": {name: [asdict(r) for r in rs] for name, rs in runs.items()},
                "workerfleet_extras": extras,
                "brokers": brokers,
            },
            indent=2,
        )
    )
    for line in broker_phase.summary_lines(brokers):
        print(line)
    print()
    print(
        "goals (issue 17, reported, never asserted): "
        f"workerfleet >= 2x BullMQ {goal(vs_bull >= 2)} ({vs_bull:.2f}x); "
        f">= 50% of the bare loop {goal(share >= 0.5)} ({share:.0%}; by worker CPU per job "
        f"{share_cpu:.0%}); "
        f"p99 at half load <= 15 ms {goal(0 < p99_half <= 15)} ({p99_half:.1f} ms); "
        f"cold start <= 0.5 s {goal(0 < cold_wf <= 0.5)} ({cold_wf:.3f} s)"
    )
    load1, load5, _ = os.getloadavg()
    print(f"load average at the end: {load1:.1f} (1 min), {load5:.1f} (5 min)")
    print(f"results: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    print(
        f"runtime: workerfleet_jps={wf_jps:.0f} best_python_peer={best['system']} "
        f"best_python_jps={best['jps']:.0f} ratio={ratio:.2f} bullmq_jps={bull_jps:.0f}"
    )
    print(
        f"runtime-limit: workerfleet_jps={wf_jps:.0f} bare_loop_jps={bare_jps:.0f} "
        f"share={share:.2f} p99_half_ms={p99_half:.1f} cold_start_s={cold_wf:.3f} "
        f"share_cpu={share_cpu:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
