"""Burst mode: a worker runs the jobs ready now and exits 0 once none is ready and none is held.

In-process through ``worker_runtime.testing.run_burst`` on the memory broker (what the tasks
did is recorded by the tasks themselves, what is left by the broker's own records), and as a
real ``workerfleet worker --burst`` subprocess on the suite's redis-server.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections import Counter
from typing import Any

import pytest

from tests.worker_runtime import workerproc
from worker_runtime import App, JobContext, cli
from worker_runtime.testing import run_burst


@pytest.fixture
def store_url() -> str:
    return f"memory://burst-{uuid.uuid4().hex[:8]}"


def enqueue_all(app: App, jobs: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> list[str]:
    async def go() -> list[str]:
        return [(await app.enqueue(task, payload, **opts)).job_id for task, payload, opts in jobs]

    return asyncio.run(go())


def recording_app(url: str) -> tuple[App, list[str]]:
    """An App on ``url`` whose task ``record`` appends its payload's ``n`` to the list."""
    app = App("burst", redis_url=url)
    ran: list[str] = []

    @app.task("record")
    async def record(payload: dict[str, str]) -> None:
        ran.append(payload["n"])

    return app, ran


def run_burst_process(env: dict[str, str], tmp_path: Any) -> tuple[int, str]:
    """Run `workerfleet worker FIXTURE_APP --burst` to its end (60 s at most): exit code, log."""
    with open(tmp_path / "burst.log", "wb") as log:
        proc = subprocess.run(
            [sys.executable, "-m", "worker_runtime", "worker", workerproc.FIXTURE_APP, "--burst"],
            cwd=workerproc.REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
    return proc.returncode, (tmp_path / "burst.log").read_text()


def read_stats(url: str, queue: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The queue as `workerfleet queue stats --json` reads it from the broker's own records."""
    capsys.readouterr()
    code = cli.main(["queue", "stats", "--json", "--broker-url", url, "-q", queue])
    out = capsys.readouterr().out
    assert code == 0, out
    stats: dict[str, Any] = json.loads(out)
    return stats


def test_run_burst_runs_each_enqueued_job_once_and_returns(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given three jobs on a memory queue
    app = App("burst", redis_url=store_url)
    ran: list[str] = []

    @app.task("record")
    async def record(payload: dict[str, str], ctx: JobContext) -> None:
        ran.append(ctx.job_id)

    ids = enqueue_all(app, [("record", {"n": str(n)}, {}) for n in range(3)])

    # When a burst worker runs
    result = run_burst(app)

    # Then each job ran once, nothing is left, and the burst says so
    assert sorted(ran) == sorted(ids)
    assert (result.completed, result.retried, result.dead_lettered) == (3, 0, 0)
    stats = read_stats(store_url, "burst", capsys)
    assert (
        stats["backlog"],
        stats["in_flight"],
        stats["future_delayed"],
        stats["completed_total"],
    ) == (
        0,
        0,
        0,
        3,
    )


def test_a_failing_job_retried_at_once_runs_every_attempt_in_the_burst_then_is_dead_lettered(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a task that always fails, retries due at once, three attempts
    app = App("burst", redis_url=store_url)
    attempts: list[int] = []

    @app.task("always-fails")
    async def always_fails(payload: dict[str, str], ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError("boom")

    enqueue_all(app, [("always-fails", {}, {})])

    # When a burst worker runs
    result = run_burst(
        app,
        retry_max_attempts=3,
        retry_backoff_base_seconds=0.0,
        retry_backoff_max_seconds=0.0,
    )

    # Then all three attempts ran within the burst and the job ended in the DLQ
    assert attempts == [1, 2, 3]
    assert (result.retried, result.dead_lettered, result.completed) == (2, 1, 0)
    stats = read_stats(store_url, "burst", capsys)
    assert (stats["dead_letter"], stats["backlog"], stats["future_delayed"]) == (1, 0, 0)


def test_a_job_delayed_an_hour_is_left_queued_and_the_burst_still_ends(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given one job due now and one delayed an hour
    app, ran = recording_app(store_url)

    enqueue_all(app, [("record", {"n": "now"}, {}), ("record", {"n": "later"}, {"delay": 3600})])

    # When a burst worker runs
    result = run_burst(app)

    # Then it ran the job due now and ended, leaving the delayed one queued
    assert ran == ["now"]
    assert (result.completed, result.still_delayed) == (1, 1)
    assert read_stats(store_url, "burst", capsys)["future_delayed"] == 1


def test_workerfleet_worker_burst_exits_0_after_running_the_enqueued_jobs(
    wf: workerproc.Testbed, tmp_path: Any
) -> None:
    # Given five jobs on the test's queue on the real redis-server
    ids = [
        wf.producer.enqueue("sleep", {"seconds": 0.01, "marker": f"m{n}"}).job_id for n in range(5)
    ]

    # When `workerfleet worker --burst` runs as a real process
    code, logs = run_burst_process(workerproc.worker_env(wf.redis.url, wf.queue), tmp_path)

    # Then it exited 0 by itself, every job ran once, and the queue acked each once
    assert code == 0, logs[-3000:]
    done = [e["job"] for e in wf.events() if e["event"] == "done"]
    assert Counter(done) == Counter(ids)
    stats = wf.stats()
    assert (stats.backlog, stats.in_flight, stats.completed_total, stats.dead_letter) == (
        0,
        0,
        5,
        0,
    )
    stopped = [r for r in map(json.loads, logs.splitlines()) if r["msg"] == "worker stopped"]
    assert [(r["burst"], r["processed"], r["still_delayed"]) for r in stopped] == [(True, 5, 0)]


def test_a_queue_wide_rate_limit_holding_jobs_back_does_not_end_the_burst(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given five jobs on a queue limited to one start per 0.2 s (five a second, bucket of one)
    app, ran = recording_app(store_url)

    enqueue_all(app, [("record", {"n": str(n)}, {}) for n in range(5)])

    # When a burst worker runs under that limit
    result = run_burst(app, rate_limit_jobs=1, rate_limit_per_seconds=0.2)

    # Then every job ran within the burst (an empty bucket answered fetches with nothing, which
    # is no empty queue), and the queue holds none
    assert sorted(ran) == [str(n) for n in range(5)]
    assert (result.completed, result.still_queued) == (5, 0)
    stats = read_stats(store_url, "burst", capsys)
    assert (stats["backlog"], stats["in_flight"], stats["completed_total"]) == (0, 0, 5)
