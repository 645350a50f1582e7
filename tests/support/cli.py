"""The runtime's command line (`python -m worker_runtime`) run as a real process, for any test.

Used by the CLI tests (tests/worker_runtime/test_cli_commands.py and those on real brokers, on
invalid bytes, on script list limits) and by the events tests that read `topic lag` and `trace`.
The child gets the repository on its PYTHONPATH, a wide terminal, and only the Redis URL and
queue the test names: the environment's own WORKERFLEET_REDIS_URL/QUEUE are dropped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_cli(
    *args: str,
    redis_url: str | None = None,
    queue_name: str | None = None,
    stdin: str = "",
    env_extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m worker_runtime ARGS` to completion (60 s at most); its output as text.

    ``env_extra`` overrides the child's environment last (e.g. a terminal of other width).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORKERFLEET_REDIS_URL", "WORKERFLEET_QUEUE")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "operator")])
    env["COLUMNS"] = "160"
    if redis_url:
        env["WORKERFLEET_REDIS_URL"] = redis_url
    if queue_name:
        env["WORKERFLEET_QUEUE"] = queue_name
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "worker_runtime", *args],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
