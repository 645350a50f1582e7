"""A RabbitMQ settle whose ``tx.commit`` gets no answer (a memory alarm) fails in bounded time.

A node under a memory or disk alarm stops reading from every connection that publishes until
the alarm clears. A retry publishes the job's new copy in the consuming channel's transaction,
so its connection is blocked and its ``tx.commit`` got no answer for the whole alarm: the
settle, every settle queued behind it and the worker's drain waited for good. Now the commit is
bounded (``COMMIT_TIMEOUT_SECONDS``, shortened here) and the settle fails as
``BrokerUnavailable`` that may have landed: the commit was sent, and RabbitMQ applies it once it
reads it. The alarm is a real one on the session's rabbitmq-server
(``rabbitmqctl set_vm_memory_high_watermark``), always lifted again by the fixture.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
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


@pytest.mark.timeout(180)
async def test_a_retry_whose_commit_a_memory_alarm_blocks_fails_as_may_have_landed(
    rabbitmq_server: Any, memory_alarm: MemoryAlarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rabbitmq_broker, "COMMIT_TIMEOUT_SECONDS", 1.0)
    queue = f"t{uuid.uuid4().hex[:12]}"
    broker = rabbitmq_broker.RabbitMQBroker(
        rabbitmq_server.url, queue, base.QueueOptions(max_deliveries=5), prefetch=1
    )
    try:
        # Given a worker's broker whose transactions already publish to the work queue (a job
        # retried and acked before), holding a job
        await broker.enqueue(job("first"))
        [first] = await broker.fetch("w1", 1, block=10)
        assert await broker.retry(first, failure("once"), delay_seconds=0) is True
        [first] = await broker.fetch("w1", 1, block=10)
        assert await broker.ack(first) is True
        await broker.enqueue(job("b"))
        [b] = await broker.fetch("w1", 1, block=10)
        # And the node under a memory alarm
        memory_alarm.raise_()
        # When the worker retries the held job (its copy and ack in one transaction)
        with pytest.raises(errors.BrokerUnavailable) as unanswered:
            # bounded here so that a commit that waits for good fails the test, not hangs it
            await asyncio.wait_for(broker.retry(b, failure("blocked"), delay_seconds=0), 30)
        # Then the retry fails as a call that may have landed: the commit went out
        assert unanswered.value.operation == "retry"
        assert "tx.commit" in str(unanswered.value)
        assert settling.may_have_landed(unanswered.value) is True
        # And the delivery is no longer the worker's to settle: its channel is gone
        assert await broker.retry(b, failure("again"), delay_seconds=0) is False
        # And once the alarm is over, the broker works again and the job is there once: as
        # its retried copy (RabbitMQ applied the commit) or as it was, back from its closed
        # channel (either may have reached that channel before its close: one lost delivery)
        memory_alarm.lift()
        [again] = await broker.fetch("w1", 1, block=10)
        assert again.id == "b"
        assert again.attempts in (0, 1)
        assert again.lost <= 1
        assert await broker.ack(again) is True
        assert await broker.fetch("w1", 1, block=1) == []
    finally:
        # lifted before the close, which waits for the settles already made
        memory_alarm.lift()
        await broker.close()
