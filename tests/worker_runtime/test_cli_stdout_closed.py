"""A command whose reader goes away (``| head``, ``| grep -q``) ends quietly, not blaming Redis.

Run as real processes on a real Redis: the child's stdout is a pipe whose read end the test
closes before the command writes, as ``head`` does once it has its lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from tests.support import cli as cli_support
from tests.support.cli import run_cli


def _run_with_stdout_closed(url: str, queue_name: str, *args: str) -> tuple[int, str]:
    """Exit code and stderr of ``python -m worker_runtime ARGS`` whose stdout reader is gone."""
    env = {**os.environ, "WORKERFLEET_REDIS_URL": url, "WORKERFLEET_QUEUE": queue_name}
    env["PYTHONPATH"] = os.pathsep.join([str(cli_support.REPO), str(cli_support.REPO / "operator")])
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes a byte
    try:
        done = subprocess.run(
            [sys.executable, "-m", "worker_runtime", *args],
            cwd=cli_support.REPO, env=env, stdout=write_end, stderr=subprocess.PIPE,
            text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


def test_output_to_a_reader_that_left_exits_141_without_saying_the_broker_is_unreachable(
    redis_server: Any, queue_name: str
) -> None:
    # Given a queue with one job on a Redis that answers
    enqueued = run_cli("enqueue", "t", "{}", redis_url=redis_server.url, queue_name=queue_name)
    assert enqueued.returncode == 0, enqueued.stderr
    for command in (
        ("queue", "stats", "--json"),
        ("dlq", "ls", "--json"),
        ("queue", "stats", "--json", "--watch", "0.2"),
        ("queue", "stats"),  # a table (rich ended these with exit 1 on its own)
    ):
        # When a command's output goes to a reader that already left
        code, err = _run_with_stdout_closed(redis_server.url, queue_name, *command)
        # Then it ends as a process killed by SIGPIPE would (128 + 13), saying nothing of
        # Redis and printing no traceback
        assert code == 141, (command, code, err)
        assert "cannot reach" not in err and "Traceback" not in err, (command, err)
        assert "Exception ignored" not in err, (command, err)
