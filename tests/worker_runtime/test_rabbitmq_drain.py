"""A RabbitMQ worker's drain on real processes: what it fetched ahead goes back at once, unspent.

A worker process on the session's private rabbitmq-server (tests/support/rabbitmq_server.py)
runs ``tests.chaos.tasks:app``, whose task logs every run to a file of its own process; the
tests judge by that history (which jobs started, where, with which delivery count, and how they
ended) and by what RabbitMQ itself says is ready in the work queue, never by the worker's own
counters.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until
from worker_runtime import envelope
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker
from worker_runtime.brokers.rabbitmq import topology

pytestmark = pytest.mark.slow

APP = "tests.chaos.tasks:app"


def enqueue_jobs(url: str, queue: str, jobs: list[tuple[str, float]]) -> None:
    """Enqueue ``(job id, work ms)`` chaos jobs, in order, at the normal level."""

    async def go() -> None:
        producer = rabbitmq_broker.RabbitMQBroker(url, queue, role=base.QueueRole.PRODUCER)
        try:
            for job_id, work_ms in jobs:
                env = envelope.build_envelope("chaos", {"work_ms": work_ms}, job_id=job_id)
                await producer.enqueue(base.EnqueueRequest(env))
        finally:
            await producer.close()

    asyncio.run(go())


def ready_in(url: str, queue: str, level: str = "normal") -> int:
    """How many messages RabbitMQ holds ready (not delivered) in one work queue."""

    async def go() -> int:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            q = await channel.declare_queue(topology.work_queue(queue, level), passive=True)
            return int(q.declaration_result.message_count or 0)
        finally:
            await connection.close()

    return asyncio.run(go())


def read_runs(directory: Path) -> list[dict[str, Any]]:
    """Every event the chaos task logged (``start``/``end`` per run), in no particular order."""
    return [
        json.loads(line)
        for path in directory.glob("runs-*.jsonl")
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def spawn(url: str, queue: str, directory: Path, **kwargs: Any) -> workerproc.WorkerProc:
    return workerproc.WorkerProc(
        url,
        queue,
        app=APP,
        log_dir=str(directory),
        extra_env={"CHAOS_HISTORY_DIR": str(directory), "WORKERFLEET_LOG_LEVEL": "info"},
        **kwargs,
    )


@pytest.mark.timeout(180)
def test_a_draining_worker_gives_back_its_prefetched_jobs_at_once_with_no_delivery_spent(
    rabbitmq_server: Any, tmp_path: Path
) -> None:
    # Given a backlog far bigger than the worker's slots: four long jobs first, then 300 short
    queue = f"t{uuid.uuid4().hex[:12]}"
    long_ids = [f"long{i}" for i in range(4)]
    short_ids = [f"short{i}" for i in range(300)]
    enqueue_jobs(
        rabbitmq_server.url,
        queue,
        [(j, 4000.0) for j in long_ids] + [(j, 0.0) for j in short_ids],
    )
    # And a worker of 4 slots running the long jobs, every short job prefetched into it
    first = spawn(
        f"{rabbitmq_server.url}?prefetch=400", queue, tmp_path, concurrency=4, drain_timeout=20.0
    )
    with workerproc.workers(first):
        wait_until(
            lambda: {e["job"] for e in read_runs(tmp_path) if e["e"] == "start"} == set(long_ids),
            60,
            "the four long jobs to start",
        )
        wait_until(
            lambda: ready_in(rabbitmq_server.url, queue) == 0,
            20,
            "every short job to be prefetched by the worker",
        )
        # When it drains (SIGTERM) while its long jobs still run
        first.send(signal.SIGTERM)
        # Then the short jobs are back in the queue, ready for others, during the drain
        wait_until(
            lambda: ready_in(rabbitmq_server.url, queue) == len(short_ids),
            2.5,
            "the prefetched jobs to be back in the queue",
        )
        assert first.alive()
        assert not [e for e in read_runs(tmp_path) if e["e"] == "end"]
        # And the worker finishes its long jobs and exits cleanly
        assert first.wait(30) == 0, first.logs()[-3000:]
    # And another worker runs every short job once, as a first delivery: none was spent
    second = spawn(rabbitmq_server.url, queue, tmp_path, concurrency=8)
    with workerproc.workers(second):
        wait_until(
            lambda: sum(1 for e in read_runs(tmp_path) if e["e"] == "end") >= 304,
            60,
            "every job to finish",
        )
        second.send(signal.SIGTERM)
        assert second.wait(30) == 0, second.logs()[-3000:]
    runs = read_runs(tmp_path)
    starts = [e for e in runs if e["e"] == "start"]
    assert sorted(e["job"] for e in starts) == sorted(long_ids + short_ids)  # each ran once
    assert {e["job"] for e in runs if e["e"] == "end" and e["ok"]} == set(long_ids + short_ids)
    assert {e["pid"] for e in starts if e["job"] in long_ids} == {first.pid}
    assert {(e["pid"], e["d"], e["attempt"]) for e in starts if e["job"] in short_ids} == {
        (second.pid, 1, 1)
    }
