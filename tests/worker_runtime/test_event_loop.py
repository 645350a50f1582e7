"""WORKERFLEET_EVENT_LOOP: the job loop runs on asyncio's own loop, or on uvloop when asked.

uvloop is optional (the ``uvloop`` extra). A worker asked to use it really runs on it (its start
line names the loop's module) and behaves as on asyncio: its jobs run once and are acknowledged,
and SIGTERM drains it. Asked for without the package installed, the worker refuses to start
with an error that says what to install, and fetches nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until
from worker_runtime import config, errors
from worker_runtime.worker import core

REPO = Path(__file__).resolve().parents[2]


def settings(**values: str) -> config.WorkerSettings:
    return config.WorkerSettings(redis_url="redis://127.0.0.1:1/0", **values)  # type: ignore[arg-type]


def test_the_default_loop_is_asyncios_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKERFLEET_EVENT_LOOP", raising=False)
    assert settings().event_loop == "asyncio"
    assert core.select_loop_factory("asyncio") is None  # asyncio.Runner's own, as asyncio.run


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_the_running_loop_is_the_current_loop_a_library_asks_the_policy_for(
    event_loop: config.EventLoop,
) -> None:
    # Older libraries call asyncio.get_event_loop_policy().get_event_loop() from a coroutine:
    # under asyncio.run that is the running loop, and it must stay so on either loop.
    async def main() -> tuple[bool, str]:
        running = asyncio.get_running_loop()
        current = asyncio.get_event_loop_policy().get_event_loop()
        return current is running, type(running).__module__.split(".")[0]

    assert core.run_on_event_loop(main, event_loop) == (True, event_loop)


def test_the_setting_takes_any_case_and_refuses_an_unknown_loop() -> None:
    assert settings(event_loop="UVLOOP").event_loop == "uvloop"
    with pytest.raises(pydantic.ValidationError, match="asyncio"):
        settings(event_loop="trio")


def test_uvloop_asked_for_but_missing_is_a_configuration_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    with pytest.raises(errors.ConfigError, match=r"workerfleet\[uvloop\]"):
        core.select_loop_factory("uvloop")


def test_uvloop_asked_for_is_the_loop_the_job_loop_runs_on() -> None:
    loop = core.select_loop_factory("uvloop")()
    try:
        assert type(loop).__module__.split(".")[0] == "uvloop"
    finally:
        loop.close()


def test_a_worker_on_uvloop_runs_every_job_once_and_drains_on_sigterm(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker started with WORKERFLEET_EVENT_LOOP=uvloop and 30 short jobs
    worker = wf.spawn(
        concurrency=4, drain_timeout=5.0, extra_env={"WORKERFLEET_EVENT_LOOP": "uvloop"}
    )
    short = [wf.producer.enqueue("sleep", {"seconds": 0.01, "marker": f"s{i}"}) for i in range(30)]
    wait_until(lambda: len(wf.done_counts()) == 30, 30, "the short jobs to finish")
    # When a longer job is running and SIGTERM arrives
    long = wf.producer.enqueue("sleep", {"seconds": 1.0, "marker": "long"})
    wait_until(lambda: any(e["marker"] == "long" for e in wf.starts()), 20, "the long job")
    worker.send(signal.SIGTERM)
    rc = worker.wait(10)
    # Then it finished the long job inside its budget and exited 0, every job ran exactly once
    # and was acknowledged, and its start line says it ran on uvloop
    assert rc == 0, worker.logs()[-3000:]
    assert wf.done_counts() == {**{f"s{i}": 1 for i in range(30)}, "long": 1}
    s = wf.stats()
    assert s.completed_total == 31
    assert s.in_flight == 0
    assert s.backlog == 0
    assert all(j.created for j in [*short, long])
    started = [r for r in worker.log_records() if r.get("msg") == "worker started"]
    assert [r["event_loop"] for r in started] == ["uvloop"]


def test_a_worker_asked_for_uvloop_without_it_exits_2_and_fetches_nothing(
    wf: workerproc.Testbed, tmp_path: Path
) -> None:
    # Given a machine where uvloop cannot be imported (a module of that name that refuses)
    (tmp_path / "uvloop.py").write_text("raise ImportError('uvloop is not installed here')\n")
    job = wf.producer.enqueue("sleep", {"seconds": 0.01, "marker": "waits"})
    # When a worker starts with WORKERFLEET_EVENT_LOOP=uvloop
    proc = subprocess.run(
        [sys.executable, "-m", "worker_runtime", "worker", workerproc.FIXTURE_APP],
        cwd=REPO,
        env={
            **workerproc.worker_env(wf.redis.url, wf.queue),
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO), str(REPO / "operator")]),
            "WORKERFLEET_EVENT_LOOP": "uvloop",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it refuses with exit code 2 and says what to install, and the job still waits
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "workerfleet[uvloop]" in proc.stderr
    assert wf.events() == []
    assert wf.stats().backlog == 1
    assert job.created
