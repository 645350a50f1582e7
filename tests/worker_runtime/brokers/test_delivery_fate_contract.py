"""What became of a delivery, as a broker that can tell answers it (``DeliveryAudit``).

The worker asks only when a settle it sent again (its first try got no reply) was answered
stale: that first try may have landed, or the lease may have been lost. Each test builds the
job's history with the broker's own calls (the settle that landed, the lease another worker
took over) and then asks about the first delivery. Redis (single and Cluster) and the memory
reference implement it; a broker that does not is answered "unknown" for.
"""

from __future__ import annotations

import types
from typing import Any

import pytest

from tests.support import brokers as support
from tests.support.brokers import failure, request
from worker_runtime.brokers import base

LEASE = 0.4  # short leases, so a real server's expiry is waited for in well under a second

pytestmark = pytest.mark.parametrize("broker_name", ["memory", "redis", "redis-cluster"])


async def _leased(contract: support.Contract, **options: Any) -> tuple[Any, base.Delivery]:
    """A broker (``options``: QueueOptions fields) and one job's delivery to w1."""
    broker = await contract.open(**options)
    await broker.enqueue(request())
    [delivery] = await broker.fetch("w1", 1)
    return broker, delivery


async def test_an_acked_delivery_reads_as_gone_since_an_ack_leaves_nothing_behind(
    contract: support.Contract,
) -> None:
    # Given a job w1 acked (its ack landed)
    broker, delivery = await _leased(contract)
    assert await broker.ack(delivery) is True
    # When w1 asks what became of its delivery
    fate = await broker.fetch_delivery_fate(delivery)
    # Then the job is gone: acked by w1, or by another worker after a lost lease; no telling
    assert fate is base.DeliveryFate.GONE
    assert isinstance(broker, base.DeliveryAudit)


async def test_a_retried_delivery_reads_as_settled_even_once_another_worker_has_the_job(
    contract: support.Contract,
) -> None:
    # Given a job w1 retried (the retry landed), then fetched again by w2
    broker, delivery = await _leased(contract)
    assert await broker.retry(delivery, failure(), delay_seconds=0) is True
    settled_at_once = await broker.fetch_delivery_fate(delivery)
    [again] = await broker.fetch("w2", 1)
    # When w1 asks what became of its delivery
    fate = await broker.fetch_delivery_fate(delivery)
    # Then it was settled by w1's retry, before and after w2 took the job: no delivery was lost
    assert (again.id, again.deliveries, again.lost) == (delivery.id, 2, 0)
    assert settled_at_once is fate is base.DeliveryFate.SETTLED


async def test_a_dead_lettered_delivery_reads_as_settled(contract: support.Contract) -> None:
    # Given a job w1 dead-lettered (it landed)
    broker, delivery = await _leased(contract)
    assert await broker.dead_letter(delivery, "non_retryable", failure=failure()) is True
    # When w1 asks what became of its delivery
    fate = await broker.fetch_delivery_fate(delivery)
    # Then its dead letter says no delivery was lost since: w1's own settle
    assert fate is base.DeliveryFate.SETTLED


async def test_a_delivery_whose_lease_another_worker_took_over_reads_as_lost(
    contract: support.Contract,
) -> None:
    # Given a job leased to w1 whose lease expired, and w2 fetched it
    broker, delivery = await _leased(contract, lease_seconds=LEASE)
    await contract.advance(LEASE + 0.2)
    [taken] = await broker.fetch("w2", 1)
    # When w1 asks what became of its delivery, while w2 holds the job
    fate = await broker.fetch_delivery_fate(delivery)
    # Then its lease was lost
    assert (taken.id, taken.lost) == (delivery.id, 1)
    assert fate is base.DeliveryFate.LOST
    # And once w2 acked the job, nothing is left to tell by
    assert await broker.ack(taken) is True
    assert await broker.fetch_delivery_fate(delivery) is base.DeliveryFate.GONE


async def test_a_delivery_lost_at_max_deliveries_reads_as_lost_from_its_dead_letter(
    contract: support.Contract,
) -> None:
    # Given a job that may be delivered once, whose only delivery's lease expired
    broker, delivery = await _leased(contract, lease_seconds=LEASE, max_deliveries=1)
    await contract.advance(LEASE + 0.2)
    # When w2's fetch dead-letters it as poison and w1 asks what became of its delivery
    assert await broker.fetch("w2", 1) == []
    fate = await broker.fetch_delivery_fate(delivery)
    # Then its lease was lost (the dead letter counts the lost delivery)
    assert await broker.count_dead_letters() == 1
    assert fate is base.DeliveryFate.LOST


async def test_a_broker_that_cannot_tell_is_answered_unknown_for(
    contract: support.Contract,
) -> None:
    # Given a delivery, and a broker without DeliveryAudit (as RabbitMQ and SQS are)
    broker, delivery = await _leased(contract)
    blind: Any = types.SimpleNamespace()
    # When the worker asks each what became of the delivery
    fates = [await base.fetch_delivery_fate(b, delivery) for b in (blind, broker)]
    # Then the one that cannot tell says so, and the one that can says w1 still holds it
    assert fates == [base.DeliveryFate.UNKNOWN, base.DeliveryFate.HELD]
