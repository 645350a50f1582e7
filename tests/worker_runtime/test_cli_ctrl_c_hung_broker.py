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

import contextlib
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
from tests.worker_runtime import workerproc
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


def wait_until(check: Callable[[], bool], seconds: float = 60.0) -> None:
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


def open_files_of(pid: int) -> set[str]:
    """What the process's descriptors point at ("socket:[1234]", a path, ...), in /proc."""
    fds = f"/proc/{pid}/fd"
    targets = set()
    for fd in os.listdir(fds):
        with contextlib.suppress(FileNotFoundError):  # closed since it was listed
            targets.add(os.readlink(f"{fds}/{fd}"))
    return targets


def unread_requests(port: int, pid: int | None = None) -> int:
    """How many connections to the server on ``port`` hold bytes it has not read yet (only
    those of process ``pid`` when given): a frozen server's waiting calls, read from
    /proc/net/tcp, where the server's end of each connection shows its unread bytes."""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    # (local port, remote port, state, unread bytes, socket inode) of each connection end
    ends = [
        (int(row[1].rsplit(":", 1)[1], 16), int(row[2].rsplit(":", 1)[1], 16), row[3],
         int(row[4].split(":")[1], 16), row[9])
        for row in rows
    ]  # fmt: skip
    client_ports = None
    if pid is not None:
        sockets = open_files_of(pid)
        client_ports = {
            local
            for local, remote, _, _, inode in ends
            if remote == port and f"socket:[{inode}]" in sockets
        }
    established = "01"
    return sum(
        1
        for local, remote, state, unread, _ in ends
        if local == port and state == established and unread > 0
        and (client_ports is None or remote in client_ports)
    )  # fmt: skip


def wait_until_waiting_on(server: redis_servers.RedisServer, proc: subprocess.Popen[str]) -> None:
    """Until the command has a call out to the frozen server: started (its imports alone take
    seconds on a loaded machine), connected, and waiting on the reply."""

    def waiting() -> bool:
        assert proc.poll() is None, proc.communicate()
        return unread_requests(server.port, proc.pid) > 0

    wait_until(waiting)


def stop_twice(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Ctrl-C, and again once the command said it stops after the call in flight; the output
    once the process ended (8 s at most after the second)."""
    stderr = workerproc.LinesRead(proc.stderr)
    try:
        proc.send_signal(signal.SIGINT)
        # a second signal sent before the first was handled could merge with it
        wait_until(lambda: stderr.said("Ctrl-C again") > 0)
        proc.send_signal(signal.SIGINT)
    finally:
        workerproc.end_process(proc, 8)
    assert proc.stdout is not None
    return proc.stdout.read(), stderr.finish()


def settled_ids(server: redis_servers.RedisServer, queue_name: str) -> tuple[list[str], set[str]]:
    """(ids on the queue, ids dead-lettered) once the resumed server ran what it was sent."""
    # the cut call, already in the server's input, runs first: the server read all it was sent
    wait_until(lambda: unread_requests(server.port) == 0)
    url = server.url
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
    # (one more round trip first: Redis writes its replies after the commands of a round of
    # its event loop, so the count can come back before the call's own reply has left, and a
    # freeze in between cut that call, which then came back through a retry on a new
    # connection 5 s later; the next round begins only once every reply is out)
    assert stats.ping()
    with frozen(server):
        wait_until_waiting_on(server, proc)  # the next call is out, waiting on the server
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
    ready, still_dead = settled_ids(server, queue_name)
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
        wait_until_waiting_on(server, proc)  # started, its first read waiting on the server
        # And the engineer presses Ctrl-C twice
        _, err = stop_twice(proc)
    # Then it ended with 130 having purged nothing, and every dead letter is still there
    assert proc.returncode == 130, err
    assert "interrupted: purged 0 of 0 dead letter(s)" in err
    assert "may have purged" not in err  # only reads were cut
    ready, still_dead = settled_ids(server, queue_name)
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
        for proc in commands:
            wait_until_waiting_on(server, proc)  # started and waiting on the server
        for proc in commands:
            proc.send_signal(signal.SIGINT)
        ended = [proc.communicate(timeout=8) for proc in commands]
    # Then each says it was interrupted, in one line, and exits 130
    for proc, (out, err) in zip(commands, ended, strict=True):
        assert (proc.returncode, out, err) == (130, "", "workerfleet: interrupted\n")
