"""The broker's answer about an ack sent without a reply is counted before the broker closes.

A re-sent ack answered stale after an ``ack_and_fetch`` whose reply was lost is asked of the
broker in a task of its own (``Settler.rejected``). The worker's shutdown waits for that answer
(bounded) before it closes the broker: closed first, the check failed ("could not ask") and its
verdict came after the worker had stopped. On the memory broker, with the reply cut by a
wrapper after the acks landed and the check held up until the drain is over.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.worker_runtime import memory_stand_ins
from worker_runtime import App, config, errors, worker
from worker_runtime.brokers import base, memory
from worker_runtime.worker import settling


class ReplyCutOnce(memory.MemoryBroker):
    """A memory broker whose first ``ack_and_fetch`` lands and then loses its reply, and whose
    delivery checks answer only after ``CHECK_SECONDS``; records what was known at close."""

    CHECK_SECONDS = 0.5
    cut_done = False
    asked: asyncio.Event | None = None
    fates: list[base.DeliveryFate] = []
    at_close: list[tuple[int, float]] = []  # (fates answered, unconfirmed acks counted)
    worker: worker.Worker | None = None

    async def ack_and_fetch(self, deliveries: Any, *args: Any, **kwargs: Any) -> Any:
        reply = await super().ack_and_fetch(deliveries, *args, **kwargs)
        if deliveries and not ReplyCutOnce.cut_done:
            ReplyCutOnce.cut_done = True
            raise errors.BrokerUnavailable("reply cut after the acks landed", operation="fetch")
        return reply

    async def fetch_delivery_fate(self, delivery: base.Delivery) -> base.DeliveryFate:
        assert ReplyCutOnce.asked is not None
        ReplyCutOnce.asked.set()
        await asyncio.sleep(self.CHECK_SECONDS)
        fate = await super().fetch_delivery_fate(delivery)
        ReplyCutOnce.fates.append(fate)
        return fate

    async def close(self) -> None:
        if ReplyCutOnce.asked is not None and ReplyCutOnce.asked.is_set():
            w = ReplyCutOnce.worker
            assert w is not None
            unconfirmed = w.metrics.settles_unconfirmed.labels(w.queue_name, "ack")._value.get()
            ReplyCutOnce.at_close.append((len(ReplyCutOnce.fates), unconfirmed))
        await super().close()


async def start_worker_on_cut_broker(
    monkeypatch: pytest.MonkeyPatch, ran: list[str]
) -> tuple[worker.Worker, asyncio.Task[int]]:
    """One job enqueued, and a worker running it on a ReplyCutOnce broker (recording each run
    in ``ran``); returns the worker and its running task."""
    url = memory_stand_ins.open_brokers_as(monkeypatch, ReplyCutOnce, "fate")
    ReplyCutOnce.asked = asyncio.Event()
    app = App("fate", redis_url=url)

    @app.task("record")
    async def record(payload: dict[str, str]) -> None:
        ran.append(payload["n"])

    await app.enqueue("record", {"n": "1"})
    settings = config.WorkerSettings(
        redis_url=url, metrics_port=0, concurrency=1, drain_timeout_seconds=0.0
    )
    w = worker.Worker(app, settings, install_signal_handlers=False)
    ReplyCutOnce.worker = w
    return w, asyncio.create_task(w.run())


async def test_a_fate_check_pending_when_the_drain_ends_is_answered_and_counted_before_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker on a broker that loses the reply of its first ack_and_fetch (the ack has
    # landed, so its re-send is answered stale and the broker is asked what became of it)
    ran: list[str] = []
    w, run = await start_worker_on_cut_broker(monkeypatch, ran)

    # When the drain starts while that check is still waiting for the broker's answer, with
    # no drain budget to wait in
    await asyncio.wait_for(ReplyCutOnce.asked.wait(), 10.0)
    w.request_drain()
    assert await asyncio.wait_for(run, 20.0) == 0

    # Then the job ran once, and before the broker closed it had answered (the job is gone:
    # acked) and the worker had counted the ack as unconfirmed, not as a lost lease
    assert ran == ["1"]
    assert ReplyCutOnce.fates == [base.DeliveryFate.GONE]
    assert ReplyCutOnce.at_close[:1] == [(1, 1.0)]
    assert w.metrics.leases_lost._value.get() == 0


async def test_a_fate_check_still_unanswered_after_its_bound_counts_as_an_unconfirmed_ack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the same worker, whose broker takes a minute to answer the check, and a shutdown
    # that waits 0.3 s for it
    monkeypatch.setattr(ReplyCutOnce, "CHECK_SECONDS", 60.0)
    monkeypatch.setattr(ReplyCutOnce, "cut_done", False)
    monkeypatch.setattr(ReplyCutOnce, "fates", [])
    monkeypatch.setattr(ReplyCutOnce, "at_close", [])
    monkeypatch.setattr(settling.Settler.finish_checks, "__defaults__", (0.3,))
    w, run = await start_worker_on_cut_broker(monkeypatch, [])

    # When the drain ends while the check has no answer yet
    await asyncio.wait_for(ReplyCutOnce.asked.wait(), 10.0)
    w.request_drain()
    assert await asyncio.wait_for(run, 20.0) == 0

    # Then the check was given up without a verdict, and before the broker closed the ack was
    # counted as unconfirmed (its outcome is unknown), not as a lost lease and not forgotten
    assert ReplyCutOnce.fates == []
    assert ReplyCutOnce.at_close[:1] == [(0, 1.0)]
    assert w.metrics.leases_lost._value.get() == 0
