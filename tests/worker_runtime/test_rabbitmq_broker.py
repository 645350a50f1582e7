"""The RabbitMQ broker keeps the broker contract on a real rabbitmq-server.

Each test runs on the session's private broker (tests/support/rabbitmq_server.py) with a queue
of its own. Judged by what the broker hands out and what lands in the dead-letter queue, read
back through AMQP, never by counters the broker keeps itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest

from tests.support import rabbitmq_server as rabbitmq_support
from worker_runtime import brokers, envelope, errors
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker
from worker_runtime.brokers.rabbitmq import topology

pytestmark = pytest.mark.slow


@pytest.fixture
def rq_queue() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def rq(rabbitmq_server: Any, rq_queue: str) -> AsyncIterator[rabbitmq_broker.RabbitMQBroker]:
    b = rabbitmq_broker.RabbitMQBroker(
        rabbitmq_server.url, rq_queue, base.QueueOptions(max_deliveries=3), prefetch=10
    )
    try:
        yield b
    finally:
        await b.close()


def job(
    task: str = "t", *, priority: str = "normal", job_id: str | None = None
) -> base.EnqueueRequest:
    return base.EnqueueRequest(
        envelope.build_envelope(task, {"n": 1}, priority=priority, job_id=job_id)
    )


async def dead_letters(url: str, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message in the queue's DLQ (taken off it: the test is over with them)."""
    return await messages_in(url, topology.dead_queue(queue))


async def messages_in(
    url: str, name: str, *, limit: int = 1000
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """The messages of the RabbitMQ queue ``name``, head first, at most ``limit`` (taken off
    it)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        q = await channel.declare_queue(name, passive=True)
        found = []
        for _ in range(limit):
            message = await q.get(no_ack=True, fail=False, timeout=5)
            if message is None:
                break
            found.append(message)
        return found
    finally:
        await connection.close()


async def test_an_enqueued_job_is_fetched_once_and_an_ack_ends_it(
    rq: rabbitmq_broker.RabbitMQBroker,
) -> None:
    # Given a job enqueued
    result = await rq.enqueue(job(job_id="j1"))
    assert result == base.EnqueueResult("j1", True)
    # When a worker fetches
    got = await rq.fetch("w1", 5, block=5)
    # Then it gets that job, first delivery, no attempts yet
    assert [(d.id, d.deliveries, d.attempts, d.lost) for d in got] == [("j1", 1, 0, 0)]
    # And the ack ends it: a second ack of the same delivery is refused, nothing comes again
    assert await rq.ack(got[0]) is True
    assert await rq.ack(got[0]) is False
    assert await rq.fetch("w1", 5, block=0.5) == []


async def test_fetch_serves_high_before_normal_before_low(
    rq: rabbitmq_broker.RabbitMQBroker,
) -> None:
    # Given jobs of each level enqueued low first
    for priority in ("low", "normal", "high"):
        await rq.enqueue(job(priority=priority, job_id=priority))
    # When the worker fetches one at a time
    order = []
    for _ in range(3):
        got = await rq.fetch("w1", 1, block=5)
        order += [d.id for d in got]
        for d in got:
            await rq.ack(d)
    # Then the most urgent comes first
    assert order == ["high", "normal", "low"]


async def test_a_retry_waits_its_delay_in_the_broker_and_keeps_the_failure_history(
    rq: rabbitmq_broker.RabbitMQBroker,
) -> None:
    # Given a job whose first run failed and was retried in 1.5 s
    await rq.enqueue(job(job_id="r1"))
    [first] = await rq.fetch("w1", 1, block=5)
    failure = base.Failure("ValueError", "boom", worker_id="w1")
    retried_at = time.time()
    assert await rq.retry(first, failure, delay_seconds=1.5) is True
    # When the worker fetches again
    assert await rq.fetch("w1", 1, block=0.5) == []
    [second] = await rq.fetch("w1", 1, block=10)
    # Then the job came back no earlier than its delay (hops through the 800, 400, 200, 100 ms
    # buckets; due once less than the smallest bucket remains)
    assert time.time() - retried_at >= 1.5 - topology.BUCKET_BASE_SECONDS
    assert (second.id, second.attempts, second.deliveries) == ("r1", 1, 2)
    assert await rq.fetch_previous_delay("r1") == 1.5
    # And when it fails for good it reaches the DLQ with both failures
    failure2 = base.Failure("KeyError", "again", worker_id="w1")
    assert await rq.dead_letter(second, "max_attempts", failure=failure2) is True
    [dead] = await dead_letters(rq._url, rq.queue)
    headers = dict(dead.headers or {})
    history = rabbitmq_broker.decode_history(headers)
    assert [h["error_type"] for h in history] == ["ValueError", "KeyError"]
    assert [h["attempt"] for h in history] == [1, 2]
    assert headers[topology.H_REASON] == "max_attempts"
    assert dead.message_id == "r1"


async def test_release_returns_a_job_without_spending_an_attempt_or_a_lost_delivery(
    rq: rabbitmq_broker.RabbitMQBroker,
) -> None:
    # Given a fetched job
    await rq.enqueue(job(job_id="d1"))
    [got] = await rq.fetch("w1", 1, block=5)
    # When it is released (drain)
    assert await rq.release(got) is True
    assert await rq.release(got) is False
    # Then it comes back with no attempt and nothing lost (nothing towards poison); the
    # released delivery counts as one, as on every broker
    [again] = await rq.fetch("w1", 1, block=5)
    assert (again.id, again.deliveries, again.attempts, again.lost) == ("d1", 2, 0, 0)
    await rq.ack(again)


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_a_dead_workers_jobs_return_counted_and_poison_is_dead_lettered_before_it_runs(
    rabbitmq_server: Any, rq_queue: str, queue_type: str
) -> None:
    # Given max_deliveries=3 and a job whose workers die holding it (connection closed unacked)
    # (quorum: RabbitMQ counts the returns; classic: the broker counts each in a new copy)
    options = base.QueueOptions(max_deliveries=3)

    def open_broker(**kwargs: Any) -> rabbitmq_broker.RabbitMQBroker:
        return rabbitmq_broker.RabbitMQBroker(
            rabbitmq_server.url, rq_queue, options, queue_type=queue_type, **kwargs
        )

    producer = open_broker()
    await producer.enqueue(job(job_id="p1"))
    await producer.close()
    seen = []
    for _ in range(3):
        worker = open_broker(prefetch=1)
        [d] = await worker.fetch("w", 1, block=10)
        seen.append((d.deliveries, d.lost))
        assert worker._connection is not None
        await worker._connection.close()  # the worker dies: no ack, no release
    # Then each return counted one more delivery, lost
    assert seen == [(1, 0), (2, 1), (3, 2)]
    # When the job comes a fourth time
    worker = open_broker(prefetch=1)
    try:
        assert await worker.fetch("w", 1, block=3) == []
        # Then it was not handed out but dead-lettered as poison
        assert worker.dead_lettered_by_fetch["max_deliveries"] == 1
    finally:
        await worker.close()
    [dead] = await dead_letters(rabbitmq_server.url, rq_queue)
    assert dead.message_id == "p1"
    assert dict(dead.headers or {})[topology.H_REASON] == "max_deliveries"


async def test_a_settling_call_from_a_closed_connection_is_refused(
    rq: rabbitmq_broker.RabbitMQBroker,
) -> None:
    # Given a delivery whose connection was lost (the job went back to the queue)
    await rq.enqueue(job(job_id="f1"))
    [old] = await rq.fetch("w1", 1, block=5)
    assert rq._connection is not None
    await rq._connection.close()
    # Then acking it is refused (False) and the job is delivered again, counted as lost
    assert await rq.ack(old) is False
    renewal = await rq.renew("w1", [old])
    assert renewal.lost == (old,)
    [again] = await rq.fetch("w1", 1, block=10)
    assert (again.id, again.deliveries, again.lost) == ("f1", 2, 1)
    assert await rq.ack(again) is True


async def test_acks_applied_before_their_fetch_failed_are_reported_done_and_never_resent(
    rabbitmq_server: Any, rq: rabbitmq_broker.RabbitMQBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job in hand, and RabbitMQ failing the fetch that rides on its ack
    await rq.enqueue(job(job_id="a1"))
    [got] = await rq.fetch("w1", 1, block=5)

    async def consume_fails(count: int) -> None:
        raise errors.BrokerUnavailable("no reply from RabbitMQ during consume", operation="consume")

    monkeypatch.setattr(rq, "_start_consuming", consume_fails)
    # When the worker acks it together with its next fetch
    flags, fetched = await rq.ack_and_fetch([got], "w1", 5)
    # Then the ack is reported applied (the worker must not send it again) and nothing fetched
    assert (flags, fetched) == ([True], [])
    # And the next call, with no ack riding on it, raises the fetch's trouble
    with pytest.raises(errors.BrokerUnavailable):
        await rq.ack_and_fetch([], "w1", 5)
    # And the job is gone from RabbitMQ: with this connection closed nothing comes back
    await rq.close()
    other = rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, rq.queue, prefetch=10)
    try:
        assert await other.fetch("w2", 5, block=2) == []
    finally:
        await other.close()


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def queue_counters(server: Any, name: str) -> tuple[int, int]:
    """RabbitMQ's own publish and ack counters of one queue (management API, sampled)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.management_port}/api/queues/%2F/{name}"
    )
    token = base64.b64encode(b"guest:guest").decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as reply:
        stats = json.loads(reply.read()).get("message_stats") or {}
    return int(stats.get("publish") or 0), int(stats.get("ack") or 0)


async def ready_in(url: str, name: str) -> int:
    """Messages RabbitMQ holds ready (not delivered to any consumer) in queue ``name``."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        q = await channel.declare_queue(name, passive=True)
        return int(q.declaration_result.message_count or 0)
    finally:
        await connection.close()


@pytest.mark.timeout(120)
async def test_a_prefetched_job_waiting_behind_busier_levels_goes_back_unspent_before_the_timeout(
    rabbitmq_server: Any, rq_queue: str
) -> None:
    # Given a worker's broker on a fake clock, serving a high job, with a low job prefetched
    # behind it (delivered to its consumer, never handed out)
    clock = FakeClock()
    b = rabbitmq_broker.RabbitMQBroker(
        rabbitmq_server.url, rq_queue, base.QueueOptions(max_deliveries=3), prefetch=10, clock=clock
    )
    low = topology.work_queue(rq_queue, "low")
    try:
        await b.enqueue(job(priority="high", job_id="h1"))
        [h1] = await b.fetch("w1", 1, block=5)
        await b.enqueue(job(priority="low", job_id="low1"))
        for _ in range(100):
            if await ready_in(rabbitmq_server.url, low) == 0:
                break
            await asyncio.sleep(0.05)
        assert await b.ack(h1) is True
        # When it has waited longer than the limit (well under consumer_timeout) and the worker
        # fetches for its next high job
        clock.now += rabbitmq_broker.BUFFERED_WAIT_LIMIT_SECONDS + 1
        await b.enqueue(job(priority="high", job_id="h2"))
        got = await b.fetch("w1", 1, block=5)
        # Then RabbitMQ saw it given back: its delivery acked, a new copy in the low queue
        counters = (0, 0)
        for _ in range(80):
            counters = await asyncio.to_thread(queue_counters, rabbitmq_server, low)
            if counters == (2, 1):
                break
            await asyncio.sleep(0.25)
        assert counters == (2, 1)  # (published: the enqueue and the copy; acked: the delivery)
        # And it is handed out once, as it went: first delivery, no attempt, nothing lost
        deadline = time.monotonic() + 20
        while len(got) < 2 and time.monotonic() < deadline:
            got += await b.fetch("w1", 2, block=1)
        assert sorted((d.id, d.deliveries, d.lost, d.attempts) for d in got) == [
            ("h2", 1, 0, 0),
            ("low1", 1, 0, 0),
        ]
        for d in got:
            assert await b.ack(d) is True
        assert await b.fetch("w1", 2, block=1) == []
    finally:
        await b.close()


async def test_an_unparseable_envelope_is_dead_lettered_by_the_fetch(
    rabbitmq_server: Any, rq: rabbitmq_broker.RabbitMQBroker
) -> None:
    # Given a message that is not JSON in the work queue
    await rq.enqueue(job(job_id="ok"))
    channel = await rq._ensure()
    await channel.default_exchange.publish(
        aio_pika.Message(b"\xff not json", message_id="bad"),
        routing_key=topology.work_queue(rq.queue, "normal"),
    )
    # When the worker fetches
    got = await rq.fetch("w1", 5, block=5)
    # Then only the good job is handed out; the bad one went to the DLQ with its reason
    assert [d.id for d in got] == ["ok"]
    assert sum(rq.dead_lettered_by_fetch.values()) == 1
    [dead] = await dead_letters(rabbitmq_server.url, rq.queue)
    assert dead.message_id == "bad"
    assert dict(dead.headers or {})[topology.H_REASON] == "invalid_envelope"


async def test_open_broker_serves_amqp_urls_and_the_probe_reads_backlog_and_in_flight(
    rabbitmq_server: Any, rq_queue: str
) -> None:
    # Given a broker opened from an amqp:// URL naming its prefetch and management port
    url = f"{rabbitmq_server.url}?prefetch=1&management_port={rabbitmq_server.management_port}"
    b = await brokers.open_broker(url, rq_queue, options=base.QueueOptions())
    try:
        assert isinstance(b, rabbitmq_broker.RabbitMQBroker)
        # And three jobs enqueued, one of them fetched and held
        await b.enqueue_many([job(job_id=f"s{i}") for i in range(3)])
        [held] = await b.fetch("w1", 1, block=5)
        # When the probe reads the queue (the management API samples every few seconds)
        stats = await b.fetch_stats()
        for _ in range(40):
            if (stats.backlog, stats.in_flight) == (2, 1):
                break
            await asyncio.sleep(0.5)
            stats = await b.fetch_stats()
        # Then it reports two waiting and one in flight
        assert (stats.queue, stats.backlog, stats.in_flight, stats.dead_letter) == (
            rq_queue,
            2,
            1,
            0,
        )
        assert await b.ack(held)
    finally:
        await b.close()


async def test_a_rabbitmq_that_refuses_the_urls_password_is_broker_rejected_saying_so(
    rabbitmq_server: Any, rq_queue: str
) -> None:
    # Given a broker whose URL has a password RabbitMQ does not accept
    good = f"{rabbitmq_server.url}?management_port={rabbitmq_server.management_port}"
    bad = good.replace(f":{rabbitmq_support.PASSWORD}@", ":not-the-password@", 1)
    assert bad != good
    b = await brokers.open_broker(bad, rq_queue, options=base.QueueOptions())
    try:
        # When it is asked to enqueue (AMQP) and for the queue's statistics (management API)
        # Then both are refusals (answers: nothing applied), saying it is the credentials
        with pytest.raises(errors.BrokerRejected) as enqueued:
            await b.enqueue(job())
        with pytest.raises(errors.BrokerRejected) as stats:
            await b.fetch_stats()
    finally:
        await b.close()
    assert "RabbitMQ refused" in str(enqueued.value)
    for refused in (enqueued.value, stats.value):
        assert "did not accept the user or password of the URL" in str(refused)
        assert "not-the-password" not in str(refused)


async def test_an_enqueue_racing_the_first_connect_waits_for_the_queues_to_be_declared(
    rabbitmq_server: Any, rq: rabbitmq_broker.RabbitMQBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker's first fetch that has connected and is still declaring its queues (slowed
    # down here: on a loaded machine the declares took longer than the producer's next step)
    declaring = asyncio.Event()
    declare = rq._declare_topology

    async def slow_declare(channel: aio_pika.abc.AbstractChannel) -> None:
        declaring.set()
        await asyncio.sleep(0.5)
        await declare(channel)

    monkeypatch.setattr(rq, "_declare_topology", slow_declare)
    waiting = asyncio.create_task(rq.fetch("w1", 1, block=10.0))
    await asyncio.wait_for(declaring.wait(), 10)
    # When the same broker enqueues meanwhile
    [res] = await rq.enqueue_many([job(job_id="early")])
    # Then the enqueue waited for the queues (it was refused as unroutable before) and the
    # waiting fetch gets the job
    assert res.job_id == "early"
    [got] = await asyncio.wait_for(waiting, 15)
    assert got.id == "early"
    assert await rq.ack(got)


async def test_the_probe_counts_every_dead_letter_even_after_the_dlq_is_purged(
    rabbitmq_server: Any, rq_queue: str
) -> None:
    # Given a broker with the management port, and two of its three jobs dead-lettered
    url = f"{rabbitmq_server.url}?management_port={rabbitmq_server.management_port}"
    b = await brokers.open_broker(url, rq_queue, options=base.QueueOptions())
    try:
        await b.enqueue_many([job(job_id=f"d{i}") for i in range(3)])
        got = sorted(await b.fetch("w1", 3, block=5), key=lambda d: d.id)
        assert [d.id for d in got] == ["d0", "d1", "d2"]
        for d in got[:2]:
            failure = base.Failure("RuntimeError", "boom", worker_id="w1")
            assert await b.dead_letter(d, "non_retryable", failure=failure)
        assert await b.ack(got[2])
        # When the DLQ is purged (its depth drops to 0)
        assert await b.purge_dead_letters(everything=True) == 2

        # Then the probe still reports two dead-lettered jobs: a counter the dead-letter alert
        # can take the growth of, not the DLQ's depth (sampled every 500 ms by the test node)
        stats = await b.fetch_stats()
        for _ in range(40):
            if (stats.dead_lettered_total, stats.dead_letter) == (2, 0):
                break
            await asyncio.sleep(0.5)
            stats = await b.fetch_stats()
        assert (stats.dead_lettered_total, stats.dead_letter) == (2, 0)
    finally:
        await b.close()


async def test_a_renewal_through_another_broker_object_keeps_the_delivery(
    rabbitmq_server: Any, rq: rabbitmq_broker.RabbitMQBroker
) -> None:
    # Given a delivery fetched through the job loop's broker
    await rq.enqueue(job(job_id="c1"))
    [held] = await rq.fetch("w1", 1, block=5)
    # When the worker's control thread renews it through its own broker object
    control = await brokers.open_broker(rabbitmq_server.url, rq.queue, socket_timeout=2.0)
    try:
        renewal = await control.renew("w1", [held])
    finally:
        await control.close()
    # Then it is kept (it is lost only when the job loop's connection ends) and still acks
    assert [d.id for d in renewal.kept] == ["c1"] and renewal.lost == ()
    assert await rq.ack(held) is True


async def test_the_dlq_lists_newest_first_shows_history_replays_and_purges_by_id(
    rq: rabbitmq_broker.RabbitMQBroker,
) -> None:
    # Given three jobs dead-lettered in order a, b, c, each after one failure
    await rq.enqueue_many([job(job_id=i) for i in ("a", "b", "c")])
    got = await rq.fetch("w1", 3, block=5)
    assert sorted(d.id for d in got) == ["a", "b", "c"]
    for d in sorted(got, key=lambda d: d.id):
        failure = base.Failure("RuntimeError", f"failed {d.id}", worker_id="w1")
        assert await rq.dead_letter(d, "non_retryable", failure=failure)
        await asyncio.sleep(0.01)
    # When the DLQ is listed
    assert await rq.count_dead_letters() == 3
    listed = await rq.list_dead_letters()
    # Then newest first, each with its reason and failure, and listing took nothing away
    assert [d.job_id for d in listed] == ["c", "b", "a"]
    assert [d.reason for d in listed] == ["non_retryable"] * 3
    shown = await rq.show_dead_letter("b")
    assert shown is not None and [h.message for h in shown.history] == ["failed b"]
    assert shown.task == "t" and shown.attempts == 1 and shown.payload == {"n": 1}
    assert await rq.count_dead_letters() == 3
    # When b is replayed with its attempts reset and a is purged
    assert await rq.replay_dead_letters(job_ids=["b"], reset_attempts=True) == ["b"]
    assert await rq.purge_dead_letters(job_ids=["a"]) == 1
    # Then b runs again as a fresh job and only c is left in the DLQ
    [again] = await rq.fetch("w1", 1, block=5)
    assert (again.id, again.attempts, again.deliveries) == ("b", 0, 1)
    await rq.ack(again)
    assert [d.job_id for d in await rq.list_dead_letters()] == ["c"]
    assert await rq.purge_dead_letters(everything=True) == 1
    assert await rq.count_dead_letters() == 0


async def test_acks_committed_together_never_settle_a_job_still_held_between_them(
    rabbitmq_server: Any, rq_queue: str
) -> None:
    # Given five jobs fetched by one worker, in delivery order on its one consuming channel
    def open_broker() -> rabbitmq_broker.RabbitMQBroker:
        return rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, rq_queue, prefetch=10)

    worker = open_broker()
    await worker.enqueue_many([job(job_id=f"h{i}") for i in range(5)])
    got: list[base.Delivery] = []
    for _ in range(50):
        got += await worker.fetch("w", 5 - len(got), block=2)
        if len(got) == 5:
            break
    assert [d.id for d in got] == ["h0", "h1", "h2", "h3", "h4"]
    # When the two oldest and the fourth are acked in one commit (one ack may cover a run of
    # the oldest deliveries) while the third and the fifth are still held
    assert await asyncio.gather(worker.ack(got[0]), worker.ack(got[1]), worker.ack(got[3])) == [
        True,
        True,
        True,
    ]
    assert worker._connection is not None
    await worker._connection.close()  # the worker dies holding h2 and h4
    # Then exactly the two held jobs come back, each counted as one lost delivery
    other = open_broker()
    try:
        back: list[base.Delivery] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(back) < 3:
            back += await other.fetch("w2", 5, block=1)
            if len(back) == 2:
                # nothing else may follow: an ack lost with the connection would bring more
                back += await other.fetch("w2", 5, block=2)
                break
        assert sorted((d.id, d.lost) for d in back) == [("h2", 1), ("h4", 1)]
    finally:
        await other.close()
        await worker.close()


@pytest.mark.timeout(180)
async def test_workers_sending_their_first_retries_to_a_new_delay_bucket_at_once_lose_no_job(
    rabbitmq_server: Any,
) -> None:
    # A quorum queue refuses publishes for a moment after another client's declare of it
    # returned; a transaction would drop the refused copy and commit its ack (the job gone).
    workers_per_round, rounds = 10, 12
    for round_no in range(rounds):
        # Given a new queue (so its delay buckets are new too) and eight workers, each with
        # its own connection and one job in hand
        queue = f"t{uuid.uuid4().hex[:12]}"
        brokers_ = [
            rabbitmq_broker.RabbitMQBroker(
                rabbitmq_server.url, queue, base.QueueOptions(max_deliveries=5), prefetch=1
            )
            for _ in range(workers_per_round + 1)
        ]
        producer, workers = brokers_[0], brokers_[1:]
        try:
            ids = [f"r{round_no}-{n}" for n in range(workers_per_round)]
            await producer.enqueue_many([job(job_id=i) for i in ids])
            held: list[tuple[rabbitmq_broker.RabbitMQBroker, base.Delivery]] = []
            for worker in workers:
                got: list[base.Delivery] = []
                for _ in range(20):
                    got = await worker.fetch("w", 1, block=1)
                    if got:
                        break
                assert len(got) == 1
                held.append((worker, got[0]))
            # When all of them retry at once into the same new 100 ms delay bucket
            failure = base.Failure("Flaky", "try again")
            retried = await asyncio.gather(
                *(w.retry(d, failure, delay_seconds=0.1) for w, d in held)
            )
            assert retried == [True] * workers_per_round
            # Then every job comes back once, its failed attempt recorded, and is acked
            back: dict[str, int] = {}
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and len(back) < workers_per_round:
                for worker in workers:
                    for d in await worker.fetch("w", 1, block=0.05):
                        back[d.id] = d.attempts
                        assert await worker.ack(d) is True
            assert back == dict.fromkeys(ids, 1), f"round {round_no}"
        finally:
            await asyncio.gather(*(b.close() for b in brokers_))


@pytest.mark.timeout(60)
async def test_a_retry_refused_by_a_channel_close_goes_again_and_the_workers_held_jobs_stay_ackable(
    rabbitmq_server: Any,
    rq: rabbitmq_broker.RabbitMQBroker,
    rq_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A quorum queue whose member is not running yet sometimes refuses a publish by closing the
    # channel (NOT_FOUND "home node ... is down or inaccessible") instead of nacking it (CI,
    # under load). Here the server closes the publishing channel for real, with a NOT_FOUND of
    # its own, and the publish raises that refusal as aiormq does, once.
    # Given a worker holding two jobs
    await rq.enqueue_many([job(job_id="a"), job(job_id="b")])
    held: list[base.Delivery] = []
    for _ in range(20):
        held += await rq.fetch("w", 2 - len(held), block=1)
        if len(held) == 2:
            break
    by_id = {d.id: d for d in held}
    assert sorted(by_id) == ["a", "b"]
    # and the first publish to a delay bucket refused by closing its channel
    refused: list[str] = []
    publish = aio_pika.Exchange.publish

    async def refusing_once(
        exchange: aio_pika.Exchange, message: Any, routing_key: str, **kwargs: Any
    ) -> Any:
        if routing_key.startswith(topology.delay_queue_prefix(rq_queue)) and not refused:
            refused.append(routing_key)
            with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                await exchange.channel.declare_queue(f"missing-{uuid.uuid4().hex}", passive=True)
            assert exchange.channel.is_closed
            raise aiormq.exceptions.ChannelNotFoundEntity(
                f"NOT_FOUND - home node 'rabbit@localhost' of durable queue '{routing_key}' "
                "in vhost '/' is down or inaccessible"
            )
        return await publish(exchange, message, routing_key, **kwargs)

    monkeypatch.setattr(aio_pika.Exchange, "publish", refusing_once)
    # When the worker retries job a into a new 100 ms delay bucket
    assert await rq.retry(by_id["a"], base.Failure("Flaky", "try again"), delay_seconds=0.1)
    # Then the refused copy went again and the other job it holds is still its to ack
    assert len(refused) == 1
    assert await rq.ack(by_id["b"]) is True
    # And job a comes back once, its failed attempt recorded; nothing else comes back and
    # nothing is dead-lettered
    [again] = await rq.fetch("w", 1, block=10)
    assert (again.id, again.attempts) == ("a", 1)
    assert await rq.ack(again) is True
    assert await rq.fetch("w", 1, block=1) == []
    assert await dead_letters(rabbitmq_server.url, rq_queue) == []


@pytest.mark.timeout(60)
async def test_a_retried_job_leaves_delay_buckets_that_apply_no_ttl_and_stays_in_its_work_queue(
    rabbitmq_server: Any, rq_queue: str
) -> None:
    # A new quorum queue applies no x-message-ttl until its creator has written its config, and
    # what another worker publishes to it in that moment must still expire (topology.py).
    # Given a queue whose delay buckets exist with no TTL of their own (25 ms to 400 ms: every
    # bucket a 0.3 s delay can hop through)
    connection = await aio_pika.connect(rabbitmq_server.url)
    try:
        channel = await connection.channel()
        for exponent in range(5):
            bucket = topology.delay_queue(rq_queue, "normal", 25 << exponent)
            arguments = topology.delay_queue_arguments(rq_queue, "normal", 25 << exponent)
            del arguments["x-message-ttl"]
            await channel.declare_queue(bucket, durable=True, arguments=arguments)
    finally:
        await connection.close()
    options = base.QueueOptions(max_deliveries=5)
    worker = rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, rq_queue, options, prefetch=1)
    try:
        await worker.enqueue(job(job_id="b1"))
        [first] = await worker.fetch("w1", 1, block=5)
        # When its run fails, it is retried in 0.3 s, and no worker takes jobs for a while
        retried_at = time.time()
        failure = base.Failure("Flaky", "try again")
        assert await worker.retry(first, failure, delay_seconds=0.3) is True
    finally:
        await worker.close()
    await asyncio.sleep(1.5)
    # Then it left the buckets on its own and waited in its work queue (its copy there does
    # not expire): the next worker gets it once, its failed attempt recorded
    other = rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, rq_queue, options, prefetch=1)
    try:
        [again] = await other.fetch("w2", 1, block=10)
        assert time.time() - retried_at >= 0.3 - topology.BUCKET_BASE_SECONDS
        assert (again.id, again.attempts) == ("b1", 1)
        assert await other.ack(again) is True
        assert await other.fetch("w2", 1, block=1) == []
        assert await dead_letters(rabbitmq_server.url, rq_queue) == []
    finally:
        await other.close()


@pytest.mark.timeout(120)
async def test_producers_enqueueing_their_first_jobs_to_a_new_queue_at_once_all_succeed(
    rabbitmq_server: Any,
) -> None:
    # RabbitMQ nacks a publish to a quorum queue whose member is still starting (another
    # client's declare of it returned first); the enqueue publishes again and succeeds.
    for round_no in range(8):
        # Given a new queue and ten producers, each with its own connection
        queue = f"t{uuid.uuid4().hex[:12]}"
        producers = [
            rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, queue, base.QueueOptions())
            for _ in range(10)
        ]
        try:
            # When each enqueues its first job at the same moment
            ids = [f"p{round_no}-{n}" for n in range(len(producers))]
            results = await asyncio.gather(
                *(p.enqueue(job(job_id=i)) for p, i in zip(producers, ids, strict=True))
            )
            # Then every enqueue returns, and every job is in the queue exactly once
            assert [r.job_id for r in results] == ids
            seen: list[str] = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and len(seen) < len(ids):
                for d in await producers[0].fetch("w", 10, block=0.2):
                    seen.append(d.id)
                    assert await producers[0].ack(d) is True
            assert sorted(seen) == sorted(ids), f"round {round_no}"
        finally:
            await asyncio.gather(*(p.close() for p in producers))


@pytest.mark.timeout(240)
async def test_a_delay_bucket_a_crash_left_without_a_leader_is_routed_around_and_the_job_returns(
    rabbitmq_factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # RabbitMQ 3.10 brings a quorum queue declared within a second of its node's crash back
    # without a leader: publishes to it are held and never confirmed (broker.py,
    # BUCKET_CONFIRM_TIMEOUT_SECONDS). Given the ``low`` 1.6 s delay bucket of a queue declared
    # just before its node was SIGKILLed, the node restarted in place
    server = rabbitmq_factory()
    queue = f"t{uuid.uuid4().hex[:12]}"
    bucket = topology.delay_queue(queue, "low", 1600)
    connection = await aio_pika.connect(server.url)
    channel = await connection.channel()
    await channel.declare_queue(
        bucket, durable=True, arguments=topology.delay_queue_arguments(queue, "low", 1600)
    )
    server.kill()
    await connection.close()
    server.start()
    # (the fault is real: the bucket takes a publish and never confirms it)
    connection = await aio_pika.connect(server.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        with pytest.raises(TimeoutError):
            await channel.default_exchange.publish(
                aio_pika.Message(b"probe"), routing_key=bucket, timeout=3
            )
    finally:
        await connection.close()
    monkeypatch.setattr(rabbitmq_broker, "BUCKET_CONFIRM_TIMEOUT_SECONDS", 1.0)
    options = base.QueueOptions(max_deliveries=5)
    worker = rabbitmq_broker.RabbitMQBroker(server.url, queue, options, prefetch=1)
    try:
        await worker.enqueue(job(job_id="z1", priority="low"))
        [first] = await worker.fetch("w1", 1, block=10)
        # When its run fails and is retried in 2 s (a wait for that bucket)
        failure = base.Failure("Flaky", "try again")
        retried_at = time.time()
        with caplog.at_level(logging.WARNING, logger="workerfleet.brokers.rabbitmq"):
            assert await worker.retry(first, failure, delay_seconds=2.0) is True
        # Then the copy the bucket did not confirm went again, routed around it, in the same
        # call; the job comes back once, not before its delay, its failed attempt recorded
        assert [r.__dict__.get("queue") for r in caplog.records] == [bucket]
        [again] = await worker.fetch("w1", 1, block=10)
        assert time.time() >= retried_at + 2.0 - topology.BUCKET_BASE_SECONDS
        assert (again.id, again.attempts) == ("z1", 1)
        assert await worker.ack(again) is True
        assert await worker.fetch("w1", 1, block=1) == []
    finally:
        await worker.close()

    # And when a copy of a job due in 3 s reaches a worker that never used that bucket
    # (its next hop), that hop is not confirmed in time: it goes again through smaller buckets,
    # and the job is handed out once it is due
    caplog.clear()
    due_at = time.time() + 3.0
    other = rabbitmq_broker.RabbitMQBroker(server.url, queue, options, prefetch=1)
    try:
        assert await other.fetch("w2", 1, block=0.01) == []
        await _publish_copy(server.url, queue, "z2", "low", {topology.H_DUE_AT: repr(due_at)})
        got: list[base.Delivery] = []
        deadline = time.monotonic() + 30
        with caplog.at_level(logging.WARNING, logger="workerfleet.brokers.rabbitmq"):
            while not got and time.monotonic() < deadline:
                got = await other.fetch("w2", 1, block=1)
        assert [d.id for d in got] == ["z2"]
        assert time.time() >= due_at - topology.BUCKET_BASE_SECONDS
        assert [r.__dict__.get("queue") for r in caplog.records] == [bucket]
        assert await other.ack(got[0]) is True
    finally:
        await other.close()

    # And while a publish to that bucket holds a third object's channel (a delayed enqueue),
    # an enqueue needing a bucket not declared yet, whose declaration goes behind it on that
    # channel, is answered in bounded time; made again if it failed, both jobs arrive once
    monkeypatch.setattr(rabbitmq_broker, "DECLARE_TIMEOUT_SECONDS", 1.0)
    third = rabbitmq_broker.RabbitMQBroker(server.url, queue, options, prefetch=1)
    try:
        await third.count_dead_letters()  # connected, its topology declared
        z3 = base.EnqueueRequest(job(job_id="z3", priority="low").envelope, delay_seconds=2.0)
        z4 = base.EnqueueRequest(job(job_id="z4").envelope, delay_seconds=0.5)
        held_up = asyncio.ensure_future(third.enqueue(z3))
        await asyncio.sleep(0.2)
        try:
            await asyncio.wait_for(third.enqueue(z4), 20)
        except errors.BrokerUnavailable:
            await asyncio.wait_for(third.enqueue(z4), 20)
        await asyncio.wait_for(held_up, 20)
        arrived: list[str] = []
        deadline = time.monotonic() + 30
        while len(arrived) < 2 and time.monotonic() < deadline:
            for d in await third.fetch("w3", 1, block=1):
                arrived.append(d.id)
                assert await third.ack(d) is True
        assert sorted(arrived) == ["z3", "z4"]
        assert await third.fetch("w3", 1, block=1) == []
    finally:
        await third.close()
    assert await dead_letters(server.url, queue) == []


async def _publish_copy(
    url: str, queue: str, job_id: str, level: str, headers: dict[str, Any]
) -> None:
    """Put a copy of job ``job_id`` with ``headers`` (its state: due time, earlier deliveries)
    in the ``level`` work queue, as a delay bucket or a worker's retry hands one back."""
    body = envelope.encode_envelope(envelope.build_envelope("t", {"n": 1}, job_id=job_id))
    message = rabbitmq_broker.build_message(body, headers, job_id, expiration_ms=None)
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            message, routing_key=topology.work_queue(queue, level), timeout=10
        )
    finally:
        await connection.close()


def _put_policy(server: Any, name: str, body: dict[str, Any] | None) -> None:
    """Set (or, with None, delete) a policy through the node's management API."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.management_port}/api/policies/%2F/{name}",
        data=None if body is None else json.dumps(body).encode(),
        method="DELETE" if body is None else "PUT",
        headers={"content-type": "application/json"},
    )
    token = base64.b64encode(b"guest:guest").decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10):
        pass


@contextlib.asynccontextmanager
async def _dlq_refusing(server: Any, queue: str) -> AsyncIterator[None]:
    """The queue's DLQ over an operator's cap that refuses publishes while the block runs (see
    :func:`_refusing`; taking its letter "d0" off gives it room)."""
    async with _refusing(server, topology.dead_queue(queue)):
        yield


@contextlib.asynccontextmanager
async def _refusing(server: Any, name: str) -> AsyncIterator[None]:
    """The RabbitMQ queue ``name`` over a cap that refuses publishes (nacks them) while the block
    runs: one message ("d0") in it and a policy of max-length 0, reject-publish (a quorum queue
    refuses while it holds more than its max-length, so taking "d0" off gives it room)."""
    connection = await aio_pika.connect(server.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"earlier", message_id="d0"), routing_key=name
        )
    finally:
        await connection.close()
    policy = f"refuse-{name}"
    _put_policy(
        server,
        policy,
        {
            "pattern": f"^{re.escape(name)}$",
            "definition": {"max-length": 0, "overflow": "reject-publish"},
            "apply-to": "queues",
        },
    )
    try:
        await asyncio.sleep(1.0)  # policies reach their queues asynchronously
        yield
    finally:
        _put_policy(server, policy, None)


@pytest.mark.timeout(120)
async def test_a_dead_letter_the_dlq_refused_keeps_its_delivery_for_the_next_try(
    rabbitmq_server: Any, rq: rabbitmq_broker.RabbitMQBroker, rq_queue: str
) -> None:
    # Given a job in hand, and its DLQ refusing publishes (over an operator's cap)
    await rq.enqueue(job(job_id="d1"))
    [delivery] = await rq.fetch("w", 1, block=10)
    async with _dlq_refusing(rabbitmq_server, rq_queue):
        # When the worker dead-letters it: RabbitMQ refuses the DLQ copy
        with pytest.raises(errors.BrokerRejected):
            await rq.dead_letter(delivery, "poison")
        # Then nothing was acked: the delivery is still the worker's, and once the DLQ has
        # room (the earlier letter taken off it), the next try lands
        assert [m.message_id for m in await dead_letters(rabbitmq_server.url, rq_queue)] == ["d0"]
        assert await rq.dead_letter(delivery, "poison") is True
        letters = await dead_letters(rabbitmq_server.url, rq_queue)
        assert [m.message_id for m in letters] == ["d1"]
    assert await rq.fetch("w", 1, block=1) == []


@pytest.mark.timeout(120)
async def test_a_poison_copy_the_dlq_refused_at_fetch_waits_for_the_next_fetch(
    rabbitmq_server: Any, rq: rabbitmq_broker.RabbitMQBroker, rq_queue: str
) -> None:
    # Given the DLQ refusing publishes, and a copy of a job whose 3 earlier deliveries were
    # all lost (max_deliveries is 3: the fetch that finds it dead-letters it)
    assert await rq.fetch("w", 1, block=0.01) == []  # consuming, so the copy arrives at once
    async with _dlq_refusing(rabbitmq_server, rq_queue):
        await _publish_copy(
            rabbitmq_server.url,
            rq_queue,
            "p1",
            "normal",
            {topology.H_DELIVERIES: 3, topology.H_LOST: 3},
        )
        # When a fetch finds it: its dead-letter copy is refused
        with pytest.raises(errors.BrokerRejected):
            for _ in range(20):
                assert await rq.fetch("w", 1, block=0.5) == []
        # Then the copy stays with the fetcher, and once the DLQ has room the next fetch
        # dead-letters it (nothing is handed out)
        assert [m.message_id for m in await dead_letters(rabbitmq_server.url, rq_queue)] == ["d0"]
        assert await rq.fetch("w", 1, block=0.5) == []
        letters = await dead_letters(rabbitmq_server.url, rq_queue)
        assert [(m.message_id, m.headers.get(topology.H_REASON)) for m in letters] == [
            ("p1", "max_deliveries")
        ]


@pytest.fixture
async def topic_publisher(
    rabbitmq_server: Any, rq_queue: str
) -> AsyncIterator[rabbitmq_broker.RabbitMQBroker]:
    """A broker that subscribes and publishes to topics (closed after the test)."""
    publisher = rabbitmq_broker.RabbitMQBroker(
        rabbitmq_server.url, rq_queue, management_port=rabbitmq_server.management_port
    )
    try:
        yield publisher
    finally:
        await publisher.close()


async def subscribed_queue(
    publisher: rabbitmq_broker.RabbitMQBroker, topic: str, group: str
) -> str:
    """Subscribe ``group`` to ``topic``; the RabbitMQ queue its events go to."""
    return topology.work_queue(await publisher.subscribe(topic, group), topology.EVENT_LEVEL)


@pytest.mark.timeout(120)
async def test_an_event_a_new_subscription_refuses_for_a_moment_still_reaches_every_subscription(
    rabbitmq_server: Any, topic_publisher: rabbitmq_broker.RabbitMQBroker
) -> None:
    # A new subscription's quorum queue nacks publishes for a moment after its creation, and
    # RabbitMQ nacks the whole fan-out while the older subscriptions store it. Here the new
    # subscription's queue refuses through a cap (a policy) until the test gives it room: a
    # nack as RabbitMQ sends it, ended at a moment the test picks.
    # Given a topic with an older subscription and a new one that refuses publishes
    topic = f"t{uuid.uuid4().hex[:12]}"
    old = await subscribed_queue(topic_publisher, topic, "old")
    new = await subscribed_queue(topic_publisher, topic, "new")
    async with _refusing(rabbitmq_server, new):
        # When an event is published, and the new subscription gets room only after the older
        # one stored the event (RabbitMQ nacked that try)
        event = base.PublishRequest(topic, f"e-{uuid.uuid4().hex}", {"n": 1})
        publishing = asyncio.ensure_future(topic_publisher.publish(event))
        for _ in range(500):
            if await ready_in(rabbitmq_server.url, old) > 0:
                break
            await asyncio.sleep(0.02)
        held = await messages_in(rabbitmq_server.url, new, limit=1)
        # Then the publish succeeds, naming both subscriptions
        result = await asyncio.wait_for(publishing, 30)
    assert [m.message_id for m in held] == ["d0"]
    assert result.created == ("new", "old")
    # And the new subscription holds the event once; the older one holds it once per try
    # RabbitMQ nacked, every copy under the event's id (the at-least-once duplicates)
    assert [m.message_id for m in await messages_in(rabbitmq_server.url, new)] == [event.event_id]
    copies = [m.message_id for m in await messages_in(rabbitmq_server.url, old)]
    assert copies and set(copies) == {event.event_id}


@pytest.mark.timeout(120)
async def test_an_event_a_subscription_keeps_refusing_fails_as_maybe_stored_not_as_refused(
    rabbitmq_server: Any,
    topic_publisher: rabbitmq_broker.RabbitMQBroker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a topic with two subscriptions, one refusing publishes for good (a cap), and the
    # publish's nack waits shortened
    monkeypatch.setattr(rabbitmq_broker, "NACK_RETRY_DELAYS_SECONDS", (0.01, 0.01))
    topic = f"t{uuid.uuid4().hex[:12]}"
    ok = await subscribed_queue(topic_publisher, topic, "ok")
    full = await subscribed_queue(topic_publisher, topic, "full")
    async with _refusing(rabbitmq_server, full):
        # When an event is published
        event = base.PublishRequest(topic, f"e-{uuid.uuid4().hex}", {"n": 1})
        with pytest.raises(errors.BrokerError) as raised:
            await topic_publisher.publish(event)
        # Then it fails as "may have been stored" (BrokerUnavailable), never as "nothing
        # applied" (BrokerRejected): the other subscription holds it, once per try
        assert type(raised.value) is errors.BrokerUnavailable
        assert event.event_id in str(raised.value)
        copies = [m.message_id for m in await messages_in(rabbitmq_server.url, ok)]
        assert copies == [event.event_id] * 3
        assert [m.message_id for m in await messages_in(rabbitmq_server.url, full)] == ["d0"]


@pytest.mark.timeout(240)
async def test_a_work_queue_a_crash_left_without_a_leader_fails_the_fetch_by_name_until_deleted(
    rabbitmq_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a queue whose ``normal`` work queue was declared just before its node was
    # SIGKILLed (RabbitMQ 3.10 brings it back without a leader: basic.consume on it never gets
    # an answer), the node restarted in place, and a job waiting at ``high``
    server = rabbitmq_factory()
    queue = f"t{uuid.uuid4().hex[:12]}"
    normal = topology.work_queue(queue, "normal")
    connection = await aio_pika.connect(server.url)
    channel = await connection.channel()
    await channel.declare_queue(
        normal, durable=True, arguments=topology.work_queue_arguments(queue, 5)
    )
    server.kill()
    await connection.close()
    server.start()
    monkeypatch.setattr(rabbitmq_broker, "CONSUME_TIMEOUT_SECONDS", 2.0)
    options = base.QueueOptions(max_deliveries=5)
    worker = rabbitmq_broker.RabbitMQBroker(server.url, queue, options, prefetch=1)
    try:
        await worker.enqueue(job(job_id="h1", priority="high"))
        # When a worker fetches: the fetch fails, naming the queue, every time it is tried
        for _ in range(2):
            with pytest.raises(errors.BrokerUnavailable, match=f"basic.consume on {normal}"):
                await worker.fetch("w", 1, block=1)
        # Then once an operator deleted that queue, the next fetch declares it anew and serves
        connection = await aio_pika.connect(server.url)
        try:
            channel = await connection.channel()
            await asyncio.wait_for(channel.queue_delete(normal), 30)
        finally:
            await connection.close()
        [got] = await worker.fetch("w", 1, block=10)
        assert got.id == "h1"
        assert await worker.ack(got) is True
    finally:
        await worker.close()
