"""Ctrl-C while the command line is still importing its modules ends it with one line and 130.

``workerfleet`` builds its parser from every command group (pydantic settings, the console, the
local fleet) and each handler imports its own heavy modules before it takes Ctrl-C itself; an
interrupt then showed a traceback of the import machinery. Real processes and a real SIGINT: the
child is the console script's own code (``from workerfleet_operator.cli import main``), with an
import hook that holds one chosen module's import open, so the signal is sent, deterministically,
while that import is under way.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest

from tests.support.cli import REPO

LOADING = "test-hook: loading"

# The child: hold the import of TARGET open (an import hook, in the child only) until a signal
# ends the wait, then run the entry point as the console script (or `python -m`) does.
CHILD = f"""
import importlib.abc, sys, time

TARGET, ENTRY = sys.argv[1], sys.argv[2]

class HoldImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == TARGET:
            print("{LOADING}", file=sys.stderr, flush=True)
            deadline = time.monotonic() + 20.0
            while time.monotonic() < deadline:
                time.sleep(0.05)
        return None

sys.meta_path.insert(0, HoldImport())
sys.argv = ["workerfleet", *sys.argv[3:]]
if ENTRY == "workerfleet":
    from workerfleet_operator.cli import main
else:
    from worker_runtime.cli import main
sys.exit(main())
"""


def interrupt_while_importing(target: str, entry: str, *args: str) -> tuple[int, str]:
    """Start the command, send SIGINT once it is importing ``target``: (exit code, stderr)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "operator")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, target, entry, *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30.0
        first = ""
        while not first and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stderr], [], [], 0.5)[0]:
                first = proc.stderr.readline()
        assert first.strip() == LOADING, f"the child never imported {target}: {first!r}"
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
        return proc.returncode, first + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize(
    ("target", "entry", "args"),
    [
        # the operator's settings (pydantic), imported while the parser is built
        ("workerfleet_operator.shell.config", "workerfleet", ("--version",)),
        # the web console's command group, imported while the parser is built
        ("workerfleet_operator.console.cli", "workerfleet", ("queue", "stats")),
        # the demo's own modules, imported by its handler before it takes Ctrl-C itself
        ("workerfleet_operator.local.demo", "workerfleet", ("demo", "--no-prometheus")),
        # `python -m worker_runtime`: the locale module argparse's help formatting loads while
        # the parser of the runtime's commands is built
        ("locale", "runtime", ("queue", "stats", "--queue", "q")),
    ],
    ids=["operator-settings", "console-group", "demo-handler", "runtime-command"],
)
def test_ctrl_c_while_modules_load_prints_one_line_and_exits_130(
    target: str, entry: str, args: tuple[str, ...]
) -> None:
    # Given the command line started and still importing a module
    # When the user presses Ctrl-C (SIGINT) during that import
    code, err = interrupt_while_importing(target, entry, *args)
    # Then it says it was interrupted, in one line and without a traceback, and exits 130
    assert "Traceback" not in err, err
    assert err.strip().splitlines() == [LOADING, "workerfleet: interrupted"], err
    assert code == 130, err
