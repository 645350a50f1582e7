"""Operator scale benchmark: 1,000 WorkerPools on the API emulator; time to all Ready, RSS, CPU.

Run by ``make bench-operator``. Starts the Kubernetes API emulator of the test suite
(tests/workerfleet_operator/emulator.py) in this process, one real redis-server, and the real
operator (``workerfleet operator``) as a separate process so that its RSS and CPU are its own.
Creates N pools (all sharing one Secret, each with its own queue, builtin autoscaling polling
every 5 s), then samples until every pool reports Ready=True. Prints the operator's peak RSS,
CPU seconds, the API requests it made, and ends with the line
``operator: pools=N ready_s=X rss_mb=Y``. Never asserts timing (house rule for benchmarks).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workerfleet_operator.local import embedded_redis  # noqa: E402

from bench import harness as bench_harness  # noqa: E402
from tests.workerfleet_operator import conftest as fixtures  # noqa: E402
from tests.workerfleet_operator.emulator import Emulator  # noqa: E402

NAMESPACE = fixtures.NAMESPACE


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


def build_pool(name: str) -> dict[str, Any]:
    return fixtures.build_pool(
        name, concurrency=8, autoscaling={"maxReplicas": 10, "pollingIntervalSeconds": 5.0}
    )


def is_ready(obj: dict[str, Any]) -> bool:
    return fixtures.condition(obj, "Ready").get("status") == "True"


def count_ready(emu: Emulator) -> int:
    return emu.count("workerpools", is_ready, group="workerfleet.io")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this (s)")
    parser.add_argument("--verbose", action="store_true", help="progress every second")
    args = parser.parse_args()

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
        print(f"operator: pools={args.pools} ready_s={ready_s:.1f} rss_mb={peak_seen:.0f}")
        return 0 if ready >= args.pools else 1
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(30)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait(10)
        harness.stop(keep_workdir=bool(os.environ.get("KEEP")))


if __name__ == "__main__":
    sys.exit(main())
