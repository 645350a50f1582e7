"""scripts/testbin.sh: a cached build is a no-op, and a build that cannot happen says why.

Runs the script against throwaway cache directories, offline (GOPROXY=off), so these checks
never build or download anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e import kubecluster

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "testbin.sh"


def run_script(cache: Path, path: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "WORKERFLEET_CACHE": str(cache), "PATH": path, **env}
    return subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=full_env, timeout=120
    )


def build_cached_testbin(cache: Path, version: str) -> Path:
    bin_dir = cache / "testbin" / version / "bin"
    bin_dir.mkdir(parents=True)
    for name in kubecluster.TESTBIN_BINARIES:
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    (bin_dir / kubecluster.KWOK_STAGES).write_text("---\n")
    (bin_dir / "manifest.txt").write_text(
        f"k8s={version} kwok=v0.8.0\n"
        + "".join(f"bin {n} x y\n" for n in kubecluster.TESTBIN_BINARIES)
    )
    return bin_dir


def test_a_second_run_with_everything_cached_is_a_no_op_that_needs_no_go(tmp_path: Path) -> None:
    # Given a cache holding every binary and a manifest for this exact version
    build_cached_testbin(tmp_path, "v1.35.4")
    # When the script runs with no Go toolchain on PATH at all
    result = run_script(tmp_path, "/usr/bin:/bin", K8S_VERSION="v1.35.4")
    # Then it succeeds at once and says it used the cache
    assert result.returncode == 0, result.stderr
    assert "testbin: cached v1.35.4" in result.stderr


def test_a_manifest_for_another_version_is_not_taken_for_a_cached_build(tmp_path: Path) -> None:
    # Given a cache whose manifest records another kwok version
    bin_dir = build_cached_testbin(tmp_path, "v1.35.4")
    (bin_dir / "manifest.txt").write_text("k8s=v1.35.4 kwok=v0.7.0\n")
    # When the script runs offline (no Go on this PATH here; no module proxy either way)
    result = run_script(tmp_path, "/usr/bin:/bin", K8S_VERSION="v1.35.4", GOPROXY="off")
    # Then it does not claim a cached build: it starts building, and fails saying why
    assert result.returncode != 0
    assert "testbin: cached" not in result.stderr
    assert "checking go" in result.stderr
    assert "go not found on PATH" in result.stderr or "FAILED at step" in result.stderr


def test_an_unavailable_kubernetes_version_fails_naming_the_step(tmp_path: Path) -> None:
    # Given Go, but no module proxy and a version absent from the module cache
    go = shutil.which("go")
    assert go is not None, "Go is needed to build the control plane (make testbin)"
    path = f"{Path(go).parent}:/usr/bin:/bin"
    # When the script is asked for it
    result = run_script(tmp_path, path, K8S_VERSION="v1.35.999", GOPROXY="off", GOFLAGS="-mod=mod")
    # Then it fails loudly, naming the step that failed
    assert result.returncode != 0
    assert "testbin: FAILED at step: fetching k8s.io/kubernetes@v1.35.999 go.mod" in result.stderr
