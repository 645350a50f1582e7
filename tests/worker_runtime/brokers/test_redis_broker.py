"""The Redis broker's own promises: its receipts, its keys, and redis-py's errors mapped to ours.

The behaviour every broker shares is in test_contract.py; here is what only Redis can show (raw
keys, the fencing token's form) and the translation at its edge: no caller of a broker ever
sees a redis-py exception.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests.support.brokers import request
from tests.support.redis_servers import RedisServer, free_port
from worker_runtime import errors
from worker_runtime.brokers import open_broker
from worker_runtime.brokers.redis import broker as redis_broker
from worker_runtime.brokers.redis import keys


async def test_a_receipt_is_the_engines_fencing_token_and_an_ack_leaves_no_keys(
    engine_client: Any, queue_name: str
) -> None:
    # Given a job delivered through the broker
    broker = redis_broker.RedisBroker(engine_client, queue_name)
    await broker.enqueue(request())
    [delivery] = await broker.fetch("w1", 1)
    # When it is acknowledged
    assert await broker.ack(delivery)
    # Then its receipt had the engine's token form and nothing of the job stayed in Redis
    assert re.fullmatch(r"[0-9a-f]+:\d+", delivery.receipt)
    k = keys.build_keys(queue_name)
    assert sum([await engine_client.xlen(r) for r in k.ready]) == 0
    assert await engine_client.hlen(k.env) == 0
    assert await engine_client.hlen(k.inflight) == 0


async def test_a_redis_that_does_not_answer_is_broker_unavailable(queue_name: str) -> None:
    # Given a broker whose Redis is not there (nothing listens on the port)
    broker = await open_broker(
        f"redis://127.0.0.1:{free_port()}/0", queue_name, socket_timeout=0.5, retries=0
    )
    try:
        # When it is asked to fetch, and to enqueue
        # Then each fails as BrokerUnavailable (maybe applied), the redis-py error as its cause
        with pytest.raises(errors.BrokerUnavailable) as fetched:
            await broker.fetch("w1", 1)
        with pytest.raises(errors.BrokerUnavailable) as enqueued:
            await broker.enqueue(request())
    finally:
        await broker.close()
    assert isinstance(fetched.value.__cause__, redis.exceptions.ConnectionError)
    assert (fetched.value.operation, enqueued.value.operation) == ("fetch", "enqueue")
    # And each says it was never sent (no connection opened): nothing to recover after it
    assert (fetched.value.sent, enqueued.value.sent) == (False, False)
    assert str(fetched.value).startswith("no connection to redis for fetch: ConnectionError: ")


async def test_a_redis_that_takes_a_fetch_and_never_replies_may_have_applied_it(
    redis_factory: Callable[..., RedisServer], queue_name: str
) -> None:
    # Given a broker with a short reply timeout, connected to a Redis that is then paused
    server = redis_factory()
    broker = await open_broker(server.url, queue_name, socket_timeout=0.5, retries=0)
    try:
        assert await broker.fetch("w1", 1) == []  # the connection is open
        os.kill(server.pid, signal.SIGSTOP)
        try:
            # When a fetch is sent and its reply never comes
            with pytest.raises(errors.BrokerUnavailable) as timed_out:
                await broker.fetch("w1", 1)
        finally:
            os.kill(server.pid, signal.SIGCONT)
    finally:
        await broker.close()
    # Then the error says it was sent: the script may have run, so the worker recovers
    assert timed_out.value.sent is True
    assert str(timed_out.value).startswith("no reply from redis to fetch: ")


async def test_a_read_only_replica_is_broker_rejected(
    redis_factory: Callable[..., RedisServer], redis_server: RedisServer, queue_name: str
) -> None:
    # Given a broker on a Redis that is a replica (as a demoted primary is after a failover)
    replica = redis_factory()
    admin = redis.Redis(port=replica.port)
    admin.execute_command("REPLICAOF", "127.0.0.1", str(redis_server.port))
    admin.close()
    broker = await open_broker(replica.url, queue_name, retries=0)
    try:
        # When a job is enqueued on it
        # Then the refusal is BrokerRejected: an answer, so nothing was applied
        with pytest.raises(errors.BrokerRejected) as refused:
            await broker.enqueue(request())
    finally:
        await broker.close()
    assert isinstance(refused.value.__cause__, redis.exceptions.ReadOnlyError)


async def _error_of_a_fetch(url: str, queue_name: str) -> errors.BrokerError:
    """The taxonomy error a fetch through a new broker on ``url`` fails with."""
    broker = await open_broker(url, queue_name, retries=0)
    try:
        with pytest.raises(errors.BrokerError) as failed:
            await broker.fetch("w1", 1)
    finally:
        await broker.close()
    return failed.value


@pytest.mark.parametrize("credentials", [":not-the-password@", ""], ids=["wrong", "none"])
async def test_a_redis_that_refuses_the_urls_credentials_is_broker_rejected_saying_so(
    credentials: str, redis_factory: Callable[..., RedisServer], queue_name: str
) -> None:
    # Given a Redis that wants a password, and a broker whose URL has a wrong one, or none
    server = redis_factory()
    admin = redis.Redis(port=server.port)
    admin.config_set("requirepass", "s3cret")
    admin.close()
    # When it is asked to fetch
    refused = await _error_of_a_fetch(f"redis://{credentials}127.0.0.1:{server.port}/0", queue_name)
    # Then the refusal is BrokerRejected, an answer (nothing applied, nothing to recover:
    # the worker does not try to adopt), saying that the credentials were not accepted
    assert isinstance(refused, errors.BrokerRejected)
    assert isinstance(refused.__cause__, redis.exceptions.AuthenticationError)
    assert "redis refused fetch: it did not accept the user or password" in str(refused)
    assert "not-the-password" not in str(refused)


async def test_a_cluster_url_naming_a_single_server_is_refused_saying_what_to_use(
    redis_server: RedisServer, queue_name: str
) -> None:
    # Given a redis+cluster:// URL that names a plain redis-server
    # When it is asked to fetch (redis-py raised a RedisClusterException, which is not a
    # RedisError, and it escaped unmapped: a traceback in the CLI, "fetch failed
    # unexpectedly" in a worker)
    refused = await _error_of_a_fetch(f"redis+cluster://127.0.0.1:{redis_server.port}/", queue_name)
    # Then it is a refusal that says which scheme a single server takes
    assert isinstance(refused, errors.BrokerRejected)
    assert "not a Redis Cluster node" in str(refused)
    assert "a single server is redis://" in str(refused)


@pytest.mark.parametrize("scheme", ["redis+cluster", "redis+sentinel"])
async def test_a_cluster_or_sentinel_url_nothing_answers_is_unavailable_and_never_sent(
    scheme: str, queue_name: str
) -> None:
    # Given a Cluster or Sentinel URL whose nodes do not listen
    port = free_port()
    url = f"{scheme}://127.0.0.1:{port}/" + ("mymaster" if scheme == "redis+sentinel" else "")
    # When it is asked to fetch
    unavailable = await _error_of_a_fetch(url, queue_name)
    # Then the fetch was never sent (nothing to recover), and the text is one short line
    # (MasterNotFoundError appended the repr of every sentinel client it asked)
    assert isinstance(unavailable, errors.BrokerUnavailable)
    assert unavailable.sent is False
    assert str(unavailable).startswith("no connection to redis for fetch: ")
    assert "<redis." not in str(unavailable) and len(str(unavailable)) < 300


async def test_open_broker_on_a_redis_url_owns_its_client_and_close_ends_it(
    redis_server: RedisServer, queue_name: str
) -> None:
    # Given a broker opened from a URL, with a job acknowledged through it
    admin = redis.Redis(port=redis_server.port)
    before = len(admin.client_list())
    broker = await open_broker(redis_server.url, queue_name)
    assert isinstance(broker, redis_broker.RedisBroker)
    await broker.enqueue(request())
    [delivery] = await broker.fetch("w1", 1)
    assert await broker.ack(delivery)
    during = len(admin.client_list())
    # When it is closed
    await broker.close()
    # Then its connection is gone from the server (bounded wait for the server to notice)
    after = during
    for _ in range(100):
        after = len(admin.client_list())
        if after <= before:
            break
        await asyncio.sleep(0.02)
    admin.close()
    assert (during > before, after <= before) == (True, True)
