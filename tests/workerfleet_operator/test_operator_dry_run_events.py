"""A dry-run pool announces each change it would make, also one it wanted before (emulator)."""

from __future__ import annotations

from collections.abc import Callable

from tests.workerfleet_operator.conftest import (
    OperatorRunner,
    QueueRedis,
    build_pool,
    events_for,
    given_a_running_pool,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator
from tests.workerfleet_operator.test_operator_autoscaling import _drain, enqueue, pool


def _dry_run_events(emu: Emulator) -> list[str]:
    return [e["message"] for e in events_for(emu, "emails") if e["reason"].startswith("DryRun")]


def test_a_dry_run_announces_a_scale_up_again_after_the_queue_went_idle_in_between(
    emulator: Emulator, queue_redis: QueueRedis, operator: Callable[..., OperatorRunner]
) -> None:
    # Given a builtin pool in dry-run mode (polls every second) at 0 replicas, whose backlog
    # of 400 made it announce a scale-up to 4 once
    given_a_running_pool(
        emulator,
        queue_redis,
        operator,
        build_pool("emails", autoscaling={"dryRun": True, "pollingIntervalSeconds": 1}),
    )
    enqueue(queue_redis, "emails", 400)
    wait_until(lambda: len(_dry_run_events(emulator)) == 1, message="no first dry-run Event")
    # and the queue then drained: the pool would stay at 0 (no change, no Event)
    assert _drain(queue_redis, "emails") == 400
    wait_until(
        lambda: (pool(emulator, "emails") or {})["status"].get("desiredReplicas") == 0,
        message="the idle queue was never decided on",
    )
    # When a new backlog of 400 arrives
    enqueue(queue_redis, "emails", 400)
    # Then that new change is announced too (a dry run is read through its Events)
    wait_until(
        lambda: len(_dry_run_events(emulator)) == 2,
        timeout=6,
        message="the second scale-up was not announced",
    )
    assert all("0→4" in message for message in _dry_run_events(emulator))
