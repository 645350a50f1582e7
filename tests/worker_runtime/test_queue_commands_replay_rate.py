"""``dlq replay --rate`` replays at the rate asked for, above 100 jobs a second too.

Run in-process on ``memory://NAME`` (the memory broker's store is shared inside one process).
The rate is the command's own pacing between broker calls (an interruptible wait on the event
loop's clock), so the test bounds the wall time of a whole replay, with a wide margin on each
side: a replay capped at 100 jobs a second takes five times as long as the one asked for.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import pytest

from worker_runtime import brokers, cli
from worker_runtime import envelope as envelope_mod
from worker_runtime.brokers import base, memory

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def store_url() -> Iterator[str]:
    """A fresh in-process queue store per test."""
    yield f"memory://replay-rate-{uuid.uuid4().hex[:8]}"
    memory.forget_stores()


def _dead_letter_many(url: str, queue: str, count: int) -> list[str]:
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


def _ready_ids(url: str, queue: str, count: int) -> list[str]:
    """The ids a worker now gets from the queue."""

    async def go() -> list[str]:
        broker = await brokers.open_broker(url, queue)
        try:
            return [job.id for job in await broker.fetch("w-check", count)]
        finally:
            await broker.close()

    return asyncio.run(go())


def test_a_replay_at_500_per_second_takes_about_a_second_for_500_dead_letters(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given 500 dead letters
    dead = _dead_letter_many(store_url, "jobs", 500)
    # When all are replayed at 500 a second
    started = time.monotonic()
    code = cli.main(
        ["dlq", "replay", "--broker-url", store_url, "-q", "jobs", "--all", "--rate", "500",
         "--json"]
    )  # fmt: skip
    took = time.monotonic() - started
    # Then each of them is back on the queue once, in about a second (at 100 a second, the
    # cap it had, five)
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert sorted(result["job_ids"]) == sorted(dead)
    assert sorted(_ready_ids(store_url, "jobs", 1000)) == sorted(dead)
    assert 0.7 <= took < 3.0, took
