"""A sync handler's slot: held while its thread runs, given back exactly once when it returns.

A timed-out sync handler cannot be stopped: its thread keeps running and keeps its slot (a
"zombie", counted in the worker's ``in_use``) until the function returns. These tests drive the
runner's own sync path (its thread pool, its collection of finished calls on the loop) with a
worker stand-in, and put the watchdog's cancellation at the exact points of the race between
"the thread returned" and "the watchdog gave up on it".
"""

from __future__ import annotations

import asyncio
import threading
import time
import types
from typing import Any

import pytest

from worker_runtime.worker import held as held_mod
from worker_runtime.worker import pool as pool_mod
from worker_runtime.worker import running


class _Settler:
    """Records each outcome the runner reports (the settle calls themselves are not the subject)."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, ...]] = []

    async def failed(self, h: Any, spec: Any, exc: BaseException, timed_out: bool) -> None:
        self.outcomes.append(("failed", type(exc).__name__, str(timed_out)))

    async def completed(self, h: Any, spec: Any) -> None:
        self.outcomes.append(("completed",))


def _runner(settler: _Settler, poked: asyncio.Event | None = None) -> running.JobRunner:
    # the worker stand-in's poke is what the runner calls when a zombie's slot frees
    loop = asyncio.get_running_loop()
    poke = poked.set if poked is not None else (lambda: None)
    worker = types.SimpleNamespace(loop=loop, poke=poke, worker_id="w")
    runner = running.JobRunner(worker, settler)  # type: ignore[arg-type]
    runner.pool = pool_mod.DaemonThreadPool(2)
    return runner


def _held(handler: Any) -> tuple[held_mod.Held, Any]:
    spec = types.SimpleNamespace(wants_context=False, handler=handler, name="t")
    job = types.SimpleNamespace(id="j", receipt="tok", attempts=0)
    return held_mod.Held(job, spec, "q", time.time()), spec  # type: ignore[arg-type]


@pytest.mark.parametrize("order", ["collected, then cancelled", "cancelled, then collected"])
async def test_a_sync_handler_returning_as_the_watchdog_cancels_it_gives_its_slot_back(
    order: str,
) -> None:
    # Given a sync handler running in the runner's thread pool
    settler = _Settler()
    runner = _runner(settler)
    h, spec = _held(lambda payload: None)
    task = asyncio.get_running_loop().create_task(runner._run_sync(h, spec, {}, 1.0))
    h.task = task
    collect = runner._collect_sync

    def watchdog_fires() -> None:
        h.timed_out = True  # what the watchdog does at the deadline
        task.cancel()

    # When its thread returns in the same loop turn as the watchdog cancels it (either order)
    def collect_racing_the_watchdog() -> None:
        if order == "collected, then cancelled":
            collect()
            watchdog_fires()
        else:
            watchdog_fires()
            collect()

    runner._collect_sync = collect_racing_the_watchdog  # type: ignore[method-assign]
    await asyncio.wait([task], timeout=5.0)
    # Then the attempt is settled once (a timeout) and no slot stays taken: the thread is gone
    assert task.done()
    assert settler.outcomes == [("failed", "TimeoutError", "True")]
    assert (runner.zombies, h.zombie) == (0, False)
    runner.close_threads()


async def test_a_timed_out_sync_handler_holds_its_slot_until_its_thread_returns() -> None:
    # Given a sync handler blocked in its thread
    settler = _Settler()
    freed = asyncio.Event()
    runner = _runner(settler, freed)
    started, release = threading.Event(), threading.Event()

    def handler(payload: Any) -> None:
        started.set()
        release.wait(5.0)

    h, spec = _held(handler)
    task = asyncio.get_running_loop().create_task(runner._run_sync(h, spec, {}, 1.0))
    h.task = task
    assert await asyncio.to_thread(started.wait, 5.0)
    # When the watchdog gives up on it at its deadline
    h.timed_out = True
    task.cancel()
    await asyncio.wait([task], timeout=5.0)
    held_while_running = runner.zombies
    # and later its function returns
    release.set()
    await asyncio.wait_for(freed.wait(), 5.0)
    # Then the attempt failed as a timeout at once, the slot stayed taken while the thread ran,
    # and was given back once when it returned
    assert settler.outcomes == [("failed", "TimeoutError", "True")]
    assert held_while_running == 1
    assert (runner.zombies, h.zombie) == (0, False)
    runner.close_threads()
