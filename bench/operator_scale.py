"""Operator scale benchmark: 10,000 WorkerPools on the real kube-apiserver; Ready time, RSS, CPU.

Run by ``make bench-operator``. ``--apiserver real`` (the default): the e2e harness's control
plane (tests/e2e/kubecluster.py: etcd, kube-apiserver, controller-manager, scheduler, kwok; the
controller-manager's client QPS raised, see CONTROLLER_MANAGER_ARGS) with the API server's audit
log on for the operator's ServiceAccount, one real redis-server, the chart installed and the real
operator (``workerfleet operator``) as its ServiceAccount, as the e2e tests run it. Creates N
pools (default 10,000; builtin autoscaling, minReplicas 0, each on its own idle queue; 1,000 of
them poll every 5 s, the rest every ``--bulk-poll`` s) and follows one WATCH until every pool is
Ready=True. Then, after ``--settle`` seconds, a steady window (``--window``) with nothing
changing: the operator's API requests and writes from the audit log, its Redis commands from
MONITOR, its CPU from /proc (bench/kube_scale.py). Ends with
``operator: pools=N ready_s=X rss_mb=Y apiserver=real ready=R api_qps=Q`` (R < N: not all
Ready before ``--timeout``, and ready_s is that timeout); the JSON goes to
``bench/results/operator-real-<UTC time>.json``.

``--apiserver emulator`` is the second line: the Kubernetes API emulator of the test suite
(tests/workerfleet_operator/emulator.py) in this process, 1,000 pools by default, ending with
``operator: pools=N ready_s=X rss_mb=Y apiserver=emulator``. Never asserts timing (house rule
for benchmarks). Ctrl-C or SIGTERM stops it and everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workerfleet_operator.local import embedded_redis  # noqa: E402

from bench import harness as bench_harness  # noqa: E402
from bench import kube_scale  # noqa: E402
from tests.e2e import kubecluster, workerfleet_support  # noqa: E402
from tests.workerfleet_operator import conftest as fixtures  # noqa: E402
from tests.workerfleet_operator.emulator import Emulator  # noqa: E402

NAMESPACE = fixtures.NAMESPACE
FAST_POLL_SECONDS = 5.0


def proc_stats(pid: int) -> tuple[float, float, float]:
    """(rss_mb, peak_rss_mb, cpu_seconds) of a live process, from /proc."""
    rss = peak = 0.0
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    return rss, peak, cpu


def fetch_cpu_by_process(
    cluster: kubecluster.KubeCluster, operator_pid: int, redis_pid: int | None
) -> dict[str, float]:
    """CPU seconds so far of each process sharing the machine in the run (from /proc): the
    control plane's components, the operator, the pools' Redis and this benchmark itself."""
    pids = {c.name: c.process.pid for c in cluster.components}
    pids["operator"] = operator_pid
    if redis_pid is not None:
        pids["redis"] = redis_pid
    pids["benchmark"] = os.getpid()
    cpu: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            cpu[name] = proc_stats(pid)[2]
        except OSError:
            continue  # exited: not in the split
    return cpu


def build_pool(name: str) -> dict[str, Any]:
    return fixtures.build_pool(
        name, concurrency=8, autoscaling={"maxReplicas": 10, "pollingIntervalSeconds": 5.0}
    )


def is_ready(obj: dict[str, Any]) -> bool:
    return fixtures.condition(obj, "Ready").get("status") == "True"


def count_ready(emu: Emulator) -> int:
    return emu.count("workerpools", is_ready, group="workerfleet.io")


def run_emulator(args: argparse.Namespace) -> int:
    """The second line: the same operator against the API emulator of the test suite."""
    try:
        harness = bench_harness.start_harness("wf-bench-operator-", NAMESPACE, history_size=200_000)
    except embedded_redis.EmbeddedRedisError as exc:
        print(exc, file=sys.stderr)
        return 2
    emu, workdir, kubeconfig = harness.emulator, harness.workdir, harness.kubeconfig
    env = dict(
        os.environ,
        WORKERFLEET_OPERATOR_KUBECONFIG=str(kubeconfig),
        WORKERFLEET_OPERATOR_HEALTH_PORT="0",
        WORKERFLEET_OPERATOR_METRICS_PORT="0",
        WORKERFLEET_OPERATOR_LOG_LEVEL="warning",
    )
    log_path = workdir / "operator.log"
    operator = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from workerfleet_operator.cli import main; sys.exit(main(['operator']))",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
    )
    try:
        # wait for the operator's watches before starting the clock
        deadline = time.monotonic() + 60
        while emu.request_counts["WATCH"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        _, _, cpu_idle = proc_stats(operator.pid)
        requests_before = sum(emu.request_counts.values())
        print(f"creating {args.pools} WorkerPools against the emulator at {emu.url} ...")
        started = time.monotonic()
        for i in range(args.pools):
            emu.create("workerpools", build_pool(f"pool-{i:04d}"), group="workerfleet.io")
        created_s = time.monotonic() - started
        ready = 0
        peak_seen = 0.0
        last_print = 0.0
        while time.monotonic() - started < args.timeout:
            ready = count_ready(emu)
            rss, peak, cpu = proc_stats(operator.pid)
            peak_seen = max(peak_seen, peak)
            now = time.monotonic() - started
            if now - last_print >= (1 if args.verbose else 5):
                deps = emu.count("deployments", lambda _: True, group="apps")
                print(
                    f"  t={now:5.1f}s deployments={deps} ready={ready}/{args.pools} "
                    f"rss={rss:.0f}MB cpu={cpu - cpu_idle:.1f}s"
                )
                last_print = now
            if ready >= args.pools:
                break
            time.sleep(0.5)
        ready_s = time.monotonic() - started
        rss, peak, cpu = proc_stats(operator.pid)
        converge_requests = sum(emu.request_counts.values()) - requests_before
        # steady state: one more full polling interval, to see the per-poll cost
        time.sleep(10)
        rss_steady, peak, cpu_after = proc_stats(operator.pid)
        peak_seen = max(peak_seen, peak)
        deployments = emu.count("deployments", lambda _: True, group="apps")
        by_kind: dict[str, int] = {}
        for method, path, _code in list(emu.request_log):
            parts = path.rstrip("/").split("/")
            kind = (
                parts[-2] if parts[-1] == "status" else (parts[-2] if len(parts) > 5 else parts[-1])
            )
            status = parts[-1] == "status"
            key = f"{method} {'workerpools/status' if status else kind}"
            by_kind[key] = by_kind.get(key, 0) + 1
        top = sorted(by_kind.items(), key=lambda kv: -kv[1])[:8]
        print("requests by kind:", ", ".join(f"{k}={v}" for k, v in top))
        print(f"emulator+bench process cpu: {time.process_time():.1f}s")
        print(
            f"pools created in {created_s:.1f}s; "
            f"all Ready: {ready >= args.pools} ({ready}/{args.pools})"
        )
        print(
            f"deployments={deployments} api_requests_to_converge={converge_requests} "
            f"({converge_requests / max(args.pools, 1):.1f}/pool)"
        )
        print(
            f"operator cpu: {cpu - cpu_idle:.1f}s to converge, {(cpu_after - cpu) / 10:.2f} cores "
            f"in steady state (5 s polling of {args.pools} queues)"
        )
        print(
            f"operator rss: {rss:.0f}MB at convergence, {rss_steady:.0f}MB steady, "
            f"peak {peak_seen:.0f}MB"
        )
        print(
            f"operator: pools={args.pools} ready_s={ready_s:.1f} rss_mb={peak_seen:.0f} "
            "apiserver=emulator"
        )
        return 0 if ready >= args.pools else 1
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(30)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait(10)
        harness.stop(keep_workdir=bool(os.environ.get("KEEP")))


REAL_NAMESPACE = "scale"
OPERATOR_GROUP = f"system:serviceaccounts:{workerfleet_support.SYSTEM_NAMESPACE}"
# The controller-manager's client defaults (20 requests/s, burst 30) would make its Deployment
# controller, not the operator, the pace-setter: 10,000 Deployments need a ReplicaSet and a
# status write each before the operator can see them rolled out. Clusters of this size raise
# them too; the operator's own client keeps every default.
CONTROLLER_MANAGER_ARGS = (
    "--kube-api-qps=500",
    "--kube-api-burst=1000",
    "--concurrent-deployment-syncs=20",
    "--concurrent-replicaset-syncs=20",
)


def build_real_pool(name: str, poll_seconds: float) -> dict[str, Any]:
    autoscaling = {
        "mode": "builtin",
        "minReplicas": 0,
        "maxReplicas": 10,
        "pollingIntervalSeconds": poll_seconds,
    }
    return workerfleet_support.build_pool(name, name, autoscaling)


def run_real(args: argparse.Namespace) -> int:
    """10,000 pools on the e2e harness's kube-apiserver + etcd (+ controller-manager, kwok)."""
    workdir = Path(tempfile.mkdtemp(prefix="wf-bench-operator-real-"))
    audit_path = workdir / "audit.log"
    policy = kube_scale.build_audit_policy(workdir / "audit-policy.json", OPERATOR_GROUP)
    extra_args = {
        "kube-apiserver": (f"--audit-policy-file={policy}", f"--audit-log-path={audit_path}"),
        "kube-controller-manager": CONTROLLER_MANAGER_ARGS,
    }
    (workdir / "kube").mkdir()
    print(f"starting the control plane in {workdir} ...", flush=True)
    cluster = kubecluster.start_kube_cluster(workdir / "kube", extra_args=extra_args)
    server: embedded_redis.EmbeddedRedis | None = None
    operator: workerfleet_support.Operator | None = None
    watch: kube_scale.ReadyWatch | None = None
    try:
        server = embedded_redis.EmbeddedRedis(data_dir=workdir / "redis").start()
        account = kube_scale.apply_chart_and_namespace(cluster, REAL_NAMESPACE, server.url)
        watch = kube_scale.ReadyWatch(cluster, REAL_NAMESPACE).start()
        operator = workerfleet_support.start_operator(
            cluster,
            account,
            (REAL_NAMESPACE,),
            workdir / "operator",
            extra_env={
                "WORKERFLEET_OPERATOR_LOG_LEVEL": "warning",
                "WORKERFLEET_OPERATOR_API_QPS": str(args.operator_qps),
                "WORKERFLEET_OPERATOR_API_BURST": str(args.operator_burst),
            },
        )
        pid = operator.process.pid
        _, _, cpu_idle = proc_stats(pid)
        redis_pid = server.pid
        cpu_before = fetch_cpu_by_process(cluster, pid, redis_pid)
        bodies = [
            build_real_pool(
                f"pool-{i:05d}", FAST_POLL_SECONDS if i < args.fast_pools else args.bulk_poll
            )
            for i in range(args.pools)
        ]
        audit = kube_scale.AuditLog(audit_path)
        audit.mark()
        print(
            f"creating {args.pools} WorkerPools ({args.fast_pools} polling every "
            f"{FAST_POLL_SECONDS:.0f} s, the rest every {args.bulk_poll:.0f} s; operator API "
            f"budget {args.operator_qps:g} requests/s, burst {args.operator_burst}) against "
            f"kube-apiserver {kubecluster.K8S_VERSION} at {cluster.server}, load "
            f"{os.getloadavg()[0]:.1f} ...",
            flush=True,
        )
        started = time.monotonic()
        created: dict[str, Any] = {}

        def create() -> None:
            created["codes"] = kube_scale.PoolCreator(cluster, REAL_NAMESPACE).create_all(bodies)
            created["seconds"] = time.monotonic() - started

        creator = threading.Thread(target=create, name="creator", daemon=True)
        creator.start()
        ready = 0
        peak_seen = 0.0
        last_print = -5.0
        while time.monotonic() - started < args.timeout:
            seen, ready = watch.counts()
            rss, peak, cpu = proc_stats(pid)
            peak_seen = max(peak_seen, peak)
            now = time.monotonic() - started
            if now - last_print >= 5:
                print(
                    f"  t={now:5.1f}s created={seen} ready={ready}/{args.pools} "
                    f"rss={rss:.0f}MB cpu={cpu - cpu_idle:.1f}s load={os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                last_print = now
            if ready >= args.pools:
                break
            time.sleep(0.5)
        ready_s = time.monotonic() - started
        creator.join(60)
        rss, peak, cpu_ready = proc_stats(pid)
        peak_seen = max(peak_seen, peak)
        cpu_after = fetch_cpu_by_process(cluster, pid, redis_pid)
        # Where the machine's cores went while the pools converged: the model's other half
        # (requests per pool times what each costs the API server and etcd).
        cpu_split = {
            name: round(cpu_after[name] - cpu_before.get(name, 0.0), 1) for name in cpu_after
        }
        converge = audit.requests_since_mark()
        print(
            f"pools created in {created.get('seconds', 0):.1f}s "
            f"(HTTP status: {dict(created.get('codes', {}))}); all Ready: "
            f"{ready >= args.pools} ({ready}/{args.pools}) after {ready_s:.1f}s",
            flush=True,
        )
        print(
            f"operator requests to converge: {sum(converge.values())} "
            f"({sum(converge.values()) / args.pools:.2f}/pool), "
            f"writes {kube_scale.count_writes(converge)}; "
            + ", ".join(f"{k}={v}" for k, v in converge.most_common(8)),
            flush=True,
        )
        print(
            f"operator cpu to converge: {cpu_ready - cpu_idle:.1f}s; rss {rss:.0f}MB, "
            f"peak {peak_seen:.0f}MB",
            flush=True,
        )
        print(
            "cpu seconds to converge by process: "
            + ", ".join(f"{k}={v}" for k, v in sorted(cpu_split.items(), key=lambda kv: -kv[1])),
            flush=True,
        )

        # Steady state: nothing changes (idle queues, no spec edits); the API server's audit
        # log counts what the operator still asks, MONITOR what it asks Redis.
        time.sleep(args.settle)
        audit.mark()
        _, _, cpu0 = proc_stats(pid)
        monitor = kube_scale.RedisMonitor(server.url).start()
        opened = time.monotonic()
        time.sleep(args.window)
        monitor.stop()
        elapsed = time.monotonic() - opened
        rss_steady, peak, cpu1 = proc_stats(pid)
        peak_seen = max(peak_seen, peak)
        steady = audit.requests_since_mark()
        writes = kube_scale.count_writes(steady)
        per_pool_min = sum(steady.values()) / args.pools / (elapsed / 60)
        bulk = args.pools - args.fast_pools
        polls = args.fast_pools * elapsed / FAST_POLL_SECONDS + bulk * elapsed / args.bulk_poll
        client_commands = sum(monitor.client_commands.values())
        trips = client_commands / polls if polls else 0.0
        cores = (cpu1 - cpu0) / elapsed
        print(
            f"steady window {elapsed:.0f}s: operator API requests {sum(steady.values())} "
            f"({per_pool_min:.3f} per pool per minute), writes {writes}; "
            + (", ".join(f"{k}={v}" for k, v in steady.most_common(6)) or "none"),
            flush=True,
        )
        print(
            f"redis in the window: {client_commands} client commands for {polls:.0f} polls "
            f"due ({dict(monitor.client_commands.most_common(6))}; inside scripts: "
            f"{dict(monitor.script_commands.most_common(6))})",
            flush=True,
        )
        result = {
            "apiserver": f"kube-apiserver {kubecluster.K8S_VERSION}",
            "pools": args.pools,
            "ready": ready,
            "ready_seconds": round(ready_s, 1),
            "create_seconds": round(float(created.get("seconds", 0.0)), 1),
            "create_status_codes": {str(k): v for k, v in created.get("codes", {}).items()},
            "operator_peak_rss_mb": round(peak_seen),
            "operator_rss_mb_ready": round(rss),
            "operator_rss_mb_steady": round(rss_steady),
            "operator_cpu_seconds_to_converge": round(cpu_ready - cpu_idle, 1),
            "cpu_seconds_to_converge_by_process": cpu_split,
            "operator_requests_to_converge": dict(converge.most_common()),
            "steady_window_seconds": round(elapsed, 1),
            "steady_requests": dict(steady.most_common()),
            "steady_writes": writes,
            "steady_requests_per_pool_per_minute": round(per_pool_min, 4),
            "fast_pools": args.fast_pools,
            "fast_poll_seconds": FAST_POLL_SECONDS,
            "bulk_poll_seconds": args.bulk_poll,
            "polls_due_in_window": round(polls),
            "redis_client_commands": dict(monitor.client_commands.most_common()),
            "redis_script_commands": dict(monitor.script_commands.most_common()),
            "redis_round_trips_per_pool_per_poll": round(trips, 3),
            "operator_cpu_cores_steady": round(cores, 3),
            "controller_manager_args": list(CONTROLLER_MANAGER_ARGS),
            "operator_api_qps": args.operator_qps,
            "operator_api_burst": args.operator_burst,
            "load_average": os.getloadavg(),
        }
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        (out / f"operator-real-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"steady: pools={args.pools} writes={writes} "
            f"requests_per_pool_per_min={per_pool_min:.3f}"
        )
        print(
            f"autoscaler: polling_pools={args.fast_pools} every={FAST_POLL_SECONDS:.0f}s "
            f"redis_round_trips_per_pool_per_poll={trips:.3f} operator_cpu_cores={cores:.3f}"
        )
        print(
            f"operator: pools={args.pools} ready_s={ready_s:.1f} rss_mb={peak_seen:.0f} "
            f"apiserver=real ready={ready} api_qps={args.operator_qps:g}"
        )
        return 0 if ready >= args.pools else 1
    finally:
        if watch is not None:
            watch.stop()
        kube_scale.stop_all(operator, cluster, server, workdir, keep=args.keep)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the bench as Ctrl-C does: its ``finally`` blocks stop the operator, the
    control plane and Redis it started (killed by PID, they would outlive it)."""
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apiserver", choices=("real", "emulator"), default="real")
    parser.add_argument("--pools", type=int, default=None, help="10000 (real), 1000 (emulator)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this (s)")
    parser.add_argument("--verbose", action="store_true", help="progress every second")
    parser.add_argument("--fast-pools", type=int, default=1000, help="pools polling every 5 s")
    parser.add_argument(
        "--bulk-poll", type=float, default=300.0, help="polling interval of the other pools (s)"
    )
    # Longer than the operator's status refresh (30 s): the numbers a poll reads after Ready
    # are written once at the next refresh, which is convergence, not steady state.
    parser.add_argument("--settle", type=float, default=45.0, help="wait after Ready (s)")
    parser.add_argument("--window", type=float, default=60.0, help="steady-state window (s)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    # The operator's client budget (WORKERFLEET_OPERATOR_API_QPS/_BURST, default 20/40, like
    # client-go's): converging 10,000 new pools takes ~5 requests each, 50,000 requests, which
    # the default spreads over ~40 minutes by design. A fleet of that size raises it, as its
    # controller-manager's; the line printed names the budget used.
    parser.add_argument("--operator-qps", type=float, default=1000.0)
    parser.add_argument("--operator-burst", type=int, default=2000)
    args = parser.parse_args()
    if args.apiserver == "emulator":
        args.pools = args.pools or 1000
        return run_emulator(args)
    args.pools = args.pools or 10_000
    args.fast_pools = min(args.fast_pools, args.pools)
    return run_real(args)


if __name__ == "__main__":
    sys.exit(main())
