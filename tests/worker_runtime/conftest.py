"""Fixtures of the worker-process tests: worker subprocesses, producers, sync clients.

Built on the shared redis-server fixtures of tests/conftest.py; names are prefixed ``wf_`` so
they never shadow the shared ones.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis

from tests.worker_runtime import workerproc
from worker_runtime import brokers, producer


@pytest.fixture
def wf_redis(redis_server: workerproc.RedisLike) -> workerproc.RedisLike:
    """The shared session redis-server (tests/conftest.py)."""
    return redis_server


@pytest.fixture
def wf_client(wf_redis: workerproc.RedisLike) -> Iterator[redis.Redis]:
    client = workerproc.sync_client(wf_redis)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def wf_queue(queue_name: str) -> str:
    return queue_name


@pytest.fixture
def wf_producer(wf_redis: workerproc.RedisLike, wf_queue: str) -> Iterator[producer.SyncProducer]:
    client = redis.Redis.from_url(wf_redis.url, decode_responses=True)
    try:
        yield producer.SyncProducer(client, wf_queue)
    finally:
        client.close()


@pytest.fixture
def wf_spawn(
    wf_redis: workerproc.RedisLike, wf_queue: str, tmp_path: Any
) -> Iterator[Callable[..., workerproc.WorkerProc]]:
    """Start worker subprocesses on the test's queue; all are killed at teardown."""
    started: list[workerproc.WorkerProc] = []

    def spawn(**kwargs: Any) -> workerproc.WorkerProc:
        kwargs.setdefault("log_dir", str(tmp_path))
        url = kwargs.pop("redis_url", wf_redis.url)
        queue = kwargs.pop("queue", wf_queue)
        proc = workerproc.WorkerProc(url, queue, **kwargs)
        started.append(proc)
        return proc

    try:
        yield spawn
    finally:
        for proc in started:
            proc.stop()
        for proc in started:
            if proc.proc.returncode not in (0, None, -9, 3, -11):
                print(
                    f"--- worker {proc.pid} exited {proc.proc.returncode}; log:",
                    proc.logs()[-4000:],
                )


@pytest.fixture
def wf(
    wf_redis: workerproc.RedisLike,
    wf_queue: str,
    wf_client: redis.Redis,
    wf_producer: producer.SyncProducer,
    wf_spawn: Callable[..., workerproc.WorkerProc],
) -> workerproc.Testbed:
    """The test's queue, a sync client and producer on it, and ``spawn`` for workers."""
    return workerproc.Testbed(wf_redis, wf_queue, wf_client, wf_producer, wf_spawn)


@pytest.fixture
def memory_store_url() -> str:
    """A fresh in-process queue store per test (brokers on one URL share their jobs)."""
    return f"memory://worker-logic-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def memory_probe(memory_store_url: str) -> AsyncIterator[Any]:
    """The test's own view of the memory queue "jobs": enqueue, and read the broker's records."""
    broker = await brokers.open_broker(memory_store_url, "jobs")
    yield broker
    await broker.close()
