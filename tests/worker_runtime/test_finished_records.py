"""A record of finished jobs on Redis (``QueueOptions.keep_finished_seconds``): what the ack
writes, how it trims, that it writes and reads nothing more when the option is off, what
``workerfleet job show`` prints of a done job, and the worker's setting from its environment.

What every broker that keeps finished records promises (done, then unknown once the keep time
has passed) is in the contract suite (tests/worker_runtime/brokers/test_contract.py,
``-k finished``); here are the Redis keys themselves and the command line.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from typing import Any

import pydantic
import pytest
import redis

from tests.support import engine as es
from tests.support.cli import run_cli
from worker_runtime import app as app_mod
from worker_runtime import config
from worker_runtime.brokers import base
from worker_runtime.brokers.redis import keys, queue, status
from worker_runtime.worker import core

WAIT_SECONDS = 10.0
"""The longest a test waits for its MONITOR thread."""


async def test_an_ack_with_finished_records_kept_writes_the_record_and_its_expiry(
    redis_client: Any, queue_name: str
) -> None:
    # Given a queue that keeps finished records for 60 s, and a job a worker fetched
    engine = es.make_engine(redis_client, queue_name, keep_finished_seconds=60.0)
    k = keys.build_keys(queue_name)
    await engine.enqueue(es.request(task="mail|merge"))
    [job] = await engine.fetch("w1", 1)
    # When it is acknowledged
    assert await engine.ack(job)
    # Then its record says when it finished, its counts, how long it ran and its task (a '|'
    # in the task kept), expiring 60 s later, and both keys expire with the last record
    record = await redis_client.hget(k.finished, job.id)
    finished, attempts, deliveries, run, task = record.split("|", 4)
    assert (attempts, deliveries, task) == ("0", "1", "mail|merge")
    assert int(finished) >= int(job.fetched_at * 1000) and int(run) >= 0
    assert await redis_client.zscore(k.finished_expiry, job.id) == int(finished) + 60_000
    for key in (k.finished, k.finished_expiry):
        assert 59_000 < await redis_client.pttl(key) <= 60_000


async def test_an_ack_trims_at_most_its_own_count_and_ten_expired_records(
    redis_client: Any, queue_name: str
) -> None:
    # Given a queue keeping finished records for 60 s, with 30 records aged past their expiry
    # (their expiry times moved to the past: the records' clock, without waiting)
    engine = es.make_engine(redis_client, queue_name, keep_finished_seconds=60.0)
    k = keys.build_keys(queue_name)
    await engine.enqueue_many([es.request() for _ in range(30)])
    old = await engine.fetch("w1", 30)
    assert all(await asyncio.gather(*(engine.ack(job) for job in old)))
    assert await redis_client.hlen(k.finished) == 30
    await redis_client.zadd(k.finished_expiry, {job.id: 1000 + i for i, job in enumerate(old)})
    # When one more job is acknowledged
    await engine.enqueue(es.request())
    [job] = await engine.fetch("w1", 1)
    assert await engine.ack(job)
    # Then that ack removed 11 expired records (1 acknowledged + 10), oldest first, from both
    # keys, and kept its own
    assert keys.FINISHED_TRIM_EXTRA == 10
    left = {job.id for job in old[11:]} | {job.id}
    assert set(await redis_client.hkeys(k.finished)) == left
    assert set(await redis_client.zrange(k.finished_expiry, 0, -1)) == left


async def test_the_records_of_a_queue_that_stops_acknowledging_go_with_their_keys(
    redis_client: Any, queue_name: str
) -> None:
    # Given a queue keeping finished records for 0.3 s, and a job acked there, then no more
    engine = es.make_engine(redis_client, queue_name, keep_finished_seconds=0.3)
    k = keys.build_keys(queue_name)
    [res] = await engine.enqueue_many([es.request()])
    [job] = await engine.fetch("w1", 1)
    assert await engine.ack(job)
    assert await redis_client.exists(k.finished, k.finished_expiry) == 2
    # When the keep time passes (waited for, at most WAIT_SECONDS: Redis' own clock expires it)
    for _ in range(int(WAIT_SECONDS / 0.05)):  # bounded: 10 s of 50 ms polls
        if not await redis_client.exists(k.finished, k.finished_expiry):
            break
        await asyncio.sleep(0.05)
    # Then both keys are gone and the job reads unknown
    assert await redis_client.exists(k.finished, k.finished_expiry) == 0
    [found] = await queue_status(redis_client, queue_name, res.job_id)
    assert found.state is base.JobState.UNKNOWN


async def test_an_expired_record_not_yet_trimmed_reads_unknown(
    redis_client: Any, queue_name: str
) -> None:
    # Given an acknowledged job whose record has passed its expiry time and was not trimmed
    engine = es.make_engine(redis_client, queue_name, keep_finished_seconds=60.0)
    k = keys.build_keys(queue_name)
    [res] = await engine.enqueue_many([es.request()])
    [job] = await engine.fetch("w1", 1)
    assert await engine.ack(job)
    await redis_client.zadd(k.finished_expiry, {job.id: 1000})
    # When it is looked up
    [status] = await queue_status(redis_client, queue_name, res.job_id)
    # Then it reads unknown, as a trimmed one would
    assert status.state is base.JobState.UNKNOWN
    assert await redis_client.hexists(k.finished, job.id)


async def queue_status(client: Any, queue_name: str, job_id: str) -> list[base.JobStatus]:
    return await status.fetch_job_statuses(client, queue_name, [job_id])


def _monitored(url: str, run: Any) -> list[str]:
    """The commands the server ran (MONITOR) while ``run()`` ran, as their text lines."""
    sync = redis.Redis.from_url(url)
    lines: list[str] = []
    ready, stop = threading.Event(), "workerfleet-monitor-stop"

    def watch() -> None:
        with sync.monitor() as m:
            ready.set()
            for entry in m.listen():
                lines.append(str(entry["command"]))
                if stop in lines[-1]:
                    return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert ready.wait(WAIT_SECONDS)
    time.sleep(0.1)  # MONITOR's reply comes before the server counts it as a monitor
    run()
    sync.echo(stop)
    thread.join(WAIT_SECONDS)
    sync.close()
    assert not thread.is_alive(), "the monitor saw no end mark"
    return lines


def test_with_finished_records_off_an_ack_reads_and_writes_no_finished_key(
    redis_server: Any, queue_name: str
) -> None:
    # Given a queue with the default options (keep_finished_seconds 0), and two fetched jobs
    async def seed() -> list[Any]:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            engine = queue.QueueClient(client, queue_name)
            await engine.enqueue_many([es.request(), es.request()])
            return list(await engine.fetch("w1", 2))
        finally:
            await client.aclose()

    first, second = asyncio.run(seed())

    # When one is acknowledged alone and the other with the next fetch
    def settle() -> None:
        async def go() -> None:
            client = redis.asyncio.Redis.from_url(redis_server.url)
            try:
                engine = queue.QueueClient(client, queue_name)
                assert await engine.ack(first)
                assert (await engine.ack_and_fetch([second], "w1", 1))[0] == [True]
            finally:
                await client.aclose()

        asyncio.run(go())

    lines = _monitored(redis_server.url, settle)
    # Then the scripts ran (their commands are seen), every call with the fixed 15 keys only, and
    # none of them named a finished key; the server holds no such key
    ours = [line for line in lines if queue_name in line]
    assert any("XACK" in line for line in ours) and any("HINCRBY" in line for line in ours)
    assert {line.split()[2] for line in ours if line.startswith("EVALSHA")} == {"15"}
    assert not [line for line in ours if ":finished" in line]
    sync = redis.Redis.from_url(redis_server.url)
    try:
        assert list(sync.scan_iter(match=keys.build_prefix(queue_name) + ":finished*")) == []
    finally:
        sync.close()


def test_job_show_prints_a_done_job_with_its_finish_time_and_attempts(
    redis_server: Any, queue_name: str
) -> None:
    # Given a queue keeping finished records for an hour, a job that failed once and was
    # acknowledged on its second run
    async def seed() -> str:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            engine = es.make_engine(client, queue_name, keep_finished_seconds=3600.0)
            await engine.enqueue(es.request(task="invoice"))
            [job] = await engine.fetch("w1", 1)
            assert await engine.retry(job, es.failure("timeout"), delay_seconds=0.0)
            [again] = await engine.fetch("w1", 1)
            assert await engine.ack(again)
            return str(job.id)
        finally:
            await client.aclose()

    job_id = asyncio.run(seed())
    # When it is looked up from the command line, as text and as JSON
    text = run_cli("job", "show", job_id, redis_url=redis_server.url, queue_name=queue_name)
    data = run_cli(
        "job", "show", job_id, "--json", redis_url=redis_server.url, queue_name=queue_name
    )
    # Then it reads done, with when it finished, how long it ran, its two runs, and exits 0
    assert text.returncode == 0, text.stderr
    head, counts, enqueued = text.stdout.splitlines()
    assert re.fullmatch(rf"{job_id}: done at \S+Z \(\d+\.\ds ago\), its run took \d+\.\ds", head), (
        head
    )
    assert counts == "  task invoice, attempts 2 (1 failed), deliveries 2"
    assert enqueued.startswith("  enqueued 20")
    assert data.returncode == 0, data.stderr
    [job] = json.loads(data.stdout)["jobs"]
    assert (job["state"], job["attempts"], job["task"]) == ("done", 1, "invoice")
    assert job["finished_at"] <= job["checked_at"] and job["run_seconds"] >= 0.0


# -- the setting ---------------------------------------------------------------------------------


def test_the_worker_reads_its_keep_time_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a worker's environment that keeps finished records for a day
    monkeypatch.setenv("WORKERFLEET_REDIS_URL", "redis://127.0.0.1:1")
    monkeypatch.setenv("WORKERFLEET_KEEP_FINISHED_SECONDS", "86400")
    # When its settings are read, and when nothing sets it
    kept = config.WorkerSettings()
    monkeypatch.delenv("WORKERFLEET_KEEP_FINISHED_SECONDS")
    default = config.WorkerSettings()
    # Then the first keeps them a day, the default keeps none, and a worker opens its queue
    # with that setting
    assert (kept.keep_finished_seconds, default.keep_finished_seconds) == (86_400.0, 0.0)
    worker = core.Worker(app_mod.App(queue="q"), kept, install_signal_handlers=False)
    assert worker.options.keep_finished_seconds == 86_400.0


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("-1", r"WORKERFLEET_KEEP_FINISHED_SECONDS=-1 must be between 0 .*\(30 days\)"),
        ("2592001", r"WORKERFLEET_KEEP_FINISHED_SECONDS=2592001 must be between 0"),
        ("nan", r"keep_finished_seconds\n  Input should be a finite number"),
        ("inf", r"keep_finished_seconds\n  Input should be a finite number"),
    ],
)
def test_a_keep_time_below_0_or_above_30_days_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, named: str
) -> None:
    # Given a worker's environment with a keep time out of bounds
    monkeypatch.setenv("WORKERFLEET_REDIS_URL", "redis://127.0.0.1:1")
    monkeypatch.setenv("WORKERFLEET_KEEP_FINISHED_SECONDS", value)
    # When its settings are read, Then they are refused naming the setting and its bounds
    with pytest.raises(pydantic.ValidationError, match=named):
        config.WorkerSettings()


def test_queue_options_refuse_a_keep_time_out_of_bounds_naming_it() -> None:
    # Given keep times below 0 and above 30 days, When queue options are built with them,
    # Then each is refused with the option's name and its bounds
    for seconds in (-1.0, base.KEEP_FINISHED_MAX_SECONDS + 1, float("nan")):
        with pytest.raises(ValueError, match=r"keep_finished_seconds=.* between 0 .*\(30 days\)"):
            base.QueueOptions(keep_finished_seconds=seconds)
    assert base.QueueOptions(keep_finished_seconds=base.KEEP_FINISHED_MAX_SECONDS)
