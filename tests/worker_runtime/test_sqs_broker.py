"""The SQS broker on a real ElasticMQ: leases are visibility timeouts, retries are re-sent
messages carrying their attempts and history, poison is caught before it runs, drain releases
without spending anything, priorities are queues polled in order, FIFO keeps group order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import types
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiobotocore.session
import botocore.exceptions
import pytest

from tests.support import elasticmq
from worker_runtime import brokers, errors
from worker_runtime import envelope as envelope_mod
from worker_runtime.brokers import base
from worker_runtime.brokers.sqs import attributes, dlq, settings
from worker_runtime.brokers.sqs import broker as sqs_broker

OpenBroker = Callable[..., Awaitable[sqs_broker.SqsBroker]]


@pytest.fixture
async def open_sqs(elasticmq_server: elasticmq.ElasticMQServer) -> AsyncIterator[OpenBroker]:
    opened: list[sqs_broker.SqsBroker] = []

    async def open_one(url: str | None = None, **options: Any) -> sqs_broker.SqsBroker:
        name = f"t-{uuid.uuid4().hex[:12]}"
        b = await sqs_broker.open_sqs_broker(
            url or elasticmq_server.url, name, options=base.QueueOptions(**options)
        )
        opened.append(b)
        return b

    yield open_one
    for b in opened:
        await b.close()


def job(
    task: str = "t", *, priority: str = "normal", headers: dict[str, str] | None = None
) -> base.EnqueueRequest:
    return base.EnqueueRequest(
        envelope=envelope_mod.build_envelope(task, {"n": 1}, priority=priority, headers=headers)
    )


def answer_once(
    b: sqs_broker.SqsBroker,
    operation: str,
    reply: dict[str, Any],
    *,
    status: int = 200,
    passing: int = 0,
) -> list[str]:
    """Make the broker's next ``operation`` call (SQS's name: ``DeleteMessageBatch``...), after
    ``passing`` more of them, get ``reply`` with HTTP ``status`` instead of ElasticMQ's answer;
    every other call reaches the server. A fault ElasticMQ never gives (a throttle, a server
    error) for exactly one call. Returns the list of calls the stand-in saw."""
    answered: list[str] = []

    def stand_in(**_: Any) -> tuple[Any, dict[str, Any]] | None:
        answered.append(operation)
        if len(answered) != passing + 1:
            return None
        http = types.SimpleNamespace(status_code=status, headers={}, raw=None, content=b"")
        return http, {**reply, "ResponseMetadata": {"HTTPStatusCode": status}}

    b._client.meta.events.register(f"before-call.sqs.{operation}", stand_in)
    return answered


def refusal(code: str, message: str = "") -> dict[str, Any]:
    """An SQS error answer (use with HTTP status 400 or 5xx)."""
    return {"Error": {"Code": code, "Message": message or code}}


THROTTLED = refusal("ThrottlingException", "Rate exceeded")


def delay_call(b: sqs_broker.SqsBroker, operation: str, *, nth: int, seconds: float) -> list[str]:
    """Make the broker's ``nth`` ``operation`` call (SQS's name) leave ``seconds`` late, as on a
    slow network; every call still reaches the server. Returns the calls seen."""
    seen: list[str] = []

    async def late(**_: Any) -> None:
        seen.append(operation)
        if len(seen) == nth:
            await asyncio.sleep(seconds)

    b._client.meta.events.register(f"before-call.sqs.{operation}", late)
    return seen


async def fetch_until(b: sqs_broker.SqsBroker, count: int, seconds: float) -> list[base.Delivery]:
    """Fetch (long-polling) until ``count`` deliveries came or ``seconds`` passed."""
    out: list[base.Delivery] = []
    deadline = time.monotonic() + seconds
    while len(out) < count and time.monotonic() < deadline:
        wait = min(2.0, max(0.1, deadline - time.monotonic()))
        out += await b.fetch("w1", count - len(out), block=wait)
    return out


async def test_an_acked_job_is_gone_for_good(open_sqs: OpenBroker) -> None:
    # Given a queue with one job
    b = await open_sqs(lease_seconds=2)
    sent = await b.enqueue(job())
    # When a worker fetches and acks it
    [d] = await fetch_until(b, 1, 10)
    assert d.id == sent.job_id and d.attempts == 0 and d.deliveries == 1 and d.lost == 0
    assert await b.ack(d) is True
    # Then it never comes back, even after its lease would have ended
    await asyncio.sleep(2.5)
    assert await b.fetch("w1", 10) == []
    assert await b.ack(d) is False


async def test_fetch_serves_high_before_normal_before_low(open_sqs: OpenBroker) -> None:
    b = await open_sqs()
    await b.enqueue_many([job("low", priority="low"), job("normal"), job("high", priority="high")])
    got = await fetch_until(b, 3, 10)
    assert [d.envelope.task for d in got] == ["high", "normal", "low"]


async def test_a_retry_carries_attempts_history_and_waits_its_delay(open_sqs: OpenBroker) -> None:
    b = await open_sqs()
    await b.enqueue(job())
    [d] = await fetch_until(b, 1, 10)
    failure = base.Failure("ValueError", "boom", "tb", "w1")
    # When the job fails and is retried in 2 s
    assert await b.retry(d, failure, delay_seconds=2) is True
    retried_at = time.monotonic()
    # Then it is not due before its delay, and comes back with one attempt spent
    assert await b.fetch("w1", 1) == []
    [again] = await fetch_until(b, 1, 10)
    assert time.monotonic() - retried_at >= 1.5
    assert (again.id, again.attempts, again.lost) == (d.id, 1, 0)
    assert await b.fetch_previous_delay(d.id) == 2


async def test_release_spends_no_attempt_and_raises_no_lost_count(open_sqs: OpenBroker) -> None:
    b = await open_sqs(max_deliveries=1)
    await b.enqueue(job())
    for _ in range(3):  # released more often than max_deliveries allows losses
        [d] = await fetch_until(b, 1, 10)
        assert (d.attempts, d.lost) == (0, 0)
        assert await b.release(d) is True
    [d] = await fetch_until(b, 1, 10)
    assert (d.attempts, d.lost, d.deliveries) == (0, 0, 4)


async def test_an_unrenewed_lease_expires_and_the_job_is_delivered_again_as_lost(
    open_sqs: OpenBroker,
) -> None:
    b = await open_sqs(lease_seconds=1)
    await b.enqueue(job())
    [first] = await fetch_until(b, 1, 10)
    # the lease (visibility timeout) ends without a renew: the job is delivered again
    [second] = await fetch_until(b, 1, 10)
    assert second.id == first.id and second.receipt != first.receipt
    assert (second.lost, second.deliveries, second.attempts) == (1, 2, 0)


async def test_renew_keeps_a_lease_past_its_first_deadline(open_sqs: OpenBroker) -> None:
    b = await open_sqs(lease_seconds=2)
    await b.enqueue(job())
    [d] = await fetch_until(b, 1, 10)
    for _ in range(3):
        await asyncio.sleep(1.0)
        renewal = await b.renew("w1", [d])
        assert [k.id for k in renewal.kept] == [d.id] and renewal.lost == ()
    assert await b.fetch("w1", 1) == []
    assert await b.ack(d) is True


async def test_a_poison_job_is_dead_lettered_before_it_runs_with_its_history(
    open_sqs: OpenBroker,
) -> None:
    # Given a job whose worker dies on every delivery (its leases just expire). The lease is
    # long enough for the fetch's dead-letter (send the copy, delete the original) to finish
    # on a loaded machine: with 1 s the delete came too late, the job came back a fourth time
    # and SQS's own redrive dead-lettered it once more
    b = await open_sqs(lease_seconds=3, max_deliveries=2)
    await b.enqueue(job())
    first = await fetch_until(b, 1, 10)
    second = await fetch_until(b, 1, 10)
    assert [d.lost for d in first + second] == [0, 1]
    # When it comes back a third time (two deliveries lost)
    third = await fetch_until(b, 1, 8)
    # Then the fetch dead-letters it instead of handing it out
    assert third == []
    assert b.dead_lettered_by_fetch[base.DeadLetterReason.MAX_DELIVERIES] == 1
    stats = await b.fetch_stats()
    assert stats.dead_letter == 1 and stats.backlog == 0 and stats.in_flight == 0


async def test_a_poison_letter_counts_every_delivery_it_lost_and_those_before_its_retries(
    open_sqs: OpenBroker,
) -> None:
    # Given a job that failed twice (two retries: its copy carries 2 deliveries, 0 lost)
    b = await open_sqs(lease_seconds=3, max_deliveries=2)
    await b.enqueue(job())
    for n in range(2):
        [d] = await fetch_until(b, 1, 10)
        assert (
            await b.retry(d, base.Failure("KeyError", f"try {n}", "tb", "w1"), delay_seconds=0)
            is True
        )
    # When its worker then dies on two deliveries in a row (their leases expire)
    lost = [d.lost for _ in range(2) for d in await fetch_until(b, 1, 10)]
    assert lost == [0, 1]
    # Then the next fetch dead-letters it, and the letter says what happened: 4 deliveries,
    # 2 of them lost, 2 attempts with their history
    assert await fetch_until(b, 1, 8) == []
    [letter] = await b.list_dead_letters()
    assert letter.reason == base.DeadLetterReason.MAX_DELIVERIES
    assert (letter.attempts, letter.deliveries, letter.lost) == (2, 4, 2)
    assert [r.message for r in letter.history] == ["try 0", "try 1"]


async def test_a_blocking_fetch_returns_at_once_when_woken(open_sqs: OpenBroker) -> None:
    b = await open_sqs()
    wake = asyncio.Event()
    started = time.monotonic()
    task = asyncio.create_task(b.fetch("w1", 1, block=15, wake=wake))
    await asyncio.sleep(0.5)
    wake.set()
    assert await asyncio.wait_for(task, 5) == []
    assert time.monotonic() - started < 5


async def fetch_woken_with_a_poll_out(b: sqs_broker.SqsBroker) -> None:
    """A blocking fetch woken while its long polls are out: they keep running, and a job they
    receive waits in the broker for the next fetch."""
    wake = asyncio.Event()
    task = asyncio.create_task(b.fetch("w1", 1, block=15, wake=wake))
    await asyncio.sleep(0.5)
    wake.set()
    assert await task == []


async def test_a_job_received_by_a_long_poll_after_the_wake_is_served_next(
    open_sqs: OpenBroker,
) -> None:
    # Given a fetch woken while its long poll is still out
    b = await open_sqs()
    await fetch_woken_with_a_poll_out(b)
    # When a job arrives for that poll
    await b.enqueue(job())
    # Then the next fetch hands it out (nothing is stranded invisible)
    [d] = await fetch_until(b, 1, 10)
    assert d.lost == 0


async def two_workers(
    url: str, lease_seconds: float
) -> tuple[sqs_broker.SqsBroker, sqs_broker.SqsBroker]:
    """The brokers of two workers on one new queue."""
    queue = f"t-{uuid.uuid4().hex[:12]}"
    options = base.QueueOptions(lease_seconds=lease_seconds)
    first = await sqs_broker.open_sqs_broker(url, queue, options=options)
    return first, await sqs_broker.open_sqs_broker(url, queue, options=options)


async def test_a_worker_waiting_for_one_job_takes_one_and_leaves_the_rest_to_other_workers(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given 15 jobs due in a second, and a worker with one free slot waiting for work (its long
    # polls are out: nothing is visible yet)
    first, second = await two_workers(elasticmq_server.url, 30)
    try:
        delayed = [base.EnqueueRequest(job(f"j{i}").envelope, delay_seconds=1) for i in range(15)]
        sent = {r.job_id for r in await second.enqueue_many(delayed)}
        # When they come due together
        [mine] = await first.fetch("w1", 1, block=10)
        # Then it took that one, and another worker gets the other 14 at once
        others = await fetch_until(second, 14, 3)
        assert sorted(d.id for d in others) == sorted(sent - {mine.id})
    finally:
        await first.close()
        await second.close()


async def test_a_job_whose_lease_ran_out_while_it_waited_in_the_broker_is_not_handed_out(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given a job a worker's long poll received after its fetch had returned (the worker was
    # busy), with a 2 s lease
    first, second = await two_workers(elasticmq_server.url, 2)
    try:
        await fetch_woken_with_a_poll_out(first)
        await first.enqueue(job())
        # When its lease runs out before the worker fetches again, and another worker gets it
        await asyncio.sleep(2.5)
        [taken] = await fetch_until(second, 1, 5)
        # Then the first worker's next fetch does not hand the job out a second time
        assert await first.fetch("w1", 1) == []
        assert await second.ack(taken) is True
    finally:
        await first.close()
        await second.close()


async def test_a_job_that_waited_in_the_broker_past_half_its_lease_is_renewed_when_handed_out(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given a job a worker's long poll received after its fetch had returned, with a 4 s lease
    first, second = await two_workers(elasticmq_server.url, 4)
    try:
        await fetch_woken_with_a_poll_out(first)
        await first.enqueue(job())
        # When the worker fetches it with less than half of that lease left
        await asyncio.sleep(2.6)
        [d] = await first.fetch("w1", 1)
        # Then it is handed out with a whole lease, and nobody else gets it after the lease it
        # was received with has ended
        assert d.lease_deadline >= time.time() + 3.5
        await asyncio.sleep(2.0)
        assert await second.fetch("w2", 1, block=1) == []
        assert await first.ack(d) is True
    finally:
        await first.close()
        await second.close()


async def test_jobs_waiting_in_the_broker_stay_there_when_renewing_some_of_them_fails(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given two jobs long polls received after their fetch had returned, with a 4 s lease:
    # one past half of it, one just received
    first, second = await two_workers(elasticmq_server.url, 4)
    try:
        await fetch_woken_with_a_poll_out(first)
        await first.enqueue(job("aging"))
        await asyncio.sleep(2.6)
        await first.enqueue(job("fresh", priority="high"))
        await asyncio.sleep(0.3)
        # When the fetch's renewal of the older one fails
        answer_once(first, "ChangeMessageVisibilityBatch", THROTTLED, status=400)
        with pytest.raises(errors.BrokerUnavailable):
            await first.fetch("w1", 2)
        # Then the next fetch hands out both, as first deliveries
        got = await first.fetch("w1", 2)
        assert sorted((d.envelope.task, d.lost) for d in got) == [("aging", 0), ("fresh", 0)]
    finally:
        await first.close()
        await second.close()


async def test_a_delay_beyond_the_sqs_limit_waits_in_steps(
    open_sqs: OpenBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a broker whose per-message limit is 1 s (SQS: 900 s), and a job delayed 3 s
    monkeypatch.setattr(sqs_broker, "MAX_SQS_DELAY", 1)
    b = await open_sqs()
    await b.enqueue(base.EnqueueRequest(envelope=job().envelope, delay_seconds=3))
    sent = time.monotonic()
    # Then it is re-sent step by step and runs only after the whole delay, not as a delivery
    [d] = await fetch_until(b, 1, 15)
    assert time.monotonic() - sent >= 2.5
    assert (d.deliveries, d.lost, d.attempts) == (1, 0, 0)


async def test_the_dead_letter_keeps_reason_counts_and_full_failure_history(
    open_sqs: OpenBroker,
) -> None:
    b = await open_sqs()
    await b.enqueue(job())
    for n in range(2):
        [d] = await fetch_until(b, 1, 10)
        await b.retry(d, base.Failure("KeyError", f"try {n}", "tb", "w1"), delay_seconds=0)
    [d] = await fetch_until(b, 1, 10)
    assert await b.dead_letter(d, "max_attempts", failure=base.Failure("KeyError", "last")) is True
    client = b._client  # the record as SQS holds it
    reply = await client.receive_message(
        QueueUrl=b.dead_letter_url, MessageAttributeNames=["All"], WaitTimeSeconds=1
    )
    [message] = reply["Messages"]
    carried = attributes.decode_carried(message["MessageAttributes"])
    assert carried.reason == "max_attempts" and carried.attempts == 3
    assert [r.message for r in carried.history] == ["try 0", "try 1", "last"]
    assert [r.attempt for r in carried.history] == [1, 2, 3]


async def test_a_fifo_queue_keeps_the_order_of_a_message_group(
    open_sqs: OpenBroker, elasticmq_server: elasticmq.ElasticMQServer
) -> None:
    b = await open_sqs(url=elasticmq_server.url + "&fifo=true&priorities=false")
    await b.enqueue_many([job(f"j{i}", headers={"message-group-id": "g"}) for i in range(5)])
    got: list[str] = []
    for _ in range(5):
        [d] = (await fetch_until(b, 1, 10))[:1]
        got.append(d.envelope.task)
        await b.ack(d)
    assert got == [f"j{i}" for i in range(5)]


async def test_on_fifo_releases_alone_never_dead_letter_a_job_and_keep_its_place_while_they_can(
    open_sqs: OpenBroker, elasticmq_server: elasticmq.ElasticMQServer
) -> None:
    # Given a FIFO queue allowing three lost deliveries, and two jobs in one message group
    b = await open_sqs(
        url=elasticmq_server.url + "&fifo=true&priorities=false", lease_seconds=3, max_deliveries=3
    )
    sent = await b.enqueue_many([job(f"j{i}", headers={"message-group-id": "g"}) for i in range(2)])
    seen: list[tuple[str, int, int]] = []

    async def fetch_one() -> base.Delivery:
        [d] = await fetch_until(b, 1, 10)
        seen.append((d.envelope.task, d.attempts, d.lost))
        return d

    # When drains release the first job four times (more than max_deliveries), the other job
    # being acked when it is handed out
    for _ in range(3):
        assert await b.release(await fetch_one()) is True
    assert await b.ack(await fetch_one())
    assert await b.release(await fetch_one()) is True
    last = await fetch_one()
    # Then it stayed at its group's head for the releases a lost count could pay for, the one
    # that would have reached the limit sent it behind the group's other job, and it is handed
    # out again with no attempt spent, never dead-lettered
    assert seen == [
        ("j0", 0, 0),
        ("j0", 0, 1),
        ("j0", 0, 2),
        ("j1", 0, 0),
        ("j0", 0, 2),
        ("j0", 0, 2),
    ]
    assert last.id == sent[0].job_id and b.dead_lettered_by_fetch == {}
    assert await b.count_dead_letters() == 0
    # When that delivery is then really lost (its lease runs out unrenewed)
    # Then the lost deliveries the releases counted bring the poison limit nearer: dead-lettered
    assert await fetch_until(b, 1, 8) == []
    letter = await b.show_dead_letter(last.id)
    assert letter is not None and letter.reason == base.DeadLetterReason.MAX_DELIVERIES


async def dead_letter_jobs(b: sqs_broker.SqsBroker, n: int) -> list[str]:
    """Enqueue ``n`` jobs and dead-letter each after one failure; returns their ids in order."""
    ids = []
    for i in range(n):
        await b.enqueue(job(f"task{i}"))
        [d] = await fetch_until(b, 1, 10)
        await b.dead_letter(d, "non_retryable", failure=base.Failure("E", f"fail {i}", "", "w1"))
        ids.append(d.id)
    return ids


async def test_dlq_list_and_show_read_without_removing_anything(open_sqs: OpenBroker) -> None:
    b = await open_sqs()
    ids = await dead_letter_jobs(b, 3)
    listed = await b.list_dead_letters()
    assert [x.job_id for x in listed] == ids[::-1]  # newest first
    shown = await b.show_dead_letter(ids[1])
    assert shown is not None and shown.reason == "non_retryable" and shown.task == "task1"
    assert [r.message for r in shown.history] == ["fail 1"] and shown.attempts == 1
    # a read leaves every dead letter there, visible to the next reader at once
    assert [x.job_id for x in await b.list_dead_letters(offset=1, limit=1)] == [ids[1]]
    assert await b.count_dead_letters() == 3


async def test_dlq_replay_sends_jobs_back_at_the_rate_asked_with_their_history(
    open_sqs: OpenBroker,
) -> None:
    b = await open_sqs()
    ids = await dead_letter_jobs(b, 3)
    started = time.monotonic()
    replayed = await b.replay_dead_letters(rate_per_second=2.0)
    assert replayed == ids
    assert time.monotonic() - started >= 1.0  # 3 jobs at 2/s: the 3rd leaves after ~1 s
    back = await fetch_until(b, 3, 10)
    assert sorted(d.id for d in back) == sorted(ids)
    assert all(d.attempts == 1 and d.lost == 0 for d in back)
    assert await b.count_dead_letters() == 0


async def test_dlq_purge_by_id_deletes_only_those(open_sqs: OpenBroker) -> None:
    b = await open_sqs()
    ids = await dead_letter_jobs(b, 3)
    assert await b.purge_dead_letters(job_ids=[ids[0]]) == 1
    assert sorted(x.job_id for x in await b.list_dead_letters()) == sorted(ids[1:])
    assert await b.purge_dead_letters(everything=True) == 2
    assert await b.list_dead_letters() == []


async def test_the_sqs_broker_implements_the_broker_probe_and_dead_letter_protocols(
    open_sqs: OpenBroker,
) -> None:
    b = await open_sqs()
    assert isinstance(b, base.Broker)
    assert isinstance(b, base.QueueProbe)
    assert isinstance(b, base.DeadLetters)


async def test_a_job_whose_lease_ran_out_under_its_worker_is_not_handed_to_it_twice(
    open_sqs: OpenBroker,
) -> None:
    # Given a worker running a job whose lease (2 s) runs out before it renews
    b = await open_sqs(lease_seconds=2)
    await b.enqueue(job())
    [d] = await fetch_until(b, 1, 10)
    await asyncio.sleep(2.5)
    # When the same worker fetches again, holding the job
    again = await b.fetch("w1", 5, block=1, holding={(d.id, d.receipt)})
    # Then it gets no second delivery of it; its renew (through any broker instance of the
    # process) and its ack reach the job's newest receipt
    assert again == []
    assert [k.id for k in (await b.renew("w1", [d])).kept] == [d.id]
    assert await b.ack(d) is True
    await asyncio.sleep(2.5)
    assert await b.fetch("w1", 5) == []


async def test_close_ends_a_blocking_fetch_at_once(open_sqs: OpenBroker) -> None:
    b = await open_sqs()
    task = asyncio.create_task(b.fetch("w1", 1, block=15))
    await asyncio.sleep(0.5)
    started = time.monotonic()
    await b.close()
    assert await asyncio.wait_for(task, 5) == []
    assert time.monotonic() - started < 5


async def test_a_job_a_long_poll_receives_while_its_broker_closes_is_put_back_at_once(
    open_sqs: OpenBroker, elasticmq_server: elasticmq.ElasticMQServer
) -> None:
    # Given a worker's broker (30 s leases) waiting for work, its 1 s long poll out, as a
    # worker's fetch waits
    b = await open_sqs(lease_seconds=30)
    waiting = asyncio.create_task(b.fetch("w1", 1, block=1.0))
    await asyncio.sleep(0.3)
    # When the broker closes while a job arrives for that poll
    closing = asyncio.create_task(b.close())
    await asyncio.sleep(0.1)
    other = await sqs_broker.open_sqs_broker(
        elasticmq_server.url, b.queue, options=base.QueueOptions(lease_seconds=30)
    )
    try:
        sent = await other.enqueue(job())
        await closing
        assert await waiting == []
        # Then another worker gets the job now, not once its 30 s lease has run out
        [d] = await fetch_until(other, 1, 10)
    finally:
        await other.close()
    assert (d.id, d.lost, d.attempts) == (sent.job_id, 0, 0)


async def test_jobs_waiting_in_a_closing_broker_are_all_put_back_within_the_worker_s_close_time(
    open_sqs: OpenBroker, elasticmq_server: elasticmq.ElasticMQServer
) -> None:
    # Given a worker's broker (30 s leases) holding eight jobs its polls received and no fetch
    # handed out, on a network where each SendMessage takes 0.5 s
    b = await open_sqs(lease_seconds=30)
    await b.enqueue_many([job(f"j{i}") for i in range(8)])
    url = b._url("normal")
    received: list[dict[str, Any]] = []
    for _ in range(10):  # bounded: ElasticMQ hands out up to 10 a call, maybe fewer
        received += await b._receive(url, 8 - len(received), 1)
        if len(received) == 8:
            break
    assert len(received) == 8
    b._buffer.extend(sqs_broker._Buffered(url, "normal", m, time.time()) for m in received)

    async def slow(**_: Any) -> None:
        await asyncio.sleep(0.5)

    b._client.meta.events.register("before-call.sqs.SendMessage", slow)
    # When it closes within the 3 s the worker gives close
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(b.close(), 3.0)
    # Then every one of them is back in the queue for another worker now, none hidden for the
    # rest of its 30 s lease
    other = await sqs_broker.open_sqs_broker(
        elasticmq_server.url, b.queue, options=base.QueueOptions(lease_seconds=30)
    )
    try:
        back = await fetch_until(other, 8, 5)
    finally:
        await other.close()
    assert sorted(d.envelope.task for d in back) == sorted(f"j{i}" for i in range(8))


async def test_a_fetch_sqs_answers_over_limit_fails_as_retryable_and_the_next_one_serves(
    open_sqs: OpenBroker,
) -> None:
    # Given a job, and a queue at SQS's in-flight limit for one ReceiveMessage (OverLimit:
    # 120,000 messages received and not yet deleted)
    b = await open_sqs()
    sent = await b.enqueue(job())
    reason = "Too many messages in flight."
    answer_once(b, "ReceiveMessage", refusal("OverLimit", reason), status=403)
    # When a worker fetches
    with pytest.raises(errors.BrokerUnavailable, match="OverLimit"):
        await b.fetch("w1", 1)
    # Then it was told "not now", not a refusal, and its next fetch gets the job
    [d] = await fetch_until(b, 1, 10)
    assert d.id == sent.job_id


async def test_a_server_that_does_not_answer_is_broker_unavailable_not_a_client_error(
    elasticmq_factory: Callable[..., elasticmq.ElasticMQServer],
) -> None:
    server = elasticmq_factory()
    b = await sqs_broker.open_sqs_broker(server.url, "gone")
    try:
        server.kill()
        with pytest.raises(errors.BrokerUnavailable) as fetched:
            await b.fetch("w1", 1)
        with pytest.raises(errors.BrokerUnavailable):
            await b.enqueue(job())
    finally:
        await b.close()
    # and the error says what failed where, not only the class of the client's exception
    assert str(fetched.value).startswith(
        f"SQS did not answer fetch: EndpointConnectionError: Could not connect to the endpoint "
        f'URL: "http://127.0.0.1:{server.port}/'
    ), str(fetched.value)


def test_a_refusal_says_what_sqs_said_not_only_its_code() -> None:
    # Given the answer AWS gives a request signed with a wrong secret key
    answer = {
        "Error": {
            "Code": "SignatureDoesNotMatch",
            "Message": "The request signature we calculated does not match the signature you "
            "provided. Check your AWS Secret Access Key and signing method.",
        }
    }
    refused = botocore.exceptions.ClientError(answer, "ReceiveMessage")  # type: ignore[arg-type]
    # When it is mapped onto the runtime's errors
    mapped = sqs_broker._map_error(refused, "fetch")
    # Then it is a refusal whose text carries the code and what to check
    assert isinstance(mapped, errors.BrokerRejected)
    assert str(mapped) == (
        "SQS refused fetch: SignatureDoesNotMatch: The request signature we calculated does not "
        "match the signature you provided. Check your AWS Secret Access Key and signing method."
    )


@pytest.mark.parametrize(
    ("code", "status", "raised"),
    [
        ("ThrottlingException", 400, errors.BrokerUnavailable),
        ("RequestThrottled", 403, errors.BrokerUnavailable),
        ("KmsThrottled", 400, errors.BrokerUnavailable),
        ("InternalError", 500, errors.BrokerUnavailable),
        ("OverLimit", 403, errors.BrokerUnavailable),  # e.g. 120,000 messages in flight
        ("AWS.SimpleQueueService.SomethingNew", 503, errors.BrokerUnavailable),
        ("AccessDenied", 403, errors.BrokerRejected),
        ("KmsAccessDenied", 400, errors.BrokerRejected),
    ],
)
def test_a_throttle_or_server_error_is_retryable_and_a_permanent_refusal_is_a_rejection(
    code: str, status: int, raised: type[errors.BrokerError]
) -> None:
    # Given SQS's answer to a call
    answer = {**refusal(code, "said"), "ResponseMetadata": {"HTTPStatusCode": status}}
    refused = botocore.exceptions.ClientError(answer, "DeleteMessage")  # type: ignore[arg-type]
    # When it is mapped onto the runtime's errors
    mapped = sqs_broker._map_error(refused, "ack")
    # Then "not now" (throttled, the server failed) is retryable, anything else a rejection,
    # and both say what SQS said
    assert type(mapped) is raised
    assert str(mapped).endswith(f"ack{' now' if raised is errors.BrokerUnavailable else ''}: "
                                f"{code}: said")  # fmt: skip


@pytest.mark.parametrize(
    ("code", "raised"),
    [("ThrottlingException", errors.BrokerUnavailable), ("AccessDenied", errors.BrokerRejected)],
)
async def test_a_settle_whose_fence_is_throttled_or_refused_raises_instead_of_losing_the_lease(
    open_sqs: OpenBroker, code: str, raised: type[errors.BrokerError]
) -> None:
    # Given a job a worker holds, its lease current
    b = await open_sqs(lease_seconds=5)
    await b.enqueue(job())
    [d] = await fetch_until(b, 1, 10)
    # When the retry's fence (a visibility change on the receipt) is throttled or refused
    answer_once(b, "ChangeMessageVisibility", refusal(code), status=400)
    # Then the retry raises that error (the settler re-sends it) instead of saying the lease
    # is gone; and no copy of the job was sent
    with pytest.raises(raised, match=code):
        await b.retry(d, base.Failure("E", "boom"), delay_seconds=0)
    stats = await b.fetch_stats()
    assert (stats.backlog, stats.in_flight) == (0, 1)


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (THROTTLED, 400),  # the whole call refused
        (  # the call answered, its entry failed through no fault of the sender
            {
                "Successful": [],
                "Failed": [{"Id": "0", "SenderFault": False, "Code": "InternalError"}],
            },
            200,
        ),
    ],
)
async def test_an_ack_that_failed_once_is_applied_by_the_worker_s_resend(
    open_sqs: OpenBroker, reply: dict[str, Any], status: int
) -> None:
    # Given a job a worker ran to the end
    b = await open_sqs(lease_seconds=2)
    await b.enqueue(job())
    [d] = await fetch_until(b, 1, 10)
    # When its ack's DeleteMessageBatch fails once
    answer_once(b, "DeleteMessageBatch", reply, status=status)
    with pytest.raises(errors.BrokerUnavailable):
        await b.ack(d)
    # Then the worker's re-sent ack deletes the job, which never comes back
    assert await b.ack(d) is True
    await asyncio.sleep(2.5)
    assert await b.fetch("w1", 10) == []


@pytest.mark.parametrize(
    ("operation", "reply", "status"),
    [
        ("SendMessage", refusal("InternalError"), 500),  # the copy is not sent
        ("DeleteMessageBatch", THROTTLED, 400),  # the copy is out, the original not deleted
    ],
)
async def test_a_retry_that_failed_once_sends_exactly_one_copy_on_the_worker_s_resend(
    open_sqs: OpenBroker, operation: str, reply: dict[str, Any], status: int
) -> None:
    # Given a job whose run failed
    b = await open_sqs(lease_seconds=2)
    await b.enqueue(job())
    [d] = await fetch_until(b, 1, 10)
    failure = base.Failure("ValueError", "boom", "tb", "w1")
    # When one step of its retry fails
    answer_once(b, operation, reply, status=status)
    with pytest.raises(errors.BrokerUnavailable):
        await b.retry(d, failure, delay_seconds=0)
    # Then the worker's re-sent retry goes through: the job comes back once, with one attempt
    # and not as a lost delivery, and after that never again (no second copy, and no
    # original once its lease is over)
    assert await b.retry(d, failure, delay_seconds=0) is True
    [again] = await fetch_until(b, 1, 10)
    assert (again.id, again.attempts, again.lost) == (d.id, 1, 0)
    assert await b.ack(again) is True
    await asyncio.sleep(2.5)
    assert await b.fetch("w1", 10) == []


async def test_a_dead_letter_whose_delete_failed_leaves_one_dead_letter_after_the_resend(
    open_sqs: OpenBroker,
) -> None:
    # Given a job whose run failed for good
    b = await open_sqs(lease_seconds=2)
    await b.enqueue(job())
    [d] = await fetch_until(b, 1, 10)
    failure = base.Failure("KeyError", "last", "tb", "w1")
    # When its dead-letter is sent but deleting the original is throttled
    answer_once(b, "DeleteMessageBatch", THROTTLED, status=400)
    with pytest.raises(errors.BrokerUnavailable):
        await b.dead_letter(d, "non_retryable", failure=failure)
    # Then the re-sent dead-letter deletes the original: one dead letter, with one failure,
    # and the job never runs again
    assert await b.dead_letter(d, "non_retryable", failure=failure) is True
    [letter] = await b.list_dead_letters()
    assert (letter.job_id, [r.message for r in letter.history]) == (d.id, ["last"])
    await asyncio.sleep(2.5)
    assert await b.fetch("w1", 10) == []


async def test_a_fetch_that_fails_after_leasing_jobs_hands_them_out_and_the_next_call_fails(
    open_sqs: OpenBroker,
) -> None:
    # Given three high-priority jobs
    b = await open_sqs(lease_seconds=2)
    await b.enqueue_many([job(f"h{i}", priority="high") for i in range(3)])
    # When a fetch receives them and then its receive from the normal queue is throttled
    answer_once(b, "ReceiveMessage", THROTTLED, status=400, passing=1)
    got = await b.fetch("w1", 5)
    # Then the fetch hands out the three (they are leased to this worker), the next call says
    # what failed, and the jobs run once: acked, they never come back as lost deliveries
    assert sorted(d.envelope.task for d in got) == ["h0", "h1", "h2"]
    with pytest.raises(errors.BrokerUnavailable, match="ThrottlingException"):
        await b.fetch("w1", 5)
    assert [await b.ack(d) for d in got] == [True, True, True]
    await asyncio.sleep(2.5)
    assert await b.fetch("w1", 5) == []


async def test_messages_received_with_one_whose_handling_failed_wait_for_the_next_fetch(
    open_sqs: OpenBroker, elasticmq_server: elasticmq.ElasticMQServer
) -> None:
    # Given a message that cannot run, then two jobs, in one ordered FIFO group
    b = await open_sqs(url=elasticmq_server.url + "&fifo=true&priorities=false", lease_seconds=5)
    await b._client.send_message(
        QueueUrl=b._url(envelope_mod.Priority.NORMAL),
        MessageBody="not a job",
        MessageGroupId="g",
        MessageDeduplicationId="bad",
    )
    await b.enqueue_many([job(f"j{i}", headers={"message-group-id": "g"}) for i in range(2)])
    # When a fetch receives all three and the dead-letter of the first fails
    answer_once(b, "SendMessage", refusal("InternalError"), status=500)
    with pytest.raises(errors.BrokerUnavailable):
        await b.fetch("w1", 5)
    # Then the next fetch hands out the two jobs received with it, as first deliveries (not
    # stranded until their lease ends)
    got = await b.fetch("w1", 5)
    assert [(d.envelope.task, d.lost) for d in got] == [("j0", 0), ("j1", 0)]


async def test_acks_applied_before_their_fetch_failed_are_reported_done_and_never_resent(
    open_sqs: OpenBroker,
) -> None:
    # Given two jobs a worker ran to the end
    b = await open_sqs(lease_seconds=2)
    await b.enqueue_many([job("a"), job("b")])
    first, second = sorted(await fetch_until(b, 2, 10), key=lambda d: d.envelope.task)
    # When the first's ack rides on a fetch whose receive is throttled
    answer_once(b, "ReceiveMessage", THROTTLED, status=400)
    # Then the call reports the ack done, with no jobs, instead of raising (the worker would
    # send the ack again and read its False as a lost lease)
    assert await b.ack_and_fetch([first], "w1", 1) == ([True], [])
    # and the next call raises that error before it acks anything, saying it was never sent
    # (the worker reads its acks as not landed: nothing unanswered, nothing to adopt); the
    # worker's re-send of that call acks the second job
    deletes = delay_call(b, "DeleteMessageBatch", nth=100, seconds=0)  # counts the deletes
    with pytest.raises(errors.BrokerUnavailable, match="ThrottlingException") as raised:
        await b.ack_and_fetch([second], "w1", 1)
    assert (raised.value.sent, deletes) == (False, [])
    assert await b.ack_and_fetch([second], "w1", 1) == ([True], [])
    assert deletes == ["DeleteMessageBatch"]
    # and neither job runs again
    await asyncio.sleep(2.5)
    assert await b.fetch("w1", 5) == []


async def test_a_renew_reports_lost_only_receipts_sqs_says_are_gone(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given two jobs a worker holds, and a third whose lease ran out and went to another worker
    queue = f"t-{uuid.uuid4().hex[:12]}"
    first = await sqs_broker.open_sqs_broker(
        elasticmq_server.url, queue, options=base.QueueOptions(lease_seconds=2)
    )
    second = await sqs_broker.open_sqs_broker(
        elasticmq_server.url, queue, options=base.QueueOptions(lease_seconds=30)
    )
    try:
        await first.enqueue(job("gone"))
        [gone] = await fetch_until(first, 1, 10)
        await asyncio.sleep(2.5)
        [taken] = await fetch_until(second, 1, 10)
        assert taken.id == gone.id
        await first.enqueue_many([job("a"), job("b")])
        held = await fetch_until(first, 2, 10)
        # When one renew's entry for a held job is throttled
        answer_once(
            first,
            "ChangeMessageVisibilityBatch",
            {
                "Successful": [{"Id": "1"}],
                "Failed": [
                    {"Id": "0", "SenderFault": False, "Code": "InternalError", "Message": "x"}
                ],
            },
        )
        # Then the renewal round fails, that job's entry as retryable, instead of reporting
        # that job lost
        with pytest.raises(errors.BrokerPartlyApplied, match="InternalError") as raised:
            await first.renew("w1", held)
        assert isinstance(raised.value.refused[held[0].id], errors.BrokerUnavailable)
        # and the next round keeps both held jobs and reports lost only the job SQS says is
        # another worker's now
        renewal = await first.renew("w1", [*held, gone])
        assert sorted(d.id for d in renewal.kept) == sorted(d.id for d in held)
        assert [d.id for d in renewal.lost] == [gone.id]
    finally:
        await first.close()
        await second.close()


async def test_jobs_survive_a_kill_9_of_a_persistent_server(
    elasticmq_factory: Callable[..., elasticmq.ElasticMQServer],
) -> None:
    # Given 30 jobs enqueued on a persistent server, 10 of them in flight
    server = elasticmq_factory(persistent=True)
    b = await sqs_broker.open_sqs_broker(
        server.url, "kept", options=base.QueueOptions(lease_seconds=2)
    )
    try:
        sent = {r.job_id for r in await b.enqueue_many([job(f"j{i}") for i in range(30)])}
        in_flight = await fetch_until(b, 10, 10)
        assert len(in_flight) == 10
        # When the server is killed with SIGKILL and started again
        server.kill()
        server.start()
        # Then every job is delivered again (the in-flight ones once their lease ends)
        got: dict[str, base.Delivery] = {}
        deadline = time.monotonic() + 30
        while set(got) != sent and time.monotonic() < deadline:
            for d in await b.fetch("w1", 10, block=2):
                got[d.id] = d
                assert await b.ack(d) is True
        assert set(got) == sent
    finally:
        await b.close()


async def test_open_broker_serves_sqs_urls_and_an_ack_with_a_done_marker_still_acks(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # the connection settings a worker passes every broker are taken; others are refused
    with pytest.raises(TypeError):
        await brokers.open_broker(elasticmq_server.url, "t-x", health_check_interval=5)
    b = await brokers.open_broker(
        elasticmq_server.url, f"t-{uuid.uuid4().hex[:12]}", socket_timeout=10, retries=0
    )
    try:
        assert isinstance(b, sqs_broker.SqsBroker)
        assert (b.read_timeout, b.max_attempts) == (25.0, 1)
        await b.enqueue(job())
        [d] = await fetch_until(b, 1, 10)
        # SQS keeps no done markers: the ack still finishes the job
        assert await b.ack(d, done_key="k") is True
        assert await b.fetch_is_done("k") is False
    finally:
        await b.close()


def test_sqs_urls_never_carry_credentials_and_name_only_known_options() -> None:
    with pytest.raises(errors.InvalidBrokerURL):
        settings.parse_sqs_url("sqs://key:secret@127.0.0.1:9324")
    with pytest.raises(errors.InvalidBrokerURL):
        settings.parse_sqs_url("sqs://127.0.0.1:9324?colour=blue")
    parsed = settings.parse_sqs_url("sqs://127.0.0.1:9324?region=eu-west-1&secure=false&fifo=1")
    assert parsed.endpoint_url == "http://127.0.0.1:9324" and parsed.fifo and parsed.local_endpoint
    assert settings.parse_sqs_url("sqs://?region=eu-west-1").endpoint_url is None


def test_a_queue_name_sqs_cannot_hold_is_refused_before_any_call() -> None:
    with pytest.raises(errors.InvalidQueueName):
        settings.build_queue_names("a:b", settings.SqsSettings())
    names = settings.build_queue_names("emails", settings.SqsSettings(fifo=True))
    assert [n for _, n in names.by_priority] == [
        "emails-high.fifo",
        "emails.fifo",
        "emails-low.fifo",
    ]
    assert names.dead_letter == "emails-dlq.fifo"


def test_a_queue_name_ending_like_another_queue_s_sqs_queue_is_refused_saying_whose_it_is() -> None:
    # Given the names of the SQS queues a queue "emails" owns (emails-high, -low, -dlq), reached
    # through the queue name alone or through the prefix, on any queue set
    taken = [("emails-high", ""), ("emails-low", ""), ("emails-dlq", ""), ("high", "emails-")]
    for queue, prefix in taken:
        for fifo, priorities in [(False, True), (True, True), (False, False)]:
            wanted = settings.SqsSettings(prefix=prefix, fifo=fifo, priorities=priorities)
            # When a queue of that name is mapped onto SQS, Then it is refused, naming the owner
            with pytest.raises(errors.InvalidQueueName, match="queue of the queue 'emails'"):
                settings.build_queue_names(queue, wanted)
    # and names that only contain those words are ordinary queues
    for queue in ("emails-highway", "high-emails", "emails_dlq", "emails-low2", "dlq", "emails"):
        names = settings.build_queue_names(queue, settings.SqsSettings())
        assert dict(names.by_priority)[envelope_mod.Priority.NORMAL] == queue
        assert names.dead_letter == f"{queue}-dlq"


async def test_a_second_queue_cannot_take_over_the_sqs_queues_of_another(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given a queue whose high job waits in its SQS queue Q-high
    queue = f"t-{uuid.uuid4().hex[:12]}"
    first = await sqs_broker.open_sqs_broker(elasticmq_server.url, queue)
    try:
        sent = await first.enqueue(job("mine", priority="high"))
        # When workers of the queues named Q-high and Q-dlq start on the same server
        for other in (f"{queue}-high", f"{queue}-dlq"):
            with pytest.raises(errors.InvalidQueueName, match=f"queue of the queue '{queue}'"):
                await sqs_broker.open_sqs_broker(elasticmq_server.url, other)
        # Then they were refused before making or changing any SQS queue: Q's four are all
        # there is, and Q's own worker still gets its job
        client = await first._ready_client()
        listed = await client.list_queues(QueueNamePrefix=queue)
        assert sorted(u.rsplit("/", 1)[-1] for u in listed["QueueUrls"]) == [
            queue,
            f"{queue}-dlq",
            f"{queue}-high",
            f"{queue}-low",
        ]
        [d] = await fetch_until(first, 1, 10)
        assert (d.id, d.envelope.task, d.lost) == (sent.job_id, "mine", 0)
    finally:
        await first.close()


async def test_a_renew_through_another_broker_instance_keeps_the_lease(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given a job fetched by one broker instance (a worker's job loop) with a 2 s lease
    queue = f"t-{uuid.uuid4().hex[:12]}"
    options = base.QueueOptions(lease_seconds=2)
    loop_broker = await sqs_broker.open_sqs_broker(elasticmq_server.url, queue, options=options)
    control = await sqs_broker.open_sqs_broker(elasticmq_server.url, queue, options=options)
    try:
        await loop_broker.enqueue(job(priority="high"))
        [d] = await fetch_until(loop_broker, 1, 10)
        # When the worker's control thread renews it through its own instance, past the lease
        for _ in range(3):
            await asyncio.sleep(1.0)
            renewal = await control.renew("w1", [d])
            assert [k.id for k in renewal.kept] == [d.id] and renewal.lost == ()
        # Then nobody got the job meanwhile, and the job loop's ack finishes it
        assert await control.fetch("w2", 1) == []
        assert await loop_broker.ack(d) is True
    finally:
        await loop_broker.close()
        await control.close()


async def test_a_retry_of_a_delivery_whose_lease_ran_out_sends_no_copy_of_the_job(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given a job whose first worker stalled past its lease, and a second worker that got it
    queue = f"t-{uuid.uuid4().hex[:12]}"
    options = base.QueueOptions(lease_seconds=1)
    first = await sqs_broker.open_sqs_broker(elasticmq_server.url, queue, options=options)
    second = await sqs_broker.open_sqs_broker(elasticmq_server.url, queue, options=options)
    try:
        await first.enqueue(job())
        [stale] = await fetch_until(first, 1, 10)
        [current] = await fetch_until(second, 1, 10)
        assert current.id == stale.id
        # When the first worker wakes up and retries its stale delivery
        assert await first.retry(stale, base.Failure("E", "late"), delay_seconds=0) is False
        # Then no copy was sent: once the second worker acks, the job is gone for good
        assert await second.ack(current) is True
        assert await fetch_until(first, 1, 3) == []
    finally:
        await first.close()
        await second.close()


async def test_dead_letters_are_kept_as_configured_and_new_job_queues_keep_jobs_as_long_as_sqs_can(
    elasticmq_server: elasticmq.ElasticMQServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a client that records the queue attributes each call sends (ElasticMQ takes
    # MessageRetentionPeriod but does not keep it: GetQueueAttributes never returns it, so the
    # request is what can be checked)
    sent: list[tuple[str, str, dict[str, str]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        if "Attributes" in params:
            where = params.get("QueueName") or params["QueueUrl"].rsplit("/", 1)[-1]
            sent.append((model.name, where, dict(params["Attributes"])))

    session = aiobotocore.session.get_session()
    session.register("before-parameter-build.sqs", record)
    monkeypatch.setattr(aiobotocore.session, "get_session", lambda: session)
    queue = f"t-{uuid.uuid4().hex[:12]}"
    # When a worker opens a new queue with a 10-day dead-letter retention, and a later worker
    # opens it with 3600.5 s
    for retention in (864_000, 3600.5):
        options = base.QueueOptions(dlq_retention_seconds=retention)
        await (
            await sqs_broker.open_sqs_broker(elasticmq_server.url, queue, options=options)
        ).close()
    # Then the DLQ is created with the first retention and set to the second (whole seconds,
    # rounded up); the job queues are created keeping their jobs as long as SQS can (14 days,
    # not SQS's default 4), and the later worker leaves their retention as it is
    size = {"MaximumMessageSize": "262144"}  # what ElasticMQ takes (see max_message_bytes)
    assert [s for s in sent if s[1] == f"{queue}-dlq"] == [
        ("CreateQueue", f"{queue}-dlq", {"MessageRetentionPeriod": "864000", **size}),
        ("SetQueueAttributes", f"{queue}-dlq", {"MessageRetentionPeriod": "3601", **size}),
    ]
    job_queues = [s for s in sent if s[1] != f"{queue}-dlq"]
    assert [(call, s.get("MessageRetentionPeriod")) for call, _, s in job_queues] == [
        *[("CreateQueue", "1209600")] * 3,
        *[("SetQueueAttributes", None)] * 3,
    ]


@pytest.mark.parametrize("seconds", [59.0, 1_209_600.5, 30 * 86_400.0, math.inf])
def test_a_dead_letter_retention_sqs_cannot_keep_is_refused_before_any_call(seconds: float) -> None:
    # Given a retention SQS cannot keep messages for (60 s .. 14 days)
    options = base.QueueOptions(dlq_retention_seconds=seconds)
    # When a worker's broker is made, then it is refused with what SQS allows and what to set
    with pytest.raises(errors.ConfigError, match=r"60 s to 1,209,600 s \(14 days\).*retention"):
        sqs_broker.SqsBroker("q", settings.SqsSettings(), options=options)
    # and a reader (the operator's probe), which sets nothing, is not
    reader = sqs_broker.SqsBroker(
        "q", settings.SqsSettings(), options=options, role=base.QueueRole.READER
    )
    assert reader.dead_letter_retention is None


async def test_a_queue_probe_changes_no_queue_attributes_and_reads_a_missing_queue_as_empty(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given a worker's broker that set its lease (7 s visibility) and poison limit (redrive
    # after 3 receives) on its queues
    name = f"t-{uuid.uuid4().hex[:12]}"
    worker = await brokers.open_broker(
        elasticmq_server.url, name, options=base.QueueOptions(lease_seconds=7, max_deliveries=2)
    )
    assert isinstance(worker, sqs_broker.SqsBroker)
    # and a queue that nobody has created yet
    never = f"t-{uuid.uuid4().hex[:12]}"
    probes = [
        await brokers.open_broker(elasticmq_server.url, q, role="reader") for q in (name, never)
    ]
    try:
        await worker.enqueue_many([job(), job(priority="high")])
        # When the operator's probes (default options, no queue creation) read the stats
        seen, missing = [await p.fetch_stats() for p in probes]  # type: ignore[attr-defined]
        # Then the worker's queue reads as it is and keeps the worker's lease and redrive limit
        assert (seen.backlog, seen.in_flight, seen.dead_letter) == (2, 0, 0)
        reply = await worker._client.get_queue_attributes(
            QueueUrl=worker._url(envelope_mod.Priority.NORMAL), AttributeNames=["All"]
        )
        assert reply["Attributes"]["VisibilityTimeout"] == "7"
        assert int(json.loads(reply["Attributes"]["RedrivePolicy"])["maxReceiveCount"]) == 3
        # and the missing queue reads as empty without being created
        assert (missing.backlog, missing.in_flight, missing.dead_letter) == (0, 0, 0)
        listed = await worker._client.list_queues(QueueNamePrefix=never)
        assert listed.get("QueueUrls", []) == []
        # and once a producer creates it, the same probe sees its jobs
        producer = await brokers.open_broker(elasticmq_server.url, never)
        try:
            await producer.enqueue(job(priority="low"))
        finally:
            await producer.close()
        later = await probes[1].fetch_stats()  # type: ignore[attr-defined]
        assert later.backlog == 1
        # and once its queues exist, a poll is one GetQueueAttributes per SQS queue, nothing else
        calls: list[str] = []
        client = probes[1]._client  # type: ignore[attr-defined]
        client.meta.events.register(
            "before-call.sqs.*", lambda model, **_: calls.append(model.name)
        )
        await probes[1].fetch_stats()  # type: ignore[attr-defined]
        assert calls == ["GetQueueAttributes"] * 4  # high, normal, low and the DLQ
    finally:
        for b in (worker, *probes):
            await b.close()


async def test_list_queues_names_the_workerfleet_queues_under_the_url_s_prefix(
    elasticmq_server: elasticmq.ElasticMQServer, open_sqs: OpenBroker
) -> None:
    # Given two workerfleet queues under a prefix of this test's own, a queue under the prefix
    # that is not a workerfleet queue, and one named like the DLQ of a queue that is not there
    prefix = f"p{uuid.uuid4().hex[:6]}-"
    url = f"{elasticmq_server.url}&prefix={prefix}"
    for name in ("orders", "x"):
        b = await sqs_broker.open_sqs_broker(url, name)
        await b.enqueue(job())
        await b.close()
    stray = await open_sqs()
    client = await stray._ready_client()
    await client.create_queue(QueueName=f"{prefix}not-ours")
    await client.create_queue(QueueName=f"{prefix}gone-dlq")
    # When the queues are listed through a broker on the same URL
    lister = await sqs_broker.open_sqs_broker(url, "lister", role=base.QueueRole.READER)
    try:
        listed = await lister.list_queues()
    finally:
        await lister.close()
    # Then exactly the two workerfleet queues are named (not the stray ones)
    assert listed == ["orders", "x"]


async def test_jobs_each_within_sqs_s_size_limit_are_enqueued_together_even_when_their_sum_is_not(
    open_sqs: OpenBroker,
) -> None:
    # Given ten jobs of 40 KB each: each far below SQS's 256 KiB per message, 400 KB together
    # (a SendMessageBatch may carry 256 KiB in all)
    b = await open_sqs()
    big = [
        base.EnqueueRequest(
            envelope=envelope_mod.build_envelope("t", {"n": n, "blob": "x" * 40_000})
        )
        for n in range(10)
    ]
    # When they are enqueued in one call
    sent = await b.enqueue_many(big)
    # Then every one is stored, once
    got = await fetch_until(b, 10, 15)
    assert sorted(d.id for d in got) == sorted(r.job_id for r in sent)
    assert await b.fetch("w1", 10) == []


async def test_a_fifo_message_group_enqueued_in_one_call_keeps_its_order_across_batches(
    open_sqs: OpenBroker, elasticmq_server: elasticmq.ElasticMQServer
) -> None:
    # Given a FIFO queue, and 25 jobs of one message group enqueued in one call (three
    # SendMessageBatch calls), the first call's request slower on the wire than the others
    b = await open_sqs(url=elasticmq_server.url + "&fifo=true&priorities=false")
    calls = delay_call(b, "SendMessageBatch", nth=1, seconds=0.5)
    await b.enqueue_many([job(f"j{i}", headers={"message-group-id": "g"}) for i in range(25)])
    # When a worker takes the group's jobs one by one
    got: list[str] = []
    for _ in range(25):
        [d] = await fetch_until(b, 1, 10)
        got.append(d.envelope.task)
        assert await b.ack(d) is True
    # Then it gets them in the order they were enqueued
    assert len(calls) == 3
    assert got == [f"j{i}" for i in range(25)]


_ONE_AT_A_TIME = {
    "SendMessageBatch": "send_message",
    "DeleteMessageBatch": "delete_message",
    "ChangeMessageVisibilityBatch": "change_message_visibility",
}


def answer_in_part(b: sqs_broker.SqsBroker, operation: str, failure: dict[str, Any]) -> list[str]:
    """Make the broker's next ``operation`` batch call (SendMessageBatch, DeleteMessageBatch or
    ChangeMessageVisibilityBatch) applied by the server for its first entry alone, and answered
    with that entry successful and the second one failed with ``failure`` (SenderFault, Code,
    Message), as SQS answers each entry of a batch on its own. Later calls reach the server.
    Returns the calls seen."""
    sent: dict[str, Any] = {}
    calls: list[str] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        sent.update(params)

    async def partly(**_: Any) -> tuple[Any, dict[str, Any]] | None:
        calls.append(operation)
        if len(calls) > 1:
            return None  # the next calls reach the server
        first, second = sent["Entries"][:2]
        apply_one = getattr(b._client, _ONE_AT_A_TIME[operation])
        applied = await apply_one(
            QueueUrl=sent["QueueUrl"], **{k: v for k, v in first.items() if k != "Id"}
        )
        ok = {"Id": first["Id"]}
        if operation == "SendMessageBatch":
            ok |= {k: applied[k] for k in ("MessageId", "MD5OfMessageBody")}
        http = types.SimpleNamespace(status_code=200, headers={}, raw=None, content=b"")
        return http, {
            "Successful": [ok],
            "Failed": [{"Id": second["Id"], **failure}],
            "ResponseMetadata": {"HTTPStatusCode": 200},
        }

    b._client.meta.events.register(f"before-parameter-build.sqs.{operation}", capture)
    b._client.meta.events.register(f"before-call.sqs.{operation}", partly)
    return calls


REFUSED_FOR_GOOD = {
    "SenderFault": True,
    "Code": "InvalidMessageContents",
    "Message": "the message contains characters outside the allowed set",
}


async def test_an_enqueue_whose_batch_entry_sqs_failed_for_now_stores_every_job_once(
    open_sqs: OpenBroker,
) -> None:
    # Given a SendMessageBatch that SQS answers with its first entry stored and its second
    # failed through no fault of the sender (an internal error, SenderFault false)
    b = await open_sqs()
    calls = answer_in_part(b, "SendMessageBatch", {"SenderFault": False, "Code": "InternalError"})
    # When two jobs are enqueued in that call
    sent = await b.enqueue_many([job("first"), job("second")])
    # Then both are stored, each once: the failed entry alone was sent again
    got = await fetch_until(b, 2, 10)
    assert sorted(d.id for d in got) == sorted(r.job_id for r in sent)
    assert await b.fetch("w1", 10) == []
    assert calls == ["SendMessageBatch", "SendMessageBatch"]


async def test_an_enqueue_whose_batch_entry_sqs_refused_for_good_names_the_jobs_stored_and_not(
    open_sqs: OpenBroker,
) -> None:
    # Given a SendMessageBatch that SQS answers with its first entry stored and its second
    # refused for good (SenderFault true)
    b = await open_sqs()
    answer_in_part(b, "SendMessageBatch", REFUSED_FOR_GOOD)
    first, second = job("first"), job("second")
    # When the two jobs are enqueued in that call
    with pytest.raises(errors.BrokerPartlyApplied) as raised:
        await b.enqueue_many([first, second])
    # Then the error names the job stored and the one refused, with SQS's reason, and is no
    # BrokerRejected (which says nothing was applied: its callers sent the first job again)
    assert not isinstance(raised.value, errors.BrokerRejected)
    assert raised.value.applied == (first.envelope.id,)
    assert list(raised.value.refused) == [second.envelope.id]
    assert isinstance(raised.value.refused[second.envelope.id], errors.BrokerRejected)
    assert "InvalidMessageContents" in str(raised.value)
    # and a caller that sends only the refused job again has each job stored once
    await b.enqueue_many([second])
    got = await fetch_until(b, 2, 10)
    assert sorted(d.id for d in got) == sorted([first.envelope.id, second.envelope.id])
    assert await b.fetch("w1", 10) == []


async def test_on_fifo_the_batches_after_one_sqs_refused_in_part_stay_unsent_and_say_so(
    open_sqs: OpenBroker, elasticmq_server: elasticmq.ElasticMQServer
) -> None:
    # Given a FIFO queue, and 25 jobs of one message group enqueued in one call (three
    # SendMessageBatch calls), the first call answered with its first job stored and its
    # second refused for good
    b = await open_sqs(url=elasticmq_server.url + "&fifo=true&priorities=false")
    calls = answer_in_part(b, "SendMessageBatch", REFUSED_FOR_GOOD)
    jobs = [job(f"j{i}", headers={"message-group-id": "g"}) for i in range(25)]
    # When they are enqueued
    with pytest.raises(errors.BrokerPartlyApplied) as raised:
        await b.enqueue_many(jobs)
    # Then the later calls were not sent (stored, their jobs would run before the refused one
    # of their group), and the error says so of each of their jobs
    assert calls == ["SendMessageBatch"]
    ids = [r.envelope.id for r in jobs]
    assert raised.value.applied == (ids[0],)
    assert list(raised.value.refused) == ids[1:]
    assert isinstance(raised.value.refused[ids[1]], errors.BrokerRejected)
    unsent = [raised.value.refused[i] for i in ids[10:]]
    assert all(isinstance(e, errors.BrokerUnavailable) and not e.sent for e in unsent)
    # and the queue holds the stored job alone
    [d] = await fetch_until(b, 1, 10)
    assert d.id == ids[0] and await b.ack(d) is True
    assert await fetch_until(b, 1, 2) == []


async def hold_two_with_the_next_batch_applied_in_part(
    b: sqs_broker.SqsBroker, operation: str
) -> list[base.Delivery]:
    """Two jobs a worker of ``b`` holds, and ``b``'s next ``operation`` batch call applied for
    the first and refused for good (AccessDenied) for the second."""
    await b.enqueue_many([job("a"), job("b")])
    held = await fetch_until(b, 2, 10)
    answer_in_part(b, operation, {**REFUSED_FOR_GOOD, "Code": "AccessDenied"})
    return held


def assert_names_applied_and_refused(
    error: errors.BrokerPartlyApplied, applied: base.Delivery, refused: base.Delivery
) -> None:
    """``error`` names ``applied`` as applied and ``refused`` as refused for good, and why."""
    assert error.applied == (applied.id,)
    assert list(error.refused) == [refused.id]
    assert isinstance(error.refused[refused.id], errors.BrokerRejected)
    assert "AccessDenied" in str(error)


async def test_acks_sqs_deleted_beside_one_it_refused_are_reported_deleted_and_land_on_resend(
    open_sqs: OpenBroker,
) -> None:
    # Given two jobs a worker ran to the end, and a DeleteMessageBatch that SQS answers with
    # the first deleted and the second refused for good
    b = await open_sqs(lease_seconds=2)
    done = await hold_two_with_the_next_batch_applied_in_part(b, "DeleteMessageBatch")
    # When their acks ride on one ack_and_fetch
    with pytest.raises(errors.BrokerPartlyApplied) as raised:
        await b.ack_and_fetch(done, "w1", 1)
    # Then the error names the job deleted and the one refused
    assert_names_applied_and_refused(raised.value, *done)
    # and the worker's re-sent acks both land: the deleted job's is told so (as "nothing
    # applied" it was answered False, a lost lease of a job that ran to the end)
    assert [await b.ack(d) for d in done] == [True, True]
    await asyncio.sleep(2.5)
    assert await b.fetch("w1", 10) == []


async def test_a_renew_with_an_entry_refused_for_good_names_the_leases_it_renewed(
    open_sqs: OpenBroker,
) -> None:
    # Given two jobs a worker holds, and a ChangeMessageVisibilityBatch that SQS answers with
    # the first lease renewed and the second refused for good
    b = await open_sqs(lease_seconds=30)
    held = await hold_two_with_the_next_batch_applied_in_part(b, "ChangeMessageVisibilityBatch")
    # When the worker renews them
    with pytest.raises(errors.BrokerPartlyApplied) as raised:
        await b.renew("w1", held)
    # Then the round fails saying which lease was renewed and which was refused, and why
    assert_names_applied_and_refused(raised.value, *held)


async def test_a_renewal_whose_reply_is_late_fails_within_the_caller_s_timeout(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given a worker's control-thread broker, opened with its renewal interval (0.5 s) as its
    # socket timeout, holding one job
    queue = f"t-{uuid.uuid4().hex[:12]}"
    b = await sqs_broker.open_sqs_broker(
        elasticmq_server.url,
        queue,
        options=base.QueueOptions(lease_seconds=30),
        socket_timeout=0.5,
    )
    try:
        await b.enqueue(job("a"))
        held = await fetch_until(b, 1, 10)
        # When its first renewal's call is held up 3 s on the way (a stalled connection)
        delay_call(b, "ChangeMessageVisibilityBatch", nth=1, seconds=3.0)
        # Then that renewal fails as unanswered, instead of waiting as long as a long poll may,
        # and the next one renews the lease
        with pytest.raises(errors.BrokerUnavailable, match="did not answer renew"):
            await b.renew("w1", held)
        renewal = await b.renew("w1", held)
        assert [d.id for d in renewal.kept] == [held[0].id]
    finally:
        await b.close()


async def test_a_batch_applied_in_part_names_the_receipts_sqs_answered_gone_as_lost(
    open_sqs: OpenBroker,
) -> None:
    # Given three jobs a worker holds, and a ChangeMessageVisibilityBatch and a
    # DeleteMessageBatch that SQS answers with the first entry applied, the second refused for
    # good and the third's receipt gone (its lease had ended)
    b = await open_sqs(lease_seconds=30)
    await b.enqueue_many([job("a"), job("b"), job("c")])
    held = sorted(await fetch_until(b, 3, 10), key=lambda d: d.envelope.task)
    in_part = {
        "Successful": [{"Id": "0"}],
        "Failed": [
            {"Id": "1", **REFUSED_FOR_GOOD, "Code": "AccessDenied"},
            {"Id": "2", "SenderFault": True, "Code": "ReceiptHandleIsInvalid", "Message": "x"},
        ],
    }
    for operation in ("ChangeMessageVisibilityBatch", "DeleteMessageBatch"):
        answer_once(b, operation, in_part)
    # When the worker renews them, and then acks them together
    with pytest.raises(errors.BrokerPartlyApplied) as renewed:
        await b.renew("w1", held)
    with pytest.raises(errors.BrokerPartlyApplied) as acked:
        await b.ack_and_fetch(held, "w1", 1)
    # Then each error names the job applied, the one refused and the one whose lease is gone
    # (a renewal's lost lease, an ack answered False), which a worker marks lost at once
    for raised in (renewed, acked):
        assert_names_applied_and_refused(raised.value, *held[:2])
        assert raised.value.lost == (held[2].id,)


def long_failure(n: int) -> base.FailureRecord:
    """A failure as long as the worker keeps one (a 2,000-character message, 4,000 of
    traceback)."""
    return base.FailureRecord(f"E{n}", f"{n}" * 2000, "t" * 4000, "w1", time.time(), n, n)


def count_message_bytes_as_aws_does(b: sqs_broker.SqsBroker, limit: int = 262_144) -> None:
    """Make the broker's SendMessage calls refused as AWS refuses them: over ``limit`` bytes
    (256 KiB before August 2025, 1 MiB since) of body and message attributes (name, type and
    value) together. ElasticMQ counts the body and each attribute alone (256 KiB each)."""
    sizes: list[int] = []

    def measure(params: dict[str, Any], **_: Any) -> None:
        attrs = params.get("MessageAttributes") or {}
        size = len(params["MessageBody"].encode()) + sum(
            len(k) + len(v["DataType"]) + len(v["StringValue"].encode()) for k, v in attrs.items()
        )
        sizes.append(size)

    def refuse(**_: Any) -> tuple[Any, dict[str, Any]] | None:
        if sizes.pop() <= limit:
            return None
        http = types.SimpleNamespace(status_code=400, headers={}, raw=None, content=b"")
        reason = (
            f"One or more parameters are invalid. Reason: Message must be shorter than {limit}"
            " bytes."
        )
        return http, {
            **refusal("InvalidParameterValue", reason),
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }

    b._client.meta.events.register("before-parameter-build.sqs.SendMessage", measure)
    b._client.meta.events.register("before-call.sqs.SendMessage", refuse)


async def test_a_large_job_with_a_long_history_is_retried_and_dead_lettered_within_sqs_s_size_limit(
    open_sqs: OpenBroker,
) -> None:
    # Given a job whose body and twelve recorded failures fill SQS's 256 KiB message nearly
    # to the byte (258,000 bytes), on a server that counts a message's size as AWS does
    b = await open_sqs(lease_seconds=5)
    history = tuple(long_failure(n) for n in range(1, 13))
    carried = attributes.Carried(attempts=12, deliveries=12, history=history)
    sent = attributes.encode_carried(carried, max_bytes=settings.COMPATIBLE_MAX_MESSAGE_BYTES)
    attrs_bytes = sum(len(k) + len(v["DataType"]) + len(v["StringValue"]) for k, v in sent.items())
    empty = envelope_mod.build_envelope("t", {"blob": ""})
    blob = 258_000 - attrs_bytes - len(envelope_mod.encode_envelope_text(empty))
    env = envelope_mod.build_envelope("t", {"blob": "x" * blob})
    body = envelope_mod.encode_envelope_text(env)
    await b._client.send_message(
        QueueUrl=b._url(envelope_mod.Priority.NORMAL), MessageBody=body, MessageAttributes=sent
    )
    count_message_bytes_as_aws_does(b)
    # When it fails once more and is retried, and then fails for good
    [d] = await fetch_until(b, 1, 10)
    assert d.attempts == 12
    failure = base.Failure("E13", "13" * 1000, "t" * 4000, "w1")
    assert await b.retry(d, failure, delay_seconds=0) is True
    [again] = await fetch_until(b, 1, 10)
    assert (again.id, again.attempts) == (env.id, 13)
    last = base.Failure("E14", "14" * 1000, "t" * 4000, "w1")
    assert await b.dead_letter(again, "non_retryable", failure=last) is True
    # Then its dead letter holds every failure, the newest whole, the oldest without their
    # tracebacks to fit SQS's limit
    letter = await b.show_dead_letter(env.id)
    assert letter is not None and letter.attempts == 14
    assert [r.error_type for r in letter.history] == [f"E{n}" for n in range(1, 15)]
    assert letter.history[-1].traceback == "t" * 4000
    assert letter.history[0].traceback == ""


def test_the_largest_message_is_aws_s_1_mib_and_256_kib_on_another_server_unless_the_url_says() -> (
    None
):
    # AWS takes 1 MiB since August 2025; ElasticMQ (1.6.11) still refuses more than 256 KiB
    assert settings.parse_sqs_url("sqs://?region=eu-west-1").max_message_bytes == 1_048_576
    vpc = "sqs://sqs.eu-west-1.amazonaws.com?region=eu-west-1"
    assert settings.parse_sqs_url(vpc).max_message_bytes == 1_048_576
    local = "sqs://127.0.0.1:9324?region=us-east-1&secure=false"
    assert settings.parse_sqs_url(local).max_message_bytes == 262_144
    assert settings.parse_sqs_url(local + "&max_message_bytes=1048576").max_message_bytes == (
        1_048_576
    )
    for wrong in ("1048577", "1023", "1e6", ""):
        with pytest.raises(errors.InvalidBrokerURL, match="max_message_bytes"):
            settings.parse_sqs_url(f"{local}&max_message_bytes={wrong}")


def test_an_enqueue_fills_each_send_message_batch_up_to_the_server_s_largest_message() -> None:
    # Given ten jobs of 40 KB each (400 KB together)
    entries = [{"Id": str(n), "MessageBody": "x" * 40_000} for n in range(10)]
    # Then they are one SendMessageBatch where the server takes 1 MiB (AWS), and calls of at
    # most 256 KiB where it takes 256 KiB (ElasticMQ)
    assert [len(b) for b in sqs_broker._send_batches(entries, 1_048_576)] == [10]
    assert [len(b) for b in sqs_broker._send_batches(entries, 262_144)] == [6, 4]


async def test_on_a_server_that_takes_1_mib_a_large_job_is_retried_with_its_whole_history(
    open_sqs: OpenBroker, elasticmq_server: elasticmq.ElasticMQServer
) -> None:
    # Given a broker told the server takes 1 MiB (as AWS does), on a stand-in that counts a
    # message's size as AWS does, and a 200 KB job with twelve recorded failures (72 KB): more
    # than 256 KiB together (ElasticMQ takes it: it counts the body and each attribute alone)
    b = await open_sqs(url=elasticmq_server.url + "&max_message_bytes=1048576", lease_seconds=5)
    history = tuple(long_failure(n) for n in range(1, 13))
    carried = attributes.Carried(attempts=12, deliveries=12, history=history)
    env = envelope_mod.build_envelope("t", {"blob": "x" * 200_000})
    await b._client.send_message(
        QueueUrl=b._url(envelope_mod.Priority.NORMAL),
        MessageBody=envelope_mod.encode_envelope_text(env),
        MessageAttributes=attributes.encode_carried(carried, max_bytes=1_048_576),
    )
    count_message_bytes_as_aws_does(b, 1_048_576)
    # When it fails once more and is retried, and then fails for good
    [d] = await fetch_until(b, 1, 10)
    assert await b.retry(d, base.Failure("E13", "13", "t" * 4000, "w1"), delay_seconds=0)
    [again] = await fetch_until(b, 1, 10)
    assert (again.id, again.attempts) == (env.id, 13)
    last = base.Failure("E14", "14", "t" * 4000, "w1")
    assert await b.dead_letter(again, "non_retryable", failure=last) is True
    # Then its dead letter holds every failure with its traceback (cut to 256 KiB, the oldest
    # lost theirs)
    letter = await b.show_dead_letter(env.id)
    assert letter is not None
    assert [r.error_type for r in letter.history] == [f"E{n}" for n in range(1, 15)]
    assert all(r.traceback == "t" * 4000 for r in letter.history)


async def test_a_worker_s_queues_are_set_to_take_the_largest_message_its_broker_sends(
    open_sqs: OpenBroker, elasticmq_server: elasticmq.ElasticMQServer
) -> None:
    # Given a worker's broker told the server takes 1 MiB
    b = await open_sqs(url=elasticmq_server.url + "&max_message_bytes=1048576")
    set_to: list[dict[str, str]] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        set_to.append(params["Attributes"])

    b._client.meta.events.register("before-parameter-build.sqs.SetQueueAttributes", record)
    # When it makes sure of its queues again, as a worker does at every start
    await b._ensure_queues()
    # Then each of its SQS queues, the DLQ included, is set to take 1 MiB messages: one left at
    # 256 KiB refused the retry of a large job whose history the broker had not cut to that
    assert [a.get("MaximumMessageSize") for a in set_to] == ["1048576"] * 4


async def test_a_purge_whose_scan_read_a_dead_letter_twice_deletes_it(
    open_sqs: OpenBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two dead letters, and a DLQ scan that hides what it reads for 1 s but whose second
    # read comes later than that (a slow server, or a DLQ too long to read in 30 s): it reads
    # both letters again, SQS giving them new receipts
    b = await open_sqs()
    await dead_letter_jobs(b, 2)
    monkeypatch.setattr(dlq, "SCAN_HIDE_SECONDS", 1)
    reads = delay_call(b, "ReceiveMessage", nth=2, seconds=1.5)
    # When every dead letter is purged
    assert await b.purge_dead_letters(everything=True) == 2
    # Then none is left, once the scan's hiding is over
    await asyncio.sleep(1.5)
    assert len(reads) >= 3
    assert await b.count_dead_letters() == 0
    assert [letter.job_id for letter in await b.list_dead_letters()] == []


async def test_a_purge_counts_only_the_dead_letters_sqs_deleted(open_sqs: OpenBroker) -> None:
    # Given three dead letters, and a DeleteMessageBatch that SQS answers with every entry
    # failed (throttled)
    b = await open_sqs()
    await dead_letter_jobs(b, 3)
    throttled = {"SenderFault": False, "Code": "ThrottlingException"}
    failed = [{"Id": str(i), **throttled} for i in range(3)]
    answer_once(b, "DeleteMessageBatch", {"Successful": [], "Failed": failed})
    # When every dead letter is purged
    purged = await b.purge_dead_letters(everything=True)
    # Then the purge says it deleted none, as the DLQ shows: all three are still there
    assert purged == 0
    assert await b.count_dead_letters() == 3
