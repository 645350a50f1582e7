"""The Redis password in the referenced Secret never leaves the operator's memory (security #5)."""

from __future__ import annotations

import json
from collections.abc import Callable

import prometheus_client

from tests.workerfleet_operator.conftest import (
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    build_pool,
    build_secret,
    condition,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator


def test_the_canary_password_never_appears_in_the_pool_its_status_events_or_logs(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    captured_logs: list[str],
) -> None:
    canary = queue_redis.password
    assert canary and canary in queue_redis.url
    # Given Secrets holding the canary: a working URL, and an unusable URL with the same password
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    emulator.create("secrets", build_secret("bad-url", f"http://user:{canary}@127.0.0.1:1/0"))
    runner = operator(log_level="debug")
    # When pools use them, one pool's Redis goes away, and everything has been reported
    emulator.create("workerpools", build_pool("good"), group="workerfleet.io")
    emulator.create("workerpools", build_pool("bad", secret="bad-url"), group="workerfleet.io")
    emulator.create("workerpools", build_pool("gone", queue="gone"), group="workerfleet.io")
    wait_until(
        lambda: (
            condition(
                emulator.get("workerpools", NAMESPACE, "good", group="workerfleet.io"),
                "QueueReachable",
            ).get("status")
            == "True"
        ),
        message="good pool not polled",
    )
    bad = wait_until(
        lambda: condition(
            emulator.get("workerpools", NAMESPACE, "bad", group="workerfleet.io"), "Ready"
        ),
        message="bad pool not reported",
    )
    assert bad["reason"] == "InvalidRedisURL"
    queue_redis.stop()
    wait_until(
        lambda: (
            condition(
                emulator.get("workerpools", NAMESPACE, "gone", group="workerfleet.io"),
                "QueueReachable",
            ).get("status")
            == "False"
        ),
        timeout=15,
        message="unreachable Redis not reported",
    )
    # Then the canary is nowhere: pools (annotations included), children, Events, logs, metrics
    pools = emulator.list("workerpools", NAMESPACE, group="workerfleet.io")
    children = emulator.list("deployments", NAMESPACE, group="apps")
    events = emulator.list("events", NAMESPACE)
    assert events, "expected Events to inspect"
    assert any("kopf" in line or "workerfleet" in line for line in captured_logs), (
        "no logs captured"
    )
    metrics_text = prometheus_client.generate_latest(runner.metrics.registry).decode()
    for where, text in (
        ("pools", json.dumps(pools)),
        ("deployments", json.dumps(children)),
        ("events", json.dumps(events)),
        ("logs", "\n".join(captured_logs)),
        ("metrics", metrics_text),
    ):
        assert canary not in text, f"canary leaked into {where}"
    # And kopf left no state annotations of its own on the pools
    for obj in pools:
        annotations = obj["metadata"].get("annotations") or {}
        assert not [k for k in annotations if "kopf" in k or "last-handled" in k], annotations
