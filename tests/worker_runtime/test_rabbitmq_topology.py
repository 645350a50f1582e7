"""The RabbitMQ topology's delay routing: which bucket a wait goes to, and around which.

Pure functions of worker_runtime/brokers/rabbitmq/topology.py; no server needed.
"""

from __future__ import annotations

import pytest

from worker_runtime.brokers.rabbitmq import topology


@pytest.mark.parametrize(
    ("remaining", "bucket"),
    [(0.0, None), (0.024, None), (0.025, 25), (0.049, 25), (0.05, 50), (3.0, 1600), (3.2, 3200)],
)
def test_a_wait_goes_to_the_largest_bucket_not_longer_than_it(
    remaining: float, bucket: int | None
) -> None:
    assert topology.bucket_for(remaining) == bucket


def test_a_wait_longer_than_the_largest_bucket_takes_the_largest() -> None:
    assert topology.bucket_for(10**9) == 25 << topology.BUCKET_MAX_EXPONENT


def test_an_avoided_bucket_sends_the_wait_to_the_next_smaller_one() -> None:
    assert topology.bucket_for(3.0, avoid=frozenset({1600})) == 800
    assert topology.bucket_for(3.0, avoid=frozenset({1600, 800})) == 400
    # buckets longer than the wait are never candidates, avoided or not
    assert topology.bucket_for(3.0, avoid=frozenset({3200})) == 1600


def test_a_wait_with_every_bucket_that_fits_avoided_is_over() -> None:
    assert topology.bucket_for(0.04, avoid=frozenset({25})) is None
    assert topology.bucket_for(0.09, avoid=frozenset({25, 50})) is None


def test_the_dlq_is_bounded_by_the_queues_dead_letter_length_and_retention() -> None:
    # and, as a quorum queue, has a delivery limit no read of the DLQ ever reaches (RabbitMQ
    # 4.0+ gives a quorum queue without one a limit of 20, and each read returns every letter)
    assert topology.dead_queue_arguments("quorum", max_length=5000, retention_seconds=86_400.0) == {
        "x-queue-type": "quorum",
        "x-max-length": 5000,
        "x-message-ttl": 86_400_000,
        "x-delivery-limit": 2**31 - 1,
    }


def test_a_retention_past_rabbitmqs_largest_ttl_keeps_dead_letters_until_the_length_bound() -> None:
    # 60 days is more than RabbitMQ's largest x-message-ttl (2^32 - 1 ms, ~49.7 days)
    arguments = topology.dead_queue_arguments(
        "classic", max_length=100, retention_seconds=60 * 86_400.0
    )
    assert arguments == {"x-queue-type": "classic", "x-max-length": 100}
