"""Child commands of the local fleet are tied to the fleet's life where the OS allows it."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from workerfleet_operator.local import lifeline

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="parent-death signals are Linux-only"
)


def test_a_child_command_is_prefixed_to_get_sigterm_when_its_parent_dies() -> None:
    command = lifeline.build_tied_command(
        ["redis-server", "--port", "1"], setpriv="/x/setpriv", parent_pid=42
    )
    if sys.platform.startswith("linux"):
        assert command[:4] == ["/x/setpriv", "--pdeathsig", "TERM", "--"]
        assert command[-5:] == ["workerfleet-lifeline", "42", "redis-server", "--port", "1"]
    else:
        assert command == ["redis-server", "--port", "1"]


def test_without_setpriv_the_command_runs_unchanged() -> None:
    assert lifeline.build_tied_command(["redis-server"], setpriv="") == ["redis-server"]


def _setpriv() -> str:
    tool = shutil.which("setpriv")
    assert tool is not None, "setpriv (util-linux) is required on Linux"
    return tool


@linux_only
def test_a_child_of_a_live_parent_runs_its_command_with_its_arguments_intact(
    tmp_path: pathlib.Path,
) -> None:
    # Given a command whose arguments hold spaces and quotes, tied to this (live) process
    marker = tmp_path / "ran"
    script = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"
    command = lifeline.build_tied_command(
        [sys.executable, "-c", script, str(marker), "a 'b' \"c\""], setpriv=_setpriv()
    )
    # When it runs
    result = subprocess.run(command, timeout=30, check=False)
    # Then the command ran, with the arguments as given
    assert result.returncode == 0
    assert marker.read_text() == "a 'b' \"c\""


@linux_only
def test_a_child_whose_parent_died_before_the_signal_was_set_does_not_start(
    tmp_path: pathlib.Path,
) -> None:
    # Given a command built for a parent that is not the process starting it: what a child
    # sees when the fleet that forked it died before setpriv set the parent-death signal
    marker = tmp_path / "ran"
    command = lifeline.build_tied_command(
        ["touch", str(marker)], setpriv=_setpriv(), parent_pid=os.getppid()
    )
    # When it runs
    result = subprocess.run(command, timeout=30, check=False)
    # Then it exits as if terminated, and the command never started
    assert result.returncode == 143
    assert not marker.exists()
