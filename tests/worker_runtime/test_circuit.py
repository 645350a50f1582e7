"""The circuit breaker (pure state machine, fake clock) and a worker honouring its waits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio

from tests.support import engine as es
from worker_runtime import App, JobContext, Retry, circuit, config, worker
from worker_runtime.brokers.redis import stats


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_consecutive_failures_and_refuses_calls() -> None:
    clock = FakeClock()
    b = circuit.CircuitBreaker(failure_threshold=3, reset_timeout_seconds=10, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state is circuit.CircuitState.CLOSED
    b.record_failure()
    assert b.state is circuit.CircuitState.OPEN
    assert not b.allow()
    assert b.retry_after() == 10.0
    with pytest.raises(circuit.CircuitOpenError) as err:
        b.check()
    assert err.value.retry_after == 10.0


def test_a_success_resets_the_failure_count() -> None:
    b = circuit.CircuitBreaker(failure_threshold=2, clock=FakeClock())
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state is circuit.CircuitState.CLOSED


def test_after_the_timeout_one_trial_call_closes_or_reopens_the_breaker() -> None:
    clock = FakeClock()
    b = circuit.CircuitBreaker(failure_threshold=1, reset_timeout_seconds=5, clock=clock)
    b.record_failure()
    clock.now += 5
    assert b.state is circuit.CircuitState.HALF_OPEN
    assert b.allow() and not b.allow()  # one trial only
    b.record_failure()
    assert b.state is circuit.CircuitState.OPEN and b.retry_after() == 5.0
    clock.now += 5
    assert b.allow()
    b.record_success()
    assert b.state is circuit.CircuitState.CLOSED and b.allow()


def test_nonsense_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        circuit.CircuitBreaker(failure_threshold=0)


def _half_open_with_a_trial_in_flight(clock: FakeClock) -> circuit.CircuitBreaker:
    """A breaker (reset 5 s, trials expire after 8 s) whose one trial call was let through."""
    b = circuit.CircuitBreaker(
        failure_threshold=1, reset_timeout_seconds=5, half_open_trial_seconds=8, clock=clock
    )
    b.record_failure()
    clock.now += 5
    assert b.allow()
    return b


def test_a_half_open_trial_whose_outcome_is_never_recorded_expires() -> None:
    # Given a half-open breaker whose one trial call was let through and then lost (its task
    # cancelled, its worker timed out): neither success nor failure is ever recorded
    clock = FakeClock()
    b = _half_open_with_a_trial_in_flight(clock)
    # When the trial's time runs out
    clock.now += 7.9
    assert not b.allow()
    clock.now += 0.1
    # Then the breaker lets a new trial through instead of refusing calls forever
    assert b.state is circuit.CircuitState.HALF_OPEN
    assert b.allow()


def test_while_a_trial_runs_callers_are_told_to_come_back_after_a_positive_delay() -> None:
    # Given a half-open breaker whose trial call is in flight
    clock = FakeClock()
    b = _half_open_with_a_trial_in_flight(clock)
    clock.now += 3
    # When another caller asks
    # Then it is refused with the time until the trial ends or expires, never 0 (a job told
    # to retry in 0 s would burn its attempts in milliseconds)
    assert b.retry_after() == 5.0
    with pytest.raises(circuit.CircuitOpenError) as err:
        b.check()
    assert err.value.retry_after == 5.0


def test_the_trial_time_defaults_to_the_reset_timeout() -> None:
    clock = FakeClock()
    b = circuit.CircuitBreaker(failure_threshold=1, reset_timeout_seconds=5, clock=clock)
    b.record_failure()
    clock.now += 5
    assert b.allow() and not b.allow() and b.retry_after() == 5.0
    clock.now += 5
    assert b.allow()


async def test_guard_records_the_outcome_and_gives_a_cancelled_trial_back() -> None:
    # Given a half-open breaker
    clock = FakeClock()
    b = circuit.CircuitBreaker(failure_threshold=1, reset_timeout_seconds=5, clock=clock)
    b.record_failure()
    clock.now += 5

    # When the trial call inside `guard()` is cancelled
    async def trial() -> None:
        with b.guard():
            await asyncio.sleep(10)

    task = asyncio.create_task(trial())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Then the trial slot is free again at once (no verdict on the dependency)
    assert b.state is circuit.CircuitState.HALF_OPEN
    # and a guarded call that fails re-opens it, one that succeeds closes it
    with pytest.raises(RuntimeError), b.guard():
        raise RuntimeError("still down")
    assert b.state is circuit.CircuitState.OPEN
    with pytest.raises(circuit.CircuitOpenError), b.guard():  # refused: the body never runs
        raise AssertionError("must not run while open")
    clock.now += 5
    with b.guard():
        pass
    assert b.state is circuit.CircuitState.CLOSED


def test_the_breaker_is_part_of_the_public_api() -> None:
    import worker_runtime

    assert worker_runtime.CircuitBreaker is circuit.CircuitBreaker
    assert worker_runtime.CircuitOpenError is circuit.CircuitOpenError


async def test_jobs_refused_while_a_trial_runs_wait_in_redis_instead_of_burning_attempts(
    redis_client: redis.asyncio.Redis, queue_name: str, redis_server: Any
) -> None:
    # Given a half-open breaker guarding a slow dependency, a task that calls it (the example
    # of docs/runtime.md) and two jobs: the first becomes the trial call and takes 2 s
    breaker = circuit.CircuitBreaker(
        failure_threshold=1, reset_timeout_seconds=0.5, half_open_trial_seconds=5.0
    )
    breaker.record_failure()
    await asyncio.sleep(0.5)
    app = App(queue=queue_name)
    starts: dict[str, list[float]] = {}

    @app.task("call-dependency", retry=Retry(max_attempts=5))
    async def call_dependency(payload: dict[str, Any], ctx: JobContext) -> None:
        starts.setdefault(payload["name"], []).append(time.monotonic())
        with breaker.guard():
            await asyncio.sleep(payload["seconds"])

    engine = es.make_engine(redis_client, queue_name)
    [trial] = await engine.enqueue_many(
        [es.request("call-dependency", {"name": "trial", "seconds": 2.0}, priority="high")]
    )
    [other] = await engine.enqueue_many(
        [es.request("call-dependency", {"name": "other", "seconds": 0.0})]
    )
    settings = config.WorkerSettings(
        redis_url=redis_server.url, queue=queue_name, metrics_port=0, concurrency=2
    )
    w = worker.Worker(app, settings, install_signal_handlers=False)
    run = asyncio.create_task(w.run())
    try:
        # When the second job finds the trial in flight
        for _ in range(300):  # bounded: 15 s
            s = await stats.fetch_queue_stats(redis_client, queue_name)
            if s.completed_total + s.dead_letter >= 2 or run.done():
                break
            await asyncio.sleep(0.05)
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 20) == 0
    # Then it waited in Redis until the trial could have ended, and then ran: two starts, not
    # five refusals in milliseconds and a dead letter
    s = await stats.fetch_queue_stats(redis_client, queue_name)
    assert (s.completed_total, s.dead_letter) == (2, 0)
    assert len(starts["trial"]) == 1
    assert len(starts["other"]) == 2
    assert starts["other"][1] - starts["other"][0] >= 2.0
    assert trial.created and other.created
