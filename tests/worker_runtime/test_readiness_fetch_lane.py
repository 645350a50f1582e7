"""/readyz follows the job loop's fetches, not the control thread's renewals.

The control thread renews leases and writes the heartbeat on a broker connection of its own.
Its answered round trips used to make the worker Ready, so a worker whose job loop could not
fetch (its own connection broken) still counted as available to a rollout.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support import brokers as support_brokers
from tests.support import memory_worker
from worker_runtime import App, errors, health
from worker_runtime import worker as worker_mod
from worker_runtime.brokers import memory

pytestmark = pytest.mark.timeout(60)


def test_answered_renewals_alone_never_make_a_worker_ready() -> None:
    clock = support_brokers.FakeClock(start=1000.0)
    state = health.HealthState(stale_after_seconds=9.0, clock=clock)
    state.loop_tick()
    state.redis_ok()  # what the control thread records for an answered renewal
    assert state.build_report().healthy and not state.ready()
    state.fetch_ok()
    assert state.ready()


def test_a_failing_fetch_makes_the_worker_unready_while_its_renewals_are_answered() -> None:
    clock = support_brokers.FakeClock(start=1000.0)
    state = health.HealthState(stale_after_seconds=9.0, clock=clock)
    state.redis_ok()
    state.fetch_ok()
    assert state.ready()
    state.fetch_failed()
    clock.advance(1.0)
    state.loop_tick()
    state.redis_ok()  # the control thread's own connection still works
    assert state.build_report().healthy and not state.ready()
    state.fetch_failed()  # a second failure does not move when the failing began
    assert state.fetch_failing_since == 1000.0
    state.fetch_ok()
    assert state.ready()


async def test_a_worker_whose_fetches_fail_is_not_ready_though_its_heartbeat_is_written(
    memory_store_url: str, memory_probe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker whose job loop's fetches fail (its connection broken) while the control
    # thread's renewals, on a connection of their own, are answered
    app = App(queue="jobs")

    @app.task("noop")
    async def noop(payload: dict[str, Any]) -> None:
        return None

    broken = [True]
    failed_fetches: list[int] = []
    real_fetch = memory.MemoryBroker.fetch

    async def fetch(self: memory.MemoryBroker, *args: Any, **kwargs: Any) -> Any:
        if broken[0]:
            failed_fetches.append(1)
            raise errors.BrokerUnavailable("connection reset", operation="fetch", sent=False)
        return await real_fetch(self, *args, **kwargs)

    monkeypatch.setattr(memory.MemoryBroker, "fetch", fetch)
    w = worker_mod.Worker(
        app, memory_worker.settings(memory_store_url), install_signal_handlers=False
    )
    run = asyncio.create_task(w.run())
    try:
        # When the control thread has written its heartbeat and fetches have failed
        async def renewed_but_not_fetched() -> bool:
            return bool((await memory_probe.fetch_stats()).workers) and len(failed_fetches) >= 2

        await memory_worker.until(renewed_but_not_fetched, 10.0, "a heartbeat and failed fetches")

        # Then the worker is alive but not ready: it cannot take a job
        assert w.health.last_redis_ok is not None
        assert not w.health.ready()

        # When its fetches are answered again
        broken[0] = False

        async def ready() -> bool:
            return w.health.ready()

        # Then it is ready again
        await memory_worker.until(ready, 10.0, "ready after the fetches are answered")
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 10) == 0
