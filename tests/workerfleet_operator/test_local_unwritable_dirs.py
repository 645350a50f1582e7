"""``workerfleet run`` and ``workerfleet demo`` given a directory they cannot write to.

A read-only or full file system under ``--log-dir``, ``--data-dir`` or ``--out`` is an error
of the user's set-up: the command says which path and why, exits 1, and leaves no traceback
and no server behind. A path under a regular file stands in for a read-only mount (the tests
may run as root, for whom permissions do not forbid a write).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import local_fleet_support as support
import pytest

pytestmark = pytest.mark.slow


def run_workerfleet(args: list[str], cwd: pathlib.Path) -> tuple[int, str]:
    command = [str(pathlib.Path(sys.executable).parent / "workerfleet"), *args]
    done = subprocess.run(
        command, cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=120
    )
    return done.returncode, done.stdout + done.stderr


def unwritable(tmp_path: pathlib.Path, name: str) -> pathlib.Path:
    """A directory path that cannot be made: its parent is a regular file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    return blocker / name


def test_workerfleet_run_says_its_log_dir_cannot_be_written_not_that_the_port_is_taken(
    tmp_path: pathlib.Path,
) -> None:
    # Given a pool and a --log-dir that cannot be made, the metrics port free
    manifest_path = support.write_manifest(tmp_path, support.build_manifest("logdir"))
    logs = unwritable(tmp_path, "logs")
    # When it runs
    code, output = run_workerfleet(
        [
            "run",
            str(manifest_path),
            "--log-dir",
            str(logs),
            "--metrics-port",
            "0",
            "--seconds",
            "1",
        ],
        tmp_path,
    )
    # Then it names the directory and the reason (it blamed the metrics port before)
    assert code == 1, output
    assert f"cannot use {logs}" in output and "Not a directory" in output, output
    assert "cannot serve metrics" not in output
    assert "Traceback" not in output


def test_workerfleet_run_says_its_data_dir_cannot_be_written(tmp_path: pathlib.Path) -> None:
    # Given a --data-dir for the embedded redis-server that cannot be made
    manifest_path = support.write_manifest(tmp_path, support.build_manifest("datadir"))
    data = unwritable(tmp_path, "data")
    # When it runs
    code, output = run_workerfleet(
        ["run", str(manifest_path), "--data-dir", str(data), "--metrics-port", "0"], tmp_path
    )
    # Then it says which directory and why, without a traceback
    assert code == 1, output
    assert f"cannot use {data}" in output and "Not a directory" in output, output
    assert "Traceback" not in output


@pytest.mark.parametrize("scenario", ["thumbnails", "events"])
def test_workerfleet_demo_says_its_out_dir_cannot_be_written(
    scenario: str, tmp_path: pathlib.Path
) -> None:
    # Given a demo --out that cannot be made
    out = unwritable(tmp_path, "out")
    # When the demo (either scenario) runs
    code, output = run_workerfleet(
        ["demo", "--scenario", scenario, "--out", str(out), "--seconds", "1", "--no-view"],
        tmp_path,
    )
    # Then it says which directory and why, without a traceback
    assert code == 1, output
    assert f"cannot use {out}" in output and "Not a directory" in output, output
    assert "Traceback" not in output
