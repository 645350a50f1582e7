"""The ``contract`` fixture: each contract test runs once per broker, skipped by capability.

Params are broker names; a broker joins the suite by adding its name here and a branch in
``_opener`` (tests/support/brokers.py explains the rest). ``@pytest.mark.needs("field")`` on a
test names the ``Capabilities`` field it relies on: a broker that declares it False skips the
test, and the skip says which promise it does not make.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support import brokers as support
from tests.support import elasticmq
from worker_runtime import brokers
from worker_runtime.brokers import base, memory
from worker_runtime.brokers.redis import broker as redis_broker

BROKERS = ["memory", "redis", "redis-cluster", "rabbitmq", "sqs"]


def _opener(request: pytest.FixtureRequest, name: str, clock: support.FakeClock | None) -> Any:
    if name == "memory":

        async def open_memory(queue: str, options: base.QueueOptions) -> memory.MemoryBroker:
            # one store per test's queue: every broker the test opens sees the same jobs
            store = f"contract-{queue}"
            return memory.MemoryBroker(
                queue, options, clock=clock or support.FakeClock(), store=store
            )

        return open_memory
    if name == "rabbitmq":
        server = request.getfixturevalue("rabbitmq_server")

        async def open_rabbitmq(queue: str, options: base.QueueOptions) -> Any:
            # prefetch is a worker's setting (its free slots); the suite's tests hand one
            # broker object's jobs to several workers, so it is set above their job counts
            return await brokers.open_broker(
                f"{server.url}?prefetch=20&management_port={server.management_port}",
                queue,
                options=options,
            )

        return open_rabbitmq
    if name == "sqs":
        sqs_server = request.getfixturevalue("elasticmq_server")

        async def open_sqs(queue: str, options: base.QueueOptions) -> Any:
            # ElasticMQ: the SQS API on a private loopback server (tests/support/elasticmq.py)
            return await brokers.open_broker(sqs_server.url, queue, options=options)

        return open_sqs
    client = request.getfixturevalue("redis_client" if name == "redis" else "cluster_client")

    async def open_redis(queue: str, options: base.QueueOptions) -> redis_broker.RedisBroker:
        return redis_broker.RedisBroker(client, queue, options)

    return open_redis


@pytest.fixture(params=BROKERS)
def broker_name(request: pytest.FixtureRequest) -> str:
    """The broker a contract test runs on (one run per entry of BROKERS)."""
    return str(request.param)


@pytest.fixture
def opener(request: pytest.FixtureRequest, broker_name: str, fake_clock: support.FakeClock) -> Any:
    # sync on purpose: the Redis clients are async fixtures, reachable from here by name
    return _opener(request, broker_name, fake_clock if broker_name == "memory" else None)


@pytest.fixture
def fake_clock() -> support.FakeClock:
    return support.FakeClock()


@pytest.fixture
async def contract(
    request: pytest.FixtureRequest,
    broker_name: str,
    opener: Any,
    fake_clock: support.FakeClock,
    queue_name: str,
) -> AsyncIterator[support.Contract]:
    clock = fake_clock if broker_name == "memory" else None
    contract_class = elasticmq.WholeSecondContract if broker_name == "sqs" else support.Contract
    harness = contract_class(broker_name, queue_name, opener, clock)
    marker = request.node.get_closest_marker("needs")
    if marker is not None:
        probe = await harness.open()
        for capability in marker.args:
            if not getattr(probe.capabilities, capability):
                await harness.close()  # the probe's connection, before the skip leaves
                pytest.skip(f"{broker_name} does not declare Capabilities.{capability}")
    yield harness
    await harness.close()
    memory.forget_stores()
