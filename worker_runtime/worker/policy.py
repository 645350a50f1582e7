"""The retry-or-dead-letter decision for a failed attempt: one small, replaceable policy object.

The settler (:mod:`worker_runtime.worker.settling`) asks the worker's policy what to do each time
a handler's attempt fails (it raised, timed out, or its child process died), then carries the
decision out on the broker. :class:`DefaultRetryPolicy` is the matrix the worker has always
applied; pass another :class:`RetryPolicy` as ``Worker(..., policy=...)`` to change it.

The default matrix, first match wins:

1. :class:`worker_runtime.app.Reject`, or an error the task lists as ``non_retryable`` (also
   when a process task's child could only send a stand-in for it): dead-letter now
   (``non_retryable``).
2. This was the last attempt (the envelope's ``max_attempts``, else the task's
   ``Retry.max_attempts``, else ``WORKERFLEET_RETRY_MAX_ATTEMPTS``): dead-letter
   (``max_attempts``).
3. Otherwise retry after a delay: the one :class:`worker_runtime.app.RetryLater` asks for, else
   the one the error itself asks for (``exc.retry_after`` or an HTTP ``Retry-After`` header),
   both bounded by the backoff maximum; else the task's backoff (or the worker's).
4. Poison: a job delivered ``max_deliveries`` times without ever settling (its workers died
   running it) never reaches a handler again. Only the broker sees such deliveries, so it
   dead-letters them in its fetch; the policy supplies the threshold.

Unknown tasks, invalid payloads and expired jobs are not failed attempts (no handler ran):
the runner dead-letters those itself.
"""

from __future__ import annotations

import dataclasses
import datetime
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from worker_runtime import app as app_mod
from worker_runtime import backoff, logs
from worker_runtime.brokers import base

log = logs.get_logger("worker")


@dataclasses.dataclass(frozen=True, slots=True)
class RetryIn:
    """Run the job again after ``delay_seconds``; the attempt counts."""

    delay_seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """Move the job to the dead-letter queue with ``reason``; the attempt counts."""

    reason: base.DeadLetterReason


Decision = RetryIn | DeadLetter

# Reads the delay a job's previous retry waited (decorrelated jitter grows from it); None when
# unknown. The worker passes one that asks the broker.
PreviousDelayReader = Callable[[base.Delivery], Awaitable[float | None]]


class RetryPolicy(Protocol):
    """What happens to a failed attempt. ``max_deliveries`` is the poison threshold."""

    @property
    def max_deliveries(self) -> int: ...

    async def decide(
        self, job: base.Delivery, spec: app_mod.TaskSpec, exc: BaseException
    ) -> Decision: ...


class DefaultRetryPolicy:
    """The worker's decision matrix (see the module docstring), from its settings."""

    def __init__(
        self,
        *,
        max_attempts: int,
        max_deliveries: int,
        backoff_policy: backoff.Backoff,
        previous_delay: PreviousDelayReader | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.max_attempts = max_attempts
        self._max_deliveries = max_deliveries
        self.default_backoff = backoff_policy
        self.previous_delay = previous_delay
        self.rng = rng if rng is not None else random.Random()

    @property
    def max_deliveries(self) -> int:
        return self._max_deliveries

    async def decide(
        self, job: base.Delivery, spec: app_mod.TaskSpec, exc: BaseException
    ) -> Decision:
        """Dead-letter (non-retryable, last attempt) or retry after a delay."""
        if is_one_of(exc, (app_mod.Reject, *spec.non_retryable)):
            reason = getattr(exc, "dead_letter_reason", base.DeadLetterReason.NON_RETRYABLE)
            return DeadLetter(base.DeadLetterReason(reason))
        max_attempts = (
            job.envelope.max_attempts
            or (spec.retry.max_attempts if spec.retry is not None else None)
            or self.max_attempts
        )
        if job.attempts + 1 >= max_attempts:
            return DeadLetter(base.DeadLetterReason.MAX_ATTEMPTS)
        return RetryIn(await self.retry_delay(spec, exc, job))

    async def retry_delay(
        self, spec: app_mod.TaskSpec, exc: BaseException, job: base.Delivery
    ) -> float:
        """Seconds before the next attempt of ``job`` after ``exc`` (rule 3 of the matrix)."""
        policy = (
            spec.retry.backoff
            if spec.retry is not None and spec.retry.backoff is not None
            else self.default_backoff
        )
        if isinstance(exc, app_mod.RetryLater) and exc.delay is not None:
            requested: float | None = exc.delay
        else:
            requested = retry_after_hint(exc)
        if requested is not None:
            # a requested delay waits at most the backoff maximum; inf/nan never come due
            bounded = backoff.clamp_delay(policy, requested)
            if bounded is not None:
                return bounded
            log.warning(
                "ignoring a non-finite retry delay; the backoff decides",
                extra={"requested": repr(requested)},
            )
        previous = None
        if policy.jitter == "decorrelated" and job.attempts > 0 and self.previous_delay is not None:
            previous = await self.previous_delay(job)
        return backoff.delay_for(policy, job.attempts + 1, previous=previous, rng=self.rng)


def is_one_of(exc: BaseException, types: tuple[type[BaseException], ...]) -> bool:
    """``isinstance(exc, types)``, also for a process task's stand-in for an error that did not
    pickle back (``processes.ChildError``, which names its classes): checked by its own type,
    a non-retryable error of the handler was retried to the job's last attempt."""
    if isinstance(exc, types):
        return True
    names = getattr(exc, "type_names", None)
    if not isinstance(names, tuple) or not names:
        return False
    return any(f"{t.__module__}.{t.__qualname__}" in names for t in types)


def retry_after_hint(exc: BaseException) -> float | None:
    """A delay the error itself asks for: ``exc.retry_after`` or an HTTP ``Retry-After`` header.

    None when there is none, or when reading it fails: the attributes are the exception's own
    code (a property that raises, headers that are not a mapping), and a hint that cannot be
    read must not keep the failure from being recorded — the backoff decides then.
    """
    try:
        value: Any = getattr(exc, "retry_after", None)
        if value is None:
            response = getattr(exc, "response", None)
            headers = getattr(response, "headers", None)
            if headers is not None:
                # requests/httpx/aiohttp headers ignore case; a plain dict does not
                value = headers.get("Retry-After")
                if value is None:
                    value = headers.get("retry-after")
        if value is None:
            return None
        if isinstance(value, datetime.datetime) and value.utcoffset() is None:
            # a naive time names no instant (backoff ignores it): say so, or a library's
            # "retry at 12:00" was dropped without a word and the job came back on backoff
            kind = type(exc).__qualname__
            log.warning(
                f"ignoring {kind}.retry_after: a datetime with no time zone "
                f"({value.isoformat()}); the backoff decides",
                extra={"error_type": kind},
            )
            return None
        return backoff.seconds_of_retry_hint(value)
    except Exception:  # whatever the exception's own code raises
        log.warning(
            "ignoring a retry delay that could not be read; the backoff decides",
            extra={"error_type": type(exc).__qualname__},
        )
        return None
