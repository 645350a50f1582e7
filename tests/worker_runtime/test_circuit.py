"""The circuit breaker (pure state machine, fake clock)."""

from __future__ import annotations

import pytest

from worker_runtime import circuit


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
