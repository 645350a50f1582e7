"""A RabbitMQ settle that its closed channel kept from being sent says so, and the worker counts
the lease as lost.

A settle that fails with ``BrokerUnavailable`` (``sent`` True) may have landed, so when its
re-send is answered False the worker asks the broker what became of the delivery; RabbitMQ
cannot tell, and the worker counts an "unconfirmed settle", not a lost lease. But a settle that
reaches the group commit after the consuming channel closed was never written: the connection
took the delivery back to its queue, it runs again, and its lease is lost. The broker raised
that failure with ``sent`` True (the default), so such lost leases stopped counting in
``workerfleet_leases_lost_total`` (WorkerPoolLeasesLost). Now it raises ``sent`` False.

The connection drops in the moment between the settle's own check of its delivery and the
group commit writing its frames: the test closes the broker's connection as the commit starts.
Everything runs on the session's real rabbitmq-server.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
import pytest

from worker_runtime import App, JobContext, config, envelope, errors, worker
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker


class Empty(pydantic.BaseModel):
    pass


def job(task: str, job_id: str) -> base.EnqueueRequest:
    return base.EnqueueRequest(envelope.build_envelope(task, {}, job_id=job_id))


@pytest.fixture
def rq_queue() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def connection_drops_at_first_commit(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The first group commit of any broker of the test finds its connection dropped: the
    connection closes just before the commit writes the batch's acks. Returns the queues whose
    connection was dropped so."""
    dropped: list[str] = []
    ack_together = rabbitmq_broker.RabbitMQBroker._ack_together

    async def dropping_first(self: rabbitmq_broker.RabbitMQBroker, messages: list[Any]) -> None:
        if not dropped:
            dropped.append(self.queue)
            assert self._connection is not None
            await self._connection.close()
        await ack_together(self, messages)

    monkeypatch.setattr(rabbitmq_broker.RabbitMQBroker, "_ack_together", dropping_first)
    return dropped


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_an_ack_whose_connection_dropped_before_it_was_written_says_it_was_not_sent(
    rabbitmq_server: Any, rq_queue: str, connection_drops_at_first_commit: list[str]
) -> None:
    # Given a broker holding a job's delivery
    broker = rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, rq_queue, prefetch=1)
    try:
        await broker.enqueue(job("t", "a"))
        [held] = await broker.fetch("w1", 1, block=10)
        # When it acks the delivery and the connection drops before the ack is written
        with pytest.raises(errors.BrokerUnavailable) as outage:
            await broker.ack(held)
        # Then the ack fails as a call that was certainly not sent (not applied)
        assert connection_drops_at_first_commit == [rq_queue]
        assert outage.value.sent is False
        assert "the consuming channel is closed" in str(outage.value)
        # And the delivery is gone with its connection: its ack is answered False (the lease
        # is lost), and the job comes back, counted as a lost delivery, to be acked once
        assert await broker.ack(held) is False
        [again] = await broker.fetch("w1", 1, block=10)
        assert (again.id, again.deliveries, again.lost) == ("a", 2, 1)
        assert await broker.ack(again) is True
        assert await broker.fetch("w1", 1, block=1) == []
    finally:
        await broker.close()


async def _until(probe: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20.0
    while not await probe():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_workers_ack_kept_from_rabbitmq_by_a_dropped_connection_counts_as_a_lost_lease(
    rabbitmq_server: Any, rq_queue: str, connection_drops_at_first_commit: list[str]
) -> None:
    # Given a worker on RabbitMQ running a job whose handler returns at once, and its
    # connection dropping just before its first ack is written
    app = App(queue=rq_queue)
    runs: list[tuple[str, int]] = []

    @app.task("once", payload=Empty)
    async def once(payload: Empty, ctx: JobContext) -> None:
        runs.append((ctx.job_id, ctx.deliveries))

    producer = rabbitmq_broker.RabbitMQBroker(
        rabbitmq_server.url, rq_queue, role=base.QueueRole.PRODUCER
    )
    try:
        await producer.enqueue(job("once", "j1"))
    finally:
        await producer.close()
    url = f"{rabbitmq_server.url}?management_port={rabbitmq_server.management_port}"
    settings = config.WorkerSettings(
        redis_url=url, metrics_port=0, concurrency=1, lease_seconds=5.0
    )
    w = worker.Worker(app, settings, install_signal_handlers=False)
    run = asyncio.create_task(w.run())

    def series(name: str, **labels: str) -> float | None:
        return w.metrics.registry.get_sample_value(name, {"queue": w.metrics.queue, **labels})

    try:
        # When the worker runs the job, its ack fails with the connection, and the worker
        # reconnects
        async def run_twice() -> bool:
            return len(runs) >= 2 and not w.held

        await _until(run_twice, "the job to run again and be acked")
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 20) == 0
    # Then the job ran again (its delivery went back to the queue with the connection), and
    # the second run's ack ended it: nothing is left in the queue or the DLQ
    assert connection_drops_at_first_commit == [rq_queue]
    assert runs == [("j1", 1), ("j1", 2)]
    reader = rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, rq_queue, prefetch=1)
    try:
        assert await reader.fetch("check", 1, block=1) == []
        assert await reader.list_dead_letters() == []
    finally:
        await reader.close()
    # And the first delivery counts as the lost lease it was, not as an unconfirmed settle
    assert series("workerfleet_leases_lost_total") == 1
    assert not series("workerfleet_settles_unconfirmed_total", op="ack")
