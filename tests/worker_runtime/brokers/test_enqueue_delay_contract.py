"""The broker contract for an enqueue delay that is not a number of seconds: refused, alone.

Each test takes ``contract`` (tests/worker_runtime/brokers/conftest.py), so it runs on the
memory broker, Redis, a Redis Cluster, RabbitMQ and SQS. Before, RabbitMQ and SQS refused a
non-finite delay with ValueError, the memory broker stored ``inf`` as a job that never came due
and ran ``nan`` at once, and Redis ran ``nan`` at once and failed ``inf`` with an OverflowError
that also failed every enqueue batched with it. (The Producer checks delays before a broker
sees them; this is the seam itself, as the CLI's and other callers' last line.)
"""

from __future__ import annotations

import asyncio
import math

import pytest

from tests.support import brokers as support
from tests.support.brokers import request


@pytest.mark.parametrize("delay", [math.inf, math.nan, -math.inf])
async def test_a_non_finite_enqueue_delay_is_refused_and_its_neighbours_are_enqueued(
    contract: support.Contract, delay: float
) -> None:
    # Given a broker
    broker = await contract.open()
    # When one enqueue with a non-finite delay is sent alongside two ordinary ones, and a
    # batch carries one among good requests
    alone = await asyncio.gather(
        broker.enqueue(request(payload={"n": 1})),
        broker.enqueue(request(payload={"n": 2}, delay=delay)),
        broker.enqueue(request(payload={"n": 3})),
        return_exceptions=True,
    )
    with pytest.raises(ValueError, match="finite"):
        await broker.enqueue_many(
            [request(payload={"n": 4}), request(payload={"n": 5}, delay=delay)]
        )
    # Then the bad one is refused with ValueError, its neighbours in flight are enqueued, and
    # the refused batch added nothing: exactly jobs 1 and 3 are delivered
    assert isinstance(alone[1], ValueError)
    assert [type(r).__name__ for r in (alone[0], alone[2])] == ["EnqueueResult"] * 2
    got = await broker.fetch("w1", 10, block=1.0)
    got += await broker.fetch("w1", 10, block=0.5)
    assert sorted(d.envelope.payload["n"] for d in got) == [1, 3]
