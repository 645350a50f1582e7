"""``workerfleet demo`` says so when its Redis refuses writes (a full disk, maxmemory), and says
when the broker takes jobs again.

Such a Redis still answers the reads the demo's view is made of, and the load generator counted
its failed batches quietly: the screen looked as if the load had paused, with no word of why.
The lines are checked on the watch with the demo's clock given, and on a real demo whose real
embedded redis-server is made to refuse writes with MISCONF: its next RDB save fails (the file
it would rename onto is a directory), which stops writes as a full disk does, as root too.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

import pytest
import redis
from workerfleet_operator.local import (
    brokers,
    demo,
    embedded,
    embedded_redis,
    events_demo,
    runner,
)

from worker_runtime import producer
from worker_runtime.brokers import base

MISCONF = (
    "redis refused enqueue: MISCONF Redis is configured to save RDB snapshots, but it's "
    "currently unable to persist to disk."
)


def test_the_watch_says_why_the_load_fails_once_then_again_every_10_seconds(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    watch = demo.LoadFailureWatch(tmp_path)
    # Given the load's batches failing with MISCONF from 1 s on, seen at every poll
    for at in (1.0, 2.0, 3.0, 10.5, 11.5):
        watch.note(MISCONF, at)
    # When a batch is taken again at 12 s (and the next polls see no failure)
    watch.note(None, 12.0)
    watch.note(None, 13.0)
    # Then the demo said why at 1 s and again at 11.5 s, naming the data directory and its free
    # space, then once that the broker takes the jobs again
    lines = capsys.readouterr().err.splitlines()
    refused = (
        "workerfleet demo: redis refuses writes: it cannot write its data to disk (a full "
        f"disk?): its data directory is {tmp_path}, "
    )
    assert len(lines) == 3, lines
    assert all(line.startswith(refused) for line in lines[:2]), lines
    assert all(f"MB free ({MISCONF}); the load keeps retrying" in line for line in lines[:2])
    assert lines[2] == "workerfleet demo: the broker takes the load's jobs again"


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (
            "redis refused enqueue: OOM command not allowed when used memory > 'maxmemory'.",
            "redis refuses writes: it is out of memory (maxmemory reached, nothing to evict) (",
        ),
        (
            "redis refused enqueue: NOREPLICAS Not enough good replicas to write.",
            "redis refuses writes: fewer replicas than its min-replicas-to-write are in sync (",
        ),
        (
            "no reply from redis to enqueue: TimeoutError: Timeout reading from socket",
            "the broker takes none of the load's jobs: no reply from redis to enqueue: "
            "TimeoutError: Timeout reading from socket; the load keeps retrying",
        ),
    ],
    ids=["oom", "noreplicas", "no-reply"],
)
def test_each_refusal_is_named_by_what_it_means(
    error: str, said: str, tmp_path: pathlib.Path
) -> None:
    line = demo.describe_load_failure(error, tmp_path, 10**9)
    assert line.startswith(f"workerfleet demo: {said}"), line
    assert str(tmp_path) not in line  # the data directory is said for a disk error only


@pytest.mark.parametrize(
    ("refuse", "code", "said"),
    [
        (
            lambda client: client.config_set("maxmemory", "1"),
            "OOM",
            "redis refuses writes: it is out of memory (maxmemory reached, nothing to evict) "
            "(redis refused enqueue: OOM command not allowed when used memory > 'maxmemory'.)",
        ),
        (
            lambda client: client.replicaof("127.0.0.1", "1"),
            "READONLY",
            "redis refuses writes: it is a read-only replica (redis refused enqueue: READONLY "
            "You can't write against a read only replica.)",
        ),
    ],
    ids=["oom", "readonly"],
)
def test_a_real_redis_refusal_whose_code_the_client_cuts_off_is_still_named(
    refuse: Callable[[redis.Redis], object], code: str, said: str, tmp_path: pathlib.Path
) -> None:
    # Given a real redis-server that refuses writes with an error redis-py has a class for
    # (it cuts the code off the message)
    server = embedded_redis.EmbeddedRedis(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url)
    try:
        queue = brokers.SyncQueue(server.url, "q", base.QueueOptions())
        refuse(client)
        # When the demo's load enqueues a batch on it
        with pytest.raises(Exception) as refused:
            queue.enqueue_many([producer.build_request(producer.JobSpec("demo.work", {}))])
    finally:
        client.close()
        server.stop()
    # Then the failure keeps Redis' code, and the line says what the refusal means
    failure = demo.describe_enqueue_error(refused.value)
    assert f"redis refused enqueue: {code} " in failure
    line = demo.describe_load_failure(failure, tmp_path, None)
    assert line == f"workerfleet demo: {said}; the load keeps retrying"


def test_the_events_demo_stops_repeating_a_refusal_once_its_publisher_is_done(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    watch = demo.LoadFailureWatch(tmp_path, events_demo.PUBLISHER_WORDING)
    publisher = events_demo.OrderPublisher("redis://127.0.0.1:1/0", ())
    # Given the publisher's last orders refused, said at 1 s
    publisher.failure = MISCONF
    events_demo.note_publisher(watch, publisher, 1.0)
    # When it has published its plan and the demo polls on through the settle
    publisher.log.done = True
    for at in (12.0, 23.0, 34.0):
        events_demo.note_publisher(watch, publisher, at)
    # Then the refusal was said once: no publish is left to say whether Redis takes writes
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert "redis refuses writes" in lines[0]


def wait_for_save(client: redis.Redis, status: str) -> None:
    """Until the RDB save in progress ended with ``status`` (10 s at most)."""
    deadline = time.monotonic() + 10.0
    while True:
        info = client.info("persistence")
        if not info["rdb_bgsave_in_progress"] and info["rdb_last_bgsave_status"] == status:
            return
        assert time.monotonic() < deadline, info
        time.sleep(0.05)


def refuse_writes(server: embedded_redis.EmbeddedRedis, client: redis.Redis) -> None:
    """Make the server refuse writes with MISCONF: a save point, and a save that fails."""
    (server.data_dir / "dump.rdb" / "in-the-way").mkdir(parents=True)
    client.config_set("save", "3600 1")
    client.bgsave()
    wait_for_save(client, "err")


def accept_writes(server: embedded_redis.EmbeddedRedis, client: redis.Redis) -> None:
    (server.data_dir / "dump.rdb" / "in-the-way").rmdir()
    (server.data_dir / "dump.rdb").rmdir()
    client.bgsave()
    wait_for_save(client, "ok")
    client.config_set("save", "")


def index_of_first_disk_refusal(lines: list[str], data_dir: pathlib.Path) -> int:
    """Where the demo's stderr first says its Redis refuses writes with MISCONF; the line
    must name what it means and the data directory."""
    refused = [i for i, line in enumerate(lines) if "redis refuses writes" in line]
    assert refused, lines
    assert "it cannot write its data to disk" in lines[refused[0]]
    assert f"its data directory is {data_dir}" in lines[refused[0]]
    assert "MISCONF" in lines[refused[0]]
    return refused[0]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_demo_whose_redis_refuses_writes_says_so_and_when_it_takes_jobs_again(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given the demo on its embedded Redis
    servers: list[embedded.EmbeddedServer] = []
    start_server: Callable[..., embedded.EmbeddedServer] = brokers.start_server

    def start_and_keep(*args: object) -> embedded.EmbeddedServer:
        server = start_server(*args)
        servers.append(server)
        return server

    monkeypatch.setattr(brokers, "start_server", start_and_keep)
    steps: dict[str, int] = {}

    def misbehave(snapshot: runner.Snapshot, phase: str) -> None:
        (server,) = servers
        assert isinstance(server, embedded_redis.EmbeddedRedis)
        client = redis.Redis.from_url(server.url)
        try:
            # When Redis refuses writes 1 s in
            if snapshot.at >= 1.0 and "refused" not in steps:
                refuse_writes(server, client)
                steps["refused"] = 0
            elif "refused" in steps and "seen" not in steps:
                # And the load's batches are refused (Redis counts each refusal)
                if client.info("errorstats").get("errorstat_MISCONF", {}).get("count", 0):
                    steps["seen"] = 0
            elif "seen" in steps and "accepted" not in steps:
                # And it takes writes again from the poll after that (which saw the refusal)
                accept_writes(server, client)
                steps["accepted"] = 0
        finally:
            client.close()

    result = demo.run_demo(
        seconds=12, out_dir=tmp_path / "out", use_prometheus=False, on_snapshot=misbehave
    )
    # Then the demo said why the load failed, naming the data directory, while it ran
    assert set(steps) == {"refused", "seen", "accepted"}, steps
    lines = [line for line in capsys.readouterr().err.splitlines() if "demo: " in line]
    (data_dir,) = [s.data_dir for s in servers]
    first = index_of_first_disk_refusal(lines, data_dir)
    # And said when the broker took the load's jobs again
    again = lines.index("workerfleet demo: the broker takes the load's jobs again")
    assert again > first
    # And the summary counts the failed enqueues with the last error
    assert result.load_errors >= 1
    problems = ", ".join(demo.describe_problems(result))
    assert f"{result.load_errors} failed enqueue(s) (the last: redis refused enqueue: MISCONF" in (
        problems
    )


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_the_events_demo_says_so_when_its_redis_refuses_the_published_orders(
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given the events scenario on its embedded Redis
    servers: list[embedded_redis.EmbeddedRedis] = []
    start = embedded_redis.EmbeddedRedis.start

    def start_and_keep(server: embedded_redis.EmbeddedRedis) -> embedded_redis.EmbeddedRedis:
        servers.append(start(server))
        return servers[-1]

    monkeypatch.setattr(embedded_redis.EmbeddedRedis, "start", start_and_keep)
    steps: dict[str, float] = {}

    def misbehave(snapshot: runner.Snapshot, phase: str) -> None:
        (server,) = servers
        client = redis.Redis.from_url(server.url)
        try:
            # When Redis refuses writes 1 s in, during the burst of orders (20 a second)
            if snapshot.at >= 1.0 and "refused" not in steps:
                refuse_writes(server, client)
                steps["refused"] = snapshot.at
            # And takes them again 1.5 s later, before the lull's and the bump's orders
            elif (
                "refused" in steps
                and "accepted" not in steps
                and snapshot.at >= steps["refused"] + 1.5
            ):
                accept_writes(server, client)
                steps["accepted"] = snapshot.at
        finally:
            client.close()

    result = events_demo.run_events_demo(
        seconds=10,
        out_dir=tmp_path / "out",
        use_prometheus=False,
        settle_seconds=20,
        on_snapshot=misbehave,
    )
    # Then the demo said at once why the orders failed, naming the data directory
    assert set(steps) == {"refused", "accepted"}, steps
    assert result.publish_errors
    lines = [line for line in capsys.readouterr().err.splitlines() if "demo: " in line]
    (data_dir,) = [s.data_dir for s in servers]
    first = index_of_first_disk_refusal(lines, data_dir)
    assert lines[first].endswith("; the publisher goes on with the next orders")
    # And said when the broker took the published orders again
    again = lines.index("workerfleet demo: the broker takes the published orders again")
    assert again > first
