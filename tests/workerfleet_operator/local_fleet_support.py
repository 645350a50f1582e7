"""Helpers for the local-fleet tests: pool manifests, a driven runner, bounded waits.

Used by tests/workerfleet_operator/test_local_fleet_*.py. Redis is a real redis-server
(the local fleet's own EmbeddedRedis), workers are real ``worker_runtime`` subprocesses running
``local_fleet_tasks:app`` from this directory.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
import yaml
from workerfleet_operator.local import embedded_redis, manifest, runner

from worker_runtime import App

HERE = pathlib.Path(__file__).resolve().parent
STEP_SECONDS = 0.25


def build_manifest(name: str, **autoscaling: Any) -> dict[str, Any]:
    """A WorkerPool running local_fleet_tasks with fast leases, drains and windows."""
    scaling: dict[str, Any] = {
        "minReplicas": 0,
        "maxReplicas": 3,
        "targetBacklogPerReplica": 5,
        "targetUtilization": 1.0,
        "pollingIntervalSeconds": 1,
        "scaleUp": {"stabilizationWindowSeconds": 0, "maxStepPercent": 100, "maxStepPods": 4},
        "scaleDown": {"stabilizationWindowSeconds": 2, "maxStepPercent": 100},
    }
    scaling.update(autoscaling)
    return {
        "apiVersion": "workerfleet.io/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": name},
        "spec": {
            "image": "local",
            "app": "local_fleet_tasks:app",
            "queue": {"name": name, "redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
            "concurrency": 2,
            "leaseSeconds": 3,
            "jobTimeoutSeconds": 30,
            "drain": {"timeoutSeconds": 10},
            "retry": {"maxAttempts": 2, "backoff": {"baseSeconds": 0.1, "maxSeconds": 0.5}},
            "autoscaling": scaling,
        },
    }


def write_manifest(directory: pathlib.Path, document: dict[str, Any]) -> pathlib.Path:
    path = directory / f"{document['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@dataclass
class DrivenFleet:
    """A FleetRunner whose polls the test drives, with every snapshot kept."""

    runner: runner.FleetRunner
    redis_url: str
    app: App
    client: redis.Redis
    snapshots: list[runner.Snapshot] = field(default_factory=list)

    def poll(self) -> runner.Snapshot:
        snapshot = self.runner.step()
        self.snapshots.append(snapshot)
        return snapshot

    def drive_until(
        self, done: Callable[[runner.Snapshot], bool], *, timeout: float, message: str
    ) -> runner.Snapshot:
        """Poll every STEP_SECONDS (bounded) until ``done`` holds for a snapshot."""
        deadline = time.monotonic() + timeout
        snapshot = self.poll()
        while not done(snapshot):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s: {message}; last: {describe(snapshot)}")
            time.sleep(STEP_SECONDS)
            snapshot = self.poll()
        return snapshot

    def enqueue(self, task: str, count: int, seconds: float = 0.0) -> None:
        for _ in range(count):
            self.app.enqueue_sync(task, {"seconds": seconds})

    def ran(self) -> list[dict[str, Any]]:
        raw = self.client.lrange(f"test:{self.runner.pool.queue}:ran", 0, -1)
        return [json.loads(item) for item in raw]


def describe(snapshot: runner.Snapshot) -> str:
    s = snapshot.queue_stats
    queue = "unreachable" if s is None else f"backlog={s.backlog} in_flight={s.in_flight}"
    return f"t={snapshot.at:.1f} {queue} replicas={snapshot.replicas} :: {snapshot.decision.reason}"


@contextlib.contextmanager
def driven_fleet(
    tmp_path: pathlib.Path,
    name: str,
    *,
    redis_server: embedded_redis.EmbeddedRedis | None = None,
    metrics_port: int | None = None,
    drain_seconds: float = 10.0,
    annotations: dict[str, str] | None = None,
    **autoscaling: Any,
) -> Iterator[DrivenFleet]:
    """Given an embedded Redis and a pool, a runner the test polls; drained on exit."""
    document = build_manifest(name, **autoscaling)
    document["spec"]["drain"] = {"timeoutSeconds": drain_seconds}
    if annotations:
        document["metadata"]["annotations"] = annotations
    pool = manifest.build_pool(document)
    own = redis_server is None
    server = redis_server or embedded_redis.EmbeddedRedis(tmp_path / "redis").start()
    fleet_runner = runner.FleetRunner(
        pool,
        redis_url=server.url,
        log_dir=tmp_path / "logs",
        app_path=HERE,
        metrics_port=metrics_port,
    )
    app = App(queue=pool.queue, redis_url=server.url)
    client = redis.Redis.from_url(server.url)
    try:
        yield DrivenFleet(fleet_runner, server.url, app, client)
    finally:
        fleet_runner.close(drain_timeout=20.0)
        client.close()
        with contextlib.suppress(Exception):
            app_producer = app._producers.sync_producer
            if app_producer is not None:
                app_producer.close()
        if own:
            server.stop()
