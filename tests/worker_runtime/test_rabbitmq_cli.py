"""`workerfleet dlq ls|show|replay|purge` and `queue stats` work on a RabbitMQ queue.

The real CLI in a subprocess against the session's private rabbitmq-server
(tests/support/rabbitmq_server.py); the dead letters are made through the RabbitMQ broker and
what the CLI did is read back through it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from worker_runtime import envelope
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("workerfleet"))


def run_cli(url: str, queue: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args, "--broker-url", url, "--queue", queue],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_the_dlq_commands_list_show_replay_and_purge_a_rabbitmq_queue(
    rabbitmq_server: Any,
) -> None:
    # Given three jobs dead-lettered on a RabbitMQ queue, each with its failure
    queue = f"cli{uuid.uuid4().hex[:8]}"
    url = f"{rabbitmq_server.url}?management_port={rabbitmq_server.management_port}"
    b = rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, queue, prefetch=5)
    try:
        await b.enqueue_many(
            [
                base.EnqueueRequest(envelope.build_envelope("t", {"n": i}, job_id=f"j{i}"))
                for i in range(3)
            ]
        )
        for d in await b.fetch("w", 3, block=5):
            failure = base.Failure("ValueError", f"boom {d.id}", worker_id="w")
            assert await b.dead_letter(d, "non_retryable", failure=failure)
        # When the CLI lists them, shows one, replays it and purges the rest
        listed = run_cli(url, queue, "dlq", "ls", "--json")
        shown = run_cli(url, queue, "dlq", "show", "j1")
        replayed = run_cli(url, queue, "dlq", "replay", "j1")
        purged = run_cli(url, queue, "dlq", "purge", "--all", "--yes")
        # Then each answered from RabbitMQ
        assert listed.returncode == 0, listed.stderr
        assert {x["job_id"] for x in json.loads(listed.stdout)} == {"j0", "j1", "j2"}
        assert shown.returncode == 0 and "boom j1" in shown.stdout, shown.stderr
        assert replayed.returncode == 0, replayed.stderr
        assert purged.returncode == 0 and "purged 2" in purged.stdout, purged.stderr
        # And the replayed job is back on its queue, the DLQ is empty
        [again] = await b.fetch("w", 3, block=5)
        assert again.id == "j1"
        assert await b.ack(again)
        assert await b.count_dead_letters() == 0
    finally:
        await b.close()


async def test_queue_ls_lists_the_workerfleet_queues_of_a_rabbitmq_vhost(
    rabbitmq_server: Any,
) -> None:
    # Given two workerfleet queues with jobs (the node is shared: names of this test's own)
    tag = uuid.uuid4().hex[:6]
    names = [f"ls-a.{tag}", f"ls-b:{tag}"]  # dots and colons are allowed in queue names
    url = f"{rabbitmq_server.url}?management_port={rabbitmq_server.management_port}"
    for name, jobs in zip(names, (2, 1), strict=True):
        b = rabbitmq_broker.RabbitMQBroker(rabbitmq_server.url, name, prefetch=5)
        try:
            await b.enqueue_many(
                [base.EnqueueRequest(envelope.build_envelope("t", {})) for _ in range(jobs)]
            )
        finally:
            await b.close()
    # When the vhost's queues are listed (the management API samples every few seconds)
    listed: list[dict[str, Any]] = []
    for _ in range(20):
        out = await asyncio.to_thread(
            subprocess.run,
            [CLI, "queue", "ls", "--json", "--broker-url", url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        listed = [q for q in json.loads(out.stdout) if q["queue"].endswith(tag)]
        if [q["backlog"] for q in listed] == [2, 1]:
            break
        await asyncio.sleep(0.5)
    # Then both are there, sorted, with their backlogs
    assert [(q["queue"], q["backlog"]) for q in listed] == [(names[0], 2), (names[1], 1)]
