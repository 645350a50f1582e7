"""The autoscaler's guards through the real operator loop, on the API emulator with real Redis.

What decide() cannot show on its own: that a fallback after a Redis outage writes no pod
deletion costs (without stats every pod would look heartbeat-less, -1000), and that the first
failed read does not move the replicas.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.workerfleet_operator.conftest import (
    NAMESPACE,
    OperatorRunner,
    QueueRedis,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from tests.workerfleet_operator.test_operator_autoscaling import (
    COST,
    POLL,
    create_pods,
    replicas,
    scale_up_to_four,
    start_pool,
)


def test_a_fallback_after_an_outage_waits_for_the_threshold_and_writes_no_deletion_costs(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a pool at 4 replicas with 4 pods, falling back to 1 replica when Redis is gone
    # (the default failureThreshold of 3 polls, a 1 s scale-down window, no step limit)
    operator()
    start_pool(
        emulator,
        queue_redis,
        "emails",
        onMetricFailure="fallback",
        fallbackReplicas=1,
        scaleDown={"stabilizationWindowSeconds": 1, "maxStepPercent": 100},
    )
    scale_up_to_four(emulator, queue_redis, "emails")
    pods = create_pods(emulator, "emails", ("0", "1", "2", "3"))
    # When Redis goes away
    stopped_at = time.monotonic()
    queue_redis.stop()
    # Then the replicas hold for the first failed reads, then go to the fallback count
    wait_until(
        lambda: replicas(emulator, "emails") == 1,
        timeout=15,
        message="no fallback to 1 replica",
    )
    took = time.monotonic() - stopped_at
    # And no pod was annotated: without stats there is nothing to rank them by
    annotated = [
        p["metadata"]["name"]
        for p in emulator.list("pods", NAMESPACE, labels="workerfleet.io/pool=emails")
        if COST in (p["metadata"].get("annotations") or {})
    ]
    assert annotated == [], f"deletion costs written without stats on {annotated} of {pods}"
    assert not [p for m, p, _ in list(emulator.request_log) if m == "PATCH" and "/pods/" in p]
    # And not before the third failed read (polls one second apart; reads fail at once)
    assert took >= 2 * POLL, f"fell back {took:.1f}s after Redis stopped"
