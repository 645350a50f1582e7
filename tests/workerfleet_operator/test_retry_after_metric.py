"""``workerfleet_operator_api_retry_after_seconds`` counts a wait the API server asked for by
who waited it: the request, a pool's loop, or nobody (a best-effort Event post dropped).

The client handed every long wait back to its caller counted as the pool's, Event posts too,
which drop the Event and wait nothing: the pools' waits on a dashboard included Events never
sent. Here the pool's loop runs on a fake clock with stand-ins that raise the client's error,
and the Event post goes through the operator's real client to the API emulator.
"""

from __future__ import annotations

import asyncio

import kopf
import pytest
from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import context, credentials, kube, reconcile, report
from workerfleet_operator.shell import pool as pool_mod

from tests.workerfleet_operator import conftest
from tests.workerfleet_operator.emulator import Emulator

T0 = 1_000.0
METRIC = "workerfleet_operator_api_retry_after_seconds"


def build_pool_controller(server: str = "http://127.0.0.1:1") -> pool_mod.PoolController:
    """Pool ``emails`` seen once, on a fake clock that stands still, its client on ``server``."""
    ctx = context.build_context(config_module.OperatorConfig(retry_base_seconds=1.0))
    ctx.clock = lambda: T0
    ctx.credentials = credentials.Credentials.fixed(kopf.ConnectionInfo(server=server))
    controller = pool_mod.PoolController(ctx, conftest.NAMESPACE, "emails")
    body = conftest.build_pool("emails")
    body["metadata"].update(uid="uid-1", generation=1, resourceVersion="10")
    controller.observe(body)
    return controller


def waits(controller: pool_mod.PoolController, waited_in: str) -> tuple[float, float]:
    """(how many, seconds in all) of the waits counted as waited by ``waited_in``."""
    registry = controller.ctx.metrics.registry
    labels = {"waited_in": waited_in}
    count = registry.get_sample_value(f"{METRIC}_count", labels) or 0.0
    total = registry.get_sample_value(f"{METRIC}_sum", labels) or 0.0
    return count, total


async def test_an_event_post_the_server_throttles_is_counted_as_dropped_not_as_a_pools_wait(
    emulator: Emulator,
) -> None:
    # Given an API server that throttles every Event post, asking for 30 s (longer than a
    # request waits inside itself)
    emulator.inject_failure("POST", r"/events$", 429, count=100, retry_after=30)
    controller = build_pool_controller(emulator.url)
    try:
        # When the pool posts an Event (best-effort: given up, not posted again later)
        await report.post_event(controller, "Normal", "ScaledUp", "0 -> 2")
    finally:
        await controller.ctx.kube_client().close()
    # Then the wait is counted as dropped, not as one a pool waits
    assert waits(controller, "dropped") == (1.0, 30.0)
    assert waits(controller, "pool") == (0.0, 0.0)


async def test_a_throttled_reconcile_counts_the_wait_its_pool_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a pool whose reconcile the API server throttles, asking for 30 s
    def throttled(*args: object, **kwargs: object) -> None:
        raise kube.ApiError(429, "TooManyRequests", "slow down", retry_after=30.0)

    monkeypatch.setattr(reconcile, "reconcile", throttled)
    controller = build_pool_controller()
    # When the pool's loop runs its reconcile, and schedules the next one
    controller.start()
    try:
        for _ in range(200):  # bounded: 200 turns of the event loop
            if controller.failures:
                break
            await asyncio.sleep(0.01)
    finally:
        await controller.stop()
    assert controller.next_reconcile == T0 + 30.0
    # Then that wait is counted once, as waited by the pool
    assert waits(controller, "pool") == (1.0, 30.0)
    assert waits(controller, "dropped") == (0.0, 0.0)
