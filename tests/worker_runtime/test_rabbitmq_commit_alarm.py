"""A RabbitMQ settle whose ``tx.commit`` gets no answer (a memory alarm) fails in bounded time.

A node under a memory or disk alarm stops reading from every connection that publishes until
the alarm clears. A retry publishes the job's new copy in the consuming channel's transaction,
so its connection is blocked and its ``tx.commit`` got no answer for the whole alarm: the
settle, every settle queued behind it and the worker's drain waited for good. Now the commit is
bounded (``COMMIT_TIMEOUT_SECONDS``, shortened here) and the settle fails as
``BrokerUnavailable`` that may have landed: the commit was sent, and RabbitMQ applies it once it
reads it. Once a publish blocked the connection, opening a channel and a passive declare got
no answer either: an enqueue and the next settle are bounded too (``DECLARE_TIMEOUT_SECONDS``),
the settle failing as not sent. The alarm is a real one on the session's rabbitmq-server
(``rabbitmqctl set_vm_memory_high_watermark``), always lifted again by the fixture.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from worker_runtime import envelope, errors
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker
from worker_runtime.worker import settling

pytestmark = pytest.mark.slow

CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
"""The control script that runs as any user (Debian's /usr/sbin wrapper wants root)."""

ALARM_WATERMARK = "0.0000001"
"""A memory high watermark every node is above: the alarm is raised at once."""


def run_ctl(server: Any, *args: str) -> str:
    """``rabbitmqctl`` against the test's private node (its name and Erlang cookie)."""
    done = subprocess.run(
        [CTL, "-n", server.node, *args],
        env=server.build_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def memory_alarm_raised(server: Any) -> bool:
    return "memory" in run_ctl(server, "eval", "rabbit_alarm:get_alarms().")


def wait_for_alarm(server: Any, *, raised: bool) -> None:
    deadline = time.monotonic() + 30.0
    for _ in range(300):
        if memory_alarm_raised(server) == raised:
            return
        assert time.monotonic() < deadline, f"the memory alarm is still {not raised}"
        time.sleep(0.1)
    raise AssertionError("the memory alarm did not change in 300 checks")


class MemoryAlarm:
    """A real memory alarm on a node: ``raise_`` it, ``lift`` it (back to the node's own
    watermark, read before)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.watermark = run_ctl(
            server, "eval", "vm_memory_monitor:get_vm_memory_high_watermark()."
        ).strip()

    def raise_(self) -> None:
        run_ctl(self.server, "set_vm_memory_high_watermark", ALARM_WATERMARK)
        wait_for_alarm(self.server, raised=True)

    def lift(self) -> None:
        run_ctl(self.server, "set_vm_memory_high_watermark", self.watermark)
        wait_for_alarm(self.server, raised=False)


@pytest.fixture
def memory_alarm(rabbitmq_server: Any) -> Iterator[MemoryAlarm]:
    """The session node's memory alarm, lifted after the test whatever happened, so later
    tests publish again."""
    alarm = MemoryAlarm(rabbitmq_server)
    try:
        yield alarm
    finally:
        alarm.lift()


def job(job_id: str) -> base.EnqueueRequest:
    return base.EnqueueRequest(envelope.build_envelope("t", {}, job_id=job_id))


def failure(message: str) -> base.Failure:
    return base.Failure("ValueError", message, traceback="", worker_id="w1")


@pytest.fixture
async def worker(
    rabbitmq_server: Any, memory_alarm: MemoryAlarm
) -> AsyncIterator[rabbitmq_broker.RabbitMQBroker]:
    """A worker's broker on a queue of its own; at the end the alarm is lifted before the
    close, which waits for the settles already made."""
    broker = rabbitmq_broker.RabbitMQBroker(
        rabbitmq_server.url,
        f"t{uuid.uuid4().hex[:12]}",
        base.QueueOptions(max_deliveries=5),
        prefetch=1,
    )
    try:
        yield broker
    finally:
        memory_alarm.lift()
        await broker.close()


async def hold_a_retried_job(broker: rabbitmq_broker.RabbitMQBroker) -> base.Delivery:
    """Job ``j`` fetched, retried once and fetched again: the delivery ``broker`` holds, its
    consuming channel's transactions publishing to the work queue from then on (the first copy
    to a queue goes by confirms)."""
    await broker.enqueue(job("j"))
    [first] = await broker.fetch("w1", 1, block=10)
    assert await broker.retry(first, failure("once"), delay_seconds=0) is True
    [held] = await broker.fetch("w1", 1, block=10)
    assert (held.id, held.attempts) == ("j", 1)
    return held


@pytest.mark.timeout(180)
async def test_a_retry_whose_commit_a_memory_alarm_blocks_fails_as_may_have_landed(
    worker: rabbitmq_broker.RabbitMQBroker,
    memory_alarm: MemoryAlarm,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rabbitmq_broker, "COMMIT_TIMEOUT_SECONDS", 1.0)
    # Given a worker holding a job, its transactions publishing to the work queue
    held = await hold_a_retried_job(worker)
    # And the node under a memory alarm
    memory_alarm.raise_()
    # When the worker retries the job (its copy and ack in one transaction)
    with pytest.raises(errors.BrokerUnavailable) as unanswered:
        # bounded here so that a commit that waits for good fails the test, not hangs it
        await asyncio.wait_for(worker.retry(held, failure("blocked"), delay_seconds=0), 30)
    # Then the retry fails as a call that may have landed: the commit went out
    assert unanswered.value.operation == "retry"
    assert "tx.commit" in str(unanswered.value)
    assert settling.may_have_landed(unanswered.value) is True
    # And the delivery is no longer the worker's to settle: its channel is gone
    assert await worker.retry(held, failure("again"), delay_seconds=0) is False
    # And once the alarm is over, the broker works again and the job is there once: as its
    # retried copy (RabbitMQ applied the commit) or as it was, back from its closed channel
    # (either may have reached that channel before its close: one lost delivery)
    memory_alarm.lift()
    [again] = await worker.fetch("w1", 1, block=10)
    assert again.id == "j"
    assert again.attempts in (1, 2)
    assert again.lost <= 1
    assert await worker.ack(again) is True
    assert await worker.fetch("w1", 1, block=1) == []


@pytest.mark.timeout(180)
async def test_a_settle_on_a_connection_an_alarm_blocked_fails_unsent_and_lands_after_it(
    worker: rabbitmq_broker.RabbitMQBroker,
    memory_alarm: MemoryAlarm,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rabbitmq_broker, "PUBLISH_CONFIRM_TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(rabbitmq_broker, "DECLARE_TIMEOUT_SECONDS", 2.0)
    # Given a worker holding a job, its transactions publishing to the work queue
    held = await hold_a_retried_job(worker)
    # And the node under a memory alarm, which blocked the connection at an enqueue of the same
    # broker object: the enqueue fails unconfirmed (and does not wait for good on the
    # publishing channel meant to replace the stuck one)
    memory_alarm.raise_()
    with pytest.raises(errors.BrokerUnavailable):
        await asyncio.wait_for(worker.enqueue(job("during")), 30)
    # When the worker retries the job it holds
    with pytest.raises(errors.BrokerUnavailable) as unanswered:
        # bounded here so that a settle that waits for good fails the test, not hangs it
        await asyncio.wait_for(worker.retry(held, failure("blocked"), delay_seconds=0), 30)
    # Then the retry fails as a call certainly not applied: nothing of it was written
    assert unanswered.value.sent is False
    # And once the alarm is over the job is still the worker's, and its retry lands
    memory_alarm.lift()
    assert await worker.retry(held, failure("after"), delay_seconds=0) is True
    seen: dict[str, int] = {}
    for _ in range(3):
        fetched = await worker.fetch("w1", 1, block=2)
        if not fetched:
            break
        [delivery] = fetched
        assert delivery.id not in seen, f"{delivery.id} handed out twice"
        seen[delivery.id] = delivery.attempts
        assert await worker.ack(delivery) is True
    # (the enqueue without a confirm may have landed: RabbitMQ read it after the alarm)
    assert seen in ({"j": 2}, {"j": 2, "during": 0})
