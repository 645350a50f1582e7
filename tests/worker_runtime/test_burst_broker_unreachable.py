"""A burst whose broker never answers ends, and says so, instead of retrying forever.

The broker is a loopback port nothing listens on. ``run_burst`` stops after ``timeout_seconds``
and raises TimeoutError naming what was left; ``workerfleet worker --burst`` exits 1 with a
clear line once its calls have failed for longer than ``lease_seconds`` (a Kubernetes Job then
fails visibly).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.worker_runtime import test_burst, workerproc
from worker_runtime import App
from worker_runtime.testing import run_burst


@pytest.fixture
def dead_url() -> str:
    """A Redis URL on a loopback port nothing listens on (bound once, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.mark.timeout(60)  # without its timeout the burst retried forever
def test_run_burst_on_an_unreachable_broker_raises_timeout_error_after_its_timeout(
    dead_url: str,
) -> None:
    # Given an App whose broker is a port nothing listens on
    app = App("burst-dead")

    @app.task("noop")
    async def noop(payload: dict[str, str]) -> None:
        return None

    # When a burst runs with a 1 s timeout
    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        run_burst(app, broker_url=dead_url, timeout_seconds=1.0)
    took = time.monotonic() - t0

    # Then it stopped by itself soon after, saying what was left and why
    message = str(raised.value)
    assert "did not end within 1 s" in message
    assert "held 0" in message
    assert "last error" in message
    assert took < 30.0


def test_workerfleet_worker_burst_exits_1_when_the_broker_is_unreachable_past_the_lease(
    dead_url: str, tmp_path: Path
) -> None:
    # Given a burst worker process with a 2 s lease, whose broker never answers
    env = workerproc.worker_env(dead_url, "burst-dead", lease_seconds=2.0)

    # When it runs
    t0 = time.monotonic()
    code, logs = test_burst.run_burst_process(env, tmp_path)
    took = time.monotonic() - t0

    # Then it exited 1 by itself once the outage outlasted the lease, and said why
    assert code == 1, logs[-3000:]
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    failed = [r["msg"] for r in records if r["msg"].startswith("burst failed")]
    assert failed, logs[-3000:]
    assert "has not answered" in failed[0] and "lease_seconds" in failed[0]
    stopped = [r for r in records if r["msg"] == "worker stopped"]
    assert [(r["level"], r["burst"]) for r in stopped] == [("error", True)], stopped
    assert took < 40.0
