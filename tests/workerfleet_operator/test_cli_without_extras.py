"""The commands that need an extra, run with the base package only: ``workerfleet operator``,
``pools``, ``--pool NAMESPACE/NAME`` and ``console`` say in one line which extra they need and
how to install it, and exit 2, instead of dying with a ModuleNotFoundError traceback.

Each runs the real ``workerfleet`` entry point in its own Python, where an import hook makes the
extra's modules missing, as in a virtualenv that installed workerfleet without the extra.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

OPERATOR_MODULES = ("kopf", "aiohttp", "kubernetes")
CONSOLE_MODULES = ("starlette", "jinja2", "uvicorn", "multipart", "python_multipart")

WITHOUT_MODULES = """
import sys

class Absent:
    # raising from find_spec is what an environment without the package looks like to import
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in sys.argv[1].split(","):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Absent())
from workerfleet_operator.cli import main
sys.exit(main(sys.argv[2:]))
"""


def run_without(modules: tuple[str, ...], *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, WORKERFLEET_CONSOLE_TOKEN="t0ken", KUBECONFIG="/nonexistent")
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_MODULES, ",".join(modules), *args],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "feature"),
    [
        (("pools", "-A"), "workerfleet pools"),
        (("operator",), "workerfleet operator"),
        (("queue", "stats", "--pool", "team-a/emails"), "--pool"),
        (("dlq", "ls", "--pool", "team-a/emails"), "--pool"),
        (("queue", "jobs", "--in-flight", "--pool", "team-a/emails"), "--pool"),
        (("console", "--kube"), "the console's --kube"),
    ],
)
def test_a_command_needing_the_operator_extra_says_so_in_one_line_and_exits_2(
    args: tuple[str, ...], feature: str
) -> None:
    # Given workerfleet installed without the operator extra (no kopf, aiohttp, kubernetes)
    # When a command that reads the cluster runs
    done = run_without(OPERATOR_MODULES, *args)
    # Then it prints one line naming the extra, what is missing and how to install it
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"workerfleet: {feature} needs the operator extra (No module named")
    assert "-m pip install '" in lines[0] and "[operator]'" in lines[0]
    # And exits 2, a usage error, having printed nothing else
    assert done.returncode == 2 and done.stdout == ""


def test_the_console_without_its_extra_says_so_in_one_line_and_exits_2() -> None:
    # Given workerfleet installed without the console extra
    # When the console starts
    done = run_without(CONSOLE_MODULES, "console", "--queue", "emails")
    # Then it says the console needs its extra and how to install it, and exits 2
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("workerfleet: the console needs the console extra (No module named")
    assert "-m pip install '" in lines[0] and "[console]'" in lines[0]
    assert done.returncode == 2
