"""The pool's loop waits out the Retry-After of a throttled reconcile or poll itself, on a fake
clock (the reconcile and the poll stand-ins raise the client's error; no API server)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from workerfleet_operator.shell import config as config_module
from workerfleet_operator.shell import context, kube, reconcile, report, scaler
from workerfleet_operator.shell import pool as pool_mod

from tests.workerfleet_operator import conftest

T0 = 1_000.0


def _throttled(*args: object, **kwargs: object) -> None:
    raise kube.ApiError(429, "TooManyRequests", "slow down", retry_after=30.0)


def _recording_reconcile(
    reconciles: list[float], then: Callable[[pool_mod.PoolController], object] | None = None
) -> Callable[[pool_mod.PoolController], Awaitable[None]]:
    """A reconcile stand-in: records when (fake clock) it ran, then calls ``then``."""

    async def recorded(controller: pool_mod.PoolController) -> None:
        reconciles.append(controller.ctx.clock())
        if then is not None:
            then(controller)

    return recorded


def _throttled_poll(
    polls: list[float],
) -> Callable[[pool_mod.PoolController, object], Awaitable[None]]:
    """A poll stand-in the API server throttles (30 s); records when (fake clock) it ran."""

    async def throttled_poll(controller: pool_mod.PoolController, policy: object) -> None:
        polls.append(controller.ctx.clock())
        _throttled()

    return throttled_poll


async def _first_round(
    controller: pool_mod.PoolController, done: Callable[[], bool]
) -> pool_mod.PoolController:
    """Run the pool's loop until ``done``, then stop it."""
    controller.start()
    try:
        await _wait_for(done)
    finally:
        await controller.stop()
    return controller


async def _wait_for(done: Callable[[], bool]) -> None:
    """Let the pool's loop run until ``done`` (bounded: 200 turns of the event loop)."""
    for _ in range(200):
        if done():
            return
        await asyncio.sleep(0.01)
    assert done(), "the pool's loop did not get there"


def _pool_controller(**config: object) -> pool_mod.PoolController:
    ctx = context.build_context(config_module.OperatorConfig(**config))  # type: ignore[arg-type]
    ctx.clock = lambda: T0  # a fake clock: time stands still, the schedule is read
    controller = pool_mod.PoolController(ctx, conftest.NAMESPACE, "emails")
    body = conftest.build_pool("emails")
    body["metadata"].update(uid="uid-1", generation=1, resourceVersion="10")
    controller.observe(body)
    return controller


def _pool_controller_on(now: list[float], **config: object) -> pool_mod.PoolController:
    """:func:`_pool_controller` on a fake clock the test moves (``now[0]``)."""
    controller = _pool_controller(**config)
    controller.ctx.clock = lambda: now[0]
    return controller


async def _start_until_a_reconcile_failed(now: list[float]) -> pool_mod.PoolController:
    """Start the loop of a pool (failure backoff 1 s, fake clock ``now[0]``) and let it run
    until its first reconcile failed; the caller stops it."""
    controller = _pool_controller_on(now, retry_base_seconds=1.0)
    controller.start()
    try:
        await _wait_for(lambda: controller.failures == 1)
    except BaseException:
        await controller.stop()
        raise
    return controller


async def test_a_throttled_reconcile_is_retried_when_the_server_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a pool whose reconcile the API server throttles asking for 30 s (the client hands
    # the wait back at once, test_kube_client_retries.py; that no reconcile slot is held
    # meanwhile is shown on the API emulator, test_operator_throttled.py: a stand-in
    # reconcile that raises at once holds none either way)
    monkeypatch.setattr(reconcile, "reconcile", _throttled)
    controller = _pool_controller(retry_base_seconds=1.0)
    # When the pool's loop runs its reconcile
    await _first_round(controller, lambda: controller.failures == 1)
    # Then its next try is 30 s later, not after the 1 s failure backoff
    assert controller.next_reconcile == T0 + 30.0
    assert controller.server_wait == 30.0


async def test_a_throttled_poll_is_retried_when_the_server_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a pool polling every 5 s (the sample's default) whose poll the API server throttles
    # asking for 30 s
    polls: list[float] = []

    monkeypatch.setattr(scaler, "poll_queue", _throttled_poll(polls))
    controller = _pool_controller()
    controller.dirty = False
    controller.next_reconcile = T0 + 3600.0  # no reconcile in this round
    controller.secret = kube.SecretValue("1", "redis://127.0.0.1:6379/0")
    # When the pool's loop polls
    await _first_round(controller, lambda: len(polls) == 1)
    # Then the next poll is 30 s later, not at the polling interval
    assert controller.next_poll == T0 + 30.0


async def test_a_status_left_to_a_throttled_poll_is_written_when_the_server_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a pool whose reconcile leaves its status to the poll due right after it (a new
    # pool's first status), and whose poll the API server throttles asking for 30 s
    reconciles: list[float] = []
    polls: list[float] = []

    deferring = _recording_reconcile(reconciles, then=pool_mod.PoolController.defer_status_to_poll)
    monkeypatch.setattr(reconcile, "reconcile", deferring)
    monkeypatch.setattr(scaler, "poll_queue", _throttled_poll(polls))
    controller = _pool_controller()
    controller.secret = kube.SecretValue("1", "redis://127.0.0.1:6379/0")
    # When the pool's loop reconciles, then polls (time stands still on the fake clock; the
    # stand-ins never await, so the round runs through to the loop's wait in one turn)
    await _first_round(controller, lambda: len(polls) == 1)
    # Then the reconcile that writes the status itself waits what the server asked too,
    # instead of sending its requests at once
    assert reconciles == [T0]
    assert controller.next_reconcile == T0 + 30.0
    assert controller.next_poll == T0 + 30.0


async def test_one_throttled_reconcile_is_not_reported_as_failed_but_one_that_lasts_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a healthy pool whose reconciles the API server throttles, asking for 30 s each time
    reports: list[tuple[float, str]] = []

    async def record_failure(controller: pool_mod.PoolController, error: str) -> None:
        reports.append((controller.ctx.clock(), error))

    monkeypatch.setattr(reconcile, "reconcile", _throttled)
    monkeypatch.setattr(report, "apply_failure", record_failure)
    now = [T0]
    # When its first reconcile is throttled
    controller = await _start_until_a_reconcile_failed(now)
    try:
        # Then no failure is reported (no Degraded, no Warning): the server only asked to wait
        assert reports == []
        assert controller.applied.reconcile_error is None
        assert controller.next_reconcile == T0 + 30.0
        # And when the retry the server asked for is throttled again (fake clock: 30 s on)
        now[0] = T0 + 30.0
        controller.wake.set()
        await _wait_for(lambda: controller.failures == 2)
        # Then that failure is reported, once
        assert [at for at, _ in reports] == [T0 + 30.0]
        assert "TooManyRequests" in reports[0][1]
        assert controller.applied.reconcile_error is not None
    finally:
        await controller.stop()


def _new_generation(controller: pool_mod.PoolController) -> None:
    """A watch event: the pool's spec was edited (generation 2)."""
    body = conftest.build_pool("emails")
    body["metadata"].update(uid="uid-1", generation=2, resourceVersion="11")
    controller.observe(body)


async def _edited_while_the_server_asked_to_wait(
    controller: pool_mod.PoolController, now: list[float], reconciles: list[float]
) -> None:
    """When the pool is edited before the wait the server asked for is over, then the wait
    ends (fake clock: 30 s on)."""
    _new_generation(controller)
    # the loop has taken the event (it clears its wake before it waits again)
    await _wait_for(lambda: not controller.wake.is_set())
    assert reconciles == [T0], "a reconcile ran before the wait the server asked for was over"
    now[0] = T0 + 30.0
    controller.wake.set()
    await _wait_for(lambda: len(reconciles) == 2)


async def test_a_watch_event_during_a_throttled_reconciles_wait_is_reconciled_when_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a pool whose reconcile the API server throttles once, asking for 30 s
    reconciles: list[float] = []

    throttled_once = _recording_reconcile(
        reconciles, then=lambda _: _throttled() if len(reconciles) == 1 else None
    )
    monkeypatch.setattr(reconcile, "reconcile", throttled_once)
    now = [T0]
    controller = await _start_until_a_reconcile_failed(now)
    try:
        # When the pool is edited during the wait, which then ends
        await _edited_while_the_server_asked_to_wait(controller, now, reconciles)
    finally:
        await controller.stop()
    # Then the edit is reconciled once the wait is over, not at once
    assert reconciles == [T0, T0 + 30.0]


async def test_a_watch_event_during_a_throttled_polls_wait_is_reconciled_when_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a converged pool whose poll the API server throttles, asking for 30 s
    reconciles: list[float] = []
    polls: list[float] = []

    monkeypatch.setattr(reconcile, "reconcile", _recording_reconcile(reconciles))
    monkeypatch.setattr(scaler, "poll_queue", _throttled_poll(polls))
    now = [T0]
    controller = _pool_controller_on(now)
    controller.secret = kube.SecretValue("1", "redis://127.0.0.1:6379/0")
    controller.start()
    try:
        await _wait_for(lambda: len(polls) == 1)
        # When the pool is edited during the wait, which then ends
        await _edited_while_the_server_asked_to_wait(controller, now, reconciles)
    finally:
        await controller.stop()
    # Then the edit is reconciled once the wait is over, not at once
    assert reconciles == [T0, T0 + 30.0]
