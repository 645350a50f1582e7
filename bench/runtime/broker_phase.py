"""The RabbitMQ and SQS phase of ``make bench-runtime``; called by driver.py after its Redis runs.

workerfleet on RabbitMQ against celery and dramatiq on ONE private rabbitmq-server (the local
fleet's embedded node, ``workerfleet_operator.local.embedded_rabbitmq``: loopback, its own node),
and workerfleet on SQS against celery on ONE private ElasticMQ (``embedded_elasticmq``, in
memory). As in the Redis phase:
the producer enqueues the run's jobs first, then ONE worker process runs no-op jobs that count
themselves into the stats Redis (peers/common.py), and jobs/s = (N - 1) / (last start - first
start). Every run gets a queue of its own (BENCH_QUEUE), so nothing is flushed between runs.
The systems of one broker take turns round by round, BENCH_REPEATS (5) rounds, median reported;
the CPU per job of the worker's process group and of the broker process (beam.smp / the JVM)
are measured from the first job to the end. bench/README.md says what each system promises.

Env: BENCH_BROKER_JOBS (N for this phase, default 8000), BENCH_SYSTEMS (names below, or
``rabbitmq`` / ``sqs`` for a broker's whole group), BENCH_WF_EXTRA_QUERY (settings appended to
workerfleet's broker URL, e.g. ``prefetch=400``, to try one out). Nothing is asserted: it
measures and reports.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import driver

JOBS = int(os.environ.get("BENCH_BROKER_JOBS", "8000"))
WF_CONCURRENCY = int(os.environ.get("BENCH_WF_BROKER_CONCURRENCY", "200"))
"""workerfleet's slots on RabbitMQ and SQS (bench/README.md says why not 50 as on Redis)."""
RATIO_GOAL = 1.5
"""Issue 12's goal on RabbitMQ: workerfleet >= 1.5x the better of celery and dramatiq."""


@dataclass(frozen=True)
class BrokerSystem:
    name: str
    broker: str  # "rabbitmq" | "sqs"
    peer: str  # the driver.SYSTEMS entry whose script and venv run it
    url_query: str  # appended to the broker's URL (workerfleet's settings)
    concurrency: int | None
    settings: str  # for the table
    promise: str  # what an acknowledged job means, for the table
    jobs_factor: float = 1.0


SYSTEMS: tuple[BrokerSystem, ...] = (
    BrokerSystem(
        "workerfleet-rabbitmq",
        "rabbitmq",
        "workerfleet",
        "queue_type=classic",
        WF_CONCURRENCY,
        f"classic queues, concurrency {WF_CONCURRENCY} (prefetch {WF_CONCURRENCY})",
        "at-least-once; confirmed publish; ack/retry committed (tx) before returning",
    ),
    BrokerSystem(
        "workerfleet-rabbitmq-quorum",
        "rabbitmq",
        "workerfleet",
        "",
        WF_CONCURRENCY,
        f"quorum queues (its default), concurrency {WF_CONCURRENCY} (prefetch {WF_CONCURRENCY})",
        "as above, on replicated quorum queues with a delivery limit",
    ),
    BrokerSystem(
        "celery-rabbitmq",
        "rabbitmq",
        "celery",
        "",
        None,
        "--pool=solo, acks_late, prefetch 128 (x1 slot)",
        "at-least-once (acks_late); publish unconfirmed; ack not awaited",
    ),
    BrokerSystem(
        "dramatiq-rabbitmq",
        "rabbitmq",
        "dramatiq",
        "",
        None,
        "1 process x 8 threads, prefetch 16 (default 2x threads)",
        "at-least-once (ack after the actor); publish unconfirmed; ack not awaited",
    ),
    BrokerSystem(
        "workerfleet-sqs",
        "sqs",
        "workerfleet",
        "",
        WF_CONCURRENCY,
        f"concurrency {WF_CONCURRENCY}, ReceiveMessage 10 per call, DeleteMessageBatch",
        "at-least-once; delete (ack) awaited",
    ),
    BrokerSystem(
        "celery-sqs",
        "sqs",
        "celery",
        "",
        None,
        "--pool=solo, acks_late, prefetch 128, long poll 10 s, polling_interval 0",
        "at-least-once (acks_late); delete per message",
        0.25,  # ~80 jobs/s here: N/4 keeps a run near 30 s
    ),
)


@dataclass(frozen=True)
class Server:
    url: str  # the broker's plain URL (peers derive theirs from it)
    wf_settings: str  # query settings of workerfleet's URL for this server ("a=1&b=2" or "")
    endpoint: str  # SQS only: the HTTP endpoint
    pid: int  # the broker process, for its CPU
    version: str


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (its threads included)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / driver.CLOCK_TICKS


@contextmanager
def rabbitmq() -> Iterator[Server]:
    from workerfleet_operator.local import embedded_rabbitmq

    server = embedded_rabbitmq.EmbeddedRabbitMQ()
    try:
        server.start()
        assert server.pid is not None
        version = "rabbitmq-server " + _dpkg_version("rabbitmq-server")
        yield Server(
            server.url, f"management_port={server.management_port}", "", server.pid, version
        )
    finally:
        server.close()


@contextmanager
def elasticmq() -> Iterator[Server]:
    from workerfleet_operator.local import embedded_elasticmq

    server = embedded_elasticmq.EmbeddedElasticMQ()
    try:
        server.start()
        version = f"ElasticMQ {embedded_elasticmq.ELASTICMQ_VERSION} (in memory)"
        url, _, query = server.url.partition("?")
        yield Server(url, query, server.endpoint, server.pid, version)
    finally:
        server.close()


def _dpkg_version(package: str) -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


BROKERS: dict[str, Callable[[], Any]] = {"rabbitmq": rabbitmq, "sqs": elasticmq}


def url_for(system: BrokerSystem, server: Server) -> str:
    """The URL ``system`` is given: workerfleet's with its query settings, a peer's plain."""
    if system.peer != "workerfleet":
        return server.url
    extra = os.environ.get("BENCH_WF_EXTRA_QUERY", "")
    query = "&".join(q for q in (server.wf_settings, system.url_query.lstrip("?"), extra) if q)
    return f"{server.url}?{query}" if query else server.url


def measure(
    system: BrokerSystem, peer: driver.System, server: Server, servers: driver.Servers, label: str
) -> driver.Run:
    servers.stats.flushall()
    jobs = max(100, int(JOBS * system.jobs_factor))
    run = driver.Run(system.name, jobs, system.concurrency, load_before=os.getloadavg()[0])
    env = driver.child_env(
        servers,
        jobs,
        system.concurrency,
        BENCH_BROKER_URL=url_for(system, server),
        BENCH_BROKER_ENDPOINT=server.endpoint,
        BENCH_QUEUE=f"bench-{label}-{uuid.uuid4().hex[:6]}",
    )
    log = driver.LOGS / f"{label}.log"
    run.log = str(log.relative_to(driver.ROOT))
    try:
        enq = driver.produce(peer, env)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        run.status = f"producer failed: {str(exc)[:300]}"
        return run
    run.enqueue_seconds = float(enq["seconds"])
    run.enqueue_rate = jobs / run.enqueue_seconds if run.enqueue_seconds else 0.0
    spawned = time.monotonic()
    proc = driver.start_worker(peer, env, log)
    try:
        run.status = "deadline"
        end = time.monotonic() + driver.DEADLINE
        start: tuple[int, float, float, float, float] | None = None
        while time.monotonic() < end:
            done = driver.done_count(servers.stats)
            if start is None and done > 0:
                # CPU from the first job on: start-up (imports, connecting) is not counted
                start = (
                    done,
                    driver.group_cpu_seconds(proc.pid),
                    process_cpu_seconds(server.pid),
                    driver.group_runqueue_wait_seconds(proc.pid),
                    time.monotonic(),
                )
            if done >= jobs:
                run.status = "ok"
                break
            if proc.poll() is not None:
                run.status = f"worker exited ({proc.returncode})"
                break
            time.sleep(0.02)
        done = driver.done_count(servers.stats)
        if start is not None and done > start[0]:
            n = done - start[0]
            run.cpu_us_per_job = (driver.group_cpu_seconds(proc.pid) - start[1]) / n * 1e6
            # the broker's CPU per job goes in the Redis column's place (it is the server here)
            run.redis_cpu_us_per_job = (process_cpu_seconds(server.pid) - start[2]) / n * 1e6
            wall = max(1e-6, time.monotonic() - start[4])
            run.runqueue_wait_share = (
                driver.group_runqueue_wait_seconds(proc.pid) - start[3]
            ) / wall
        run.wall_seconds = time.monotonic() - spawned
    finally:
        driver.kill_group(proc)
    time.sleep(0.05)
    run.processed = driver.done_count(servers.stats)
    first, last = driver.read_span(servers.stats)
    if run.processed > 1 and last > first:
        run.span_seconds = last - first
        run.jps = (run.processed - 1) / run.span_seconds
    return run


def selected(wanted: set[str]) -> list[BrokerSystem]:
    if not wanted:
        return list(SYSTEMS)
    return [s for s in SYSTEMS if s.name in wanted or s.broker in wanted]


def run_all(wanted: set[str], servers: driver.Servers) -> dict[str, Any]:
    """Every selected broker system, broker by broker; returns the phase's JSON part."""
    peers = {s.name: s for s in driver.SYSTEMS}
    systems = selected(wanted)
    out: dict[str, Any] = {"jobs": JOBS, "brokers": {}}
    for broker in ("rabbitmq", "sqs"):
        group = [s for s in systems if s.broker == broker]
        if not group:
            continue
        why = {s.name: driver.available(peers[s.peer]) for s in group}
        versions = {
            s.name: driver.version_of(peers[s.peer]) if why[s.name] is None else "-" for s in group
        }
        runs: dict[str, list[driver.Run]] = {s.name: [] for s in group}
        try:
            with BROKERS[broker]() as server:
                print(f"bench-runtime: {server.version} for {', '.join(runs)}", flush=True)
                for i in range(driver.REPEATS):
                    for s in group:
                        if why[s.name] is not None:
                            continue
                        run = measure(s, peers[s.peer], server, servers, f"{s.name}-{i + 1}")
                        runs[s.name].append(run)
                        print(
                            f"  {s.name} run {i + 1}/{driver.REPEATS}: {driver.fmt(run.jps)} "
                            f"jobs/s, enqueue {driver.fmt(run.enqueue_rate)}/s, "
                            f"{run.processed:,}/{run.jobs:,} in {run.span_seconds:.2f} s, "
                            f"worker CPU {run.cpu_us_per_job:.0f} us/job, broker CPU "
                            f"{run.redis_cpu_us_per_job:.0f} us/job, waited for a core "
                            f"{run.runqueue_wait_share:.0%} ({run.status}, "
                            f"load {run.load_before:.1f})",
                            flush=True,
                        )
                version = server.version
        except Exception as exc:  # a server that cannot start: its rows are unavailable
            print(f"bench-runtime: {broker} unavailable: {exc}", file=sys.stderr, flush=True)
            version = f"unavailable: {str(exc)[:200]}"
            for s in group:
                why[s.name] = why[s.name] or version
        rows = []
        for s in group:
            rs = runs[s.name]
            best = driver.median_run(rs) if rs else None
            rows.append(
                {
                    "system": s.name,
                    "version": versions[s.name],
                    "settings": s.settings,
                    "promise": s.promise,
                    "jobs": max(100, int(JOBS * s.jobs_factor)),
                    "jps": best.jps if best else 0.0,
                    "jps_runs": [round(r.jps) for r in rs],
                    "enqueue_rate": _median(rs, "enqueue_rate"),
                    "cpu_us_per_job": _median(rs, "cpu_us_per_job"),
                    "broker_cpu_us_per_job": _median(rs, "redis_cpu_us_per_job"),
                    "runqueue_wait_share": _median(rs, "runqueue_wait_share"),
                    "status": (best.status if best else f"unavailable: {why[s.name]}"),
                }
            )
        out["brokers"][broker] = {
            "server": version,
            "table": rows,
            "runs": {name: [asdict(r) for r in rs] for name, rs in runs.items()},
        }
    return out


def _median(runs: list[driver.Run], attr: str) -> float:
    return statistics.median([getattr(r, attr) for r in runs]) if runs else 0.0


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The table and one ``rabbitmq:`` / ``sqs:`` line per broker (workerfleet over the best
    peer on the same server, same run; classic queues against the peers' classic queues)."""
    lines: list[str] = []
    for broker, part in result.get("brokers", {}).items():
        lines.append("")
        lines.append(f"{broker} ({part['server']}), N={result['jobs']:,}, median of the runs:")
        head = ["system", "version", "settings", "jobs/s", "runs", "enqueue/s"]
        head += ["worker CPU us/job", "broker CPU us/job", "waited for core", "status"]
        table = [head] + [
            [
                r["system"],
                r["version"],
                r["settings"],
                driver.fmt(r["jps"]),
                "/".join(str(x) for x in r["jps_runs"]) or "-",
                driver.fmt(r["enqueue_rate"]),
                driver.fmt(r["cpu_us_per_job"]),
                driver.fmt(r["broker_cpu_us_per_job"]),
                f"{r['runqueue_wait_share']:.0%}",
                r["status"],
            ]
            for r in part["table"]
        ]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
        for n, row in enumerate(table):
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        jps = {r["system"]: r["jps"] for r in part["table"]}
        wf = jps.get(f"workerfleet-{broker}", 0.0)
        peers = {n: v for n, v in jps.items() if not n.startswith("workerfleet") and v > 0}
        best = max(peers, key=lambda n: peers[n]) if peers else "none"
        best_jps = peers.get(best, 0.0)
        ratio = wf / best_jps if best_jps else 0.0
        line = (
            f"{broker}: workerfleet_jps={wf:.0f} best_peer={best} best_peer_jps={best_jps:.0f} "
            f"ratio={ratio:.2f}"
        )
        quorum = jps.get(f"workerfleet-{broker}-quorum")
        if quorum:
            line += (
                f" quorum_jps={quorum:.0f} quorum_ratio={quorum / best_jps if best_jps else 0:.2f}"
            )
        if broker == "rabbitmq":
            goal = "met" if ratio >= RATIO_GOAL else "NOT met"
            line += f" (goal >= {RATIO_GOAL}x the better peer: {goal}; reported, never asserted)"
        lines.append(line)
    return lines
