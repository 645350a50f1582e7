"""The operator process: /healthz, /metrics names, namespaced mode, stalled watches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.workerfleet_operator.conftest import (
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    build_pool,
    build_secret,
    condition,
    free_port,
    wait_for_condition,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator

GROUP = "workerfleet.io"

POOL_SERIES = (
    "workerfleet_pool_backlog",
    "workerfleet_pool_in_flight",
    "workerfleet_pool_delayed",
    "workerfleet_pool_dead_letter",
    "workerfleet_pool_dead_letter_oldest_age_seconds",
    "workerfleet_pool_oldest_job_age_seconds",
    "workerfleet_pool_replicas_desired",
    "workerfleet_pool_replicas_current",
    "workerfleet_pool_replicas_ready",
    "workerfleet_pool_replicas_max",
    "workerfleet_pool_dead_letter_alert_threshold",
    "workerfleet_pool_oldest_job_age_target_seconds",
    "workerfleet_pool_workers_expired",
    "workerfleet_pool_jobs_enqueued_total",
    "workerfleet_pool_jobs_completed_total",
    "workerfleet_pool_jobs_failed_total",
    "workerfleet_pool_jobs_dead_lettered_total",
    "workerfleet_pool_jobs_cancelled_total",
    "workerfleet_pool_workers_killed_total",
)
# Series with more labels than the pool's: (name, the labels after the pool's, sorted as the
# exposition sorts them). An idle pool with minReplicas 0 is Ready as ScaledToZero.
LABELLED_POOL_SERIES = (
    ("workerfleet_pool_queue_reachable", 'reason="QueueRead"'),
    ("workerfleet_pool_condition", 'reason="ScaledToZero",status="True",type="Ready"'),
)
OPERATOR_SERIES = (
    "workerfleet_operator_reconcile_total",
    "workerfleet_operator_reconcile_errors_total",
    "workerfleet_operator_reconcile_duration_seconds_bucket",
)


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
        return response.status, response.read().decode()


def test_the_operator_serves_healthz_and_every_documented_metric(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given an operator with its health and metrics ports open, and one polled pool
    health, metrics_port = free_port(), free_port()
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator(health_port=health, metrics_port=metrics_port, bind_host="127.0.0.1")
    emulator.create("workerpools", build_pool("emails"), group=GROUP)
    wait_for_condition(emulator, "emails", "QueueReachable", message="pool not polled")
    # When both endpoints are scraped
    status, _ = wait_until(
        lambda: fetch(f"http://127.0.0.1:{health}/healthz"), message="no /healthz"
    )
    # (the pool's series are exported after that poll's status and Events are written)
    pool = 'namespace="default",pool="emails",queue="emails"'
    series = [f"{n}{{{pool}}}" for n in POOL_SERIES]
    series += [f"{n}{{{pool},{more}}}" for n, more in LABELLED_POOL_SERIES]
    code, text = wait_until(
        lambda: (
            (r := fetch(f"http://127.0.0.1:{metrics_port}/metrics"))
            and all(s in r[1] for s in series)
            and r
        ),
        message="the pool's series were never exported",
    )
    # Then liveness answers 200 and every series of docs/architecture.md is exported with its labels
    assert status == 200 and code == 200
    for name in series:
        assert name in text, name
    for name in OPERATOR_SERIES:
        assert name in text, name


def test_a_namespaced_operator_only_manages_its_namespaces(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given an operator watching only namespace "team-a"
    for namespace in ("team-a", "team-b"):
        emulator.create(
            "secrets", build_secret("redis-creds", queue_redis.url, namespace=namespace)
        )
    operator(namespaces="team-a")
    # When both namespaces get a pool
    emulator.create("workerpools", build_pool("emails", namespace="team-a"), group=GROUP)
    emulator.create("workerpools", build_pool("emails", namespace="team-b"), group=GROUP)
    # Then only team-a's pool gets a Deployment, and no cluster-wide request was made
    wait_until(
        lambda: emulator.get("deployments", "team-a", "emails", group="apps"),
        message="no Deployment",
    )
    wait_until(
        lambda: (
            condition(emulator.get("workerpools", "team-a", "emails", group=GROUP), "Ready").get(
                "status"
            )
            == "True"
        ),
        message="team-a pool not Ready",
    )
    assert emulator.get("deployments", "team-b", "emails", group="apps") is None
    resource_paths = [p for _, p, _ in list(emulator.request_log) if p.count("/") > 3]
    assert resource_paths and all("/namespaces/team-a/" in p for p in resource_paths), (
        resource_paths
    )


def test_the_deployment_watch_asks_the_api_server_only_for_pools_deployments(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a running pool (its Deployment is watched)
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator()
    emulator.create("workerpools", build_pool("emails"), group=GROUP)
    wait_until(
        lambda: emulator.get("deployments", "default", "emails", group="apps"),
        message="no Deployment",
    )
    # Then every Deployment watch carries the pool label as its selector: the server filters,
    # so the operator never receives the other Deployments of its namespaces
    watches = [sel for path, sel in list(emulator.watch_log) if path.endswith("/deployments")]
    assert watches, "no Deployment watch"
    assert all(sel == "workerfleet.io/pool" for sel in watches), watches


def test_a_silently_stalled_watch_is_detected_and_the_operator_catches_up(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a converged pool and an operator that gives up on a silent watch after 2 s
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    operator(watch_client_timeout_seconds=2.0, watch_server_timeout_seconds=600.0)
    emulator.create("workerpools", build_pool("emails"), group=GROUP)
    wait_until(
        lambda: emulator.get("deployments", NAMESPACE, "emails", group="apps"),
        message="no Deployment",
    )
    # When every open watch goes silent (connection open, events lost) and the spec changes
    emulator.stall_open_watches()
    emulator.patch(
        "workerpools",
        NAMESPACE,
        "emails",
        {"spec": {"image": "registry.example/w:2.0.0"}},
        group=GROUP,
    )
    # Then the operator notices, re-watches from its last resourceVersion and applies the change
    wait_until(
        lambda: (
            emulator.get("deployments", NAMESPACE, "emails", group="apps")["spec"]["template"][
                "spec"
            ]["containers"][0]["image"]
            == "registry.example/w:2.0.0"
        ),
        timeout=15,
        message="stalled watch not recovered",
    )


def test_the_workerfleet_operator_command_runs_logs_json_and_stops_cleanly_on_sigterm(
    emulator: Emulator, queue_redis: QueueRedis, kubeconfig: Path, tmp_path: Path
) -> None:
    # Given the `workerfleet operator` command started as its own process
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    env = dict(
        os.environ,
        WORKERFLEET_OPERATOR_KUBECONFIG=str(kubeconfig),
        WORKERFLEET_OPERATOR_HEALTH_PORT="0",
        WORKERFLEET_OPERATOR_METRICS_PORT="0",
        WORKERFLEET_OPERATOR_LOG_LEVEL="debug",
    )
    stderr = (tmp_path / "operator.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from workerfleet_operator.cli import main; sys.exit(main(['operator']))",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    try:
        # When a pool is created
        emulator.create("workerpools", build_pool("emails"), group=GROUP)
        # Then it becomes Ready
        wait_for_condition(
            emulator, "emails", "Ready", timeout=30, message="pool not Ready under the CLI operator"
        )
        # And on SIGTERM the process exits 0 promptly
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        stderr.close()
    # And its logs are JSON lines without the Redis password
    text = (tmp_path / "operator.log").read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines
    parsed = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(parsed) >= len(lines) * 0.9, text[:2000]
    assert queue_redis.password not in text
