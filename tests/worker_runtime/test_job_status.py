"""Looking jobs up by id ("where is my job?"): Redis' read-only script, the producer API,
and ``workerfleet job show`` on a real redis-server.

What every broker that can look jobs up promises (each state after the operations that lead to
it) is in the contract suite (tests/worker_runtime/brokers/test_contract.py, ``-k status``);
here are the Redis engine's own cases, the producers' ``status`` and the command line. RabbitMQ
and SQS saying they cannot is tested with their cancel refusal in test_cancel_jobs.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
import redis
import redis.asyncio

from tests.support import engine as es
from tests.support.cli import run_cli, run_job_command_interrupted
from worker_runtime import cli, errors, producer
from worker_runtime.brokers import base
from worker_runtime.brokers.redis import keys, queue

JobState = base.JobState


# -- Redis: the script ---------------------------------------------------------------------------


async def test_an_id_enqueued_again_while_its_dead_letter_waits_reads_as_the_live_job(
    redis_client: Any, queue_name: str
) -> None:
    # Given a job that was dead-lettered, and the same id enqueued again since (past the
    # enqueue-dedup window)
    engine = es.make_engine(redis_client, queue_name, enqueue_dedup_seconds=0.0)
    req = es.request(task="again")
    await engine.enqueue(req)
    [job] = await engine.fetch("w1", 1)
    assert await engine.dead_letter(job, "non_retryable", failure=es.failure())
    assert (await engine.enqueue(req)).created
    # When it is looked up
    [found] = await engine_status(redis_client, queue_name, [job.id])
    # Then it reads as the live job (waiting), not as its old dead letter
    assert (found.state, found.attempts, found.dead_letter_reason) == (JobState.WAITING, 0, None)


async def test_a_job_whose_envelope_is_not_json_is_still_found_without_a_task(
    redis_client: Any, queue_name: str
) -> None:
    # Given a waiting job whose stored envelope was overwritten with bytes that are not JSON
    engine = es.make_engine(redis_client, queue_name)
    [res] = await engine.enqueue_many([es.request()])
    await redis_client.hset(keys.build_keys(queue_name).env, res.job_id, "\xff not json")
    # When it is looked up
    [found] = await engine_status(redis_client, queue_name, [res.job_id])
    # Then its place is known, its task and enqueue time are not
    assert (found.state, found.task, found.enqueued_at) == (JobState.WAITING, None, None)


async def test_a_status_call_writes_nothing(redis_client: Any, queue_name: str) -> None:
    # Given a queue with a scheduled, a running and a waiting job
    engine = es.make_engine(redis_client, queue_name)
    [scheduled] = await engine.enqueue_many([es.request(delay=60.0)])
    [run] = await engine.enqueue_many([es.request()])
    assert [job.id for job in await engine.fetch("w1", 1)] == [run.job_id]
    [waiting] = await engine.enqueue_many([es.request()])
    before = await _dump_all(redis_client)
    # When every one of them and an unknown id are looked up
    ids = [waiting.job_id, scheduled.job_id, run.job_id, "nope"]
    statuses = await engine_status(redis_client, queue_name, ids)
    # Then each is where it is, and no key of the server changed
    assert [s.state for s in statuses] == [
        JobState.WAITING, JobState.SCHEDULED, JobState.RUNNING, JobState.UNKNOWN,
    ]  # fmt: skip
    assert await _dump_all(redis_client) == before


async def test_a_status_look_up_answers_on_a_redis_that_is_out_of_memory(
    redis_client: Any, queue_name: str
) -> None:
    # Given a waiting job, and then Redis full (maxmemory below what it uses, noeviction):
    # when an on-call engineer most needs to know where jobs are
    engine = es.make_engine(redis_client, queue_name)
    [res] = await engine.enqueue_many([es.request()])
    await redis_client.config_set("maxmemory", "1")
    try:
        # When the job is looked up
        [found] = await engine_status(redis_client, queue_name, [res.job_id])
    finally:
        await redis_client.config_set("maxmemory", "0")
    # Then it is found (the script declares it writes nothing, so Redis runs it)
    assert found.state is JobState.WAITING


async def _dump_all(client: Any) -> dict[str, Any]:
    return {key: await client.dump(key) async for key in client.scan_iter(count=1000)}


async def engine_status(client: Any, queue_name: str, ids: list[str]) -> list[base.JobStatus]:
    return await producer.Producer(client, queue_name).status_many(ids)


# -- the producers -------------------------------------------------------------------------------


async def test_the_async_producer_says_where_a_job_is(redis_client: Any, queue_name: str) -> None:
    # Given a producer and a job it scheduled a minute ahead
    p = producer.Producer(redis_client, queue_name)
    res = await p.enqueue("report", {"n": 1}, delay=60.0)
    # When it asks where the job is, and where an id never enqueued is
    found = await p.status(res.job_id)
    missing = await p.status("no-such-job")
    # Then the job is scheduled about a minute ahead, and the other unknown
    assert (found.state, found.task, found.retry) == (JobState.SCHEDULED, "report", False)
    assert found.due_at is not None and 59.0 < found.due_at - found.checked_at <= 60.0
    assert (missing.state, missing.enqueued_at) == (JobState.UNKNOWN, None)


@pytest.mark.parametrize("decode", [True, False])
def test_the_blocking_producer_says_where_a_job_is(
    redis_server: Any, queue_name: str, decode: bool
) -> None:
    client = redis.Redis(port=redis_server.port, decode_responses=decode)
    try:
        p = producer.SyncProducer(client, queue_name)
        res = p.enqueue("t", {"n": 1}, priority="low")
        found = p.status(res.job_id)
        assert (found.state, found.priority, found.task) == (JobState.WAITING, "low", "t")
        assert [s.state for s in p.status_many([res.job_id, "x"])] == [
            JobState.WAITING,
            JobState.UNKNOWN,
        ]
    finally:
        client.close()


_RAW_RECORD = b'{"id":"bad\xff","reason":"max_deliveries","envelope":"{\\"task\\":\\"t\\"}"}'
"""A dead letter whose id is the bytes b"bad\xff", as another producer may have written it."""


async def test_the_producer_finds_a_job_id_that_is_not_utf8_by_its_own_bytes(
    engine_client: Any, queue_name: str
) -> None:
    # Given a dead letter whose id is not UTF-8 (on a single Redis and on Redis Cluster)
    k = keys.build_keys(queue_name)
    await engine_client.hset(k.dlq_data, b"bad\xff", _RAW_RECORD)
    await engine_client.zadd(k.dlq, {b"bad\xff": 1700000000000})
    # When the producer asks where that id is (its bytes as lone surrogates) and where another
    # such id never enqueued is
    p = producer.Producer(engine_client, queue_name)
    found, missing = await p.status_many(["bad\udcff", "gone\udcfe"])
    # Then the first reads as the dead letter its record describes, under the id asked for
    assert (found.job_id, found.state, found.task) == ("bad\udcff", JobState.DEAD_LETTERED, "t")
    assert found.dead_letter_reason == "max_deliveries"
    assert (missing.job_id, missing.state) == ("gone\udcfe", JobState.UNKNOWN)


def _dead_letter_not_utf8(client: redis.Redis, queue_name: str) -> keys.QueueKeys:
    """A dead letter stored under the id ``b"bad\\xff"`` (not UTF-8); the queue's keys."""
    k = keys.build_keys(queue_name)
    client.hset(k.dlq_data, b"bad\xff", _RAW_RECORD)
    client.zadd(k.dlq, {b"bad\xff": 1700000000000})
    return k


def test_the_blocking_producer_finds_a_job_id_that_is_not_utf8_by_its_own_bytes(
    redis_server: Any, queue_name: str
) -> None:
    # Given a dead letter whose id is not UTF-8, and a blocking producer
    client = redis.Redis(port=redis_server.port)
    _dead_letter_not_utf8(client, queue_name)
    try:
        # When it asks where that id is
        found = producer.SyncProducer(client, queue_name).status("bad\udcff")
        # Then it is dead-lettered, under the id asked for
        assert (found.job_id, found.state) == ("bad\udcff", JobState.DEAD_LETTERED)
    finally:
        client.close()


def test_the_blocking_producer_refuses_to_cancel_a_dead_letter_whose_id_is_not_utf8(
    redis_server: Any, queue_name: str
) -> None:
    # Given a dead letter whose id is not UTF-8, and a blocking producer
    client = redis.Redis(port=redis_server.port)
    k = _dead_letter_not_utf8(client, queue_name)
    try:
        # When it is asked to cancel that id
        outcome = producer.SyncProducer(client, queue_name).cancel("bad\udcff")
        # Then the id reached Redis as its own bytes: a dead letter, refused and kept
        assert outcome is base.CancelOutcome.DEAD_LETTERED
        assert client.zscore(k.dlq, b"bad\xff") is not None
    finally:
        client.close()


async def test_a_producer_on_the_memory_broker_looks_up_through_the_broker() -> None:
    from worker_runtime.brokers import memory

    broker = memory.MemoryBroker("q")
    p = producer.Producer.on_broker(broker)
    res = await p.enqueue("t", {"n": 1})
    assert (await p.status(res.job_id)).state is JobState.WAITING


# -- workerfleet job show on a real redis-server -------------------------------------------------


def _seed(url: str, queue_name: str) -> dict[str, str]:
    """One job of each kind: waiting, scheduled, running, waiting to retry, dead-lettered,
    and one acknowledged."""

    async def go() -> dict[str, str]:
        client = redis.asyncio.Redis.from_url(url, decode_responses=True)
        try:
            engine = queue.QueueClient(client, queue_name)
            ids: dict[str, str] = {}
            await engine.enqueue(es.request(task="running-task"))
            (ids["running"],) = [job.id for job in await engine.fetch("w-busy", 1)]
            await engine.enqueue(es.request())
            (retried,) = await engine.fetch("w-r", 1)
            failed = es.failure("SMTP refused\nTraceback line")
            assert await engine.retry(retried, failed, delay_seconds=600.0)
            ids["retry"] = retried.id
            await engine.enqueue(es.request())
            (dead,) = await engine.fetch("w-dead", 1)
            assert await engine.dead_letter(dead, "non_retryable", failure=es.failure("bad"))
            ids["dead"] = dead.id
            await engine.enqueue(es.request())
            (acked,) = await engine.fetch("w-ok", 1)
            assert await engine.ack(acked)
            ids["acked"] = acked.id
            ids["waiting"] = (await engine.enqueue(es.request(task="mail"))).job_id
            ids["scheduled"] = (await engine.enqueue(es.request(delay=600.0))).job_id
            return ids
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_job_show_says_where_each_job_is_and_exits_1_when_some_are_unknown(
    redis_server: Any, queue_name: str
) -> None:
    # Given a waiting, a scheduled, a running, a retrying, a dead-lettered and a finished job
    ids = _seed(redis_server.url, queue_name)
    # When all of them and an id never enqueued are looked up from the command line
    names = ["waiting", "scheduled", "running", "retry", "dead", "acked"]
    named = [ids[n] for n in names] + ["no-such-job"]
    result = run_cli("job", "show", *named, redis_url=redis_server.url, queue_name=queue_name)
    # Then each id has its block, headed by where it is
    assert result.returncode == 1, result.stderr
    blocks: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if not line.startswith(" "):
            head = line.split(": ", 1)[0]
            blocks[head] = []
        blocks[head].append(line)
    assert blocks[ids["waiting"]][0].endswith(
        ": waiting (on the ready queue, for the next free worker)"
    )
    assert blocks[ids["waiting"]][1] == "  task mail, priority normal, attempts 0, deliveries 0"
    assert blocks[ids["scheduled"]][0].endswith(": scheduled")
    assert blocks[ids["scheduled"]][2].startswith("  due 20")
    assert re.fullmatch(r"  due \S+Z \(in \d+\.\dm\)", blocks[ids["scheduled"]][2])
    assert blocks[ids["running"]][0].endswith(": running on worker w-busy")
    assert blocks[ids["running"]][2].startswith("  lease until 20")
    assert blocks[ids["retry"]][0].endswith(": scheduled: a retry waiting out its backoff")
    assert blocks[ids["retry"]][1].endswith("attempts 1, deliveries 1")
    assert re.fullmatch(
        r"  last error \S+Z \(\d+\.\ds ago\), attempt 1: RuntimeError: SMTP refused",
        blocks[ids["retry"]][-1],
    )
    assert blocks[ids["dead"]][0].endswith(": dead-lettered (non_retryable)")
    assert f"workerfleet dlq show {ids['dead']}" in "\n".join(blocks[ids["dead"]])
    # and the finished job and the unknown id both read unknown: a finished job leaves no
    # record, but the queue still remembers enqueuing the first
    assert blocks[ids["acked"]] == [blocks[ids["acked"]][0]]
    assert f": unknown: no longer in {queue_name}, enqueued 20" in blocks[ids["acked"]][0]
    assert blocks["no-such-job"][0].startswith(f"no-such-job: unknown: not in {queue_name}")
    assert result.stderr.startswith(f"workerfleet: 2 of 7 job id(s) unknown in {queue_name}: ")


def test_job_show_exits_0_when_every_id_was_found_and_answers_in_json(
    redis_server: Any, queue_name: str
) -> None:
    # Given a running and a dead-lettered job
    ids = _seed(redis_server.url, queue_name)
    # When both are looked up, one named twice, with --json
    result = run_cli(
        "job", "show", ids["running"], ids["dead"], ids["running"], "--json",
        redis_url=redis_server.url, queue_name=queue_name,
    )  # fmt: skip
    # Then it exits 0 and the JSON gives each id once, with its fields
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["queue"], data["asked"], data["unknown"]) == (queue_name, 2, 0)
    running, dead = data["jobs"]
    assert (running["job_id"], running["state"], running["worker_id"]) == (
        ids["running"], "running", "w-busy",
    )  # fmt: skip
    assert running["lease_expires_at"] > running["checked_at"]
    assert (dead["state"], dead["dead_letter_reason"]) == ("dead_lettered", "non_retryable")
    assert dead["last_failure"]["message"] == "bad"


def test_ctrl_c_stops_job_show_between_calls_and_says_what_was_answered(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given 600 waiting jobs on an in-process queue (two calls of 500 ids)
    # When the 600 are looked up, with a Ctrl-C while the first call runs
    code, calls = run_job_command_interrupted(monkeypatch, "show", "fetch_job_status")
    # Then the first call's 500 are shown, the second call is never made, and the
    # summary says what was left unanswered, with the shell's code for SIGINT
    out = capsys.readouterr()
    assert code == cli.INTERRUPTED_EXIT
    assert calls == 1
    assert out.out.count(": waiting (") == 500
    assert "interrupted: answered 500 of 600 job id(s) on q; 100 id(s) not answered" in out.err


def test_a_broker_error_part_way_through_job_show_exits_1_after_showing_what_it_read(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given 600 ids (two calls of 500) on an in-process queue whose second call with ids fails
    # as a broker that went away does
    from worker_runtime.brokers import memory

    real = memory.MemoryBroker.fetch_job_status
    calls: list[int] = []

    async def failing_second(self: Any, job_ids: Any) -> list[base.JobStatus]:
        calls.append(len(job_ids))
        if len(calls) == 3:  # the capability check, the first 500, then this one
            raise errors.BrokerUnavailable("connection lost", operation="status")
        return await real(self, job_ids)

    monkeypatch.setattr(memory.MemoryBroker, "fetch_job_status", failing_second)
    ids = [f"job-{n}" for n in range(600)]
    try:
        # When they are looked up
        code = cli.main(["job", "show", *ids, "--broker-url", "memory://status-lost", "-q", "q"])
    finally:
        memory.forget_stores()
    # Then the first 500 are shown, and it exits 1 saying what was answered on which queue
    # (as its Ctrl-C line and job cancel's do) and what was not
    out = capsys.readouterr()
    assert code == 1
    assert calls == [0, 500, 100]
    assert out.out.count(": unknown: not in q") == 500
    assert "workerfleet: answered 500 of 600 job id(s) on q, then: connection lost" in out.err
    assert "100 id(s) have no answer" in out.err
