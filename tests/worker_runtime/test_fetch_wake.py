"""How a fetch's idle wait gives way to a wake (SIGTERM) even when a cancel is lost."""

from __future__ import annotations

import asyncio

from worker_runtime.brokers.redis import queue


async def test_a_wait_that_swallows_its_first_cancel_is_cancelled_again() -> None:
    # Given an idle wait that loses the first cancel it gets (as Python 3.11's wait_for
    # does when the cancel lands in the step its inner write finishes)
    lost: list[bool] = []

    async def stubborn_wait() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            lost.append(True)
        await asyncio.sleep(30)

    wake = asyncio.Event()
    waiting = asyncio.create_task(queue._first_or_wake(stubborn_wait(), wake))
    await asyncio.sleep(0.01)
    # When the wake is set
    wake.set()
    # Then the wait is cancelled a second time and the caller hears it was woken
    assert await asyncio.wait_for(waiting, 5.0) is True
    assert lost == [True]


async def test_a_wait_that_finishes_first_reports_not_woken() -> None:
    # Given a wait that ends on its own (new entries arrived)
    wake = asyncio.Event()
    # When it finishes before any wake
    woken = await queue._first_or_wake(asyncio.sleep(0.01), wake)
    # Then the caller hears it was not woken and goes on fetching
    assert woken is False
