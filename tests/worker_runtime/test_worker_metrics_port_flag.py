"""``workerfleet worker --metrics-port``: 0 turns the worker's /metrics, /healthz and /readyz
off, as ``WORKERFLEET_METRICS_PORT=0`` always did, and so does -1, which is ``workerfleet run``'s
"off" (where 0 picks a free port): the flag learnt on one command does not fail on the other."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker_runtime import cli, config
from worker_runtime import worker as worker_mod

APP = """
from worker_runtime import App

app = App(queue="emails")


@app.task("noop")
async def noop(payload: dict, ctx) -> None:
    return None
"""


def settings_of_worker(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                       ) -> config.WorkerSettings:  # fmt: skip
    """The settings ``workerfleet worker ARGV`` would run a worker with (the worker not run)."""
    (tmp_path / "metrics_port_app.py").write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("WORKERFLEET_METRICS_PORT", "9555")
    started: list[config.WorkerSettings] = []
    monkeypatch.setattr(worker_mod, "install_early_signal_handlers", lambda: None)
    monkeypatch.setattr(worker_mod, "run_worker", lambda app, s: started.append(s) or 0)
    code = cli.main(["worker", "metrics_port_app:app", "--broker-url", "memory://m", *argv])
    assert code == 0 and len(started) == 1
    return started[0]


@pytest.mark.parametrize("off", ["0", "-1"])
def test_a_worker_given_metrics_port_0_or_minus_1_serves_no_metrics(
    off: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given WORKERFLEET_METRICS_PORT=9555 in the environment
    # When the worker is started with --metrics-port 0 or -1
    settings = settings_of_worker(["--metrics-port", off], tmp_path, monkeypatch)
    # Then it runs with the port 0, which the worker reads as no metrics/health server
    assert settings.metrics_port == 0


def test_a_worker_given_a_metrics_port_runs_with_that_port_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_of_worker(["--metrics-port", "9600"], tmp_path, monkeypatch)
    assert settings.metrics_port == 9600


def test_a_worker_refuses_a_metrics_port_below_minus_1(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["worker", "m:a", "--metrics-port", "-2"])
    assert stopped.value.code == 2
    assert "--metrics-port: must be -1 or more, not -2" in capsys.readouterr().err
