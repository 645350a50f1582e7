"""The worker keeps two fetch calls out at once where the broker allows it, and never more.

On the in-process memory broker, with every fetch call held for a few milliseconds (the round
trip a real broker takes): under a backlog the worker's two lanes overlap (the jobs one brought
run while the other's call is out), the slots still bound what it holds, every job runs exactly
once, an idle worker keeps one fetch waiting in the broker, and a broker without
``overlapped_fetches``, or a worker with fewer than ``2 * MIN_LANE_BATCH`` slots, gets one call
at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from worker_runtime import App, config, errors
from worker_runtime import envelope as envelope_mod
from worker_runtime import worker as worker_mod
from worker_runtime.brokers import base, memory
from worker_runtime.worker import fetching

pytestmark = pytest.mark.timeout(60)

ROUND_TRIP_SECONDS = 0.003


@dataclasses.dataclass
class CallsOut:
    """How many fetch calls of the worker were out at once, at most and now."""

    now: int = 0
    most: int = 0
    calls: int = 0


@pytest.fixture
def calls_out(monkeypatch: pytest.MonkeyPatch) -> CallsOut:
    """Hold every fetch / ack-and-fetch call of the memory broker for one round trip."""
    seen = CallsOut()
    outermost: set[asyncio.Task[Any] | None] = set()

    def held_for_a_round_trip(method: Callable[..., Any]) -> Callable[..., Any]:
        async def call(self: memory.MemoryBroker, *args: Any, **kwargs: Any) -> Any:
            task = asyncio.current_task()
            if task in outermost:  # ack_and_fetch calling fetch: still one call out
                return await method(self, *args, **kwargs)
            outermost.add(task)
            seen.now += 1
            seen.calls += 1
            seen.most = max(seen.most, seen.now)
            try:
                await asyncio.sleep(ROUND_TRIP_SECONDS)
                return await method(self, *args, **kwargs)
            finally:
                seen.now -= 1
                outermost.discard(task)

        return call

    for name in ("fetch", "ack_and_fetch"):
        original = getattr(memory.MemoryBroker, name)
        monkeypatch.setattr(memory.MemoryBroker, name, held_for_a_round_trip(original))
    return seen


def _settings(url: str, concurrency: int) -> config.WorkerSettings:
    return config.WorkerSettings(
        redis_url=url, queue="jobs", metrics_port=0, concurrency=concurrency, log_level="warning"
    )


def _counting_app(runs: list[str], running: list[int]) -> App:
    app = App(queue="jobs")

    @app.task("work")
    async def work(payload: dict[str, Any]) -> None:
        running[0] += 1
        running[1] = max(running[1], running[0])
        runs.append(str(payload["i"]))
        await asyncio.sleep(0)  # holds its slot across one loop step, as a real handler does
        running[0] -= 1

    return app


async def _enqueue(memory_probe: Any, n: int) -> None:
    await memory_probe.enqueue_many(
        [
            base.EnqueueRequest(envelope=envelope_mod.build_envelope("work", {"i": i}))
            for i in range(n)
        ]
    )


@contextlib.asynccontextmanager
async def _running(w: worker_mod.Worker) -> AsyncIterator[None]:
    """The worker runs inside the block; it is drained (and must exit 0) at its end."""
    run = asyncio.create_task(w.run())
    try:
        yield
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 10) == 0


async def _run_until(w: worker_mod.Worker, check: Callable[[], bool], what: str) -> None:
    async with _running(w):
        for _ in range(1000):  # bounded: 10 s
            if check():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"timed out waiting for {what}")


def _counting_worker(url: str, slots: int) -> tuple[worker_mod.Worker, list[str], list[int]]:
    """A worker of the counting app: the job markers it ran, and [running now, most at once]."""
    runs: list[str] = []
    running = [0, 0]
    w = worker_mod.Worker(
        _counting_app(runs, running), _settings(url, slots), install_signal_handlers=False
    )
    return w, runs, running


async def test_under_a_backlog_two_fetch_calls_are_out_at_once_and_each_job_runs_once(
    memory_store_url: str, memory_probe: Any, calls_out: CallsOut
) -> None:
    # Given 400 jobs waiting and a worker with 16 slots
    n, slots = 400, 16
    await _enqueue(memory_probe, n)
    w, runs, running = _counting_worker(memory_store_url, slots)
    # When it works through them
    await _run_until(w, lambda: len(runs) == n, "every job")
    # Then its fetch calls overlapped two at a time (never three), the slots still bounded the
    # handlers running at once, and every job ran exactly once and was acknowledged
    assert calls_out.most == 2
    assert running[1] <= slots
    assert sorted(runs, key=int) == [str(i) for i in range(n)]
    stats = await memory_probe.fetch_stats()
    assert (stats.backlog, stats.in_flight, stats.completed_total) == (0, 0, n)


async def test_a_broker_without_overlapped_fetches_gets_one_call_at_a_time(
    memory_store_url: str, memory_probe: Any, calls_out: CallsOut, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker that does not allow two fetch calls of one worker at once
    monkeypatch.setattr(
        memory.MemoryBroker,
        "capabilities",
        dataclasses.replace(memory.CAPABILITIES, overlapped_fetches=False),
    )
    n = 200
    await _enqueue(memory_probe, n)
    w, runs, _ = _counting_worker(memory_store_url, 16)
    # When the worker works through a backlog
    await _run_until(w, lambda: len(runs) == n, "every job")
    # Then never more than one of its calls was out, and every job still ran once
    assert calls_out.most == 1
    assert sorted(runs, key=int) == [str(i) for i in range(n)]


async def test_an_idle_worker_keeps_one_fetch_waiting_not_two(
    memory_store_url: str, memory_probe: Any, calls_out: CallsOut
) -> None:
    # Given a worker with 16 slots and an empty queue
    w, runs, _ = _counting_worker(memory_store_url, 16)
    # When it waits for work, and then one job arrives
    async with _running(w):
        await asyncio.sleep(0.3)
        idle_most = calls_out.most
        await _enqueue(memory_probe, 1)
        for _ in range(500):  # bounded: 5 s
            if runs:
                break
            await asyncio.sleep(0.01)
    # Then while idle a single fetch waited in the broker, and the job that came was run
    assert idle_most == 1
    assert runs == ["0"]


async def test_a_worker_with_too_few_slots_for_two_worthwhile_batches_keeps_one_call_out(
    memory_store_url: str, memory_probe: Any, calls_out: CallsOut
) -> None:
    # Given a backlog and a worker with 8 slots (two lanes would fetch 4 jobs a call: more
    # worker CPU per job than the overlap saves)
    n = 200
    await _enqueue(memory_probe, n)
    w, runs, _ = _counting_worker(memory_store_url, 2 * fetching.MIN_LANE_BATCH - 1)
    # When it works through the backlog
    await _run_until(w, lambda: len(runs) == n, "every job")
    # Then one call at a time was out, and every job ran once
    assert calls_out.most == 1
    assert sorted(runs, key=int) == [str(i) for i in range(n)]


async def test_while_the_broker_is_down_the_two_lanes_back_off_instead_of_waking_each_other(
    memory_store_url: str, memory_probe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a two-lane worker whose broker answers no fetch, ack-and-fetch or adoption
    calls: list[float] = []

    async def unreachable(self: memory.MemoryBroker, *args: Any, **kwargs: Any) -> Any:
        calls.append(asyncio.get_running_loop().time())
        raise errors.BrokerUnavailable("connection refused", operation="fetch")

    for name in ("fetch", "ack_and_fetch", "recover"):
        monkeypatch.setattr(memory.MemoryBroker, name, unreachable)
    w, _, _ = _counting_worker(memory_store_url, 16)
    # When it runs for one second against the outage
    async with _running(w):
        await asyncio.sleep(1.0)
    # Then each lane retried on its own backoff (0.1 s doubling, jittered: a handful of calls
    # a second), not at once each time the other lane's failed call ended
    assert 2 <= len(calls) <= 20, f"{len(calls)} calls in 1 s"
