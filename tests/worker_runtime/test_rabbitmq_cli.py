"""`workerfleet dlq ls|show|replay|purge` and `queue stats` work on a RabbitMQ queue.

The real CLI in a subprocess against the session's private rabbitmq-server
(tests/support/rabbitmq_server.py); the dead letters are made through the RabbitMQ broker and
what the CLI did is read back through it.
"""

from __future__ import annotations

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
