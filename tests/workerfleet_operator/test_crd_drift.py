"""The CRD in deploy/crds/ is exactly what the pydantic models generate."""

from __future__ import annotations

import subprocess
import sys

import yaml
from workerfleet_operator import api

from tests.workerfleet_operator import crd_validation


def test_the_committed_crd_is_exactly_what_the_models_generate() -> None:
    committed = crd_validation.CRD_FILE.read_text()
    assert committed == api.build_crd_yaml(), "deploy/crds is stale: run `make crd`"


def test_the_committed_crd_parses_to_the_generated_object() -> None:
    documents = [d for d in yaml.safe_load_all(crd_validation.CRD_FILE.read_text()) if d]
    assert documents == [api.build_crd()]


def test_gen_crd_check_mode_reports_an_up_to_date_file() -> None:
    result = subprocess.run(
        [sys.executable, str(crd_validation.REPO / "scripts" / "gen_crd.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
