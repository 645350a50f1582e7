"""An envelope that is not UTF-8 is dead-lettered alone; nothing crashes on its bytes.

Producers in other languages (or a hand-written HSET) can store bytes that are not UTF-8. The
job carrying them goes to the DLQ as ``invalid_envelope`` with its exact bytes kept (base64),
its batch-mates run normally, the worker's fetch loop survives, and every CLI command can
list, show, replay and purge the entry.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pydantic
import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from tests.support import engine as es
from tests.support import raw_dead_letters
from tests.support.cli import run_cli
from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until
from worker_runtime import App, config, envelope, worker
from worker_runtime.brokers.redis import dlq, keys, queue, stats


def _corrupt(client: redis.Redis, queue_name: str, job_id: str) -> bytes:
    """Replace a stored envelope's payload text with Latin-1 bytes (not UTF-8); return them."""
    env_key = keys.build_keys(queue_name).env
    raw = client.hget(env_key, job_id)
    assert isinstance(raw, bytes) and b'"MARK"' in raw
    bad = raw.replace(b'"MARK"', b'"caf\xe9 \xff"')
    client.hset(env_key, job_id, bad)
    return bad


async def test_a_non_utf8_envelope_is_dead_lettered_alone_and_its_batch_mates_are_handed_out(
    engine_client: Any, queue_name: str, request: pytest.FixtureRequest
) -> None:
    # Given five good jobs and one whose stored envelope is not UTF-8
    engine = es.make_engine(engine_client, queue_name)
    results = await engine.enqueue_many(
        [es.request(payload={"n": i}) for i in range(5)] + [es.request(payload={"s": "MARK"})]
    )
    bad_id = results[-1].job_id
    if isinstance(engine_client, redis.asyncio.cluster.RedisCluster):
        port = request.getfixturevalue("redis_cluster").ports[0]
        raw_client: Any = redis.cluster.RedisCluster(host="127.0.0.1", port=port)
    else:
        raw_client = redis.Redis(port=request.getfixturevalue("redis_server").port)
    try:
        bad = _corrupt(raw_client, queue_name, bad_id)
    finally:
        raw_client.close()
    # When a worker fetches the whole batch
    jobs = await engine.fetch("w1", 10)
    # Then it gets the five good jobs, and the bad one is in the DLQ with its exact bytes
    payloads = sorted(json.dumps(j.envelope.payload) for j in jobs)
    assert payloads == [json.dumps({"n": i}) for i in range(5)]
    dead = await dlq.fetch_dead_letter(engine_client, queue_name, bad_id)
    assert dead is not None and dead.reason == "invalid_envelope"
    assert dead.envelope_base64 is not None
    assert base64.b64decode(dead.envelope_base64) == bad
    assert "\\xe9" in dead.envelope_raw and "caf" in dead.envelope_raw
    assert dead.history and "UTF-8" in dead.history[-1].message
    assert engine.dead_lettered_by_fetch == {"invalid_envelope": 1}
    # and the good ones settle normally
    assert all(await asyncio.gather(*(engine.ack(j) for j in jobs)))
    s = await stats.fetch_queue_stats(engine_client, queue_name)
    assert (s.completed_total, s.dead_letter, s.in_flight, s.backlog) == (5, 1, 0, 0)


def test_two_workers_run_the_good_jobs_once_and_dead_letter_only_the_bad_one(
    wf: workerproc.Testbed,
) -> None:
    # Given five good jobs and one non-UTF-8 envelope, lease 1.5 s, at most 2 deliveries
    good = [wf.producer.enqueue("sleep", {"seconds": 0.01, "marker": f"g{i}"}) for i in range(5)]
    bad = wf.producer.enqueue("sleep", {"seconds": 0.01, "marker": "MARK"})
    raw = redis.Redis(port=wf.redis.port)
    try:
        _corrupt(raw, wf.queue, bad.job_id)
    finally:
        raw.close()
    env = {"WORKERFLEET_RETRY_MAX_DELIVERIES": "2"}
    # When two workers fetch them
    a = wf.spawn(concurrency=6, lease_seconds=1.5, extra_env=env)
    b = wf.spawn(concurrency=6, lease_seconds=1.5, extra_env=env)
    wait_until(lambda: wf.stats().completed_total == 5, 30, "the five good jobs")
    # Then each good job ran exactly once, the bad one alone is dead-lettered, nobody crashed
    assert wf.done_counts() == {f"g{i}": 1 for i in range(5)}
    s = wf.stats()
    assert (s.dead_letter, s.dead_lettered_total, s.in_flight, s.backlog) == (1, 1, 0, 0)
    dead = wf.dead_letter(bad.job_id)
    assert dead is not None and dead.reason == "invalid_envelope"
    assert {g.job_id for g in good}.isdisjoint({bad.job_id})
    for w in (a, b):
        assert w.alive(), w.logs()[-3000:]
        assert "Traceback" not in w.logs()


def test_every_cli_command_handles_a_non_utf8_dead_letter(
    wf: workerproc.Testbed,
) -> None:
    # Given a dead letter whose envelope is not UTF-8 (a worker dead-lettered it)
    job = wf.producer.enqueue("sleep", {"seconds": 0.01, "marker": "MARK"})
    raw = redis.Redis(port=wf.redis.port)
    try:
        bad = _corrupt(raw, wf.queue, job.job_id)
        w = wf.spawn(concurrency=1, lease_seconds=2.0)
        wait_until(lambda: wf.stats().dead_letter == 1, 30, "the dead letter")
        w.send(15)
        assert w.wait(15) == 0
        cli = {"redis_url": wf.redis.url, "queue_name": wf.queue}
        # When the operator lists, shows and counts it
        ls = run_cli("dlq", "ls", **cli)
        ls_json = run_cli("dlq", "ls", "--json", **cli)
        show = run_cli("dlq", "show", job.job_id, **cli)
        show_json = run_cli("dlq", "show", job.job_id, "--json", **cli)
        st = run_cli("queue", "stats", **cli)
        st_json = run_cli("queue", "stats", "--json", **cli)
        # Then every command succeeds and shows the entry, its bytes escaped and in base64
        for out in (ls, ls_json, show, show_json, st, st_json):
            assert out.returncode == 0, out.stderr[-2000:]
            assert "Traceback" not in out.stderr
        assert job.job_id in ls.stdout and "invalid_envelope" in ls.stdout
        [listed] = json.loads(ls_json.stdout)
        assert base64.b64decode(listed["envelope_base64"]) == bad
        shown = json.loads(show_json.stdout)
        assert shown["reason"] == "invalid_envelope" and shown["envelope"] is None
        assert base64.b64decode(shown["envelope_base64"]) == bad
        assert "\\xe9" in show.stdout and base64.b64encode(bad).decode() in show.stdout
        assert json.loads(st_json.stdout)["dead_letter"] == 1
        # When it is replayed: the exact bytes go back on the queue
        replay = run_cli("dlq", "replay", job.job_id, **cli)
        assert replay.returncode == 0, replay.stderr[-2000:]
        assert "replayed 1" in replay.stdout
        assert raw.hget(keys.build_keys(wf.queue).env, job.job_id) == bad
        # and, dead-lettered once more, it can be purged
        w2 = wf.spawn(concurrency=1, lease_seconds=2.0)
        wait_until(lambda: wf.stats().dead_letter == 1, 30, "the second dead letter")
        w2.send(15)
        assert w2.wait(15) == 0
        purge = run_cli("dlq", "purge", job.job_id, **cli)
        assert purge.returncode == 0, purge.stderr[-2000:]
        assert "purged 1" in purge.stdout
        assert wf.stats().dead_letter == 0
    finally:
        raw.close()


def test_a_stored_dead_letter_record_with_raw_non_utf8_bytes_is_still_readable(
    wf: workerproc.Testbed,
) -> None:
    # Given a DLQ record whose envelope holds raw non-UTF-8 bytes (as older versions wrote)
    raw = redis.Redis(port=wf.redis.port)
    try:
        raw_dead_letters.store_raw_dead_letter(
            raw, wf.queue, b"old-1", b'"{\\"v\\":1,\\"task\\":\\"caf\xe9\\"}"'
        )
    finally:
        raw.close()
    cli = {"redis_url": wf.redis.url, "queue_name": wf.queue}
    # When it is listed and shown
    ls = run_cli("dlq", "ls", **cli)
    show = run_cli("dlq", "show", "old-1", "--json", **cli)
    # Then both work, with the bad byte escaped and the exact bytes in base64
    assert ls.returncode == 0 and "old-1" in ls.stdout, ls.stderr[-2000:]
    assert show.returncode == 0, show.stderr[-2000:]
    shown = json.loads(show.stdout)
    assert "\\xe9" in shown["envelope_raw"]
    assert base64.b64decode(shown["envelope_base64"]) == b'{"v":1,"task":"caf\xe9"}'


async def test_an_unexpected_error_in_a_fetch_does_not_end_the_fetch_loop(
    redis_server: Any, queue_name: str, monkeypatch: Any
) -> None:
    # Given an in-process worker whose first two fetch replies blow up in an unforeseen way
    app = App(queue=queue_name)
    ran: list[int] = []

    class Empty(pydantic.BaseModel):
        pass

    @app.task("count", payload=Empty)
    async def count(payload: Empty) -> None:
        ran.append(1)

    real = queue.QueueClient._build_jobs
    calls = {"n": 0}

    def flaky(self: queue.QueueClient, now_ms: float, flat: Any) -> Any:
        if flat:
            calls["n"] += 1
            if calls["n"] <= 2:
                raise LookupError("an error nobody planned for")
        return real(self, now_ms, flat)

    monkeypatch.setattr(queue.QueueClient, "_build_jobs", flaky)
    client = redis.asyncio.Redis(port=redis_server.port, decode_responses=True)
    engine = es.make_engine(client, queue_name)
    await engine.enqueue_many(
        [queue.EnqueueRequest(envelope.build_envelope("count", {})) for _ in range(3)]
    )
    settings = config.WorkerSettings(
        redis_url=redis_server.url, metrics_port=0, lease_seconds=5.0, concurrency=4
    )
    w = worker.Worker(app, settings, install_signal_handlers=False)
    run = asyncio.create_task(w.run())
    try:
        # When it runs: Then the loop survives the errors, and every job runs exactly once
        deadline = asyncio.get_running_loop().time() + 20
        while len(ran) < 3 and asyncio.get_running_loop().time() < deadline:
            assert not run.done(), run.exception()
            await asyncio.sleep(0.05)
        assert len(ran) == 3
        assert calls["n"] >= 2
    finally:
        w.request_drain()
        assert await asyncio.wait_for(run, 20) == 0
    try:
        s = await stats.fetch_queue_stats(client, queue_name)
        assert (s.completed_total, s.in_flight, s.backlog, s.dead_letter) == (3, 0, 0, 0)
    finally:
        await client.aclose()


def test_a_dead_letter_whose_job_id_is_not_utf8_can_be_listed_replayed_and_purged(
    wf: workerproc.Testbed, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a dead letter whose job id itself holds a byte that is not UTF-8, and a terminal
    # whose output encoding is strict UTF-8
    k = keys.build_keys(wf.queue)
    raw = redis.Redis(port=wf.redis.port)
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8:strict")
    try:
        raw_dead_letters.store_raw_dead_letter(raw, wf.queue, b"bad\xff", b'"{}"')
        cli = {"redis_url": wf.redis.url, "queue_name": wf.queue}
        # When it is listed, then replayed
        ls = run_cli("dlq", "ls", **cli)
        ls_json = run_cli("dlq", "ls", "--json", **cli)
        replay = run_cli("dlq", "replay", "--all", **cli)
        # Then the list shows the id escaped, and the replay puts back the exact id
        for out in (ls, ls_json, replay):
            assert out.returncode == 0, out.stderr[-2000:]
        assert "bad\\xff" in ls.stdout
        assert json.loads(ls_json.stdout)[0]["job_id"] == "bad\udcff"
        assert "replayed 1" in replay.stdout
        assert raw.hexists(k.env, b"bad\xff") and raw.zcard(k.dlq) == 0
        # and once it is a dead letter again, purging it by everything works
        raw_dead_letters.store_raw_dead_letter(raw, wf.queue, b"bad\xff", b'"{}"')
        purge = run_cli("dlq", "purge", "--all", "--yes", **cli)
        assert purge.returncode == 0 and "purged 1" in purge.stdout, purge.stderr[-2000:]
    finally:
        raw.close()
