"""Which errors of a broker call the worker survives by retrying with backoff, and opening one.

Imported by every room that talks to the broker (fetch loop, settler, drain, control thread).
The broker maps its client library's exceptions onto :mod:`worker_runtime.errors` at its edge, so
this is the taxonomy, never a client's own classes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from worker_runtime import brokers, errors
from worker_runtime.brokers import base

# A broker call the worker survives by retrying with backoff: no reply (connection dropped or
# stalled, a restarted server still loading, a failover under way) or a refusal (a replica
# promoted: READONLY); TimeoutError is the worker's own deadline around a call. A persistent one
# turns /healthz red (no successful round trip) instead of crashing the pod in a loop.
BROKER_ERRORS: tuple[type[BaseException], ...] = (errors.BrokerError, TimeoutError)

T = TypeVar("T")


def describe(exc: BaseException) -> str:
    """A broker error for the log (``Type: message``), with the client's own error it stands
    for, once.

    The class the client raised (``ReadOnlyError``, ``ConnectionResetError``...) is what an
    operator searches the logs for; the taxonomy keeps it as ``__cause__``.
    """
    cause = exc.__cause__
    shown = errors.describe_error(exc)
    if cause is None:
        return shown
    name = type(cause).__name__
    if str(cause) in shown:  # the message already quotes it (the Redis broker's do)
        return shown if name in shown else f"{shown} ({name})"
    return f"{shown} (from {errors.describe_error(cause)})"


async def open_until_ready(
    url: str,
    queue: str,
    *,
    options: base.QueueOptions,
    settings: Mapping[str, Any],
    on_error: Callable[[BaseException], None],
    stopped: Callable[[], bool],
    wake: asyncio.Event,
) -> base.Broker | None:
    """Open the broker, retrying with backoff while it is unreachable; None once ``stopped()``.

    A broker that connects when opened (RabbitMQ, SQS) may be down when the worker starts: the
    worker waits for it (``/healthz`` stays red meanwhile) instead of dying, as it does for a
    broker that goes away later. A URL or setting that can never work still raises at once.
    ``wake`` being set (a drain request) ends a wait early.
    """
    return await call_until_done(
        lambda: brokers.open_broker(url, queue, options=options, **settings),
        on_error=on_error,
        stopped=stopped,
        wake=wake,
    )


async def call_until_done(
    call: Callable[[], Awaitable[T]],
    *,
    on_error: Callable[[BaseException], None],
    stopped: Callable[[], bool],
    wake: asyncio.Event,
) -> T | None:
    """``await call()``, again after a broker error, with backoff (0.2 s growing to 5 s), until
    it succeeds; None once ``stopped()``. A broker that cannot do what is asked
    (``CapabilityMissing``) is no outage: it raises at once. ``wake`` ends a wait early."""
    failures = 0
    while not stopped():
        try:
            return await call()
        except errors.CapabilityMissing:
            raise
        except BROKER_ERRORS as exc:
            failures += 1
            on_error(exc)
            wake.clear()
            if stopped():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), min(5.0, 0.1 * 2.0 ** min(failures, 6)))
    return None
