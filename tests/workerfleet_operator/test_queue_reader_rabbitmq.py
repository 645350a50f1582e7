"""The operator's queue reader on a real RabbitMQ: one management-API read per poll, the age
declared unavailable, the URL never in an error, probes closed on rotation and release.

Integration tests: a private rabbitmq-server (tests/support/rabbitmq_server.py, session-wide),
the reader as the autoscaler uses it (``shell.queue.QueueReader.fetch_observation``).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from workerfleet_operator.shell import kube, queue

from worker_runtime import brokers, producer

DEADLINE = 10.0


def _url(server: Any, password: str = "guest") -> str:
    return (
        f"amqp://guest:{password}@127.0.0.1:{server.port}/?management_port={server.management_port}"
    )


def _key(version: str = "1") -> queue.ClientKey:
    return queue.ClientKey("team-a", "rabbitmq-creds", "url", version)


async def _enqueue(url: str, name: str, count: int, priority: str = "normal") -> None:
    broker = await brokers.open_broker(url, name)
    try:
        jobs = [producer.JobSpec(task="t", payload={}, priority=priority) for _ in range(count)]
        await producer.Producer.on_broker(broker).enqueue_many(jobs)
    finally:
        await broker.close()


async def test_the_reader_counts_every_priority_and_says_the_age_is_unavailable(
    rabbitmq_server: Any,
) -> None:
    # Given jobs on two priority levels of a RabbitMQ queue
    name = f"reader-{uuid.uuid4().hex[:8]}"
    url = _url(rabbitmq_server)
    await _enqueue(url, name, 4, "high")
    await _enqueue(url, name, 3, "low")
    reader = queue.QueueReader(socket_timeout=2.0)
    secret = kube.SecretValue("1", url)
    try:
        # When the autoscaler reads the queue (until RabbitMQ's sampled numbers show them all)
        for _ in range(40):
            observation = await reader.fetch_observation(
                _key(), secret, name, deadline_seconds=DEADLINE
            )
            if observation.stats is not None and observation.stats.backlog == 7:
                break
            await asyncio.sleep(0.25)
        # Then the backlog is the sum over the levels, and the age is declared unavailable
        assert observation.error is None and observation.stats is not None
        assert observation.stats.backlog == 7
        assert observation.age_unavailable is not None
        assert "RabbitMQ" in observation.age_unavailable
        assert reader.open_client_count() == 1
    finally:
        await reader.close()
    assert reader.open_client_count() == 0


async def test_a_refused_password_is_an_observation_error_without_the_url(
    rabbitmq_server: Any,
) -> None:
    canary = f"canary{uuid.uuid4().hex[:8]}"
    secret = kube.SecretValue("1", _url(rabbitmq_server, password=canary))
    reader = queue.QueueReader(socket_timeout=2.0)
    try:
        observation = await reader.fetch_observation(
            _key(), secret, "reader-denied", deadline_seconds=DEADLINE
        )
    finally:
        await reader.close()
    assert observation.stats is None and observation.error is not None
    assert "401" in observation.error
    assert canary not in observation.error and str(rabbitmq_server.port) not in observation.error


def record_probes(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    """(queues opened, queues closed), in order, of every broker opened from now on."""
    opened: list[str] = []
    closed: list[str] = []
    open_broker = brokers.open_broker

    async def recording_open(url: str, name: str, **settings: Any) -> Any:
        broker = await open_broker(url, name, **settings)
        opened.append(name)
        close = broker.close

        async def recorded_close() -> None:
            closed.append(name)
            await close()

        broker.close = recorded_close  # type: ignore[method-assign]
        return broker

    monkeypatch.setattr(brokers, "open_broker", recording_open)
    return opened, closed


async def test_a_rotated_secret_closes_the_old_probe_and_a_released_pool_closes_its_own(
    rabbitmq_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a reader whose probes record when they are closed
    _, closed = record_probes(monkeypatch)
    url = _url(rabbitmq_server)
    reader = queue.QueueReader(socket_timeout=2.0)
    name = f"reader-{uuid.uuid4().hex[:8]}"
    await reader.fetch_observation(
        _key("1"), kube.SecretValue("1", url), name, deadline_seconds=DEADLINE
    )
    # When the Secret is rotated (a new resourceVersion) and the queue read again
    await reader.fetch_observation(
        _key("2"), kube.SecretValue("2", url), name, deadline_seconds=DEADLINE
    )
    # Then the first version's probe is closed (in the background) and one probe is kept
    for _ in range(50):
        if closed:
            break
        await asyncio.sleep(0.02)
    assert closed == [name] and reader.open_client_count() == 1
    # When no pool uses the Secret any more, its probe is closed too
    await reader.close_unused(set())
    assert closed == [name, name] and reader.open_client_count() == 0


async def test_a_queue_no_pool_reads_any_more_has_its_probe_closed_though_its_secret_is_in_use(
    rabbitmq_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two pools reading queues "orders" and "invoices" through one Secret version
    opened, closed = record_probes(monkeypatch)
    secret = kube.SecretValue("1", _url(rabbitmq_server))
    orders, invoices = (f"{q}-{uuid.uuid4().hex[:8]}" for q in ("orders", "invoices"))
    reader = queue.QueueReader(socket_timeout=2.0)
    try:
        for name in (orders, invoices):
            got = await reader.fetch_observation(_key(), secret, name, deadline_seconds=DEADLINE)
            assert got.error is None
        # When the "invoices" pool stops, and only the "orders" pool reads through the Secret
        await reader.close_unused({(_key(), orders)})
        # Then the probe of "invoices" is closed, and "orders" reads on through its own
        assert closed == [invoices]
        got = await reader.fetch_observation(_key(), secret, orders, deadline_seconds=DEADLINE)
        assert got.error is None
        assert opened == [orders, invoices]
        # And a pool reading "invoices" again gets a probe of its own
        await reader.close_unused({(_key(), orders), (_key(), invoices)})
        got = await reader.fetch_observation(_key(), secret, invoices, deadline_seconds=DEADLINE)
        assert got.error is None
        assert opened == [orders, invoices, invoices] and closed == [invoices]
    finally:
        await reader.close()
    assert sorted(closed) == sorted([invoices, orders, invoices])
