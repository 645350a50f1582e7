"""A pool the API server throttles with a long Retry-After waits it out in its own loop, and
the other pools' reconciles go on meanwhile (API emulator)."""

from __future__ import annotations

from collections.abc import Callable

from tests.workerfleet_operator import conftest
from tests.workerfleet_operator.emulator import Emulator

GROUP = "workerfleet.io"


def deployment_writes(emu: Emulator, name: str) -> list[int]:
    """The answers to the writes of pool ``name``'s Deployment, in order."""
    return [
        code
        for m, p, code in list(emu.request_log)
        if m == "PATCH" and p.endswith(f"/deployments/{name}")
    ]


def test_a_long_retry_after_is_waited_by_its_pool_alone_holding_no_reconcile_slot(
    emulator: Emulator,
    queue_redis: conftest.QueueRedis,
    operator: Callable[..., conftest.OperatorRunner],
) -> None:
    # Given an operator that reconciles one pool at a time, and an API server that throttles
    # every write of pool "slow"'s Deployment, asking for 30 s
    runner = operator(max_concurrent_reconciles=1)
    emulator.create("secrets", conftest.build_secret("redis-creds", queue_redis.url))
    emulator.inject_failure("PATCH", r"/deployments/slow$", 429, count=1000, retry_after=30)
    # When pool "slow" is created, throttled, and then pool "fast"
    emulator.create("workerpools", conftest.build_pool("slow"), group=GROUP)
    conftest.wait_until(
        lambda: 429 in deployment_writes(emulator, "slow"), timeout=10, message="not throttled"
    )
    emulator.create("workerpools", conftest.build_pool("fast", queue="fast"), group=GROUP)
    # Then "fast" gets its Deployment while "slow" waits: the wait holds no reconcile slot
    # (slept inside the request, 8 s at a time, it held the only one for 16 s)
    conftest.wait_until(
        lambda: emulator.get("deployments", conftest.NAMESPACE, "fast", group="apps"),
        timeout=8,
        message="the other pool's reconcile waited for the throttled one",
    )
    # And "slow" was not asked again before the 30 s the server asked for
    assert deployment_writes(emulator, "slow") == [429]
    # And the wait is visible in the operator's metrics
    waits = runner.metrics.registry.get_sample_value(
        "workerfleet_operator_api_retry_after_seconds_count", {"waited_in": "pool"}
    )
    assert waits is not None and waits >= 1
    assert (
        runner.metrics.registry.get_sample_value(
            "workerfleet_operator_api_retry_after_seconds_sum", {"waited_in": "pool"}
        )
        == 30 * waits
    )
