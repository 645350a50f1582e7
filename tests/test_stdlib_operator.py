"""The operator's import package lives in the folder operator/ without shadowing the stdlib."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_operator_is_the_standard_library_inside_the_test_environment() -> None:
    import operator

    # Given the test environment puts the repository and operator/ on sys.path
    # Then `operator` still resolves to the stdlib module, not to a folder of the project
    assert operator.add(2, 3) == 5
    assert callable(operator.itemgetter)
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    origin = getattr(operator, "__file__", None)
    assert origin is not None
    assert Path(origin).resolve().is_relative_to(stdlib)


def test_the_operator_package_imports_under_its_own_name() -> None:
    import workerfleet_operator
    import workerfleet_operator.cli

    assert Path(workerfleet_operator.__file__).resolve().is_relative_to(REPO / "operator")
    assert callable(workerfleet_operator.cli.main)


def test_a_fresh_interpreter_from_the_repository_root_sees_the_stdlib_operator() -> None:
    # Given a new interpreter started in the repository root (where operator/ is a folder)
    code = (
        "import operator, sysconfig, pathlib, workerfleet_operator;"
        "print(pathlib.Path(operator.__file__).resolve().is_relative_to("
        "pathlib.Path(sysconfig.get_paths()['stdlib']).resolve()))"
    )
    # When it imports operator and workerfleet_operator
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    # Then both work and operator is the stdlib
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
