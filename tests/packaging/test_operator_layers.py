"""The operator's import layers hold, and break when a lower layer reaches up, even indirectly.

The contracts are pyproject.toml's own (read here, not repeated): ``shell > plan > manifests >
autoscaling > api`` and the pure core's "no I/O" list, both without an indirect-import
allowance. Each case runs the real ``lint-imports`` on a copy of the packages with one import
planted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = (
    "The operator in layers: the shell drives plan, plan builds manifests, all stand on the API"
)
PURE = "The operator's pure core does no I/O (no Kubernetes client, kopf or Redis)"


def _contracts(names: tuple[str, ...]) -> str:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    by_name = {c["name"]: c for c in config["contracts"]}
    chosen = [by_name[n] for n in names if n in by_name]
    assert [c["name"] for c in chosen] == list(names), "a contract was renamed or removed"
    lines = ["[importlinter]", "root_packages =", "    workerfleet_operator", "    worker_runtime"]
    lines.append(f"include_external_packages = {config['include_external_packages']}")
    for index, contract in enumerate(chosen):
        lines += ["", f"[importlinter:contract:{index}]"]
        for key, value in contract.items():
            if isinstance(value, list):
                lines.append(f"{key} =")
                lines += [f"    {item}" for item in value]
            else:
                lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _lint(tmp_path: Path, plant: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Copy the packages to ``tmp_path``, append each planted line to its module, lint."""
    shutil.copytree(ROOT / "operator" / "workerfleet_operator", tmp_path / "workerfleet_operator")
    shutil.copytree(ROOT / "worker_runtime", tmp_path / "worker_runtime")
    for module, line in plant.items():
        path = tmp_path / module
        path.write_text(path.read_text() + f"\n{line}\n")
    config = tmp_path / "importlinter.ini"
    config.write_text(_contracts((LAYERS, PURE)))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--config", str(config), "--no-cache"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_operator_as_it_is_keeps_its_layers(tmp_path: Path) -> None:
    result = _lint(tmp_path, {})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("plant", "broken"),
    [
        # the API reaching up into plan
        (
            {"workerfleet_operator/api/status.py": "from workerfleet_operator import plan"},
            "workerfleet_operator.api is not allowed to import workerfleet_operator.plan",
        ),
        # the autoscaler reaching the shell through a module outside the layers (indirect)
        (
            {
                "workerfleet_operator/quantity.py": "from workerfleet_operator.shell import kube",
                "workerfleet_operator/autoscaling.py": "from workerfleet_operator import quantity",
            },
            "workerfleet_operator.autoscaling is not allowed to import workerfleet_operator.shell",
        ),
    ],
    ids=["direct", "indirect"],
)
def test_a_lower_layer_importing_a_higher_one_breaks_the_contract(
    tmp_path: Path, plant: dict[str, str], broken: str
) -> None:
    result = _lint(tmp_path, plant)
    assert result.returncode != 0
    report = " ".join(result.stdout.split())  # lint-imports wraps long lines
    assert broken in report, result.stdout
