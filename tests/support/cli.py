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
from typing import Any

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


def run_job_command_interrupted(
    monkeypatch: Any, command: str, method: str, *, presses: int = 1, json: bool = False
) -> tuple[int, int]:
    """``workerfleet job COMMAND`` run in this process on the ids of 600 waiting jobs of an
    in-process queue ``q`` (two broker calls of 500), with a Ctrl-C while the first call with
    ids runs (``MemoryBroker.<method>``); returns its exit code and how many calls it made
    with ids. Its output is left to the test's ``capsys``. ``presses=2``: a second Ctrl-C
    while that call hangs (as on a frozen broker), so the command cuts it; ``json``: with
    ``--json``."""
    import asyncio
    import signal

    from tests.support import engine as es
    from worker_runtime import brokers, cli
    from worker_runtime.brokers import memory

    url = f"memory://{command}-ctrl-c"

    async def seed() -> list[str]:
        broker = await brokers.open_broker(url, "q")
        results = await broker.enqueue_many([es.request() for _ in range(600)])
        return [r.job_id for r in results]

    ids = asyncio.run(seed())
    calls: list[int] = []
    real = getattr(memory.MemoryBroker, method)

    async def interrupted_once(self: Any, job_ids: Any) -> Any:
        calls.append(len(job_ids))
        if len(calls) == 2:  # the first call with ids (the first is the capability check)
            signal.raise_signal(signal.SIGINT)
            await asyncio.sleep(0.05)  # the loop runs the handler before the call returns
            if presses == 2:
                signal.raise_signal(signal.SIGINT)
                await asyncio.sleep(30.0)  # hung until the second Ctrl-C cancels it
        return await real(self, job_ids)

    monkeypatch.setattr(memory.MemoryBroker, method, interrupted_once)
    try:
        flags = ["--json"] if json else []
        code = cli.main(["job", command, *ids, "--broker-url", url, "-q", "q", *flags])
    finally:
        memory.forget_stores()
    assert calls[0] == 0, calls  # the capability check sends no id
    return code, len(calls) - 1
