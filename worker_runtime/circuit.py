"""A small circuit breaker for handlers that call flaky dependencies (pure state machine).

Application handlers hold one per dependency: ``allow()`` before the call, ``record_success()`` /
``record_failure()`` after. Closed → Open after ``failure_threshold`` consecutive failures;
Open → Half-open after ``reset_timeout_seconds``; Half-open lets ``half_open_max_calls`` trial
calls through, closes on a success and re-opens on a failure. The clock is injected so tests
control time; when open, raise ``RetryLater(delay=breaker.retry_after())`` to wait in Redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum


class CircuitState(StrEnum):
    """Where the breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(RuntimeError):
    """Raised by :meth:`CircuitBreaker.check` while calls are not allowed."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"circuit open; retry in {retry_after:.1f}s")
        self.retry_after = retry_after


class CircuitBreaker:
    """Consecutive-failure circuit breaker; thread-safe (sync handlers run in a thread pool)."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_timeout_seconds: float = 30.0,
        half_open_max_calls: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_timeout_seconds <= 0 or half_open_max_calls < 1:
            raise ValueError("threshold and half-open calls >= 1, reset timeout > 0")
        self._threshold = failure_threshold
        self._reset = reset_timeout_seconds
        self._half_open_max = half_open_max_calls
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0

    @property
    def state(self) -> CircuitState:
        """The current state (an open breaker past its timeout reads as half-open)."""
        with self._lock:
            self._tick()
            return self._state

    def _tick(self) -> None:
        if self._state is CircuitState.OPEN and self._clock() - self._opened_at >= self._reset:
            self._state = CircuitState.HALF_OPEN
            self._trials = 0

    def allow(self) -> bool:
        """May a call go through now? (Counts a trial call while half-open.)"""
        with self._lock:
            self._tick()
            if self._state is CircuitState.CLOSED:
                return True
            if self._state is CircuitState.HALF_OPEN and self._trials < self._half_open_max:
                self._trials += 1
                return True
            return False

    def check(self) -> None:
        """Raise :class:`CircuitOpenError` unless a call is allowed."""
        if not self.allow():
            raise CircuitOpenError(self.retry_after())

    def retry_after(self) -> float:
        """Seconds until the breaker lets a trial call through (0 when it would now)."""
        with self._lock:
            self._tick()
            if self._state is CircuitState.OPEN:
                return max(0.0, self._reset - (self._clock() - self._opened_at))
            return 0.0

    def record_success(self) -> None:
        """A call succeeded: close the breaker and forget earlier failures."""
        with self._lock:
            self._state = CircuitState.CLOSED
            self._failures = 0
            self._trials = 0

    def record_failure(self) -> None:
        """A call failed: open after the threshold, or re-open from half-open at once."""
        with self._lock:
            self._tick()
            if self._state is CircuitState.HALF_OPEN:
                self._open()
                return
            self._failures += 1
            if self._failures >= self._threshold:
                self._open()

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        self._failures = 0
        self._trials = 0
