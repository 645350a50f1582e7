"""``workerfleet demo`` exits 0 only for a run that showed a healthy system: it ran its time,
every job completed or was dead-lettered, no worker crashed or was killed.

The exit status is checked on ``cli.cmd_demo`` with the run's result given (a run of each kind
would take a minute); that the demo records a stop and the fleet's crashes is checked on real
runs, shortened.
"""

from __future__ import annotations

import argparse
import pathlib
import threading
from typing import Any

import pytest
from workerfleet_operator.local import cli, demo, runner


def run_cmd_demo(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, result: demo.DemoResult
) -> int:
    monkeypatch.setattr(demo, "run_demo", lambda **kwargs: result)
    args = argparse.Namespace(
        seconds=80.0,
        out=tmp_path,
        no_prometheus=True,
        no_view=True,
        scenario="thumbnails",
        broker="redis",
    )
    return cli.cmd_demo(args)


@pytest.mark.parametrize(
    ("ended", "problem"),
    [
        # Ctrl-C: "completed 451 … still queued 154, lost 0" exited 0
        ({"stopped_early": True, "pending": 154}, "stopped early, 154 job(s) still queued"),
        ({"pending": 3}, "3 job(s) still queued"),
        # a crash-looping fleet: "completed 0, still queued N, lost 0" exited 0
        (
            {"completed": 0, "pending": 10, "workers_crashed": 4},
            "10 job(s) still queued, 4 worker crash(es)",
        ),
        ({"workers_crashed": 1}, "1 worker crash(es)"),
    ],
)
def test_the_demo_exits_1_when_the_run_did_not_finish_or_workers_crashed(
    ended: dict[str, Any],
    problem: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a demo run that ended this way
    result = demo.DemoResult(enqueued=10, completed=9, dead_lettered=1, seconds=80.0)
    for name, value in ended.items():
        setattr(result, name, value)
    # When the command prints its summary and exits
    code = run_cmd_demo(monkeypatch, tmp_path, result)
    # Then it exits 1, and the summary says why and counts the crashes
    output = capsys.readouterr().out
    assert code == 1, output
    assert f"not healthy (exit 1): {problem}" in output
    assert f"workers crashed {result.workers_crashed}, killed 0" in output
    assert output.rstrip().splitlines()[-1].startswith("demo: ")


def test_a_demo_that_ran_its_time_and_settled_every_job_exits_0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = demo.DemoResult(enqueued=10, completed=9, dead_lettered=1, seconds=80.0)
    assert run_cmd_demo(monkeypatch, tmp_path, result) == 0
    output = capsys.readouterr().out
    assert "workerfleet demo finished in 80s" in output
    assert "not healthy" not in output


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_demo_stopped_by_ctrl_c_says_it_stopped_early(tmp_path: pathlib.Path) -> None:
    # Given the demo running for 60 s
    stop = threading.Event()

    def interrupt_after_the_spike_began(snapshot: runner.Snapshot, phase: str) -> None:
        if snapshot.at >= 4.0:
            stop.set()  # what the SIGINT handler does

    # When Ctrl-C arrives 4 s in
    result = demo.run_demo(
        seconds=60,
        out_dir=tmp_path / "out",
        use_prometheus=False,
        on_snapshot=interrupt_after_the_spike_began,
        stop=stop,
    )
    # Then the run is recorded as stopped early, and the summary says so
    assert result.stopped_early
    assert result.seconds < 50
    summary = demo.build_summary(result)
    assert "workerfleet demo stopped early (Ctrl-C or SIGTERM)" in summary
    assert "not healthy (exit 1): stopped early" in summary


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_crash_looping_fleet_is_reported_with_its_crash_count(tmp_path: pathlib.Path) -> None:
    # Given demo tasks whose module fails at import: every worker exits as it starts
    app = tmp_path / "app"
    app.mkdir()
    (app / "demo_tasks.py").write_text("raise RuntimeError('broken on purpose')\n")
    # When the demo runs a few seconds of load on them
    result = demo.run_demo(seconds=8, out_dir=tmp_path / "out", app_path=app, use_prometheus=False)
    # Then nothing completed, the crashes are counted, and the run is not called healthy
    assert result.completed == 0
    assert result.workers_crashed >= 1
    assert f"{result.workers_crashed} worker crash(es)" in demo.describe_problems(result)
    assert f"workers crashed {result.workers_crashed}" in demo.build_summary(result)


def test_the_demo_header_names_the_pool_by_its_name_not_its_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = demo.DemoResult(enqueued=10, completed=9, dead_lettered=1, seconds=80.0)
    run_cmd_demo(monkeypatch, tmp_path, result)
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("workerfleet demo: 80s of load on pool thumbnails;"), header
    assert "demo-pool.yaml" not in header


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seconds", [0.0, -5.0])
def test_a_demo_too_short_to_enqueue_a_job_exits_1_and_says_so(
    seconds: float, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given `workerfleet demo --seconds 0` (or a negative or tiny time): no load is sent
    args = argparse.Namespace(
        seconds=seconds,
        out=tmp_path / "out",
        no_prometheus=True,
        no_view=True,
        scenario="thumbnails",
        broker="redis",
    )
    # When the demo runs for real
    code = cli.cmd_demo(args)
    # Then it does not call a run with no job a healthy system ("enqueued 0 … lost 0" exited 0)
    output = capsys.readouterr().out
    assert "enqueued=0 " in output.splitlines()[-1]
    assert code == 1, output
    assert "not healthy (exit 1): no job enqueued" in output
