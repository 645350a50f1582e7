"""Ctrl-C during a ``dlq replay`` or ``dlq purge`` whose Redis hangs: the first says the command
stops after the broker call in flight, a second stops that call at once (exit 130), and the
summary says what the cut call may have done. Without the second, the command waited out the
client's timeouts and retries (10 to 25 s) after the on-call engineer asked it to stop. A read
command (``queue stats``, ``dlq ls``) that hangs ends on one Ctrl-C with one line, not with a
traceback of asyncio's runner.

Real processes and real signals: the command runs as ``python -m worker_runtime``, the
redis-server is frozen with SIGSTOP. Judged by history: after the server resumes, every job is
either back on the queue or still a dead letter, exactly once.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from tests.support import memory_dead_letters, redis_servers
from tests.support.cli import REPO
from worker_runtime.brokers.redis import keys


def start_cli(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "operator")]))
    env.pop("WORKERFLEET_REDIS_URL", None)
    env.pop("WORKERFLEET_QUEUE", None)
    return subprocess.Popen(
        [sys.executable, "-m", "worker_runtime", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(check: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@contextmanager
def frozen(server: redis_servers.RedisServer) -> Iterator[None]:
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def stop_twice(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Two Ctrl-Cs half a second apart; the output once the process ended (8 s at most)."""
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=8)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def settled_ids(url: str, queue_name: str) -> tuple[list[str], set[str]]:
    """(ids on the queue, ids dead-lettered) once the resumed server ran what it was sent."""
    time.sleep(0.3)  # the cut call, already in the server's input, runs first
    ready = memory_dead_letters.fetch_ready_ids(url, queue_name, 1000)
    return ready, memory_dead_letters.fetch_dead_letter_ids(url, queue_name)


def test_a_second_ctrl_c_stops_a_replay_hung_on_a_frozen_redis_at_once(
    redis_factory: Callable[..., redis_servers.RedisServer], queue_name: str
) -> None:
    server = redis_factory()
    stats = redis.Redis.from_url(server.url)
    dlq = keys.build_keys(queue_name).dlq
    # Given 300 dead letters
    dead = memory_dead_letters.dead_letter_many(server.url, queue_name, 300)
    # When they are replayed at 100 a second (a call of 100 jobs every second)
    proc = start_cli("dlq", "replay", "--redis-url", server.url, "-q", queue_name, "--all",
                     "--rate", "100")  # fmt: skip
    # And Redis freezes once the first call has replayed its 100 (on a loaded machine this
    # check can come after the second call too: the freeze then catches the third)
    wait_until(lambda: stats.zcard(dlq) <= 200)
    with frozen(server):
        time.sleep(2.0)  # the next call is out now, waiting on the frozen server
        # And the engineer presses Ctrl-C twice
        _, err = stop_twice(proc)
    # Then the command ended with 130, saying the first press waits for the call, how many
    # the finished calls replayed and what the cut call may have done
    assert proc.returncode == 130, err
    assert "Ctrl-C again to stop it at once" in err
    said = re.search(r"interrupted: replayed (\d+) of 300 job\(s\)", err)
    assert said is not None, err
    replayed = int(said.group(1))
    assert replayed in (100, 200), err
    assert "may have replayed up to 100 more" in err
    # And every job is on the queue or a dead letter, once: the finished calls' jobs are on
    # the queue, and the cut call's, which the resumed server ran, too
    ready, still_dead = settled_ids(server.url, queue_name)
    assert len(ready) == len(set(ready))
    assert not set(ready) & still_dead
    assert sorted([*ready, *still_dead]) == sorted(dead)
    assert replayed <= len(ready) <= replayed + 100
    stats.close()


def test_a_second_ctrl_c_stops_a_purge_whose_count_hangs_before_it_deleted_anything(
    redis_factory: Callable[..., redis_servers.RedisServer], queue_name: str
) -> None:
    server = redis_factory()
    # Given 50 dead letters
    dead = memory_dead_letters.dead_letter_many(server.url, queue_name, 50)
    # When a purge of them all starts while Redis is frozen
    with frozen(server):
        proc = start_cli("dlq", "purge", "--redis-url", server.url, "-q", queue_name, "--all",
                         "--yes")  # fmt: skip
        time.sleep(2.0)  # started, connected, its first read waiting on the frozen server
        # And the engineer presses Ctrl-C twice
        _, err = stop_twice(proc)
    # Then it ended with 130 having purged nothing, and every dead letter is still there
    assert proc.returncode == 130, err
    assert "interrupted: purged 0 of 0 dead letter(s)" in err
    assert "may have purged" not in err  # only reads were cut
    ready, still_dead = settled_ids(server.url, queue_name)
    assert ready == []
    assert still_dead == set(dead)


def test_ctrl_c_during_a_read_that_hangs_ends_with_one_line_not_a_traceback(
    redis_factory: Callable[..., redis_servers.RedisServer], queue_name: str
) -> None:
    server = redis_factory()
    # Given a frozen Redis
    with frozen(server):
        # When queue stats and dlq ls wait on it and the engineer presses Ctrl-C
        commands = [
            start_cli(*command, "--redis-url", server.url, "-q", queue_name)
            for command in (("queue", "stats"), ("dlq", "ls"))
        ]
        time.sleep(2.0)  # started and waiting on the frozen server
        for proc in commands:
            proc.send_signal(signal.SIGINT)
        ended = [proc.communicate(timeout=8) for proc in commands]
    # Then each says it was interrupted, in one line, and exits 130
    for proc, (out, err) in zip(commands, ended, strict=True):
        assert (proc.returncode, out, err) == (130, "", "workerfleet: interrupted\n")
