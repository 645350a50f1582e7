"""A worker uses what a batch call the broker applied in part says, entry by entry.

SQS answers each entry of a batch on its own, and raises ``BrokerPartlyApplied`` naming the
entries it applied (``applied``), those it did not (``refused``, each with its own error) and
those it answered gone (``lost``). The fetch loop finishes the acks the broker applied and sends
again only the refused ones (it used to read the whole call as "may have landed": every ack went
again, a deleted job's re-send was answered False and counted unconfirmed instead of completed,
and it adopted after a fetch never sent). The control thread records the leases a partly applied
renewal renewed and those it found lost (it used to record nothing, so with one lease refused
at every round a lost lease was never noticed). On the memory broker, with the partial answers
made by a wrapper.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.worker_runtime import memory_stand_ins
from worker_runtime import App, JobContext, config, errors, worker
from worker_runtime.brokers import base, memory

ROUNDS = 100
"""Polls of 0.05 s a test waits at most for what the worker does (5 s in all)."""


class PartlyApplying(memory.MemoryBroker):
    """A memory broker whose first ``ack_and_fetch`` carrying two acks or more deletes the
    first job, refuses the second's ack for good (once: its re-send lands) and fetches nothing;
    whose renewal of three held jobs or more renews the first, answers the second lost and
    refuses the third for good, at every round. Jobs are ordered by their payload's ``n``."""

    partial_acks = 0
    partial_renewals = 0
    recovered = 0
    # Renewals answer in part only once this is set: a lease answered lost before its
    # handler started keeps the handler from starting at all
    renew_in_part = True

    async def ack_and_fetch(
        self, deliveries: Sequence[base.Delivery], *args: Any, **kwargs: Any
    ) -> Any:
        if len(deliveries) < 2 or PartlyApplying.partial_acks:
            return await super().ack_and_fetch(deliveries, *args, **kwargs)
        PartlyApplying.partial_acks += 1
        first, second = by_n(deliveries)[:2]
        assert await self.ack(first)
        raise errors.BrokerPartlyApplied(
            "deleted 1, refused 1",
            operation="ack",
            applied=(first.id,),
            refused={second.id: errors.BrokerRejected("AccessDenied", operation="ack")},
        )

    async def renew(
        self, worker_id: str, deliveries: Sequence[base.Delivery], **kwargs: Any
    ) -> base.LeaseRenewal:
        if len(deliveries) < 3 or not PartlyApplying.renew_in_part:
            return await super().renew(worker_id, deliveries, **kwargs)
        PartlyApplying.partial_renewals += 1
        kept, lost, refused = by_n(deliveries)[:3]
        await super().renew(worker_id, [kept], **kwargs)
        raise errors.BrokerPartlyApplied(
            "renewed 1, lost 1, refused 1",
            operation="renew",
            applied=(kept.id,),
            refused={refused.id: errors.BrokerRejected("AccessDenied", operation="renew")},
            lost=(lost.id,),
        )

    async def recover(self, *args: Any, **kwargs: Any) -> list[base.Delivery]:
        PartlyApplying.recovered += 1
        return await super().recover(*args, **kwargs)


def by_n(deliveries: Sequence[base.Delivery]) -> list[base.Delivery]:
    """``deliveries`` in the order of their payload's ``n``."""
    return sorted(deliveries, key=lambda d: str(d.envelope.payload["n"]))


async def start_worker(
    monkeypatch: pytest.MonkeyPatch, handler: Callable[..., Any], jobs: int
) -> tuple[worker.Worker, asyncio.Task[int]]:
    """``jobs`` jobs (n = 1, 2...) enqueued, and a worker with as many slots running
    ``handler`` on them over PartlyApplying brokers, with a 1.5 s lease."""
    url = memory_stand_ins.open_brokers_as(monkeypatch, PartlyApplying, "partly")
    for counter in ("partial_acks", "partial_renewals", "recovered"):
        monkeypatch.setattr(PartlyApplying, counter, 0)
    app = App("partly", redis_url=url)
    app.task("hold")(handler)
    for n in range(1, jobs + 1):
        await app.enqueue("hold", {"n": str(n)})
    settings = config.WorkerSettings(
        redis_url=url,
        metrics_port=0,
        concurrency=jobs,
        lease_seconds=1.5,
        drain_timeout_seconds=5.0,
    )
    w = worker.Worker(app, settings, install_signal_handlers=False)
    return w, asyncio.create_task(w.run())


def completed(w: worker.Worker) -> float:
    """Jobs the worker counted completed."""
    return float(w.metrics.jobs.labels(w.queue_name, "hold", "completed")._value.get())


async def wait_until(done: Callable[[], bool]) -> None:
    """Poll ``done`` every 0.05 s, at most :data:`ROUNDS` times."""
    for _ in range(ROUNDS):
        if done():
            return
        await asyncio.sleep(0.05)


async def test_acks_the_broker_applied_in_part_count_as_completed_and_only_the_refused_go_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker running two jobs that end together, on a broker whose ack_and_fetch
    # deletes the first and refuses the second's ack for good (once), fetching nothing
    gate = asyncio.Event()
    ran: list[str] = []

    async def hold(payload: dict[str, str]) -> None:
        ran.append(payload["n"])
        await gate.wait()

    w, run = await start_worker(monkeypatch, hold, jobs=2)
    await wait_until(lambda: len(ran) == 2)

    # When both jobs finish and their acks ride on one call the broker applies in part
    gate.set()
    await wait_until(lambda: completed(w) >= 2)
    w.request_drain()
    assert await asyncio.wait_for(run, 20.0) == 0

    # Then both jobs count as completed, once each: the deleted one at once, the refused one
    # when its ack was sent again and landed; none as unconfirmed or as a lost lease, and the
    # worker adopted nothing after a call that fetched nothing
    assert PartlyApplying.partial_acks == 1
    assert sorted(ran) == ["1", "2"]
    assert completed(w) == 2
    assert w.metrics.settles_unconfirmed.labels(w.queue_name, "ack")._value.get() == 0
    assert w.metrics.leases_lost._value.get() == 0
    assert PartlyApplying.recovered == 0


async def test_a_renewal_applied_in_part_at_every_round_still_marks_the_lost_lease_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker holding three jobs, on a broker whose every renewal of them renews the
    # first, answers the second's lease lost and refuses the third's for good
    gate = asyncio.Event()
    started: list[str] = []
    lease_lost: dict[str, bool] = {}

    async def hold(payload: dict[str, str], ctx: JobContext) -> None:
        started.append(payload["n"])
        await gate.wait()
        lease_lost[payload["n"]] = ctx.lease_lost

    monkeypatch.setattr(PartlyApplying, "renew_in_part", False)
    w, run = await start_worker(monkeypatch, hold, jobs=3)
    await wait_until(lambda: len(started) == 3)

    # When its control thread renews their leases once their handlers run
    PartlyApplying.renew_in_part = True
    await wait_until(lambda: w.metrics.leases_lost._value.get() >= 1)
    marked_lost = w.metrics.leases_lost._value.get()  # (an ack in the drain may count more)
    gate.set()
    w.request_drain()
    assert await asyncio.wait_for(run, 20.0) == 0

    # Then the lease the broker answered lost is marked lost on the job holding it, while the
    # round itself failed, and the renewed and refused ones are not
    assert PartlyApplying.partial_renewals >= 1
    assert lease_lost == {"1": False, "2": True, "3": False}
    assert marked_lost == 1
