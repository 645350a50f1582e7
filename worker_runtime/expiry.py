"""Job time-to-live: when a job's deadline is, and who enforces it.

A job may carry a deadline after which it must not start (``enqueue(..., ttl=...)`` or
``expires_at=...``, stored as the envelope's ``expires_at``), and a task may give its jobs a
default (``@app.task(..., ttl=...)``, counted from the job's ``enqueued_at``). The producer
(:mod:`worker_runtime.producer`) computes the stored deadline; the worker
(:mod:`worker_runtime.worker`) calls :func:`deadline_of` and :func:`seconds_past` right before it
would start a handler, so an expired job is never started, whatever delayed it (a backlog, a
retry, a lost lease). What happens to it is the task's ``on_expire``: the dead-letter queue with
reason ``expired`` (the default), or dropped.

Where the check runs is a property of the queue engine (:class:`Enforcement`): the Redis engine
has no per-entry expiry, so it declares ``WORKER_AT_START``. An engine whose broker expires
messages itself (RabbitMQ's per-message ``expiration``) would declare ``BROKER_NATIVE``; the
worker's check stays on as the backstop for jobs the broker has already handed out.

Every point in time a caller hands the runtime as a ``datetime`` (enqueue's ``eta`` and
``expires_at``, ``RetryLater(retry_after=...)``) is read by :func:`epoch_seconds_of`, the one
rule for them: an aware datetime is that instant, and a naive one is refused.
"""

from __future__ import annotations

import math
from datetime import datetime
from enum import StrEnum
from typing import Literal

OnExpire = Literal["dead_letter", "drop"]
"""What a task does with a job that reaches a worker after its deadline."""


class Enforcement(StrEnum):
    """Where a queue engine enforces job deadlines (a capability it declares)."""

    WORKER_AT_START = "worker_at_start"
    BROKER_NATIVE = "broker_native"


def epoch_seconds_of(when: datetime | float, name: str) -> float:
    """Epoch seconds of ``when``: an aware ``datetime`` or epoch seconds already.

    A naive ``datetime`` (no ``tzinfo``) names no instant: ``.timestamp()`` reads it in the
    local zone of whichever process holds it, so the same ``eta`` meant different times on a
    laptop and in a UTC pod, while other places read it as UTC or ignored it. It is refused
    with ``ValueError`` naming the argument, instead of guessed.
    """
    if isinstance(when, datetime):
        if when.utcoffset() is None:  # no tzinfo, or one that gives no offset: naive
            msg = (
                f"{name} is a naive datetime ({when.isoformat()}), whose time zone is unknown: "
                f"give an aware one (datetime.now(UTC) + timedelta(...), or "
                f".replace(tzinfo=UTC) for a UTC time) or epoch seconds"
            )
            raise ValueError(msg)
        return when.timestamp()
    return float(when)


def expires_at_for(
    ttl: float | None, expires_at: datetime | float | None, now: float
) -> float | None:
    """The deadline (epoch seconds) from a ``ttl`` counted from ``now`` or an absolute time."""
    if ttl is not None and expires_at is not None:
        raise ValueError("give either ttl or expires_at, not both")
    if ttl is not None:
        if not ttl > 0 or ttl == float("inf"):
            raise ValueError("ttl must be a finite number of seconds > 0")
        return now + float(ttl)
    if expires_at is None:
        return None
    deadline = epoch_seconds_of(expires_at, "expires_at")
    if not math.isfinite(deadline):  # NaN compared false with everything: a job never expired
        raise ValueError("expires_at must be a finite time")
    return deadline


def deadline_of(
    expires_at: float | None, enqueued_at: float, task_ttl: float | None
) -> float | None:
    """The deadline that applies: the job's own, else the task's default from enqueue time."""
    if expires_at is not None:
        return expires_at
    if task_ttl is not None:
        return enqueued_at + task_ttl
    return None


def seconds_past(deadline: float | None, now: float) -> float | None:
    """How long ago the deadline passed (None when there is none or it has not passed)."""
    if deadline is None or now < deadline:
        return None
    return now - deadline
