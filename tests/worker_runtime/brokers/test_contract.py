"""The broker contract: what every broker promises, checked on each one through its public API.

Each test takes ``contract`` (tests/worker_runtime/brokers/conftest.py), so it runs on the
memory broker (fake clock), a real redis-server and a real 3-master Redis Cluster; RabbitMQ and
SQS join by adding a fixture param. A test that relies on an optional promise carries
``@pytest.mark.needs(...)`` and is skipped, with the reason, on a broker that does not declare
it. Nothing here reads a broker's storage: assertions are about what was enqueued, delivered,
settled and dead-lettered, as the protocols report it (Redis-only checks live in
test_redis_broker.py).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from tests.support import brokers as support
from tests.support.brokers import failure, request
from worker_runtime.brokers import base

LEASE = 0.4  # short leases, so a real server's expiry is waited for in well under a second


async def test_every_broker_implements_the_three_protocols(contract: support.Contract) -> None:
    # Given a broker
    broker = await contract.open()
    # Then it is a Broker, a QueueProbe and a DeadLetters at once, with declared capabilities
    assert support.check_protocols(broker) == []
    assert isinstance(broker.capabilities, base.Capabilities)
    assert broker.queue == contract.queue


async def test_an_enqueued_job_is_delivered_once_and_gone_after_its_ack(
    contract: support.Contract,
) -> None:
    # Given one job enqueued
    broker = await contract.open()
    [res] = await broker.enqueue_many([request(payload={"n": 1})])
    # When a worker fetches and acknowledges it
    [delivery] = await broker.fetch("w1", 10)
    acked = await broker.ack(delivery)
    # Then it was delivered once, with its payload, and nothing is left to deliver
    assert res.created
    assert (delivery.id, delivery.envelope.payload) == (res.job_id, {"n": 1})
    assert (delivery.attempts, delivery.deliveries) == (0, 1)
    assert delivery.lease_deadline > contract.now()
    assert acked is True
    assert await broker.fetch("w1", 10) == []
    if broker.capabilities.exact_stats:  # else sampled: test_stats_count_... is skipped
        stats = await broker.fetch_stats()
        assert (stats.backlog, stats.in_flight, stats.completed_total) == (0, 0, 1)


async def test_fetch_hands_out_at_most_count_jobs_and_each_to_one_worker(
    contract: support.Contract,
) -> None:
    # Given five jobs
    broker = await contract.open()
    ids = {r.job_id for r in await broker.enqueue_many([request() for _ in range(5)])}
    # When two workers fetch three each
    first = await broker.fetch("w1", 3)
    second = await broker.fetch("w2", 3)
    # Then every job went to exactly one of them
    assert len(first) == 3 and len(second) == 2
    assert {d.id for d in first} | {d.id for d in second} == ids
    assert not {d.id for d in first} & {d.id for d in second}


async def test_fetch_with_a_count_of_zero_returns_nothing(contract: support.Contract) -> None:
    broker = await contract.open()
    await broker.enqueue(request())
    assert await broker.fetch("w1", 0) == []
    assert len(await broker.fetch("w1", 1)) == 1


@pytest.mark.needs("fenced_receipts")
async def test_a_settled_delivery_cannot_be_settled_again(contract: support.Contract) -> None:
    # Given a job that was acknowledged
    broker = await contract.open()
    await broker.enqueue(request())
    [delivery] = await broker.fetch("w1", 1)
    assert await broker.ack(delivery)
    # When the same delivery is settled again, every way
    again = [
        await broker.ack(delivery),
        await broker.retry(delivery, failure(), delay_seconds=0.0),
        await broker.dead_letter(delivery, "non_retryable"),
        await broker.release(delivery),
    ]
    # Then each is refused and nothing came back
    assert again == [False, False, False, False]
    assert await broker.fetch("w1", 1) == []
    if broker.capabilities.exact_stats:
        assert (await broker.fetch_stats()).completed_total == 1


@pytest.mark.needs("priorities")
async def test_fetch_serves_high_before_normal_before_low(contract: support.Contract) -> None:
    # Given jobs enqueued low first, high last
    broker = await contract.open()
    low, normal, high = [
        (await broker.enqueue(request(priority=p))).job_id for p in ("low", "normal", "high")
    ]
    # When they are fetched one at a time
    order = [(await broker.fetch("w1", 1))[0].id for _ in range(3)]
    # Then the most urgent came first
    assert order == [high, normal, low]


async def test_a_delayed_job_is_not_delivered_before_its_delay(contract: support.Contract) -> None:
    # Given a job delayed by 0.5 s
    broker = await contract.open()
    [res] = await broker.enqueue_many([request(delay=0.5)])
    # When a worker fetches at once, then after the delay
    early = await broker.fetch("w1", 1)
    await contract.advance(0.6)
    late = await broker.fetch("w1", 1)
    # Then it came only the second time
    assert early == []
    assert [d.id for d in late] == [res.job_id]


async def test_a_retry_spends_an_attempt_and_delivers_the_job_again_after_its_delay(
    contract: support.Contract,
) -> None:
    # Given a delivered job whose handler failed
    broker = await contract.open()
    await broker.enqueue(request())
    [first] = await broker.fetch("w1", 1)
    # When it is retried with a 0.5 s delay
    assert await broker.retry(first, failure(), delay_seconds=0.5)
    early = await broker.fetch("w1", 1)
    await contract.advance(0.6)
    [second] = await broker.fetch("w1", 1)
    # Then it came back after the delay, one attempt spent, under a new receipt
    assert early == []
    assert (second.id, second.attempts, second.deliveries) == (first.id, 1, 2)
    assert second.receipt != first.receipt
    if broker.capabilities.exact_stats:
        stats = await broker.fetch_stats()
        assert (stats.failed_total, stats.retried_total) == (1, 1)


@pytest.mark.needs("previous_delay")
async def test_the_delay_of_a_jobs_last_retry_can_be_read_back(contract: support.Contract) -> None:
    broker = await contract.open()
    await broker.enqueue(request())
    [delivery] = await broker.fetch("w1", 1)
    assert await broker.fetch_previous_delay(delivery.id) is None
    await broker.retry(delivery, failure(), delay_seconds=0.25)
    assert await broker.fetch_previous_delay(delivery.id) == 0.25


async def test_a_retry_with_a_delay_that_never_comes_due_is_refused_before_sending(
    contract: support.Contract,
) -> None:
    broker = await contract.open()
    await broker.enqueue(request())
    [delivery] = await broker.fetch("w1", 1)
    with pytest.raises(ValueError):
        await broker.retry(delivery, failure(), delay_seconds=math.inf)
    # and the delivery is still current: it can be acknowledged
    assert await broker.ack(delivery)


async def test_release_puts_the_job_back_without_spending_an_attempt(
    contract: support.Contract,
) -> None:
    # Given a delivered job
    broker = await contract.open()
    await broker.enqueue(request())
    [first] = await broker.fetch("w1", 1)
    # When the worker releases it (a drain) and another worker fetches
    assert await broker.release(first)
    [second] = await broker.fetch("w2", 1)
    # Then the job is the same, with no attempt spent and nothing lost: the released delivery
    # counts as a delivery, never towards the poison limit
    assert (second.id, second.attempts, second.deliveries, second.lost) == (first.id, 0, 2, 0)


@pytest.mark.needs("dead_letter_by_id", "failure_history")
async def test_a_dead_letter_keeps_the_jobs_whole_failure_history(
    contract: support.Contract,
) -> None:
    # Given a job that failed twice (retried once, then dead-lettered)
    broker = await contract.open()
    [res] = await broker.enqueue_many([request("send", {"to": "a"})])
    [d1] = await broker.fetch("w1", 1)
    await broker.retry(d1, failure("first"), delay_seconds=0.0)
    [d2] = await broker.fetch("w1", 1)
    # When the second failure dead-letters it
    assert await broker.dead_letter(d2, "max_attempts", failure=failure("second"))
    # Then its dead letter shows the payload, the reason and both failures in order
    letter = await broker.show_dead_letter(res.job_id)
    assert letter is not None
    assert (letter.task, letter.reason, letter.payload) == ("send", "max_attempts", {"to": "a"})
    assert [h.message for h in letter.history] == ["first", "second"]
    assert letter.attempts == 2
    assert await broker.count_dead_letters() == 1
    assert [d.job_id for d in await broker.list_dead_letters()] == [res.job_id]
    assert await broker.fetch("w1", 1) == []


@pytest.mark.needs("dead_letter_by_id")
async def test_a_replayed_dead_letter_is_delivered_again(contract: support.Contract) -> None:
    # Given a dead-lettered job
    broker = await contract.open()
    [res] = await broker.enqueue_many([request()])
    [delivery] = await broker.fetch("w1", 1)
    await broker.dead_letter(delivery, "non_retryable", failure=failure())
    # When it is replayed with its attempts reset
    replayed = await broker.replay_dead_letters(job_ids=[res.job_id], reset_attempts=True)
    [again] = await broker.fetch("w1", 1)
    # Then it left the DLQ and runs again with a full set of attempts
    assert replayed == [res.job_id]
    assert (again.id, again.attempts) == (res.job_id, 0)
    assert await broker.count_dead_letters() == 0


@pytest.mark.needs("dead_letter_by_id")
async def test_purge_deletes_the_dead_letters_it_names_and_only_those(
    contract: support.Contract,
) -> None:
    # Given three dead letters
    broker = await contract.open()
    ids = [r.job_id for r in await broker.enqueue_many([request() for _ in range(3)])]
    for d in await broker.fetch("w1", 3):
        await broker.dead_letter(d, "non_retryable")
    # When one is purged by id, then the rest all at once
    one = await broker.purge_dead_letters(job_ids=[ids[0]])
    left = sorted(d.job_id for d in await broker.list_dead_letters())
    rest = await broker.purge_dead_letters(everything=True)
    # Then exactly those went
    assert (one, left, rest) == (1, sorted(ids[1:]), 2)
    assert await broker.count_dead_letters() == 0
    with pytest.raises(ValueError):
        await broker.purge_dead_letters()


@pytest.mark.needs("dead_letter_by_id")
async def test_dead_letters_are_listed_newest_first_a_page_at_a_time(
    contract: support.Contract,
) -> None:
    # Given three jobs dead-lettered one after the other
    broker = await contract.open()
    order = []
    for _ in range(3):
        [res] = await broker.enqueue_many([request()])
        [d] = await broker.fetch("w1", 1)
        await broker.dead_letter(d, "non_retryable")
        order.append(res.job_id)
        await contract.advance(0.01)
    # When they are listed two per page
    first = await broker.list_dead_letters(offset=0, limit=2)
    second = await broker.list_dead_letters(offset=2, limit=2)
    # Then the newest comes first and the pages do not overlap
    assert [d.job_id for d in first + second] == order[::-1]


@pytest.mark.needs("dead_letter_by_id")
async def test_purge_by_age_deletes_only_the_dead_letters_older_than_it_says(
    contract: support.Contract,
) -> None:
    # Given one dead letter from half a second ago and one from now
    broker = await contract.open()
    ids = [r.job_id for r in await broker.enqueue_many([request(), request()])]
    old, new = await broker.fetch("w1", 2)
    await broker.dead_letter(old, "non_retryable")
    await contract.advance(0.5)
    await broker.dead_letter(new, "non_retryable")
    # When dead letters older than 0.3 s are purged
    purged = await broker.purge_dead_letters(older_than_seconds=0.3)
    # Then only the old one went
    assert purged == 1
    assert [d.job_id for d in await broker.list_dead_letters()] == [new.id]
    assert set(ids) == {old.id, new.id}


@pytest.mark.needs("lease_expiry", "fenced_receipts")
async def test_an_expired_lease_goes_to_another_worker_and_fences_the_first(
    contract: support.Contract,
) -> None:
    # Given a job leased to w1, which stops renewing
    broker = await contract.open(lease_seconds=LEASE)
    await broker.enqueue(request())
    [first] = await broker.fetch("w1", 1)
    # When its lease expires and w2 fetches
    await contract.advance(LEASE + 0.2)
    [second] = await broker.fetch("w2", 1)
    # Then w2 got the same job as a new delivery (one lost), and w1's late ack changes nothing
    assert (second.id, second.deliveries, second.lost) == (first.id, 2, 1)
    assert await broker.ack(first) is False
    assert await broker.ack(second) is True


@pytest.mark.needs("lease_expiry")
async def test_a_renewed_lease_outlives_its_first_deadline(contract: support.Contract) -> None:
    # Given a job leased to w1
    broker = await contract.open(lease_seconds=LEASE)
    await broker.enqueue(request())
    [delivery] = await broker.fetch("w1", 1)
    # When w1 renews it halfway, twice, past its first deadline
    renewals = []
    for _ in range(2):
        await contract.advance(LEASE * 0.6)
        renewals.append(await broker.renew("w1", [delivery]))
    stolen = await broker.fetch("w2", 1)
    # Then it stayed w1's: renewed each time, never handed to w2, still acknowledgeable
    assert [(r.kept, r.lost) for r in renewals] == [((delivery,), ())] * 2
    assert stolen == []
    assert await broker.ack(delivery)


@pytest.mark.needs("lease_expiry", "fenced_receipts")
async def test_renew_reports_a_delivery_that_went_to_someone_else_as_lost(
    contract: support.Contract,
) -> None:
    broker = await contract.open(lease_seconds=LEASE)
    await broker.enqueue(request())
    [first] = await broker.fetch("w1", 1)
    await contract.advance(LEASE + 0.2)
    assert len(await broker.fetch("w2", 1)) == 1
    result = await broker.renew("w1", [first])
    assert (result.kept, result.lost) == ((), (first,))


@pytest.mark.needs("lease_expiry", "dead_letter_by_id")
async def test_a_job_lost_max_deliveries_times_is_dead_lettered_as_poison(
    contract: support.Contract,
) -> None:
    # Given a queue allowing two deliveries and a job whose workers all die
    broker = await contract.open(lease_seconds=LEASE, max_deliveries=2)
    [res] = await broker.enqueue_many([request()])
    assert len(await broker.fetch("w1", 1)) == 1
    await contract.advance(LEASE + 0.2)
    assert len(await broker.fetch("w2", 1)) == 1
    # When the second lease expires too and a third worker fetches
    await contract.advance(LEASE + 0.2)
    third = await broker.fetch("w3", 1)
    # Then nobody gets it again: it is in the DLQ as max_deliveries, counted by the fetch
    assert third == []
    letter = await broker.show_dead_letter(res.job_id)
    assert letter is not None and letter.reason == base.DeadLetterReason.MAX_DELIVERIES
    assert broker.dead_lettered_by_fetch[base.DeadLetterReason.MAX_DELIVERIES] == 1


async def _die_holding(contract: support.Contract, worker: Any) -> None:
    """The worker holding a delivery dies: its connection ends (on RabbitMQ the only way a
    delivery is lost: no lease runs out there) and its lease runs out (everywhere else)."""
    await worker.close()
    await contract.advance(LEASE + 0.2)


@pytest.mark.needs("dead_letter_by_id")
async def test_retries_never_count_towards_the_poison_limit_only_lost_deliveries_do(
    contract: support.Contract,
) -> None:
    # Given a queue allowing two lost deliveries, and a job whose handler failed three times,
    # each failure retried (more retries than max_deliveries, no delivery lost)
    options = {"lease_seconds": LEASE, "max_deliveries": 2}
    broker = await contract.open(**options)
    [res] = await broker.enqueue_many([request()])
    runner = await contract.open(**options)
    seen = []
    for _ in range(3):
        [delivery] = await runner.fetch("w1", 1, block=5.0)
        seen.append((delivery.attempts, delivery.deliveries, delivery.lost))
        assert await runner.retry(delivery, failure(), delay_seconds=0.0)
    await runner.close()  # it fetches no more (RabbitMQ: its consumer would take the job)
    # When the workers running it then die holding it, twice
    for worker_id in ("w2", "w3"):
        worker = await contract.open(**options)
        [delivery] = await worker.fetch(worker_id, 1, block=5.0)
        seen.append((delivery.attempts, delivery.deliveries, delivery.lost))
        await _die_holding(contract, worker)
    last = await contract.open(**options)
    after = await last.fetch("w4", 1, block=1.0)
    # Then every retry was delivered again (no poison after 3 retries), the first loss was
    # delivered again too, and only the second loss made it poison: dead-lettered by the fetch
    # as max_deliveries with its 3 attempts, never handed out again
    assert seen == [(0, 1, 0), (1, 2, 0), (2, 3, 0), (3, 4, 0), (3, 5, 1)]
    assert after == []
    letter = await broker.show_dead_letter(res.job_id)
    assert letter is not None
    assert (letter.reason, letter.attempts) == (base.DeadLetterReason.MAX_DELIVERIES, 3)
    assert last.dead_lettered_by_fetch[base.DeadLetterReason.MAX_DELIVERIES] == 1


@pytest.mark.needs("lease_expiry")
async def test_a_worker_is_never_handed_a_second_delivery_of_a_job_it_holds(
    contract: support.Contract,
) -> None:
    # Given a job leased to w1 whose lease expired while w1 still runs it
    broker = await contract.open(lease_seconds=LEASE)
    await broker.enqueue(request())
    [delivery] = await broker.fetch("w1", 1)
    await contract.advance(LEASE + 0.2)
    # When w1 fetches again, saying it holds that delivery
    again = await broker.fetch("w1", 1, holding={(delivery.id, delivery.receipt)})
    # Then it gets nothing new and its delivery is still current
    assert again == []
    assert await broker.ack(delivery)


async def test_ack_and_fetch_acknowledges_then_fetches(contract: support.Contract) -> None:
    # Given two jobs, one of them delivered
    broker = await contract.open()
    await broker.enqueue_many([request(), request()])
    [first] = await broker.fetch("w1", 1)
    # When the worker acks it and asks for more in one call
    flags, more = await broker.ack_and_fetch([first], "w1", 5)
    # Then the ack counted and the other job came
    assert flags == [True]
    assert len(more) == 1 and more[0].id != first.id
    if broker.capabilities.exact_stats:
        assert (await broker.fetch_stats()).completed_total == 1


async def test_a_blocking_fetch_ends_at_once_when_woken(contract: support.Contract) -> None:
    # Given an empty queue and a fetch waiting up to 30 s
    broker = await contract.open()
    wake = asyncio.Event()
    waiting = asyncio.create_task(broker.fetch("w1", 1, block=30.0, wake=wake))
    await asyncio.sleep(0.1)
    # When it is woken
    wake.set()
    # Then it returns nothing, long before its block ran out
    assert await asyncio.wait_for(waiting, timeout=5.0) == []


async def test_a_blocking_fetch_returns_a_job_enqueued_while_it_waits(
    contract: support.Contract,
) -> None:
    broker = await contract.open()
    waiting = asyncio.create_task(broker.fetch("w1", 1, block=10.0))
    await asyncio.sleep(0.1)
    [res] = await broker.enqueue_many([request()])
    got = await asyncio.wait_for(waiting, timeout=5.0)
    assert [d.id for d in got] == [res.job_id]


@pytest.mark.needs("enqueue_dedup")
async def test_a_resent_enqueue_of_the_same_job_is_a_no_op_even_after_it_ran(
    contract: support.Contract,
) -> None:
    # Given a job that was enqueued, ran and was acknowledged
    broker = await contract.open()
    req = request()
    assert (await broker.enqueue(req)).created
    [delivery] = await broker.fetch("w1", 1)
    await broker.ack(delivery)
    # When the same enqueue is sent again (a client re-send after a lost reply)
    again = await broker.enqueue(req)
    # Then it is not created again and nothing is delivered
    assert (again.job_id, again.created) == (req.envelope.id, False)
    assert await broker.fetch("w1", 1) == []


@pytest.mark.needs("enqueue_dedup")
async def test_an_idempotency_key_makes_a_second_job_resolve_to_the_first(
    contract: support.Contract,
) -> None:
    broker = await contract.open()
    first = await broker.enqueue(request(idempotency_key="order-7"))
    second = await broker.enqueue(request(idempotency_key="order-7"))
    assert (second.job_id, second.created) == (first.job_id, False)
    assert len(await broker.fetch("w1", 5)) == 1


@pytest.mark.needs("atomic_done_marker")
async def test_an_ack_with_a_done_key_marks_it_done(contract: support.Contract) -> None:
    broker = await contract.open()
    await broker.enqueue(request())
    [delivery] = await broker.fetch("w1", 1)
    assert not await broker.fetch_is_done("charge-1")
    assert await broker.ack(delivery, done_key="charge-1", done_ttl_seconds=60.0)
    assert await broker.fetch_is_done("charge-1")


@pytest.mark.needs("rate_limit")
async def test_the_rate_limit_caps_how_many_jobs_start(contract: support.Contract) -> None:
    # Given five jobs and a limit of two starts per minute
    broker = await contract.open(rate_limit=base.RateLimit(jobs=2, per_seconds=60.0))
    await broker.enqueue_many([request() for _ in range(5)])
    # When a worker asks for all of them, twice
    first = await broker.fetch("w1", 5)
    second = await broker.fetch("w1", 5)
    # Then only two started
    assert (len(first), len(second)) == (2, 0)


@pytest.mark.needs("recover_after_lost_reply")
async def test_recover_returns_the_deliveries_a_worker_does_not_hold(
    contract: support.Contract,
) -> None:
    # Given two jobs fetched by w1, of which it only received one (the reply was lost)
    broker = await contract.open()
    await broker.enqueue_many([request(), request()])
    kept, lost = await broker.fetch("w1", 2)
    # When w1 recovers, saying which one it holds
    recovered = await broker.recover("w1", [(kept.id, kept.receipt)])
    # Then it gets the other one, same receipt, and can settle it
    assert [(d.id, d.receipt) for d in recovered] == [(lost.id, lost.receipt)]
    assert await broker.ack(recovered[0])


@pytest.mark.needs("exact_stats")
async def test_stats_count_backlog_delayed_in_flight_and_dead_letters(
    contract: support.Contract,
) -> None:
    # Given two ready jobs, one delayed far ahead, one running and one dead-lettered
    broker = await contract.open()
    await broker.enqueue_many([request(), request()])
    [running, doomed] = await broker.fetch("w1", 2)
    await broker.dead_letter(doomed, "non_retryable")
    await broker.enqueue_many([request(), request(), request(delay=3600.0)])
    # When the queue's stats are read
    stats = await broker.fetch_stats()
    # Then each job is counted where it is
    assert stats.queue == contract.queue
    assert (stats.backlog, stats.future_delayed, stats.in_flight, stats.dead_letter) == (2, 1, 1, 1)
    assert (stats.enqueued_total, stats.dead_lettered_total) == (5, 1)
    # And nothing was cancelled: 0 where the broker can cancel, unknown (None) where it cannot
    assert stats.cancelled_total == (0 if broker.capabilities.cancel_by_id else None)
    assert running.id not in {d.job_id for d in await broker.list_dead_letters()}


@pytest.mark.needs("heartbeats")
async def test_a_heartbeat_shows_the_worker_until_it_deregisters(
    contract: support.Contract,
) -> None:
    broker = await contract.open()
    await broker.renew("w1", [], heartbeat=support.beat("w1", ttl=30.0))
    seen = [b.worker_id for b in (await broker.fetch_stats()).workers]
    await broker.deregister("w1")
    after = [b.worker_id for b in (await broker.fetch_stats()).workers]
    assert (seen, after) == (["w1"], [])


async def test_a_job_settled_after_close_was_sent_before_close_returned(
    contract: support.Contract,
) -> None:
    # Given acks issued concurrently (a broker may batch them)
    broker = await contract.open()
    await broker.enqueue_many([request() for _ in range(3)])
    deliveries = await broker.fetch("w1", 3)
    acks = [asyncio.ensure_future(broker.ack(d)) for d in deliveries]
    await asyncio.sleep(0)  # each ack has been handed to the broker
    # When the broker is closed
    await broker.close()
    # Then every ack had its answer, and a fresh broker sees them applied
    assert [a.result() for a in acks] == [True, True, True]
    reader = await contract.open()
    if broker.capabilities.exact_stats:
        assert (await reader.fetch_stats()).completed_total == 3
    else:  # no exact totals: the acked jobs must at least never come back
        assert await reader.fetch("w2", 3, block=1.0) == []


# -- cancel by id (Capabilities.cancel_by_id) ---------------------------------------------------

CANCELLED = base.CancelOutcome.CANCELLED


@pytest.mark.needs("cancel_by_id")
async def test_a_waiting_job_is_cancelled_and_never_fetched(contract: support.Contract) -> None:
    # Given two waiting jobs of different priorities
    broker = await contract.open()
    [doomed] = await broker.enqueue_many([request(priority="high")])
    [kept] = await broker.enqueue_many([request(priority="low")])
    # When the first is cancelled
    answer = await broker.cancel_jobs([doomed.job_id])
    # Then it is cancelled, the backlog counts only the other, and only the other is fetched
    assert answer == [CANCELLED]
    if broker.capabilities.exact_stats:
        assert (await broker.fetch_stats()).backlog == 1
    assert [d.id for d in await broker.fetch("w1", 10)] == [kept.job_id]
    assert await broker.fetch("w1", 10) == []


@pytest.mark.needs("cancel_by_id")
async def test_a_scheduled_job_is_cancelled_and_never_fetched(contract: support.Contract) -> None:
    # Given a job scheduled 0.3 s ahead
    broker = await contract.open()
    [res] = await broker.enqueue_many([request(delay=0.3)])
    # When it is cancelled, and its time comes
    answer = await broker.cancel_jobs([res.job_id])
    await contract.advance(0.4)
    # Then it was cancelled and is never fetched
    assert answer == [CANCELLED]
    assert await broker.fetch("w1", 10) == []
    if broker.capabilities.exact_stats:
        stats = await broker.fetch_stats()
        assert (stats.backlog, stats.due_delayed, stats.future_delayed) == (0, 0, 0)


@pytest.mark.needs("cancel_by_id")
async def test_a_job_waiting_out_a_retry_backoff_is_cancelled_and_never_fetched(
    contract: support.Contract,
) -> None:
    # Given a job whose first run failed and that waits 0.3 s for its retry
    broker = await contract.open()
    await broker.enqueue(request())
    [delivery] = await broker.fetch("w1", 1)
    assert await broker.retry(delivery, failure(), delay_seconds=0.3)
    # When it is cancelled, and its retry comes due
    answer = await broker.cancel_jobs([delivery.id])
    await contract.advance(0.4)
    # Then it was cancelled and never runs again
    assert answer == [CANCELLED]
    assert await broker.fetch("w1", 10) == []


@pytest.mark.needs("cancel_by_id")
async def test_a_cancel_of_a_running_job_is_refused_and_its_worker_still_acks_it(
    contract: support.Contract,
) -> None:
    # Given a job a worker holds
    broker = await contract.open()
    await broker.enqueue(request())
    [delivery] = await broker.fetch("w1", 1)
    # When it is cancelled
    answer = await broker.cancel_jobs([delivery.id])
    # Then the cancel is refused as running, and the worker's ack lands as usual
    assert answer == [base.CancelOutcome.RUNNING]
    assert await broker.ack(delivery) is True
    if broker.capabilities.exact_stats:
        assert (await broker.fetch_stats()).completed_total == 1


@pytest.mark.needs("cancel_by_id", "dead_letter_by_id")
async def test_a_cancel_of_a_dead_letter_is_refused_and_it_stays_in_the_dlq(
    contract: support.Contract,
) -> None:
    # Given a dead-lettered job
    broker = await contract.open()
    await broker.enqueue(request())
    [delivery] = await broker.fetch("w1", 1)
    assert await broker.dead_letter(delivery, "non_retryable", failure=failure())
    # When it is cancelled
    answer = await broker.cancel_jobs([delivery.id])
    # Then the cancel is refused as dead-lettered and the dead letter is still there
    assert answer == [base.CancelOutcome.DEAD_LETTERED]
    assert await broker.show_dead_letter(delivery.id) is not None
    assert await broker.count_dead_letters() == 1


@pytest.mark.needs("cancel_by_id")
async def test_an_unknown_or_already_cancelled_id_reads_unknown(
    contract: support.Contract,
) -> None:
    # Given one waiting job
    broker = await contract.open()
    [res] = await broker.enqueue_many([request()])
    # When it is cancelled twice in one call, beside an id that was never enqueued
    answer = await broker.cancel_jobs([res.job_id, "no-such-job", res.job_id])
    # Then each id gets its own answer, in order
    assert answer == [CANCELLED, base.CancelOutcome.UNKNOWN, base.CancelOutcome.UNKNOWN]


@pytest.mark.needs("cancel_by_id", "dead_letter_by_id", "exact_stats")
async def test_stats_count_each_cancelled_job_once_so_the_totals_add_up(
    contract: support.Contract,
) -> None:
    # Given five jobs: one completed, one dead-lettered, one running, one waiting, one scheduled
    broker = await contract.open()
    await broker.enqueue_many([request(), request(), request()])
    [done, doomed, running] = await broker.fetch("w1", 3)
    assert await broker.ack(done)
    await broker.dead_letter(doomed, "non_retryable")
    [waiting, scheduled] = await broker.enqueue_many([request(), request(delay=3600.0)])
    # When both waiting jobs are cancelled, one of them twice, and the running job and the
    # dead letter too (both refused)
    ids = [waiting.job_id, scheduled.job_id, waiting.job_id, running.id, doomed.id]
    answer = await broker.cancel_jobs(ids)
    # Then the stats count the two cancelled jobs once each and the refused ones not at all
    assert answer == [
        CANCELLED,
        CANCELLED,
        base.CancelOutcome.UNKNOWN,
        base.CancelOutcome.RUNNING,
        base.CancelOutcome.DEAD_LETTERED,
    ]
    s = await broker.fetch_stats()
    assert (s.enqueued_total, s.completed_total, s.dead_lettered_total) == (5, 1, 1)
    assert s.cancelled_total == 2
    # And every enqueued job is accounted for: finished one way or another, or still running
    assert s.in_flight + s.backlog + s.future_delayed == 1
    assert s.enqueued_total == s.completed_total + s.dead_lettered_total + s.cancelled_total + 1


@pytest.mark.needs("cancel_by_id", "enqueue_dedup")
async def test_a_resent_enqueue_of_a_cancelled_job_does_not_bring_it_back(
    contract: support.Contract,
) -> None:
    # Given a job that was cancelled
    broker = await contract.open()
    req = request(idempotency_key="order-9")
    await broker.enqueue(req)
    assert await broker.cancel_jobs([req.envelope.id]) == [CANCELLED]
    # When the same enqueue is sent again (a producer re-sending after a lost reply)
    again = await broker.enqueue(req)
    # Then nothing is created and nothing is delivered
    assert again.created is False
    assert await broker.fetch("w1", 10) == []


@pytest.mark.needs("cancel_by_id")
async def test_every_enqueued_job_is_either_fetched_or_cancelled_never_both(
    contract: support.Contract,
) -> None:
    # Given 60 jobs: ready ones of every priority and scheduled ones
    broker = await contract.open()
    requests = [
        request(priority=("high", "normal", "low")[i % 3], delay=0.2 if i % 4 == 0 else 0.0)
        for i in range(60)
    ]
    enqueued = {r.job_id for r in await broker.enqueue_many(requests)}
    order = sorted(enqueued)  # some order unrelated to the fetch order
    fetched: list[str] = []
    answers: dict[str, base.CancelOutcome] = {}

    async def work() -> None:
        for _ in range(200):  # bounded: 60 jobs, 3 at a time
            got = await broker.fetch("w1", 3)
            fetched.extend(d.id for d in got)
            for d in got:
                assert await broker.ack(d)
            if len(answers) == len(order) and not got:
                return
            await asyncio.sleep(0)

    async def cancel() -> None:
        for start in range(0, len(order), 5):
            chunk = order[start : start + 5]
            answers.update(zip(chunk, await broker.cancel_jobs(chunk), strict=True))
            await asyncio.sleep(0)

    # When a worker fetches and acks while every job is cancelled, 5 ids a call
    await asyncio.gather(work(), cancel())
    await contract.advance(0.3)
    fetched.extend(d.id for d in await broker.fetch("w1", 100))
    # Then the enqueued jobs are exactly those fetched and those cancelled, with none in both,
    # and every job the cancel did not take had been fetched (running then, or already done)
    cancelled = {job_id for job_id, a in answers.items() if a == CANCELLED}
    assert len(fetched) == len(set(fetched))
    assert set(fetched) | cancelled == enqueued
    assert not set(fetched) & cancelled
    not_taken = {a for j, a in answers.items() if j not in cancelled}
    assert not_taken <= {base.CancelOutcome.RUNNING, base.CancelOutcome.UNKNOWN}


# -- look a job up by id (Capabilities.status_by_id) ----------------------------------------------

JobState = base.JobState


@pytest.mark.needs("status_by_id")
async def test_status_of_a_waiting_job_is_waiting_with_its_task_priority_and_enqueue_time(
    contract: support.Contract,
) -> None:
    # Given a job enqueued now, of priority high
    broker = await contract.open()
    before = contract.now()
    [res] = await broker.enqueue_many([request(task="send-email", priority="high")])
    # When it is looked up
    [status] = await base.fetch_job_status(broker, [res.job_id])
    # Then it is waiting, with what the producer gave it and nothing of a run
    assert (status.job_id, status.state) == (res.job_id, JobState.WAITING)
    assert (status.task, status.priority, status.attempts, status.deliveries) == (
        "send-email", "high", 0, 0,
    )  # fmt: skip
    assert status.enqueued_at is not None and status.enqueued_at >= before - 1.0
    assert (status.due_at, status.worker_id, status.last_failure) == (None, None, None)


@pytest.mark.needs("status_by_id")
async def test_status_of_a_delayed_job_is_scheduled_with_its_due_time_then_waiting_once_due(
    contract: support.Contract,
) -> None:
    # Given a job enqueued with a delay of 0.3 s
    broker = await contract.open()
    [res] = await broker.enqueue_many([request(delay=0.3)])
    # When it is looked up before and after its time
    [early] = await base.fetch_job_status(broker, [res.job_id])
    await contract.advance(0.4)
    [late] = await base.fetch_job_status(broker, [res.job_id])
    # Then it is first scheduled (not a retry) and due about 0.3 s after the read, then waiting
    assert (early.state, early.retry, early.attempts) == (JobState.SCHEDULED, False, 0)
    assert early.due_at is not None
    assert 0.0 < early.due_at - early.checked_at <= 0.3 + 0.05
    assert late.state is JobState.WAITING
    assert [d.id for d in await broker.fetch("w1", 10)] == [res.job_id]


@pytest.mark.needs("status_by_id")
async def test_status_of_a_fetched_job_is_running_with_its_worker_and_lease_expiry(
    contract: support.Contract,
) -> None:
    # Given a job a worker fetched
    broker = await contract.open(lease_seconds=30.0)
    [res] = await broker.enqueue_many([request()])
    [delivery] = await broker.fetch("w-7", 1)
    # When it is looked up
    [status] = await base.fetch_job_status(broker, [res.job_id])
    # Then it is running on that worker, under the lease the delivery has
    assert (status.state, status.worker_id, status.deliveries) == (JobState.RUNNING, "w-7", 1)
    assert status.lease_expires_at is not None
    assert status.lease_expires_at == pytest.approx(delivery.lease_deadline, abs=0.01)
    assert status.lease_expires_at > status.checked_at


@pytest.mark.needs("status_by_id")
async def test_status_of_a_job_waiting_out_a_retry_backoff_is_a_scheduled_retry_with_its_error(
    contract: support.Contract,
) -> None:
    # Given a job whose first run failed and that waits 30 s for its retry
    broker = await contract.open()
    [res] = await broker.enqueue_many([request()])
    [delivery] = await broker.fetch("w1", 1)
    assert await broker.retry(delivery, failure("SMTP down\nsecond line"), delay_seconds=30.0)
    # When it is looked up
    [status] = await base.fetch_job_status(broker, [res.job_id])
    # Then it is a scheduled retry after one attempt, with the failure it recorded
    assert (status.state, status.retry, status.attempts) == (JobState.SCHEDULED, True, 1)
    assert status.due_at is not None and 29.0 < status.due_at - status.checked_at <= 30.0
    assert status.last_failure is not None
    assert (status.last_failure.error_type, status.last_failure.attempt) == ("RuntimeError", 1)
    assert status.last_failure.message == "SMTP down\nsecond line"


@pytest.mark.needs("status_by_id", "dead_letter_by_id")
async def test_status_of_a_dead_lettered_job_is_dead_lettered_with_its_reason_and_last_error(
    contract: support.Contract,
) -> None:
    # Given a job that failed once, was retried, and then was dead-lettered
    broker = await contract.open()
    [res] = await broker.enqueue_many([request(task="charge")])
    [first] = await broker.fetch("w1", 1)
    assert await broker.retry(first, failure("first"), delay_seconds=0.0)
    [second] = await broker.fetch("w1", 1)
    assert await broker.dead_letter(second, "non_retryable", failure=failure("card declined"))
    # When it is looked up
    [status] = await base.fetch_job_status(broker, [res.job_id])
    # Then it is dead-lettered, with the reason, its two attempts and its newest failure
    assert (status.state, status.dead_letter_reason) == (JobState.DEAD_LETTERED, "non_retryable")
    assert (status.task, status.attempts, status.deliveries) == ("charge", 2, 2)
    assert status.dead_lettered_at is not None and status.enqueued_at is not None
    assert status.last_failure is not None and status.last_failure.message == "card declined"


@pytest.mark.needs("status_by_id")
async def test_status_of_an_acked_job_is_unknown_never_claimed_done(
    contract: support.Contract,
) -> None:
    # Given a job that ran and was acknowledged
    broker = await contract.open()
    [res] = await broker.enqueue_many([request()])
    [delivery] = await broker.fetch("w1", 1)
    assert await broker.ack(delivery)
    # When it is looked up
    [status] = await base.fetch_job_status(broker, [res.job_id])
    # Then it is unknown (the broker keeps no record of a finished job), though the queue
    # still remembers enqueuing it where it dedups enqueues by id
    assert status.state is JobState.UNKNOWN
    assert (status.task, status.attempts, status.last_failure) == (None, 0, None)
    if broker.capabilities.enqueue_dedup:
        assert status.enqueued_at is not None


@pytest.mark.needs("status_by_id")
async def test_status_of_ids_never_enqueued_is_unknown_one_answer_per_id_in_order(
    contract: support.Contract,
) -> None:
    # Given one waiting job and one running job
    broker = await contract.open()
    [waiting] = await broker.enqueue_many([request(priority="low")])
    [running] = await broker.enqueue_many([request(priority="high")])
    await broker.fetch("w1", 1)
    # When they are looked up in one call, between ids never enqueued, one named twice
    ids = ["nope-1", waiting.job_id, running.job_id, "nope-2", waiting.job_id]
    statuses = await base.fetch_job_status(broker, ids)
    # Then each id has its own answer, in order, and an unknown id carries nothing
    assert [s.job_id for s in statuses] == ids
    assert [s.state for s in statuses] == [
        JobState.UNKNOWN, JobState.WAITING, JobState.RUNNING, JobState.UNKNOWN, JobState.WAITING,
    ]  # fmt: skip
    assert statuses[0] == base.JobStatus("nope-1", JobState.UNKNOWN, statuses[0].checked_at)


# -- a record of finished jobs (QueueOptions.keep_finished_seconds, Capabilities.keep_finished) --


@pytest.mark.needs("status_by_id", "keep_finished")
async def test_with_finished_records_kept_an_acked_job_reads_done_with_its_finish_time(
    contract: support.Contract,
) -> None:
    # Given a queue that keeps finished records for 60 s, and two jobs: one that failed once
    # and was acked on its second run, one acked together with the next fetch
    broker = await contract.open(keep_finished_seconds=60.0)
    [first] = await broker.enqueue_many([request(task="charge")])
    [delivery] = await broker.fetch("w1", 1)
    assert await broker.retry(delivery, failure("card network down"), delay_seconds=0.0)
    [again] = await broker.fetch("w1", 1)
    before = contract.now()
    assert await broker.ack(again)
    [second] = await broker.enqueue_many([request(task="mail")])
    [mail] = await broker.fetch("w1", 1)
    assert (await broker.ack_and_fetch([mail], "w1", 1))[0] == [True]
    # When both are looked up
    charged, mailed = await base.fetch_job_status(broker, [first.job_id, second.job_id])
    # Then both read done, with when they finished, their task and their runs
    assert (charged.state, mailed.state) == (JobState.DONE, JobState.DONE)
    assert (charged.task, charged.attempts, charged.deliveries) == ("charge", 1, 2)
    assert (mailed.task, mailed.attempts, mailed.deliveries) == ("mail", 0, 1)
    assert charged.finished_at is not None and before - 1.0 <= charged.finished_at
    assert charged.finished_at <= charged.checked_at
    assert charged.run_seconds is not None and charged.run_seconds >= 0.0
    assert mailed.finished_at is not None and mailed.finished_at <= mailed.checked_at


@pytest.mark.needs("status_by_id", "keep_finished")
async def test_a_finished_record_reads_unknown_once_it_is_older_than_the_keep_time(
    contract: support.Contract,
) -> None:
    # Given a queue that keeps finished records for 0.3 s, and a job acked there
    broker = await contract.open(keep_finished_seconds=0.3)
    [res] = await broker.enqueue_many([request()])
    [delivery] = await broker.fetch("w1", 1)
    assert await broker.ack(delivery)
    [kept] = await base.fetch_job_status(broker, [res.job_id])
    # When the keep time has passed
    await contract.advance(0.5)
    [gone] = await base.fetch_job_status(broker, [res.job_id])
    # Then it read done first, and unknown after
    assert (kept.state, gone.state) == (JobState.DONE, JobState.UNKNOWN)
    assert (gone.task, gone.finished_at) == (None, None)


@pytest.mark.needs("status_by_id")
async def test_a_queue_that_keeps_no_finished_records_reads_an_acked_job_unknown(
    contract: support.Contract,
) -> None:
    # Given a queue with the default options (keep_finished_seconds 0), and a job acked there
    # alone and one acked with the next fetch
    broker = await contract.open()
    [res] = await broker.enqueue_many([request()])
    [other] = await broker.enqueue_many([request()])
    [first, second] = await broker.fetch("w1", 2)
    assert await broker.ack(first)
    assert (await broker.ack_and_fetch([second], "w1", 1))[0] == [True]
    # When they are looked up
    statuses = await base.fetch_job_status(broker, [res.job_id, other.job_id])
    # Then both read unknown: nothing was kept of them
    assert [s.state for s in statuses] == [JobState.UNKNOWN, JobState.UNKNOWN]
    assert [s.finished_at for s in statuses] == [None, None]
