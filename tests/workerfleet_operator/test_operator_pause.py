"""Pause and resume through the operator (API emulator, real Redis): the annotations hold the
replicas, the Paused condition, its Events and workerfleet_pool_paused follow, resume scales again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from workerfleet_operator import api

from tests.workerfleet_operator.conftest import (
    GROUP,
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    build_pool,
    build_secret,
    condition,
    events_for,
    wait_for_condition,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from tests.workerfleet_operator.test_operator_autoscaling import enqueue, replicas
from tests.workerfleet_operator.test_operator_pool_metrics import pool_sample


def paused_condition(emu: Emulator) -> dict[str, Any]:
    return condition(emu.get("workerpools", NAMESPACE, "emails", group=GROUP), "Paused")


def annotate(emu: Emulator, annotations: dict[str, str | None]) -> None:
    emu.patch(
        "workerpools", NAMESPACE, "emails", {"metadata": {"annotations": annotations}}, group=GROUP
    )


def reasons(emu: Emulator) -> list[str]:
    return [e["reason"] for e in events_for(emu, "emails")]


def test_a_paused_pool_holds_its_count_against_a_backlog_and_resumes_scaling(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a running builtin pool (0 to 10 replicas, 100 jobs per replica, no scale-up window)
    emulator.create("secrets", build_secret("redis-creds", queue_redis.url))
    runner = operator()
    autoscaling = {
        "targetBacklogPerReplica": 100,
        "scaleUp": {"stabilizationWindowSeconds": 0, "maxStepPercent": 100, "maxStepPods": 4},
    }
    emulator.create("workerpools", build_pool("emails", autoscaling=autoscaling), group=GROUP)
    wait_for_condition(emulator, "emails", "QueueReachable")
    assert paused_condition(emulator)["status"] == "False"
    assert pool_sample(runner, "workerfleet_pool_paused") == {"": 0.0}
    # When it is paused at 1 replica
    annotate(emulator, {api.PAUSED_REPLICAS_ANNOTATION: "1"})
    # Then the Deployment is set to 1 and the pool says so, in status, an Event and a metric
    wait_until(lambda: replicas(emulator, "emails") == 1, message="not set to the paused count")
    wait_for_condition(emulator, "emails", "Paused")
    assert paused_condition(emulator)["reason"] == "PausedAtReplicas"
    wait_until(lambda: "Paused" in reasons(emulator), message="no Paused Event")
    wait_until(
        lambda: pool_sample(runner, "workerfleet_pool_paused") == {"": 1.0},
        message="workerfleet_pool_paused not 1",
    )
    # When 400 jobs arrive (unpaused, the signals want many more than 1)
    enqueue(queue_redis, "emails", 400)
    wait_until(
        lambda: (
            (emulator.get("workerpools", NAMESPACE, "emails", group=GROUP) or {})
            .get("status", {})
            .get("queue", {})
            .get("backlog")
            == 400
        ),
        message="the paused pool stopped reading its queue",
    )
    # Then it stays at 1 over several polls, with one Paused Event in all
    seen = set()
    for _ in range(6):
        seen.add(replicas(emulator, "emails"))
        time.sleep(0.5)  # the subject is "stays so over polls" (1 s polling interval)
    assert seen == {1}
    assert reasons(emulator).count("Paused") == 1
    # When the annotation is removed
    annotate(emulator, {api.PAUSED_REPLICAS_ANNOTATION: None})
    # Then the autoscaler scales on the backlog again, Paused=False with one Resumed Event
    wait_until(lambda: (replicas(emulator, "emails") or 0) > 1, message="no scale-up after resume")
    assert paused_condition(emulator)["status"] == "False"
    wait_until(lambda: reasons(emulator).count("Resumed") == 1, message="no Resumed Event")
    wait_until(
        lambda: pool_sample(runner, "workerfleet_pool_paused") == {"": 0.0},
        message="workerfleet_pool_paused not back to 0",
    )
