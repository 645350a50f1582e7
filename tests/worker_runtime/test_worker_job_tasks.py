"""Every job runs in an asyncio task of its own: what a handler may rely on, and why it stays so.

A fetch brings a batch of jobs; each one's handler runs in a task of its own. Starting a batch in
one task (the jobs one after another) was measured and withdrawn: a handler's task is part of
what it sees, and state keyed by ``asyncio.current_task()``, a done-callback or a timer set on
it reached the next job. These tests pin that, on the in-process memory broker with the real
Worker: its own context variables and task, never being held up by a neighbour that waits, its
timeout and cancellations reaching it alone, and its finished neighbours not kept alive (not
even by the lease renewal that counted them).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import weakref
from typing import Any

import pytest

from tests.support import memory_worker
from worker_runtime import App, Retry, config
from worker_runtime import envelope as envelope_mod
from worker_runtime import worker as worker_mod
from worker_runtime.brokers import base
from worker_runtime.worker import control as control_mod
from worker_runtime.worker import held as held_mod

pytestmark = pytest.mark.timeout(60)

TENANT: contextvars.ContextVar[int | None] = contextvars.ContextVar("tenant", default=None)


def _settings(memory_store_url: str) -> config.WorkerSettings:
    # Eight slots, one fetch lane: the backlog arrives in fetches of up to eight jobs.
    return memory_worker.settings(memory_store_url, concurrency=8)


async def _run_until_completed(w: worker_mod.Worker, probe: Any, count: int, dead: int = 0) -> None:
    async def done() -> bool:
        stats = await probe.fetch_stats()
        return bool(stats.completed_total >= count and stats.dead_letter >= dead)

    await memory_worker.run_until(w, done, f"{count} completed and {dead} dead-lettered jobs")


async def test_a_context_variable_one_handler_sets_never_reaches_the_next_job(
    memory_store_url: str, memory_probe: Any
) -> None:
    # Given a handler that reads a context variable and then sets it, and six such jobs
    app = App(queue="jobs")
    seen: list[int | None] = []
    tasks: list[asyncio.Task[Any] | None] = []

    @app.task("tenant")
    async def tenant(payload: dict[str, Any]) -> None:
        seen.append(TENANT.get())
        tasks.append(asyncio.current_task())
        TENANT.set(payload["n"])

    for n in range(6):
        await memory_worker.enqueue(memory_probe, "tenant", {"n": n})

    # When one worker runs them
    w = worker_mod.Worker(app, _settings(memory_store_url), install_signal_handlers=False)
    await _run_until_completed(w, memory_probe, 6)

    # Then every job found the variable unset, each in a task of its own
    assert seen == [None] * 6
    assert len(set(tasks)) == 6


async def test_a_job_that_waits_does_not_hold_up_the_jobs_fetched_with_it(
    memory_store_url: str, memory_probe: Any
) -> None:
    # Given a job that waits for the job enqueued after it, fetched together
    app = App(queue="jobs")
    ready = asyncio.Event()
    order: list[str] = []

    @app.task("waiter")
    async def waiter(payload: dict[str, Any]) -> None:
        await asyncio.wait_for(ready.wait(), 5)
        order.append("waiter")

    @app.task("setter")
    async def setter(payload: dict[str, Any]) -> None:
        order.append("setter")
        ready.set()

    await memory_worker.enqueue(memory_probe, "waiter", {})
    await memory_worker.enqueue(memory_probe, "setter", {})

    # When one worker runs them
    w = worker_mod.Worker(app, _settings(memory_store_url), install_signal_handlers=False)
    await _run_until_completed(w, memory_probe, 2)

    # Then the second ran while the first waited, and both completed at their first attempt
    assert order == ["setter", "waiter"]
    stats = await memory_probe.fetch_stats()
    assert (stats.completed_total, stats.failed_total, stats.dead_letter) == (2, 0, 0)


async def test_a_job_that_waits_keeps_one_task_of_its_own_and_its_timeout_reaches_it_alone(
    memory_store_url: str, memory_probe: Any
) -> None:
    # Given jobs that wait (twice), one whose asyncio.timeout expires, and no-op jobs between
    app = App(queue="jobs")
    seen: dict[int, list[asyncio.Task[Any] | None]] = {}
    timeouts: list[int] = []

    @app.task("twice")
    async def twice(payload: dict[str, Any]) -> None:
        steps = seen.setdefault(payload["n"], [])
        steps.append(asyncio.current_task())
        await asyncio.sleep(0.02)
        steps.append(asyncio.current_task())
        await asyncio.sleep(0)
        steps.append(asyncio.current_task())

    @app.task("bounded", retry=Retry(max_attempts=1))
    async def bounded(payload: dict[str, Any]) -> None:
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)
        except TimeoutError:
            timeouts.append(payload["n"])
            raise

    @app.task("noop")
    async def noop(payload: dict[str, Any]) -> None:
        return None

    await memory_worker.enqueue(memory_probe, "noop", {"n": 0})
    await memory_worker.enqueue(memory_probe, "twice", {"n": 1})
    await memory_worker.enqueue(memory_probe, "bounded", {"n": 2})
    await memory_worker.enqueue(memory_probe, "noop", {"n": 3})
    await memory_worker.enqueue(memory_probe, "twice", {"n": 4})

    # When one worker runs them
    w = worker_mod.Worker(app, _settings(memory_store_url), install_signal_handlers=False)
    await _run_until_completed(w, memory_probe, 4, dead=1)

    # Then each waiting job saw one task throughout, not its neighbour's
    assert [len(set(seen[n])) for n in (1, 4)] == [1, 1]
    assert seen[1][0] is not seen[4][0]
    # And the timeout ended only its own job: the others completed
    assert timeouts == [2]
    stats = await memory_probe.fetch_stats()
    assert (stats.completed_total, stats.dead_letter) == (4, 1)


async def test_a_handler_that_cancels_its_own_task_does_not_cancel_the_next_job(
    memory_store_url: str, memory_probe: Any
) -> None:
    # Given a handler that cancels its own task and returns, then a job that waits
    app = App(queue="jobs")
    finished: list[str] = []

    @app.task("cancel-self")
    async def cancel_self(payload: dict[str, Any]) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()

    @app.task("waits")
    async def waits(payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)
        finished.append("waits")

    await memory_worker.enqueue(memory_probe, "cancel-self", {})
    await memory_worker.enqueue(memory_probe, "waits", {})

    # When one worker runs them
    w = worker_mod.Worker(app, _settings(memory_store_url), install_signal_handlers=False)
    await _run_until_completed(w, memory_probe, 2)

    # Then the waiting job ran to its end
    assert finished == ["waits"]


async def test_a_job_that_waits_does_not_keep_the_finished_jobs_of_its_batch_alive(
    memory_store_url: str, memory_probe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job that waits until told, fetched with four jobs that end only once a lease
    # renewal has counted all five (the control thread then waits a period holding its reply)
    app = App(queue="jobs")
    release = asyncio.Event()
    renewed_all = threading.Event()
    record_renewal = control_mod.ControlThread.record_renewal

    def record_and_watch(control: Any, result: base.LeaseRenewal) -> None:
        record_renewal(control, result)
        if len(result.kept) == 5:
            renewed_all.set()

    monkeypatch.setattr(control_mod.ControlThread, "record_renewal", record_and_watch)

    @app.task("waits")
    async def waits(payload: dict[str, Any]) -> None:
        await asyncio.wait_for(release.wait(), 10)

    @app.task("noop")
    async def noop(payload: dict[str, Any]) -> None:
        for _ in range(1000):  # bounded
            if renewed_all.is_set():
                return
            await asyncio.sleep(0.005)

    await memory_worker.enqueue(memory_probe, "waits", {})
    for n in range(4):
        await memory_worker.enqueue(memory_probe, "noop", {"n": n})
    w = worker_mod.Worker(app, _settings(memory_store_url), install_signal_handlers=False)
    delivered: list[weakref.ref[Any]] = []
    start = w.runner.start

    def start_and_watch(jobs: Any) -> None:
        delivered.extend(weakref.ref(job) for job in jobs)
        start(jobs)

    w.runner.start = start_and_watch  # type: ignore[method-assign]

    # When the four jobs have completed while the first one still waits
    run = asyncio.create_task(w.run())
    try:
        for _ in range(1000):  # bounded
            if (await memory_probe.fetch_stats()).completed_total >= 4:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the ack's reply is handled
        gc.collect()
        alive = [ref() is not None for ref in delivered]
    finally:
        release.set()
        w.request_drain()
        assert await asyncio.wait_for(run, 10) == 0

    # Then only the waiting job's delivery is still referenced
    assert renewed_all.is_set()
    assert len(delivered) == 5
    assert alive == [True, False, False, False, False]


async def test_state_a_handler_keys_by_its_task_never_reaches_another_job(
    memory_store_url: str, memory_probe: Any
) -> None:
    # Given handlers that keep a unit of work per task (SQLAlchemy's async_scoped_session with
    # scopefunc=current_task), five that add to it and drop it, then one that commits
    app = App(queue="jobs")
    units: weakref.WeakKeyDictionary[asyncio.Task[Any], list[int]] = weakref.WeakKeyDictionary()
    committed: list[list[int]] = []

    def unit() -> list[int]:
        task = asyncio.current_task()
        assert task is not None
        return units.setdefault(task, [])

    @app.task("add")
    async def add(payload: dict[str, Any]) -> None:
        unit().append(payload["n"])

    @app.task("commit")
    async def commit(payload: dict[str, Any]) -> None:
        unit().append(payload["n"])
        committed.append(list(unit()))

    for n in range(5):
        await memory_worker.enqueue(memory_probe, "add", {"n": n})
    await memory_worker.enqueue(memory_probe, "commit", {"n": 5})

    # When one worker runs them
    w = worker_mod.Worker(app, _settings(memory_store_url), install_signal_handlers=False)
    await _run_until_completed(w, memory_probe, 6)

    # Then the committing job saw only its own work
    assert committed == [[5]]


async def test_a_done_callback_on_a_jobs_task_runs_when_that_job_ends(
    memory_store_url: str, memory_probe: Any
) -> None:
    # Given four jobs that each free a resource when their task ends, and a long job after them
    app = App(queue="jobs")
    events: list[str] = []

    @app.task("quick")
    async def quick(payload: dict[str, Any]) -> None:
        task = asyncio.current_task()
        assert task is not None
        n = payload["n"]

        def freed(_task: asyncio.Task[Any]) -> None:
            events.append(f"freed {n}")

        task.add_done_callback(freed)

    @app.task("long")
    async def long(payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.3)
        events.append("long ended")

    for n in range(4):
        await memory_worker.enqueue(memory_probe, "quick", {"n": n})
    await memory_worker.enqueue(memory_probe, "long", {})

    # When one worker runs them
    w = worker_mod.Worker(app, _settings(memory_store_url), install_signal_handlers=False)
    await _run_until_completed(w, memory_probe, 5)

    # Then each quick job's resource was freed before the long job ended
    assert sorted(events[:4]) == ["freed 0", "freed 1", "freed 2", "freed 3"]
    assert events[4:] == ["long ended"]


async def test_a_timer_a_finished_job_left_on_its_task_never_cancels_the_next_job(
    memory_store_url: str, memory_probe: Any
) -> None:
    # Given a job that arms a timer to cancel its own task and returns before it fires (a
    # cache hit that forgot to disarm it), then a job that waits longer than the timer
    app = App(queue="jobs")
    finished: list[str] = []

    @app.task("lookup")
    async def lookup(payload: dict[str, Any]) -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().call_later(0.05, task.cancel)

    @app.task("report")
    async def report(payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.2)
        finished.append("report")

    await memory_worker.enqueue(memory_probe, "lookup", {})
    await memory_worker.enqueue(memory_probe, "report", {})

    # When one worker runs them
    w = worker_mod.Worker(app, _settings(memory_store_url), install_signal_handlers=False)
    await _run_until_completed(w, memory_probe, 2)

    # Then the report ran to its end, at its first attempt
    assert finished == ["report"]
    stats = await memory_probe.fetch_stats()
    assert (stats.completed_total, stats.failed_total) == (2, 0)


def _delivery(n: int) -> base.Delivery:
    env = envelope_mod.build_envelope("noop", {"n": n})
    return base.Delivery(
        id=f"job-{n}", receipt=f"r:{n}", envelope=env, attempts=0, deliveries=1, lease_deadline=0.0
    )


def test_freeing_a_batch_of_slots_counts_only_the_jobs_finished_here_and_each_once(
    memory_store_url: str,
) -> None:
    # Given a worker holding four jobs: two finished here, one whose lease was lost, one released
    w = worker_mod.Worker(
        App(queue="jobs"), _settings(memory_store_url), install_signal_handlers=False
    )
    hs = [held_mod.Held(_delivery(n), None, "jobs", 0.0) for n in range(4)]
    hs[2].lost = True
    hs[3].released = True
    for h in hs:
        w.held[(h.job.id, h.job.receipt)] = h

    # When their slots are freed together, and then once more
    w.forget_all(hs)
    w.forget_all(hs)

    # Then every slot is free and only the two jobs finished here count, once each
    assert w.held == {}
    assert w.processed == 2


async def test_a_fetch_that_brought_nothing_starts_nothing_and_reports_no_work(
    memory_store_url: str,
) -> None:
    # Given an idle worker whose control thread records "busy" reports
    w = worker_mod.Worker(
        App(queue="jobs"), _settings(memory_store_url), install_signal_handlers=False
    )
    w.loop = asyncio.get_running_loop()
    reports: list[str] = []

    class Control:
        def report_busy(self) -> None:
            reports.append("busy")

    w.control = Control()  # type: ignore[assignment]

    # When the runner is handed an empty fetch, then one job
    w.runner.start([])
    before = (dict(w.held), list(reports))
    w.runner.start([_delivery(1)])

    # Then the empty fetch held nothing and reported nothing; the job made the worker busy
    assert before == ({}, [])
    assert reports == ["busy"] and len(w.held) == 1
    for h in list(w.held.values()):
        assert h.task is not None
        h.task.cancel()
