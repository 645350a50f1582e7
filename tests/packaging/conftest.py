"""Fixtures of the packaging tests: the real helm, promtool and checkov binaries, and renders.

Used by every tests/packaging/test_*.py (all carry the `chart` marker, run by `make chart-check`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging_support import (
    CACHE_BIN,
    VALUES_SETS,
    Manifest,
    Render,
    find_binary,
    helm_template,
    load_manifests,
    values_file,
)


@pytest.fixture(scope="session")
def helm() -> str:
    return find_binary("helm", CACHE_BIN / "helm")


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_binary("promtool", Path("/usr/bin/promtool"))


@pytest.fixture(scope="session")
def checkov() -> str:
    return find_binary("checkov", CACHE_BIN / "checkov")


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    """render(values_set or None, *extra helm args) -> the rendered manifests."""

    def _render(values_set: str | None = "default", *args: str) -> list[Manifest]:
        values = values_file(values_set) if values_set else None
        return load_manifests(helm_template(helm, values, *args))

    return _render


@pytest.fixture(scope="session")
def rendered_dir(helm: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with one rendered file per values set: <set>.yaml."""
    out = tmp_path_factory.mktemp("rendered")
    for values_set in VALUES_SETS:
        (out / f"{values_set}.yaml").write_text(helm_template(helm, values_file(values_set)))
    return out
