"""A Redis that may evict keys is reported loudly: by the stats read, and by every worker.

Under ``allkeys-*`` Redis may evict a queue's hashes and streams (jobs vanish); under
``volatile-*`` the idempotency and done markers (keys with a TTL). Only ``noeviction`` keeps
the at-least-once promise, so anything else is a log line at ERROR and a metric.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis
import redis.asyncio

from worker_runtime import App, config, worker
from worker_runtime.brokers.redis import stats


@pytest.mark.parametrize("policy", ["noeviction", "allkeys-lru", "volatile-ttl"])
async def test_the_stats_read_names_the_servers_maxmemory_policy(
    redis_factory: Any, queue_name: str, policy: str
) -> None:
    # Given a Redis whose maxmemory-policy is `policy`
    server = redis_factory(maxmemory_policy=policy)
    client = redis.asyncio.Redis(port=server.port, decode_responses=True)
    try:
        # When the queue's stats are read (the same one round trip as ever)
        s = await stats.fetch_queue_stats(client, queue_name)
    finally:
        await client.aclose()
    # Then they carry the policy, and only noeviction is safe
    assert s.maxmemory_policy == policy
    warning = stats.build_eviction_warning(s.maxmemory_policy)
    if policy == "noeviction":
        assert warning is None
    else:
        assert warning is not None and policy in warning and "noeviction" in warning


async def test_a_user_who_may_not_read_info_still_gets_its_stats_with_the_policy_unknown(
    redis_factory: Any, queue_name: str
) -> None:
    # Given an ACL user without the dangerous commands (INFO, CONFIG among them)
    server = redis_factory(maxmemory_policy="allkeys-lru")
    admin = redis.Redis(port=server.port)
    admin.execute_command(
        "ACL", "SETUSER", "app", "on", ">pw", "~*", "+@all", "-@dangerous"
    )  # fmt: skip
    admin.close()
    client = redis.asyncio.Redis(
        port=server.port, username="app", password="pw", decode_responses=True
    )
    try:
        s = await stats.fetch_queue_stats(client, queue_name)
    finally:
        await client.aclose()
    # Then the stats work and the policy is unknown (no false alarm)
    assert s.backlog == 0 and s.maxmemory_policy is None
    assert stats.build_eviction_warning(None) is None


async def _run_worker_until_policy_exported(
    redis_factory: Any, queue_name: str, policy: str
) -> float | None:
    """Start a worker on a Redis with ``policy``, stop it once the metric is there (bounded)."""
    server = redis_factory(maxmemory_policy=policy)
    settings = config.WorkerSettings(
        redis_url=f"redis://127.0.0.1:{server.port}/0", queue=queue_name, metrics_port=0
    )
    w = worker.Worker(App(queue=queue_name), settings, install_signal_handlers=False)
    run = asyncio.create_task(w.run())
    labels = {"queue": queue_name, "policy": policy}
    value = None
    try:
        for _ in range(200):  # bounded: 10 s
            value = w.metrics.registry.get_sample_value("workerfleet_redis_eviction_unsafe", labels)
            if value is not None or run.done():
                break
            await asyncio.sleep(0.05)
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 20) == 0
    return value


async def test_a_worker_on_a_redis_that_may_evict_says_so_in_its_log_and_metrics(
    redis_factory: Any, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a Redis whose maxmemory-policy is allkeys-lru
    caplog.set_level(logging.INFO)
    # When a worker starts on it
    value = await _run_worker_until_policy_exported(redis_factory, queue_name, "allkeys-lru")
    # Then the metric says the queue's data may be evicted, and an ERROR line says what to do
    assert value == 1.0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("allkeys-lru" in r.getMessage() and "noeviction" in r.getMessage() for r in errors)


async def test_a_worker_on_a_noeviction_redis_reports_it_safe_and_logs_no_error(
    redis_factory: Any, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    value = await _run_worker_until_policy_exported(redis_factory, queue_name, "noeviction")
    assert value == 0.0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
