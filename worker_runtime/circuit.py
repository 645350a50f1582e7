"""A circuit breaker for handlers that call a flaky dependency (pure state machine, public API).

Application handlers hold one breaker per dependency (module level, shared by the worker's
jobs) and wrap each call in ``with breaker.guard():`` — or use ``allow()`` before the call and
``record_success()`` / ``record_failure()`` after. ``worker_runtime.retrying`` feeds 503s into one.

Closed → Open after ``failure_threshold`` consecutive failures; Open → Half-open after
``reset_timeout_seconds``; Half-open lets ``half_open_max_calls`` trial calls through, closes on a
success and re-opens on a failure. A trial whose outcome is never recorded (its task was
cancelled or timed out, its code forgot) expires after ``half_open_trial_seconds``, so the
breaker can never stay half-open forever; ``guard()`` gives a cancelled trial back at once.

While calls are refused, :class:`CircuitOpenError` carries a positive ``retry_after``; raised out
of a handler, the worker reads it (``exc.retry_after``) and the job waits that long in Redis
instead of spending its attempts in milliseconds. The clock is injected so tests control time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from enum import StrEnum


class CircuitState(StrEnum):
    """Where the breaker stands."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(RuntimeError):
    """Raised by :meth:`CircuitBreaker.check` while calls are not allowed.

    ``retry_after`` (seconds, > 0) is honoured by the worker: the job is retried after it.
    """

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
        half_open_trial_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        trial = half_open_trial_seconds
        if trial is None:
            trial = reset_timeout_seconds
        if failure_threshold < 1 or half_open_max_calls < 1:
            raise ValueError("failure_threshold and half_open_max_calls must be >= 1")
        if reset_timeout_seconds <= 0 or trial <= 0:
            raise ValueError("reset_timeout_seconds and half_open_trial_seconds must be > 0")
        self._threshold = failure_threshold
        self._reset = reset_timeout_seconds
        self._half_open_max = half_open_max_calls
        self._trial_seconds = trial
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials: list[float] = []  # start times of the trial calls in flight (half-open)

    @property
    def state(self) -> CircuitState:
        """The current state (an open breaker past its timeout reads as half-open)."""
        with self._lock:
            self._tick()
            return self._state

    def _tick(self) -> None:
        now = self._clock()
        if self._state is CircuitState.OPEN and now - self._opened_at >= self._reset:
            self._state = CircuitState.HALF_OPEN
            self._trials = []
        if self._state is CircuitState.HALF_OPEN:
            # a trial nobody reported on is forgotten after its time: its slot frees up
            self._trials = [t for t in self._trials if now - t < self._trial_seconds]

    def _take_trial(self) -> bool:
        self._tick()
        if self._state is CircuitState.CLOSED:
            return True
        if self._state is CircuitState.HALF_OPEN and len(self._trials) < self._half_open_max:
            self._trials.append(self._clock())
            return True
        return False

    def _wait(self) -> float:
        """Seconds until a call may go through (0 when one may now); lock held, ticked."""
        now = self._clock()
        if self._state is CircuitState.OPEN:
            return max(0.0, self._reset - (now - self._opened_at))
        if self._state is CircuitState.HALF_OPEN and len(self._trials) >= self._half_open_max:
            # a slot frees when the oldest trial reports, or at the latest when it expires
            return max(0.0, min(self._trials) + self._trial_seconds - now)
        return 0.0

    def allow(self) -> bool:
        """May a call go through now? (Counts a trial call while half-open.)"""
        with self._lock:
            return self._take_trial()

    def check(self) -> None:
        """Raise :class:`CircuitOpenError` (with a positive ``retry_after``) unless allowed."""
        with self._lock:
            if self._take_trial():
                return
            wait = self._wait()
        raise CircuitOpenError(wait if wait > 0 else self._reset)

    def retry_after(self) -> float:
        """Seconds until the breaker lets a call through (0 when it would now)."""
        with self._lock:
            self._tick()
            return self._wait()

    def record_success(self) -> None:
        """A call succeeded: close the breaker and forget earlier failures."""
        with self._lock:
            self._state = CircuitState.CLOSED
            self._failures = 0
            self._trials = []

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

    def release_trial(self) -> None:
        """A call ended without a verdict (cancelled): free its half-open trial slot."""
        with self._lock:
            if self._state is CircuitState.HALF_OPEN and self._trials:
                self._trials.pop(0)

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """``with breaker.guard(): call()`` — check, then record the call's outcome.

        Refused → :class:`CircuitOpenError` before the body runs. An ``Exception`` from the
        body is a failure (and propagates); a normal exit a success; a cancellation (or any
        other ``BaseException``) says nothing about the dependency and only frees the trial.
        """
        self.check()
        try:
            yield
        except Exception:
            self.record_failure()
            raise
        except BaseException:
            self.release_trial()
            raise
        self.record_success()

    def _open(self) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = self._clock()
        self._failures = 0
        self._trials = []
