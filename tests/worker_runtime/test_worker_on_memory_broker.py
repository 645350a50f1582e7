"""The real Worker's retry, dead-letter and drain decisions, on the in-process memory broker.

No Redis: the worker opens ``memory://NAME`` through the same ``open_broker`` it uses for
every backend, and the test opens its own broker on the same NAME to enqueue jobs and read what
happened to them (the broker's records: dead letters with their failure history, completed
counts, what is back in the queue), so each decision is proven in well under a second.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.support import memory_worker
from worker_runtime import (
    App,
    Backoff,
    JobContext,
    Reject,
    Retry,
    RetryLater,
    brokers,
    errors,
)
from worker_runtime import worker as worker_mod
from worker_runtime.brokers import base

pytestmark = pytest.mark.timeout(60)


def _heartbeat_listed(probe: Any) -> Callable[[], Any]:
    """A check for ``memory_worker.until``: the probe's queue lists a worker's heartbeat."""

    async def check() -> bool:
        return bool((await probe.fetch_stats()).workers)

    return check


async def test_a_failing_job_is_retried_with_backoff_then_dead_lettered_at_max_attempts(
    memory_store_url: str, memory_probe: Any
) -> None:
    # Given a task that always fails, allowed three attempts
    app = App(queue="jobs")
    attempts: list[int] = []

    @app.task("flaky", retry=Retry(max_attempts=3))
    async def flaky(payload: dict[str, Any], ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError(f"boom {ctx.attempt}")

    job_id = await memory_worker.enqueue(memory_probe, "flaky")
    w = worker_mod.Worker(
        app, memory_worker.settings(memory_store_url), install_signal_handlers=False
    )

    # When the worker runs until the job is in the dead-letter queue
    async def dead() -> bool:
        return await memory_probe.show_dead_letter(job_id) is not None

    await memory_worker.run_until(w, dead, "the dead letter")

    # Then it ran three times, and its dead letter says why with every failure in order
    assert attempts == [1, 2, 3]
    letter = await memory_probe.show_dead_letter(job_id)
    assert letter.reason == "max_attempts"
    assert letter.attempts == 3
    assert [r.message for r in letter.history] == ["boom 1", "boom 2", "boom 3"]
    stats = await memory_probe.fetch_stats()
    assert (stats.backlog, stats.in_flight, stats.completed_total) == (0, 0, 0)


async def test_reject_dead_letters_at_once_and_retry_later_runs_again_then_completes(
    memory_store_url: str, memory_probe: Any
) -> None:
    # Given one task that rejects its job and one that asks to be retried once
    app = App(queue="jobs")
    runs: list[str] = []

    @app.task("refuse", retry=Retry(max_attempts=5))
    async def refuse(payload: dict[str, Any]) -> None:
        runs.append("refuse")
        raise Reject("bad input")

    @app.task("later", retry=Retry(max_attempts=5))
    async def later(payload: dict[str, Any], ctx: JobContext) -> None:
        runs.append(f"later {ctx.attempt}")
        if ctx.attempt == 1:
            raise RetryLater(0.05)

    rejected = await memory_worker.enqueue(memory_probe, "refuse")
    await memory_worker.enqueue(memory_probe, "later")
    w = worker_mod.Worker(
        app, memory_worker.settings(memory_store_url), install_signal_handlers=False
    )

    # When the worker runs until the retried job completed
    async def settled() -> bool:
        stats = await memory_probe.fetch_stats()
        return bool(stats.completed_total == 1 and stats.dead_letter == 1)

    await memory_worker.run_until(w, settled, "one completed job and one dead letter")

    # Then the rejected job ran once and went to the DLQ as non-retryable; the other ran twice
    assert sorted(runs) == ["later 1", "later 2", "refuse"]
    letter = await memory_probe.show_dead_letter(rejected)
    assert letter.reason == "non_retryable" and letter.attempts == 1
    assert [r.error_type for r in letter.history] == ["Reject"]


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ exploded")


class _BrokenHint(Exception):
    @property
    def retry_after(self) -> float:
        raise RuntimeError("the hint exploded")


async def test_a_failure_whose_exception_cannot_be_printed_or_read_is_still_recorded(
    memory_store_url: str, memory_probe: Any
) -> None:
    # Given a task whose exceptions are user code gone wrong: one whose __str__ raises, one
    # whose retry_after property raises (recording the failure raised, so the job was neither
    # retried nor dead-lettered and came back only when its lease ran out, history empty)
    app = App(queue="jobs")
    runs: list[str] = []

    @app.task("odd", retry=Retry(max_attempts=2))
    async def odd(payload: dict[str, Any], ctx: JobContext) -> None:
        runs.append(f"{payload['kind']} {ctx.attempt}")
        raise _Unprintable() if payload["kind"] == "unprintable" else _BrokenHint("busy")

    unprintable = await memory_worker.enqueue(memory_probe, "odd", {"kind": "unprintable"})
    broken_hint = await memory_worker.enqueue(memory_probe, "odd", {"kind": "hint"})
    w = worker_mod.Worker(
        app,
        memory_worker.settings(memory_store_url, lease_seconds=30.0),
        install_signal_handlers=False,
    )

    # When the worker runs until both are dead letters
    async def both_dead() -> bool:
        return (await memory_probe.fetch_stats()).dead_letter == 2

    await memory_worker.run_until(w, both_dead, "two dead letters")

    # Then each ran twice (retried after its first failure, not after a lease), and each
    # failure is in its history: the unprintable one by a stand-in for its message
    assert sorted(runs) == ["hint 1", "hint 2", "unprintable 1", "unprintable 2"]
    letter = await memory_probe.show_dead_letter(unprintable)
    stand_in = "<str() of _Unprintable raised RuntimeError>"
    assert [r.message for r in letter.history] == [stand_in, stand_in]
    assert (letter.reason, letter.lost) == ("max_attempts", 0)
    letter = await memory_probe.show_dead_letter(broken_hint)
    assert [r.message for r in letter.history] == ["busy", "busy"]
    assert (letter.reason, letter.lost) == ("max_attempts", 0)


class _NaiveRetryAt(Exception):
    """A client library's error asking to retry at a time given with no time zone."""

    def __init__(self) -> None:
        super().__init__("rate limited")
        self.retry_after = datetime.datetime(2030, 1, 1, 12, 0)


async def test_an_errors_retry_after_with_no_time_zone_is_ignored_with_one_warning_per_attempt(
    memory_store_url: str, memory_probe: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a task allowed three attempts whose error asks to be retried at a naive datetime
    app = App(queue="jobs")
    attempts: list[int] = []

    @app.task("throttled", retry=Retry(max_attempts=3))
    async def throttled(payload: dict[str, Any], ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        raise _NaiveRetryAt()

    job_id = await memory_worker.enqueue(memory_probe, "throttled")
    w = worker_mod.Worker(
        app, memory_worker.settings(memory_store_url), install_signal_handlers=False
    )

    # When the worker runs until the job is dead-lettered
    async def dead() -> bool:
        return await memory_probe.show_dead_letter(job_id) is not None

    with caplog.at_level(logging.WARNING, logger="workerfleet"):
        await memory_worker.run_until(w, dead, "the dead letter")

    # Then the backoff decided each retry (no wait until 2030), and each attempt that was
    # retried logged one warning naming the error's type and why its retry_after was ignored
    assert attempts == [1, 2, 3]
    warnings = [r for r in caplog.records if "retry_after" in r.getMessage()]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    for record in warnings:
        assert record.levelno == logging.WARNING
        assert "_NaiveRetryAt.retry_after" in record.getMessage()
        assert "no time zone" in record.getMessage()
        assert record.__dict__["error_type"] == "_NaiveRetryAt"


class _DeadLetterEverything:
    """A replacement policy: no retries at all, whatever the task says."""

    max_deliveries = 5

    async def decide(
        self, job: base.Delivery, spec: Any, exc: BaseException
    ) -> worker_mod.DeadLetter:
        return worker_mod.DeadLetter(base.DeadLetterReason.NON_RETRYABLE)


async def test_a_replacement_retry_policy_decides_instead_of_the_default_matrix(
    memory_store_url: str, memory_probe: Any
) -> None:
    # Given a task the default matrix would retry five times, and a policy that never retries
    app = App(queue="jobs")
    attempts: list[int] = []

    @app.task("fails", retry=Retry(max_attempts=5, backoff=Backoff(base_seconds=0.01)))
    async def fails(payload: dict[str, Any], ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("once is enough")

    job_id = await memory_worker.enqueue(memory_probe, "fails")
    w = worker_mod.Worker(
        app,
        memory_worker.settings(memory_store_url),
        install_signal_handlers=False,
        policy=_DeadLetterEverything(),
    )

    # When the worker runs until the job is dead-lettered
    async def dead() -> bool:
        return await memory_probe.show_dead_letter(job_id) is not None

    await memory_worker.run_until(w, dead, "the dead letter")

    # Then the policy's decision was applied after the first attempt
    assert attempts == [1]
    letter = await memory_probe.show_dead_letter(job_id)
    assert letter.reason == "non_retryable" and letter.attempts == 1


async def test_drain_lets_a_quick_job_finish_and_releases_a_slow_one_without_spending_an_attempt(
    memory_store_url: str, memory_probe: Any
) -> None:
    # Given a worker with a three-second drain budget (two to wait) running a quick and a slow job
    app = App(queue="jobs")
    started: list[str] = []
    quick_may_finish = asyncio.Event()

    @app.task("quick")
    async def quick(payload: dict[str, Any]) -> None:
        started.append("quick")
        await quick_may_finish.wait()

    @app.task("slow")
    async def slow(payload: dict[str, Any]) -> None:
        started.append("slow")
        await asyncio.sleep(60)

    await memory_worker.enqueue(memory_probe, "quick")
    slow_id = await memory_worker.enqueue(memory_probe, "slow")
    w = worker_mod.Worker(
        app,
        memory_worker.settings(memory_store_url, drain_timeout_seconds=3.0),
        install_signal_handlers=False,
    )
    run = asyncio.create_task(w.run())

    async def both_running() -> bool:
        return len(started) == 2

    await memory_worker.until(both_running, 10.0, "both jobs to start")

    # When the drain starts and the quick job finishes during it
    w.request_drain()
    quick_may_finish.set()
    assert await asyncio.wait_for(run, 10) == 0

    # Then the quick job completed, and the slow one is back in the queue, no attempt spent
    stats = await memory_probe.fetch_stats()
    assert (stats.completed_total, stats.in_flight, stats.backlog) == (1, 0, 1)
    assert stats.dead_letter == 0 and stats.retried_total == 0
    [again] = await memory_probe.fetch("checker", 1)
    assert again.id == slow_id and again.attempts == 0


async def test_a_worker_started_while_its_broker_is_unreachable_waits_for_it_then_works(
    memory_store_url: str, memory_probe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker that cannot be opened for its first four attempts (a RabbitMQ or SQS
    # endpoint still down when the pod starts), from the job loop and the control thread alike
    real_open = brokers.open_broker
    lock = threading.Lock()
    calls: list[str] = []

    async def flaky_open(url: str, queue: str, **kwargs: Any) -> Any:
        with lock:
            calls.append(threading.current_thread().name)
            refuse = len(calls) <= 4
        if refuse:
            raise errors.BrokerUnavailable("connection refused", operation="open")
        return await real_open(url, queue, **kwargs)

    monkeypatch.setattr(brokers, "open_broker", flaky_open)
    app = App(queue="jobs")
    done: list[str] = []

    @app.task("work")
    async def work(payload: dict[str, Any]) -> None:
        done.append("work")

    await memory_worker.enqueue(memory_probe, "work")
    w = worker_mod.Worker(
        app, memory_worker.settings(memory_store_url), install_signal_handlers=False
    )

    # When the worker starts anyway
    async def completed_and_beating() -> bool:
        stats = await memory_probe.fetch_stats()
        return bool(stats.completed_total == 1 and stats.workers)

    await memory_worker.run_until(w, completed_and_beating, "the job done and a heartbeat")

    # Then both of its connections kept trying until the broker answered, and the job ran once
    assert done == ["work"]
    assert len(calls) >= 6
    assert {"wf-control", "MainThread"} <= set(calls)


def _worker_with_a_held_task(url: str) -> tuple[worker_mod.Worker, asyncio.Event]:
    """A worker beating every 10 s (a 30 s lease) whose task ``held`` runs until released."""
    app = App(queue="jobs")
    release = asyncio.Event()

    @app.task("held")
    async def held(payload: dict[str, Any]) -> None:
        await release.wait()

    worker = worker_mod.Worker(
        app, memory_worker.settings(url, lease_seconds=30), install_signal_handlers=False
    )
    return worker, release


def _beat_shows(probe: Any, in_flight: int) -> Callable[[], Awaitable[bool]]:
    """A check: the worker's heartbeat record says it holds ``in_flight`` jobs."""

    async def check() -> bool:
        stats = await probe.fetch_stats()
        return bool(stats.workers) and stats.workers[0].in_flight == in_flight

    return check


async def test_a_worker_whose_last_job_settles_beats_idle_at_once_not_a_period_later(
    memory_store_url: str, memory_probe: Any
) -> None:
    # Given a worker beating every 10 s (a 30 s lease) that holds one job it was seen holding
    w, release = _worker_with_a_held_task(memory_store_url)
    beat_shows = functools.partial(_beat_shows, memory_probe)

    async def job_held() -> bool:
        return len(w.held) == 1 and w.control is not None

    run = asyncio.create_task(w.run())
    try:
        # (its first beat, at start, saw no job; the job comes after it)
        await memory_worker.until(beat_shows(0), 5.0, "the first heartbeat")
        await memory_worker.enqueue(memory_probe, "held")
        await memory_worker.until(job_held, 5.0, "the job held")
        assert w.control is not None
        w.control.wake()  # one beat that sees the job, as a periodic one would
        await memory_worker.until(beat_shows(1), 5.0, "a heartbeat showing the job")

        # When the job settles
        release.set()

        # Then a heartbeat says the worker is idle well before the next periodic beat (10 s)
        await memory_worker.until(beat_shows(0), 5.0, "a heartbeat showing no job")
        assert (await memory_probe.fetch_stats()).completed_total == 1
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 10) == 0


async def test_an_idle_worker_that_takes_a_job_beats_busy_at_once_not_a_period_later(
    memory_store_url: str, memory_probe: Any
) -> None:
    # Given a worker beating every 10 s (a 30 s lease) whose last beat said it held nothing
    w, release = _worker_with_a_held_task(memory_store_url)
    beat_shows = functools.partial(_beat_shows, memory_probe)
    run = asyncio.create_task(w.run())
    try:
        await memory_worker.until(beat_shows(0), 5.0, "the first heartbeat, idle")
        # When a job arrives and the worker takes it
        await memory_worker.enqueue(memory_probe, "held")
        # Then a heartbeat says it holds the job well before the next periodic beat (10 s): a
        # scale-in ranking read now would not take it for the idle pod to remove
        await memory_worker.until(beat_shows(1), 5.0, "a heartbeat showing the job")
    finally:
        release.set()
        w.request_drain()
        assert await asyncio.wait_for(run, 10) == 0


async def test_a_worker_flapping_between_one_job_and_none_beats_early_once_per_period(
    memory_store_url: str, memory_probe: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker of concurrency 1 beating every 10 s, whose control thread's renewals (each
    # one a heartbeat) are counted
    real_open = brokers.open_broker
    renewals: list[int] = []

    async def counting_open(url: str, queue: str, **kwargs: Any) -> Any:
        broker = await real_open(url, queue, **kwargs)
        if threading.current_thread().name == "wf-control":
            real_renew = broker.renew

            async def renew(*args: Any, **kw: Any) -> Any:
                renewals.append(len(args[1]))
                return await real_renew(*args, **kw)

            broker.renew = renew
        return broker

    monkeypatch.setattr(brokers, "open_broker", counting_open)
    app = App(queue="jobs")

    @app.task("quick")
    async def quick(payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.002)

    w = worker_mod.Worker(
        app,
        memory_worker.settings(memory_store_url, lease_seconds=30, concurrency=1),
        install_signal_handlers=False,
    )
    run = asyncio.create_task(w.run())
    try:
        await memory_worker.until(_heartbeat_listed(memory_probe), 5.0, "the first heartbeat")
        # When 300 jobs come, each one leaving the worker idle for a moment, and a beat in their
        # midst sees one held
        for _ in range(300):
            await memory_worker.enqueue(memory_probe, "quick")

        async def some_done() -> bool:
            return (await memory_probe.fetch_stats()).completed_total >= 20

        await memory_worker.until(some_done, 10.0, "the first jobs done")
        assert w.control is not None
        w.control.wake()

        async def all_done() -> bool:
            return (await memory_probe.fetch_stats()).completed_total == 300

        await memory_worker.until(all_done, 20.0, "all jobs done")
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 10) == 0
    # Then the 300 busy and idle moments added two beats at most: the start, one early busy
    # and one early idle beat, the asked one and the last one of the drain
    assert len(renewals) <= 5, renewals


async def test_a_heartbeat_asked_for_after_the_worker_stopped_is_nothing_not_an_error(
    memory_store_url: str, memory_probe: Any
) -> None:
    # Given a worker that ran and stopped (its control thread's event loop closed)
    w = worker_mod.Worker(
        App(queue="jobs"), memory_worker.settings(memory_store_url), install_signal_handlers=False
    )
    await memory_worker.run_until(w, _heartbeat_listed(memory_probe), "a heartbeat")
    assert w.control is not None and not w.control.is_alive()
    # When something asks for a heartbeat now (a job settling late, a drain step)
    w.control.wake()
    # Then nothing is sent and nothing raises; the stopped worker left no heartbeat record
    assert (await memory_probe.fetch_stats()).workers == ()
