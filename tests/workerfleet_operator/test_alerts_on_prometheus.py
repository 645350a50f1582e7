"""The alert rules on a real Prometheus scraping the real operator, as on-call meets them.

The operator runs against the API emulator and a real redis-server (conftest); a real Prometheus
(the demo's :class:`demo.Prometheus`) loads deploy/alerts/workerfleet-alerts.fast.yaml (every
window divided by 20) and scrapes every second. Targets come from a file, rewritten the way
Kubernetes service discovery moves them: each operator "pod" is a target with its own
``instance`` and ``pod`` labels, and a stopped pod's target disappears (Prometheus marks its
series stale). A missing ``prometheus`` binary fails these tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from workerfleet_operator.local import demo

from tests.workerfleet_operator.conftest import (
    NAMESPACE,
    OperatorRunner,
    OperatorTargets,
    QueueRedis,
    given_a_running_pool,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from worker_runtime.brokers.redis import keys

POOL_LABELS = {"namespace": NAMESPACE, "pool": "emails", "queue": "emails"}
COUNTERS = keys.build_keys("emails").counters
DEAD_LETTERED = 'workerfleet_pool_jobs_dead_lettered_total{pool="emails"}'


def alerts_named(server: demo.Prometheus, name: str) -> list[dict[str, Any]]:
    return [a for a in server.fetch_alerts() if a["labels"].get("alertname") == name]


def firing(server: demo.Prometheus, name: str) -> list[dict[str, Any]]:
    return [a for a in alerts_named(server, name) if a["state"] == "firing"]


def scraped_value(server: demo.Prometheus, expr: str) -> float | None:
    result = server.fetch_query(expr)
    return float(result[0]["value"][1]) if result else None


def given_a_scraped_dead_letter_count(
    count: int,
    server: demo.Prometheus,
    emulator: Emulator,
    queue_redis: QueueRedis,
    start_operator: Callable[[], OperatorRunner],
) -> OperatorRunner:
    """Redis counts ``count`` dead letters; the operator exports them; Prometheus has scraped
    them for longer than the fast rules' 15 s growth window."""
    queue_redis.client().hset(COUNTERS, "dead_lettered", count)
    runner = given_a_running_pool(emulator, queue_redis, lambda **_: start_operator())
    wait_until(
        lambda: scraped_value(server, DEAD_LETTERED) == count,
        timeout=20,
        message="the dead-letter count was never scraped",
    )
    time.sleep(16)
    return runner


def test_a_dead_letter_counter_that_steps_back_pages_nothing(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    prometheus: tuple[demo.Prometheus, OperatorTargets],
) -> None:
    # Given a pool whose Redis says 5,000 jobs were dead-lettered, scraped for longer than the
    # growth window (15 s in the fast rules)
    server, targets = prometheus
    given_a_scraped_dead_letter_count(
        5000,
        server,
        emulator,
        queue_redis,
        lambda: targets.start_pod(operator, "op-a"),
    )
    assert alerts_named(server, "WorkerPoolDeadLetterGrowing") == []
    # When the counter steps back, as after a failover to a replica that missed two writes
    queue_redis.client().hset(COUNTERS, "dead_lettered", 4998)
    wait_until(
        lambda: scraped_value(server, DEAD_LETTERED) == 4998, timeout=20, message="no step back"
    )
    # Then for longer than the growth window nothing pends or fires
    seen = []
    deadline = time.monotonic() + 18
    while time.monotonic() < deadline:
        seen += alerts_named(server, "WorkerPoolDeadLetterGrowing")
        time.sleep(0.5)
    assert seen == []
    # (and the rules did see the pool all along: the recorded series exists)
    recorded = "namespace_pool_queue:workerfleet_pool_jobs_dead_lettered_total:growth5m"
    assert scraped_value(server, f'{recorded}{{pool="emails"}}') == 0


def test_a_deleted_secret_fires_queue_unreachable_within_its_for_with_the_reason(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    prometheus: tuple[demo.Prometheus, OperatorTargets],
) -> None:
    # Given a running pool whose queue Prometheus sees as reachable
    server, targets = prometheus
    given_a_running_pool(
        emulator,
        queue_redis,
        lambda **kw: targets.start_pod(operator, "op-a"),
    )
    wait_until(
        lambda: scraped_value(server, 'workerfleet_pool_queue_reachable{pool="emails"}') == 1,
        timeout=20,
        message="the reachable queue was never scraped",
    )
    # When its Secret is deleted
    deleted_at = time.monotonic()
    emulator.delete("secrets", NAMESPACE, "redis-creds")
    # Then WorkerPoolQueueUnreachable (for: 6 s in the fast rules) fires: not before its for:,
    # and within it plus the pipeline (operator poll 1 s, scrape 1 s, two rule evaluations 1 s
    # each, with room for a loaded machine)
    fired = wait_until(
        lambda: firing(server, "WorkerPoolQueueUnreachable"),
        timeout=6 + 14,
        interval=0.25,
        message="WorkerPoolQueueUnreachable never fired after the Secret was deleted",
    )
    elapsed = time.monotonic() - deleted_at
    assert elapsed >= 6
    [alert] = fired
    assert {k: alert["labels"][k] for k in POOL_LABELS} == POOL_LABELS
    assert "pod" not in alert["labels"] and "instance" not in alert["labels"]
    assert "(reason: SecretNotFound)" in alert["annotations"]["description"]


def test_an_operator_restart_during_dead_letter_growth_still_fires(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    prometheus: tuple[demo.Prometheus, OperatorTargets],
) -> None:
    # Given operator pod A exporting a pool with 10 dead letters, scraped for longer than the
    # growth window
    server, targets = prometheus
    first = given_a_scraped_dead_letter_count(
        10,
        server,
        emulator,
        queue_redis,
        lambda: targets.start_pod(operator, "op-a"),
    )
    # When A stops (its target goes away), 3 jobs are dead-lettered while no operator runs, and
    # pod B (another instance, another pod label: new series) takes over
    first.stop()
    targets.remove_pod("op-a")
    wait_until(
        lambda: scraped_value(server, DEAD_LETTERED) is None, timeout=10, message="A not stale"
    )
    queue_redis.client().hincrby(COUNTERS, "dead_lettered", 3)
    targets.start_pod(operator, "op-b")
    # Then WorkerPoolDeadLetterGrowing fires for the pool with the 3 jobs of the restart
    fired = wait_until(
        lambda: firing(server, "WorkerPoolDeadLetterGrowing"),
        timeout=20,
        interval=0.25,
        message="the dead letters of the restart never fired",
    )
    [alert] = fired
    assert {k: alert["labels"][k] for k in POOL_LABELS} == POOL_LABELS
    assert "pod" not in alert["labels"]
    assert alert["annotations"]["description"].startswith("3 jobs of queue emails")
    # (the new pod's series is the one scraped now)
    pod_series = server.fetch_query(DEAD_LETTERED)
    assert [s["metric"]["pod"] for s in pod_series] == ["op-b"]
