"""Fixtures of the worker-process tests: a real redis-server, worker subprocesses, producers.

Temporary home of the worker tests' Redis fixture until the shared one in tests/conftest.py
lands; names are prefixed ``wf_`` so they never shadow the shared fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.worker_runtime import workerproc
from worker_runtime import producer


@pytest.fixture(scope="session")
def wf_redis() -> Iterator[workerproc.RedisServer]:
    server = workerproc.RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def wf_client(wf_redis: workerproc.RedisServer) -> Iterator[redis.Redis]:
    client = wf_redis.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def wf_queue() -> str:
    return workerproc.new_queue()


@pytest.fixture
def wf_producer(wf_redis: workerproc.RedisServer, wf_queue: str) -> Iterator[producer.SyncProducer]:
    client = redis.Redis.from_url(wf_redis.url, decode_responses=True)
    try:
        yield producer.SyncProducer(client, wf_queue)
    finally:
        client.close()


@pytest.fixture
def wf_spawn(
    wf_redis: workerproc.RedisServer, wf_queue: str, tmp_path: Any
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
