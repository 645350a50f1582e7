"""``make dist``'s artifacts install and work: the wheel in a fresh venv runs the demo.

Builds with scripts/build-dist.sh into a temporary folder (wheel, sdist, the chart package and
SHA256SUMS), checks the checksums, then installs ONLY the wheel into a new virtualenv outside
the source tree and runs ``workerfleet demo --seconds 40`` from an empty folder: everything the
demo needs (its pool, its tasks, the alert rules) must come from the installed package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.chart, pytest.mark.slow]


def test_dist_builds_checksummed_artifacts_and_the_wheel_runs_the_demo_in_a_fresh_venv(
    tmp_path: Path,
) -> None:
    # Given the artifacts of `make dist`
    out = tmp_path / "dist"
    built = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-dist.sh")],
        cwd=REPO, env={**os.environ, "DIST_DIR": str(out)},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    names = sorted(p.name for p in out.iterdir())
    [wheel] = [n for n in names if n.endswith(".whl")]
    assert any(n.endswith(".tar.gz") for n in names), names  # the sdist
    assert any(n.endswith(".tgz") for n in names), names  # the chart package
    check = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0 and check.stdout.count(": OK") == 3, check.stdout + check.stderr
    # When only the wheel is installed into a fresh venv
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    # (at the versions the rest of the suite runs with: scripts/constraints.txt)
    pip = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q",
         "-c", str(REPO / "scripts" / "constraints.txt"), str(out / wheel)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-3000:]
    # Then `workerfleet demo --seconds 40` runs from an empty folder and exits 0
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(env_dir / "bin"), "/usr/local/bin", "/usr/bin", "/bin"])
    demo = subprocess.run(
        [str(env_dir / "bin" / "workerfleet"), "demo", "--seconds", "40"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
    assert "workerfleet demo: 40s of load" in demo.stdout + demo.stderr
    # and nothing came from the source tree
    assert str(REPO) not in demo.stdout + demo.stderr
    assert sys.prefix != str(env_dir)
