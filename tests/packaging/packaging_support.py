"""Shared helpers of the packaging tests: where the chart and tools are, running and rendering.

Imported by tests/packaging/conftest.py and the test modules. A missing binary FAILS the test
(never a skip): `make deps` installs helm, promtool and checkov.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "workerfleet"
CI_VALUES = CHART / "ci"
CACHE_BIN = (
    Path(os.environ.get("WORKERFLEET_CACHE", Path.home() / ".cache" / "workerfleet")) / "bin"
)
NAMESPACE = "workerfleet-system"
RELEASE = "workerfleet"
VALUES_SETS = ("default", "cluster-wide", "namespaced", "monitoring", "console")

Manifest = dict[str, Any]
# The `render` fixture (conftest.py): render(values_set or None, *extra helm args) -> manifests.
Render = Callable[..., list[Manifest]]


def find_binary(name: str, *candidates: Path) -> str:
    """Return the path of a real tool, or fail the test naming how to get it."""
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make deps` (scripts/ensure-deps.sh)")
    return found


def run(cmd: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool with a time bound; the caller asserts on the exit code and output."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False, env=env)


def helm_template(helm: str, values: Path | None = None, *args: str) -> str:
    """`helm template` the chart as release RELEASE in NAMESPACE; asserts it renders."""
    cmd = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if values is not None:
        cmd += ["-f", str(values)]
    done = run([*cmd, *args])
    assert done.returncode == 0, done.stderr
    return done.stdout


def read_value_docs(values_text: str) -> tuple[set[str], dict[str, str]]:
    """Return (all key paths, the `# --` doc of each documented path) of a values.yaml text.

    A doc is its comment lines joined with spaces, without the `#` and the leading `--`: the
    text the chart README's values table shows (scripts/render_install.py)."""
    stack: list[tuple[int, str]] = []
    docs: dict[str, str] = {}
    paths: set[str] = set()
    comment: list[str] = []
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not match or stripped.startswith("-"):
            comment = []
            continue
        indent = len(match[1])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(key for _, key in stack), match[2]])
        stack.append((indent, match[2]))
        paths.add(path)
        starts = [i for i, c in enumerate(comment) if c.startswith("# --")]
        if starts:
            text = [c.lstrip("#").strip() for c in comment[starts[-1] :]]
            docs[path] = " ".join(text).removeprefix("--").strip()
        comment = []
    return paths, docs


def values_file(values_set: str) -> Path:
    return CI_VALUES / f"{values_set}-values.yaml"


def load_manifests(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m.get("kind") == kind]


def read_instructions(path: Path) -> list[tuple[str, str]]:
    """A Dockerfile's (INSTRUCTION, arguments) pairs, comments dropped, continuation lines joined.

    Also used by tests/e2e/test_images.py to compare the built images with the Dockerfiles.
    """
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def read_final_stage(path: Path) -> list[tuple[str, str]]:
    """The instructions of a Dockerfile's last stage (from its last FROM)."""
    steps = read_instructions(path)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]
