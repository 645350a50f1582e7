"""A settle that fails on a broker error is retried; how long depends on the broker's leases.

Where leases expire by time (Redis, SQS) the settler gives up once the lease would have run out
and the job returns by its lease. Where they do not (RabbitMQ: a delivery is the worker's while
its connection lives) giving up would leave the delivery held by nobody, so the settler keeps
trying until the settle lands or the broker answers that the delivery is no longer the
worker's. The broker is a scripted stand-in; the waits between tries are recorded, not slept.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from worker_runtime import errors
from worker_runtime.brokers import base
from worker_runtime.worker import settling


def _settler(*, lease_expiry: bool) -> settling.Settler:
    """A settler on a stand-in worker: the parts of it the retry loop reads."""
    worker: Any = types.SimpleNamespace(
        q=types.SimpleNamespace(
            capabilities=dataclasses.replace(base.FULL_CONTRACT, lease_expiry=lease_expiry)
        ),
        settings=types.SimpleNamespace(lease_seconds=0.0),  # the lease time is over at once
        metrics=types.SimpleNamespace(
            redis_error=lambda op: None,
            leases_lost=types.SimpleNamespace(inc=lambda: None),
            settle_unconfirmed=lambda op: None,
        ),
        health=types.SimpleNamespace(redis_ok=lambda: None),
    )
    return settling.Settler(worker, policy=None)  # type: ignore[arg-type]


def _held() -> Any:
    """The held job being settled (the settler reads its delivery and marks it lost)."""
    return types.SimpleNamespace(job=types.SimpleNamespace(id="j1", receipt="r1"), lost=False)


def _scripted(replies: list[bool | None]) -> tuple[Callable[[], Awaitable[bool]], list[int]]:
    """A settling call answering ``replies`` in turn (None: a broker error)."""
    calls = [0]

    async def call() -> bool:
        reply = replies[calls[0]]
        calls[0] += 1
        if reply is None:
            raise errors.BrokerUnavailable("no reply", operation="retry")
        return reply

    return call, calls


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []

    async def sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(settling, "asyncio", types.SimpleNamespace(sleep=sleep))
    return recorded


async def test_a_failing_settle_gives_up_after_the_lease_time_where_leases_expire(
    waits: list[float],
) -> None:
    call, calls = _scripted([None, True])
    assert await _settler(lease_expiry=True).settle("retry", _held(), call) is False
    assert calls == [1]


async def test_a_failing_settle_goes_on_past_the_lease_time_where_leases_do_not_expire(
    waits: list[float],
) -> None:
    call, calls = _scripted([None, None, None, None, True])
    assert await _settler(lease_expiry=False).settle("retry", _held(), call) is True
    assert calls == [5]
    assert waits == [0.1, 0.2, 0.4, 0.8]


async def test_it_stops_when_the_broker_answers_that_the_delivery_is_no_longer_the_workers(
    waits: list[float],
) -> None:
    call, calls = _scripted([None, None, False])
    assert await _settler(lease_expiry=False).settle("retry", _held(), call) is False
    assert calls == [3]
