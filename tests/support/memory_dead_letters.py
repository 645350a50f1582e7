"""Dead letters on an in-process ``memory://`` queue, for the tests that run a dlq command on it.

The memory broker's store is shared inside one process: what a command run in-process
(``cli.main``) replays or purges, the test's own broker sees.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from worker_runtime import brokers
from worker_runtime import envelope as envelope_mod
from worker_runtime.brokers import base, memory


def dead_letter_many(url: str, queue: str, count: int) -> list[str]:
    """``count`` jobs enqueued, fetched and dead-lettered; their ids, oldest first."""

    async def go() -> list[str]:
        broker = await brokers.open_broker(url, queue)
        try:
            requests = [
                base.EnqueueRequest(envelope=envelope_mod.build_envelope("charge", {"n": n}))
                for n in range(count)
            ]
            await broker.enqueue_many(requests)
            ids = []
            for job in await broker.fetch("w-seed", count):
                assert await broker.dead_letter(job, "max_attempts")
                ids.append(job.id)
            return ids
        finally:
            await broker.close()

    return asyncio.run(go())


def fetch_ready_ids(url: str, queue: str, count: int) -> list[str]:
    """The ids a worker now gets from the queue (at most ``count``)."""

    async def go() -> list[str]:
        broker = await brokers.open_broker(url, queue)
        try:
            return [job.id for job in await broker.fetch("w-check", count)]
        finally:
            await broker.close()

    return asyncio.run(go())


def fetch_dead_letter_ids(url: str, queue: str) -> set[str]:
    """The ids of the queue's dead letters."""

    async def go() -> set[str]:
        broker = await brokers.open_broker(url, queue)
        try:
            assert isinstance(broker, base.DeadLetters)
            return {d.job_id for d in await broker.list_dead_letters(limit=100_000)}
        finally:
            await broker.close()

    return asyncio.run(go())


@pytest.fixture
def store_url() -> Iterator[str]:
    """A fresh in-process ``memory://`` store per test (import it into the test module)."""
    yield f"memory://dlq-{uuid.uuid4().hex[:8]}"
    memory.forget_stores()
