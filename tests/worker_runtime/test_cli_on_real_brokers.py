"""The dlq, queue and enqueue commands on real RabbitMQ and SQS (ElasticMQ) through --broker-url.

Run as real processes (``python -m worker_runtime``) against the private servers of
tests/conftest.py; the dead letters are made through the broker's own API (enqueue, fetch,
dead-letter with a failure), and what the commands did is read back through the commands and
the broker. ``queue jobs --in-flight`` is not served by these brokers (no ``InFlightJobs``):
the command says so in one line naming the broker.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest

from tests.support import elasticmq
from tests.support.cli import run_cli
from worker_runtime import brokers
from worker_runtime import envelope as envelope_mod
from worker_runtime.brokers import base

pytestmark = pytest.mark.timeout(240)

SERVERS = {"rabbitmq": ("rabbitmq_server", "RabbitMQ"), "sqs": ("elasticmq_server", "SQS")}


async def _fetch_one(broker: Any) -> base.Delivery:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # bounded: SQS long-polls, RabbitMQ pushes
        got = await broker.fetch("w-seed", 1, block=1.0)
        if got:
            return got[0]  # type: ignore[no-any-return]
    raise AssertionError("the seeded job was never delivered")


def _seed(url: str, queue: str) -> dict[str, str]:
    """Two dead letters (charge_card: ValueError, send_email: TimeoutError)."""

    async def go() -> dict[str, str]:
        broker = await brokers.open_broker(url, queue)
        ids: dict[str, str] = {}
        try:
            for task, error in (("charge_card", "ValueError"), ("send_email", "TimeoutError")):
                env = envelope_mod.build_envelope(task, {"task": task})
                await broker.enqueue(base.EnqueueRequest(envelope=env))
                d = await _fetch_one(broker)
                failure = base.Failure(error, f"{task} failed", "Traceback: here", "w-seed")
                assert await broker.dead_letter(d, "max_attempts", failure=failure)
                ids[task] = d.id
        finally:
            await broker.close()
        return ids

    return asyncio.run(go())


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_dlq_triage_and_enqueue_work_on_the_broker_and_in_flight_is_refused_by_name(
    kind: str, request: pytest.FixtureRequest
) -> None:
    fixture, name = SERVERS[kind]
    server = request.getfixturevalue(fixture)
    queue = f"cli-{uuid.uuid4().hex[:10]}"
    # (RabbitMQ's stats come from its management API, on the port the URL names)
    url = server.url + (f"?management_port={server.management_port}" if kind == "rabbitmq" else "")
    # Given two dead letters on a real broker
    ids = _seed(url, queue)
    flags = ("--broker-url", url, "-q", queue)

    def cli(*args: str) -> Any:
        out = run_cli(*args, *flags)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    # When the triage commands read and change its DLQ
    assert {d["job_id"] for d in cli("dlq", "ls", "--json")} == set(ids.values())
    shown = cli("dlq", "show", ids["charge_card"], "--json")
    assert shown["envelope"]["payload"] == {"task": "charge_card"}
    assert [f["error_type"] for f in shown["history"]] == ["ValueError"]
    summary = cli("dlq", "summary", "--json")
    assert {(g["error_type"], g["count"]) for g in summary["groups"]} == {
        ("ValueError", 1),
        ("TimeoutError", 1),
    }
    dry = cli("dlq", "replay", "--error", "TimeoutError", "--dry-run", "--json")
    assert dry["job_ids"] == [ids["send_email"]]
    assert len(cli("dlq", "ls", "--json")) == 2  # the dry run changed nothing
    assert cli("dlq", "replay", "--task", "send_email", "--json")["replayed"] == 1
    # Then the replayed one left the DLQ and the other one is still there
    assert [d["job_id"] for d in cli("dlq", "ls", "--json")] == [ids["charge_card"]]
    # And a purge of everything deletes it
    assert cli("dlq", "purge", "--all", "--yes", "--json") == {"purged": 1}
    assert cli("dlq", "ls", "--json") == []
    # And enqueue and stats go through the same broker
    assert cli("enqueue", "resize", '{"w": 1}', "--json")["created"] is True
    assert cli("queue", "stats", "--json")["queue"] == queue
    # And the in-flight listing, which this broker does not implement, is refused by name
    refused = run_cli("queue", "jobs", "--in-flight", *flags)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"the {name} broker cannot list the jobs in flight" in refused.stderr
    assert "InFlightJobs" in refused.stderr


@pytest.mark.parametrize("kind", ["redis", *sorted(SERVERS)])
def test_every_broker_answers_the_same_purge_command_lines_the_same_way(
    kind: str, request: pytest.FixtureRequest
) -> None:
    fixture = "redis_server" if kind == "redis" else SERVERS[kind][0]
    server = request.getfixturevalue(fixture)
    url = server.url + (f"?management_port={server.management_port}" if kind == "rabbitmq" else "")
    # Given two dead letters from now on a real broker
    queue = f"cli-{uuid.uuid4().hex[:10]}"
    ids = _seed(url, queue)
    flags = ("--broker-url", url, "-q", queue)

    def purge(*args: str) -> tuple[int, str, str]:
        out = run_cli("dlq", "purge", *args, *flags)
        assert "Traceback" not in out.stderr, out.stderr
        return out.returncode, out.stdout, out.stderr

    def listed() -> set[str]:
        out = run_cli("dlq", "ls", "--json", *flags)
        assert out.returncode == 0, out.stderr
        return {d["job_id"] for d in json.loads(out.stdout)}

    # When --all comes with an age (every broker read it its own way: all, the old ones, a
    # traceback), and ids with an age (the age was dropped)
    all_and_age = purge("--all", "--older-than", "1h", "--yes")
    ids_and_age = purge(ids["charge_card"], "--older-than", "1h", "--yes")
    # Then each is a usage error in one line, and nothing is deleted
    assert all_and_age[:2] == (2, "")
    assert all_and_age[2].startswith("workerfleet: --all deletes every dead letter: pass it")
    assert ids_and_age[:2] == (2, "")
    assert ids_and_age[2].startswith("workerfleet: name job ids or select with --older-than")
    # And a purge by age asks for --yes first, like --all
    unconfirmed = purge("--older-than", "0")
    assert unconfirmed[0] == 2 and "add --yes to confirm" in unconfirmed[2]
    assert listed() == set(ids.values())
    # And confirmed, an age that spares them deletes none, one that covers them deletes both
    spared = purge("--older-than", "1h", "--yes", "--json")
    assert (spared[0], json.loads(spared[1])) == (0, {"purged": 0}), spared[2]
    assert listed() == set(ids.values())
    covered = purge("--older-than", "0", "--yes", "--json")
    assert (covered[0], json.loads(covered[1])) == (0, {"purged": 2}), covered[2]
    assert listed() == set()


def _list_queues(url: str) -> list[str]:
    async def go() -> list[str]:
        broker = await brokers.open_broker(url, "workerfleet-test", role="reader")
        try:
            assert isinstance(broker, base.QueueListing)
            return await broker.list_queues()
        finally:
            await broker.close()

    return asyncio.run(go())


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_reading_the_dead_letters_of_a_mistyped_queue_creates_no_queue_and_names_the_real_one(
    kind: str, request: pytest.FixtureRequest
) -> None:
    fixture, _ = SERVERS[kind]
    server = request.getfixturevalue(fixture)
    url = server.url + (f"?management_port={server.management_port}" if kind == "rabbitmq" else "")
    # Given a queue with dead letters on a real broker, and its name with one letter missing
    queue = f"cli-{uuid.uuid4().hex[:10]}"
    _seed(url, queue)
    typo = queue[:-1]
    flags = ("--broker-url", url, "-q", typo)
    # When the dead letters and stats are read under the mistyped name
    for command, code in (
        (("dlq", "ls"), 0),
        (("dlq", "summary"), 0),
        (("dlq", "show", "no-such-job"), 1),  # 1: no such dead letter
        (("queue", "stats"), 0),
    ):
        out = run_cli(*command, *flags)
        # Then each answers as for an empty queue and says no such queue held a job, naming
        # the real one
        assert out.returncode == code, out.stderr
        assert f"no queue named '{typo}' has held a job" in out.stderr, command
        assert f"did you mean '{queue}'?" in out.stderr, command
    # And none of them created the mistyped queue (RabbitMQ would have declared four queues
    # for it, SQS two, and the next read would find it)
    listed = _list_queues(url)
    assert queue in listed and typo not in listed


def _open_worker_queue(url: str, queue: str) -> None:
    """The queue as a worker opens it: a 7 s lease and redrive after 3 receives."""

    async def go() -> None:
        options = base.QueueOptions(lease_seconds=7, max_deliveries=2)
        broker = await brokers.open_broker(url, queue, options=options)
        await broker.close()

    asyncio.run(go())


def test_the_queue_dlq_and_enqueue_commands_leave_the_workers_sqs_queue_settings_alone(
    elasticmq_server: elasticmq.ElasticMQServer,
) -> None:
    # Given an SQS queue a worker opened with its own lease (7 s) and poison limit (3 receives)
    url, queue = elasticmq_server.url, f"cli-{uuid.uuid4().hex[:10]}"
    _open_worker_queue(url, queue)
    assert asyncio.run(elasticmq.fetch_queue_settings(url, queue)) == ("7", 3)
    flags = ("--broker-url", url, "-q", queue)
    # When an operator reads its stats and dead letters and enqueues a job and replays
    for command, code in (
        (("queue", "stats", "--json"), 0),
        (("dlq", "ls", "--json"), 0),
        (("dlq", "show", "no-such-job", "--json"), 1),  # 1: no such dead letter
        (("enqueue", "resize", '{"w": 1}', "--json"), 0),
        (("dlq", "replay", "--all", "--json"), 0),
    ):
        out = run_cli(*command, *flags)
        # Then each command ran and the worker's settings are still the queue's
        assert out.returncode == code, out.stderr
        assert asyncio.run(elasticmq.fetch_queue_settings(url, queue)) == ("7", 3), command
