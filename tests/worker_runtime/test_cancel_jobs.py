"""Cancelling jobs that have not started: Redis' script, the producer API, ``workerfleet job
cancel`` on a real redis-server, and the one clear refusal on brokers that cannot cancel or
look jobs up (``job cancel``'s and ``job show``'s, tested together: they are the same shape).

What every broker that can cancel promises is in the contract suite
(tests/worker_runtime/brokers/test_contract.py, ``-k cancel``); here are the Redis engine's own
checks (a backlog longer than one page of its scan, an entry the script did not delete), the
producers' ``cancel``, the command line, and RabbitMQ and SQS saying they cannot.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis
import redis.asyncio

from tests.support import brokers as support
from tests.support import engine as es
from tests.support.cli import run_cli, run_job_command_interrupted
from worker_runtime import cli, errors, producer
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker
from worker_runtime.brokers.redis import keys, queue, stats
from worker_runtime.brokers.sqs import broker as sqs_broker

CANCELLED = base.CancelOutcome.CANCELLED


# -- Redis: the script ---------------------------------------------------------------------------


async def test_a_job_behind_more_than_one_page_of_backlog_is_found_and_its_entry_deleted(
    redis_client: Any, queue_name: str
) -> None:
    # Given 2,500 waiting jobs, then the one to cancel (the script reads 1,000 entries a page)
    engine = es.make_engine(redis_client, queue_name)
    for _ in range(5):
        await engine.enqueue_many([es.request() for _ in range(500)])
    [target] = await engine.enqueue_many([es.request()])
    # When it is cancelled
    answer = await engine.cancel_jobs([target.job_id])
    # Then its stream entry is gone with it (the stream holds only the others) and it is
    # never fetched
    k = keys.build_keys(queue_name)
    assert answer == [CANCELLED]
    assert await redis_client.xlen(k.ready[keys.PRIORITIES.index("normal")]) == 2500
    fetched: set[str] = set()
    for _ in range(5):
        fetched |= {job.id for job in await engine.fetch("w1", 1000)}
    assert len(fetched) == 2500 and target.job_id not in fetched


async def test_a_cancelled_job_is_not_fetched_from_an_entry_the_cancel_did_not_delete(
    redis_client: Any, queue_name: str
) -> None:
    # Given a waiting job whose id is also in a stream entry the cancel will not look at (an
    # entry of another priority, as a structure the script cannot see would hold it)
    engine = es.make_engine(redis_client, queue_name)
    [res] = await engine.enqueue_many([es.request()])
    k = keys.build_keys(queue_name)
    high = k.ready[keys.PRIORITIES.index("high")]
    await redis_client.xadd(high, {"j": res.job_id})
    # When it is cancelled and a worker fetches
    answer = await engine.cancel_jobs([res.job_id])
    got = await engine.fetch("w1", 10)
    # Then nothing is handed out, nor dead-lettered: the job is gone, and the stray entry was
    # dropped by the fetch
    assert answer == [CANCELLED]
    assert got == []
    assert not engine.dead_lettered_by_fetch
    assert await redis_client.zcard(k.dlq) == 0
    assert await redis_client.xlen(high) == 0


async def test_a_cancel_counts_the_jobs_it_cancelled_in_the_queue_counters(
    redis_client: Any, queue_name: str
) -> None:
    # Given two waiting jobs
    engine = es.make_engine(redis_client, queue_name)
    ids = [r.job_id for r in await engine.enqueue_many([es.request(), es.request()])]
    # When both and an unknown id are cancelled
    await engine.cancel_jobs([*ids, "nope"])
    # Then the counter says two, and the live job's keys hold nothing of them
    k = keys.build_keys(queue_name)
    assert await redis_client.hget(k.counters, "cancelled") == "2"
    assert await redis_client.hlen(k.state) == 0
    assert await redis_client.hlen(k.env) == 0


# -- the producers -------------------------------------------------------------------------------


async def test_the_async_producer_cancels_a_waiting_job_and_says_why_it_did_not(
    redis_client: Any, queue_name: str
) -> None:
    # Given a producer and one job it enqueued
    p = producer.Producer(redis_client, queue_name)
    res = await p.enqueue("t", {"n": 1}, delay=60.0)
    # When it cancels the job, then the job again, then an id never enqueued
    first = await p.cancel(res.job_id)
    again = await p.cancel(res.job_id)
    # Then the first is cancelled and the others are unknown
    assert (first, again) == (CANCELLED, base.CancelOutcome.UNKNOWN)
    assert await p.cancel_many(["x", "y"]) == [base.CancelOutcome.UNKNOWN] * 2


async def test_the_producer_cancels_a_job_id_that_is_not_utf8_by_its_own_bytes(
    engine_client: Any, queue_name: str
) -> None:
    # Given a dead letter whose id is the bytes b"bad\xff", as another producer wrote it (on a
    # single Redis and on Redis Cluster)
    k = keys.build_keys(queue_name)
    record = b'{"id":"bad\xff","reason":"max_deliveries","envelope":"{}"}'
    await engine_client.hset(k.dlq_data, b"bad\xff", record)
    await engine_client.zadd(k.dlq, {b"bad\xff": 1700000000000})
    # When the producer cancels that id (its bytes as lone surrogates, as Python reads them
    # from a command line) and another such id never enqueued
    p = producer.Producer(engine_client, queue_name)
    answer = await p.cancel_many(["bad\udcff", "gone\udcfe"])
    # Then each is judged by its own bytes: the first is refused as dead-lettered (its record
    # found), the other unknown, and the dead letter is kept
    assert answer == [base.CancelOutcome.DEAD_LETTERED, base.CancelOutcome.UNKNOWN]
    assert await engine_client.zcard(k.dlq) == 1


def test_the_blocking_producer_cancels_a_waiting_job(redis_server: Any, queue_name: str) -> None:
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    try:
        p = producer.SyncProducer(client, queue_name)
        res = p.enqueue("t", {"n": 1})
        assert p.cancel(res.job_id) == CANCELLED
        assert p.cancel_many([res.job_id]) == [base.CancelOutcome.UNKNOWN]
    finally:
        client.close()


async def test_a_producer_on_the_memory_broker_cancels_through_the_broker() -> None:
    from worker_runtime.brokers import memory

    broker = memory.MemoryBroker("q")
    p = producer.Producer.on_broker(broker)
    res = await p.enqueue("t", {"n": 1})
    assert await p.cancel(res.job_id) == CANCELLED


# -- brokers that cannot cancel or look jobs up (job cancel's and job show's refusals) ----------

BROKERS_THAT_CANNOT = [
    (rabbitmq_broker.RabbitMQBroker, rabbitmq_broker.CAPABILITIES, "RabbitMQ"),
    (sqs_broker.SqsBroker, sqs_broker.STANDARD_CAPABILITIES, "SQS"),
    (sqs_broker.SqsBroker, sqs_broker.FIFO_CAPABILITIES, "SQS"),
]
"""RabbitMQ and SQS (both kinds of queue), which declare they can neither cancel nor look a
job up by id."""

BY_ID = {
    "cancel": ("cancel_by_id", "cancel a job by id"),
    "show": ("status_by_id", "look a job up by id"),
}
"""Per ``job`` command: the capability it needs and the words of its refusal."""


async def _call_by_id(command: str, broker: Any) -> None:
    """The seam's call behind ``job COMMAND``, for one id."""
    if command == "cancel":
        await base.cancel_jobs(broker, ["job-1"])
    else:
        await base.fetch_job_status(broker, ["job-1"])


async def _call_producer_by_id(command: str, broker: Any) -> None:
    """The producer's call behind ``job COMMAND``, for one id."""
    p = producer.Producer.on_broker(broker)
    if command == "cancel":
        await p.cancel("job-1")
    else:
        await p.status("job-1")


@pytest.mark.parametrize("command", sorted(BY_ID))
@pytest.mark.parametrize(("cls", "capabilities", "name"), BROKERS_THAT_CANNOT)
async def test_rabbitmq_and_sqs_refuse_a_cancel_or_a_look_up_naming_the_broker(
    command: str, cls: type[Any], capabilities: base.Capabilities, name: str
) -> None:
    # Given a RabbitMQ or SQS broker, which declares it cannot cancel or look jobs up by id
    capability, words = BY_ID[command]
    broker = support.build_unopened_broker(cls, capabilities)
    assert getattr(capabilities, capability) is False
    # When a job is cancelled or looked up through the seam or the producer
    # Then each says, in one line, which broker cannot
    expected = f"the {name} broker cannot {words}"
    with pytest.raises(errors.CapabilityMissing, match=expected):
        await _call_by_id(command, broker)
    with pytest.raises(errors.CapabilityMissing, match=expected):
        await _call_producer_by_id(command, broker)


@pytest.mark.parametrize("command", sorted(BY_ID))
@pytest.mark.parametrize(
    ("cls", "capabilities", "url", "name"),
    [
        (rabbitmq_broker.RabbitMQBroker, rabbitmq_broker.CAPABILITIES,
         "amqp://guest:guest@127.0.0.1:1/", "RabbitMQ"),
        (sqs_broker.SqsBroker, sqs_broker.STANDARD_CAPABILITIES, "sqs://127.0.0.1:1", "SQS"),
    ],
)  # fmt: skip
def test_job_cancel_and_show_on_rabbitmq_and_sqs_exit_2_with_one_line_naming_it(
    command: str,
    cls: type[Any],
    capabilities: base.Capabilities,
    url: str,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given the command line's broker is RabbitMQ or SQS (a stand-in object: no server is
    # needed, the refusal comes before anything is sent)
    support.open_unconnected_brokers(monkeypatch, cls, capabilities)
    # When a job is cancelled or looked up
    code = cli.main(["job", command, "job-1", "--broker-url", url, "-q", "q"])
    # Then it exits 2 with one line naming the broker, and prints nothing on stdout
    out = capsys.readouterr()
    assert code == 2
    assert out.out == ""
    assert out.err.startswith(f"workerfleet: the {name} broker cannot {BY_ID[command][1]}")
    assert out.err.count("\n") == 1


# -- workerfleet job cancel on a real redis-server ----------------------------------------------


def _seed(url: str, queue_name: str) -> dict[str, str]:
    """One job of each kind: running (held by a worker), dead-lettered, waiting, scheduled."""

    async def go() -> dict[str, str]:
        client = redis.asyncio.Redis.from_url(url, decode_responses=True)
        try:
            engine = queue.QueueClient(client, queue_name)
            ids: dict[str, str] = {}
            await engine.enqueue(es.request())
            (ids["running"],) = [job.id for job in await engine.fetch("w-busy", 1)]
            await engine.enqueue(es.request())
            (dead,) = await engine.fetch("w-dead", 1)
            assert await engine.dead_letter(dead, "non_retryable", failure=es.failure())
            ids["dead"] = dead.id
            ids["waiting"] = (await engine.enqueue(es.request())).job_id
            ids["scheduled"] = (await engine.enqueue(es.request(delay=600.0))).job_id
            return ids
        finally:
            await client.aclose()

    return asyncio.run(go())


def _stats(url: str, queue_name: str) -> base.QueueStats:
    async def go() -> base.QueueStats:
        client = redis.asyncio.Redis.from_url(url, decode_responses=True)
        try:
            return await stats.fetch_queue_stats(client, queue_name)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_job_cancel_says_per_id_what_happened_and_exits_1_when_some_were_not_cancelled(
    redis_server: Any, queue_name: str
) -> None:
    # Given a running, a dead-lettered, a waiting and a scheduled job
    ids = _seed(redis_server.url, queue_name)
    # When all four and an unknown id are cancelled from the command line
    named = [ids["waiting"], ids["scheduled"], ids["running"], ids["dead"], "no-such-job"]
    result = run_cli("job", "cancel", *named, redis_url=redis_server.url, queue_name=queue_name)
    # Then each id has its line, the summary counts them, and the exit code says not all were
    lines = result.stdout.splitlines()
    assert result.returncode == 1, result.stderr
    assert lines[0] == f"cancelled {ids['waiting']}"
    assert lines[1] == f"cancelled {ids['scheduled']}"
    assert lines[2].startswith(f"refused {ids['running']}: running")
    assert lines[3].startswith(f"refused {ids['dead']}: dead-lettered")
    assert "dlq purge" in lines[3]
    assert lines[4].startswith("unknown no-such-job: no such job")
    assert lines[5] == (
        f"cancelled 2 of 5 job(s) on {queue_name} (1 running, 1 dead-lettered, 1 unknown)"
    )
    # and the queue holds no waiting job any more, the running one and the dead letter stay
    s = _stats(redis_server.url, queue_name)
    assert (s.backlog, s.future_delayed, s.in_flight, s.dead_letter) == (0, 0, 1, 1)


def test_job_cancel_exits_0_when_every_id_was_cancelled_and_answers_in_json(
    redis_server: Any, queue_name: str
) -> None:
    # Given a waiting and a scheduled job
    ids = _seed(redis_server.url, queue_name)
    named = [ids["waiting"], ids["scheduled"]]
    # When both are cancelled, one named twice, with --json
    result = run_cli(
        "job", "cancel", *named, ids["waiting"], "--json",
        redis_url=redis_server.url, queue_name=queue_name,
    )  # fmt: skip
    # Then it exits 0 and the JSON gives each id's outcome once
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == {
        "queue": queue_name,
        "outcomes": {ids["waiting"]: "cancelled", ids["scheduled"]: "cancelled"},
        "cancelled": 2,
        "asked": 2,
    }


def test_job_cancel_says_on_stderr_which_ids_it_did_not_cancel_even_in_json(
    redis_server: Any, queue_name: str
) -> None:
    # Given a running, a dead-lettered, a waiting and a scheduled job
    ids = _seed(redis_server.url, queue_name)
    # When the running one, the dead letter and an unknown id are cancelled with --json
    result = run_cli(
        "job", "cancel", ids["running"], ids["dead"], "no-such-job", "--json",
        redis_url=redis_server.url, queue_name=queue_name,
    )  # fmt: skip
    # Then it exits 1 and stderr says which were refused and which are unknown, as job show
    # and the dlq commands say what they did not do (stdout is the JSON alone)
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["cancelled"] == 0
    assert result.stderr.splitlines() == [
        f"workerfleet: 2 of 3 job id(s) refused in {queue_name} (running or dead-lettered): "
        f"{ids['running']}, {ids['dead']}",
        f"workerfleet: 1 of 3 job id(s) unknown in {queue_name}: no-such-job",
    ]


def test_job_cancel_on_a_mistyped_queue_name_notes_the_queues_there_are(
    redis_server: Any, queue_name: str
) -> None:
    # Given a queue with a waiting job
    ids = _seed(redis_server.url, queue_name)
    # When the job is cancelled on a queue name with a typo
    result = run_cli(
        "job", "cancel", ids["waiting"], redis_url=redis_server.url, queue_name=queue_name + "x"
    )
    # Then the id reads unknown, exit 1, and a note names the queue it may have meant, as job
    # show's does: every id of a mistyped queue reads unknown, which looks like a typo in them
    assert result.returncode == 1, result.stderr
    assert f"unknown {ids['waiting']}: no such job waiting in {queue_name}x" in result.stdout
    assert (
        f"note: no queue named '{queue_name}x' has held a job on this broker; "
        f"did you mean '{queue_name}'?"
    ) in result.stderr


def test_queue_stats_shows_the_cancelled_total_so_the_totals_add_up(
    redis_server: Any, queue_name: str
) -> None:
    # Given a running, a dead-lettered, a waiting and a scheduled job, the last two cancelled
    ids = _seed(redis_server.url, queue_name)
    cancel = run_cli(
        "job", "cancel", ids["waiting"], ids["scheduled"],
        redis_url=redis_server.url, queue_name=queue_name,
    )  # fmt: skip
    assert cancel.returncode == 0, cancel.stderr
    # When on-call reads the queue's stats, as text and as JSON
    shown = run_cli("queue", "stats", redis_url=redis_server.url, queue_name=queue_name)
    as_json = run_cli("queue", "stats", "--json", redis_url=redis_server.url, queue_name=queue_name)
    # Then the text shows the cancelled total beside the others: 4 enqueued, 1 dead-lettered,
    # 2 cancelled (and 1 still in flight)
    assert shown.returncode == 0, shown.stderr
    totals = {
        label: row.split()[-1]
        for row in shown.stdout.splitlines()
        for label in ("enqueued total", "dead-lettered total", "cancelled total")
        if row.strip().startswith(label)
    }
    assert totals == {"enqueued total": "4", "dead-lettered total": "1", "cancelled total": "2"}
    # And the JSON has it too
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert (data["enqueued_total"], data["cancelled_total"], data["in_flight"]) == (4, 2, 1)


def test_ctrl_c_stops_job_cancel_between_calls_and_says_what_was_answered(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given 600 waiting jobs on an in-process queue (two calls of 500 ids)
    # When the 600 are cancelled, with a Ctrl-C while the first call runs
    code, calls = run_job_command_interrupted(monkeypatch, "cancel", "cancel_jobs")
    # Then the first call's 500 are cancelled and reported, the second call is never made, and the
    # summary says what was left unanswered, with the shell's code for SIGINT
    out = capsys.readouterr()
    assert code == cli.INTERRUPTED_EXIT
    assert calls == 1
    assert out.out.count("\ncancelled ") + out.out.startswith("cancelled ") == 500
    assert "interrupted: cancelled 500 of 600 job(s) on q; 100 id(s) not answered" in out.err


def test_a_second_ctrl_c_cuts_a_hung_job_cancel_call_and_its_json_says_what_it_may_have_done(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given 600 waiting jobs on an in-process queue (two calls of 500)
    # When the 600 are cancelled with --json, and Ctrl-C is pressed twice while the first call
    # hangs
    code, calls = run_job_command_interrupted(
        monkeypatch, "cancel", "cancel_jobs", presses=2, json=True
    )
    # Then the hung call is cut, no second call is made, and the JSON says it was interrupted
    # and what the cut call may have done, as the dlq commands' JSON does (cut_call)
    out = capsys.readouterr()
    assert code == cli.INTERRUPTED_EXIT
    assert calls == 1
    data = json.loads(out.out)
    assert (data["interrupted"], data["cancelled"], data["asked"]) == (True, 0, 600)
    assert data["cut_call"] == "the call stopped at the second Ctrl-C may have cancelled some"
    assert "interrupted: cancelled 0 of 600 job(s) on q; 600 id(s) not answered; the call " in (
        out.err
    )
