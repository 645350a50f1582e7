"""Pure retry-delay arithmetic: exponential or fixed backoff with jitter, and HTTP Retry-After.

The worker calls :func:`delay_for` after a handler failure to decide when the retry becomes
due (the wait happens in Redis, never in worker memory), and :func:`parse_retry_after` when a
handler reports an HTTP-style ``Retry-After``. No I/O; the random source is injectable.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import random
import time
from dataclasses import dataclass
from typing import Literal

Strategy = Literal["exponential", "fixed"]
Jitter = Literal["full", "equal", "decorrelated", "none"]


@dataclass(frozen=True)
class Backoff:
    """A retry-delay policy (CRD ``retry.backoff``; env ``WORKERFLEET_RETRY_BACKOFF_*``)."""

    strategy: Strategy = "exponential"
    base_seconds: float = 2.0
    max_seconds: float = 300.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base_seconds) and math.isfinite(self.max_seconds)):
            # nan made every delay nan, which the queue refuses, so the failed job was never
            # retried; inf let delays grow past anything a job could wait for
            raise ValueError("backoff seconds must be finite numbers")
        if self.base_seconds < 0 or self.max_seconds < 0:
            raise ValueError("backoff seconds must not be negative")
        if self.strategy not in ("exponential", "fixed"):
            raise ValueError(f"unknown backoff strategy {self.strategy!r}")
        if self.jitter not in ("full", "equal", "decorrelated", "none"):
            raise ValueError(f"unknown jitter {self.jitter!r}")


def ceiling_for(policy: Backoff, attempt: int) -> float:
    """The un-jittered delay for retry number ``attempt`` (1 = first retry), capped."""
    if policy.strategy == "fixed":
        return min(policy.base_seconds, policy.max_seconds)
    exponent = max(0, attempt - 1)
    # 2**exponent overflows floats long after it passes any cap; stop early
    if exponent > 60:
        return policy.max_seconds
    return min(policy.max_seconds, policy.base_seconds * math.pow(2.0, exponent))


def delay_for(
    policy: Backoff,
    attempt: int,
    *,
    previous: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = first retry).

    ``full``: uniform in [0, ceiling]; ``equal``: ceiling/2 + uniform in [0, ceiling/2];
    ``decorrelated``: uniform in [base, previous * 3] (previous defaults to base), capped;
    ``none``: the ceiling itself. Always within [0, max_seconds].
    """
    r = rng if rng is not None else random
    ceiling = ceiling_for(policy, attempt)
    if policy.jitter == "none":
        return ceiling
    if policy.jitter == "full":
        return r.uniform(0.0, ceiling)
    if policy.jitter == "equal":
        return ceiling / 2.0 + r.uniform(0.0, ceiling / 2.0)
    last = policy.base_seconds if previous is None else max(previous, policy.base_seconds)
    return min(policy.max_seconds, r.uniform(policy.base_seconds, last * 3.0))


def clamp_delay(policy: Backoff, requested: float) -> float | None:
    """A delay a handler asked for, bounded to [0, max_seconds]; None when it is not finite.

    Handlers ask through ``RetryLater``, an error's ``retry_after`` or an HTTP ``Retry-After``;
    ``inf``/``nan`` would never come due (and cannot be stored as milliseconds), so the caller
    falls back to the policy's own delay for them.
    """
    if not math.isfinite(requested):
        return None
    return min(policy.max_seconds, max(0.0, requested))


def seconds_of_retry_hint(value: object, *, now: float | None = None) -> float | None:
    """Seconds to wait from a retry hint in any form code hands one: a number of seconds, a
    ``timedelta``, a ``datetime`` (when to retry), or an HTTP ``Retry-After`` text (bytes
    too). None when it is none of them or not finite (the backoff decides then)."""
    if isinstance(value, bool):
        return None  # True is an int, never a delay anyone meant
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, datetime.datetime):
        if value.utcoffset() is None:
            # a naive time is ambiguous: no guessing its zone (a tzinfo that gives no offset
            # is naive too: .timestamp() raised TypeError on it), as expiry.epoch_seconds_of
            return None
        seconds = value.timestamp() - (time.time() if now is None else now)
    elif isinstance(value, bytes):
        return parse_retry_after(value.decode("latin-1"), now=now)
    elif isinstance(value, str):
        return parse_retry_after(value, now=now)
    else:
        return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def parse_retry_after(value: str, *, now: float | None = None) -> float | None:
    """Seconds to wait from an HTTP ``Retry-After`` value (delta seconds or an HTTP date, which
    is always GMT: in any of its three forms).

    Returns None when the value is neither; a date in the past gives 0.0.
    """
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isnan(seconds) or math.isinf(seconds):
            return None
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        # HTTP dates are GMT, and the asctime form (and a '-0000' zone) says no zone at all:
        # read as local time it was off by the pod's UTC offset (TZ=America/New_York: 5 hours)
        when = when.replace(tzinfo=datetime.UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
