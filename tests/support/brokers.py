"""The brokers the contract suite runs on, and what a test needs to drive one through time.

Used by tests/worker_runtime/brokers/conftest.py (the parametrized ``contract`` fixture) and the
contract suite (tests/worker_runtime/brokers/test_contract.py). A new broker joins the suite by
adding its name to the fixture's params and a branch that opens it; nothing else changes.

Time is the subject of several contract tests (leases, delays, the rate limit). A
:class:`Contract` hides how it passes: the memory broker runs on a fake clock that
:meth:`Contract.advance` moves at once; a real server's clock can only be waited for, so there
``advance`` sleeps (the tests keep those waits under a second).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from worker_runtime import envelope
from worker_runtime.brokers import base


class FakeClock:
    """Epoch seconds that move only when told (a memory broker's ``clock``)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Opener = Callable[[str, base.QueueOptions], Awaitable[Any]]


@dataclass
class Contract:
    """One broker under test: opens brokers on one queue and moves its time."""

    name: str
    queue: str
    opener: Opener
    clock: FakeClock | None = None
    opened: list[Any] = field(default_factory=list)

    async def open(self, **options: Any) -> Any:
        """A broker on this test's queue (``options``: QueueOptions fields); closed at teardown.

        Typed ``Any`` so a test reaches the three protocols of one object; ``check_protocols``
        proves it implements them."""
        broker = await self.opener(self.queue, base.QueueOptions(**options))
        self.opened.append(broker)
        return broker

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass for the broker: a fake clock jumps, a real one is waited for."""
        if self.clock is not None:
            self.clock.advance(seconds)
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(seconds)

    def now(self) -> float:
        return self.clock() if self.clock is not None else time.time()

    async def close(self) -> None:
        for broker in self.opened:
            await broker.close()


def check_protocols(broker: object) -> list[str]:
    """The seam's protocols ``broker`` does not implement (empty when it implements all)."""
    wanted = {"Broker": base.Broker, "QueueProbe": base.QueueProbe, "DeadLetters": base.DeadLetters}
    return [name for name, proto in wanted.items() if not isinstance(broker, proto)]


def request(
    task: str = "t",
    payload: dict[str, Any] | None = None,
    *,
    delay: float = 0.0,
    priority: str = "normal",
    idempotency_key: str | None = None,
    job_id: str | None = None,
) -> base.EnqueueRequest:
    """An enqueue request for a fresh envelope (``job_id`` to pick its id)."""
    env = envelope.build_envelope(
        task, payload or {}, priority=priority, idempotency_key=idempotency_key, job_id=job_id
    )
    return base.EnqueueRequest(envelope=env, delay_seconds=delay)


def failure(message: str = "boom", worker: str = "w1") -> base.Failure:
    """A handler failure as a worker records it."""
    return base.Failure(error_type="RuntimeError", message=message, worker_id=worker)


def beat(worker: str, ttl: float) -> base.WorkerBeat:
    """A heartbeat of ``worker`` (pod ``pod-<worker>``, 3 of 8 slots busy) living ``ttl`` s."""
    return base.WorkerBeat(
        worker_id=worker,
        pod_name=f"pod-{worker}",
        concurrency=8,
        in_flight=3,
        processed=10,
        busy_seconds=1.5,
        started_at=time.time(),
        oldest_job_started_at=None,
        draining=False,
        ttl_seconds=ttl,
    )


def build_unopened_broker(cls: type[Any], capabilities: base.Capabilities) -> Any:
    """A ``cls`` broker object that was never connected, declaring ``capabilities``: for a
    refusal that must come before any I/O (``base.cancel_jobs``, ``base.fetch_job_status``)."""
    broker = object.__new__(cls)
    broker.capabilities = capabilities
    broker.queue = "q"
    return broker


def open_unconnected_brokers(
    monkeypatch: Any, cls: type[Any], capabilities: base.Capabilities
) -> None:
    """Make the CLI's ``open_broker`` hand out :func:`build_unopened_broker` objects of a
    ``cls`` whose ``close`` does nothing (no server is needed for a refusal)."""
    from worker_runtime import brokers

    class Unconnected(cls):  # type: ignore[misc, valid-type]
        async def close(self) -> None:
            return None

    async def open_stand_in(url: str, queue_name: str, **_: Any) -> Any:
        return build_unopened_broker(Unconnected, capabilities)

    monkeypatch.setattr(brokers, "open_broker", open_stand_in)
