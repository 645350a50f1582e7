"""checkov (the real scanner, `--skip-download`) finds nothing on the rendered chart.

The only skipped checks are the ones listed with a reason in charts/workerfleet/README.md
("Security checks" table); none of them is a pod-security, resource or RBAC check, and every one
of those is shown to have RUN and passed.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from packaging_support import CACHE_BIN, CHART, VALUES_SETS, run

pytestmark = pytest.mark.chart

# The checks the security brief names: pod security, resources, RBAC (checkov 3.3 ids).
POD_SECURITY = {
    "CKV_K8S_16", "CKV_K8S_17", "CKV_K8S_18", "CKV_K8S_19", "CKV_K8S_20", "CKV_K8S_22",
    "CKV_K8S_23", "CKV_K8S_25", "CKV_K8S_28", "CKV_K8S_29", "CKV_K8S_30", "CKV_K8S_31",
    "CKV_K8S_37", "CKV_K8S_38", "CKV_K8S_39", "CKV_K8S_40",
}  # fmt: skip
RESOURCES = {"CKV_K8S_10", "CKV_K8S_11", "CKV_K8S_12", "CKV_K8S_13"}
RBAC = {
    "CKV_K8S_49", "CKV_K8S_155", "CKV_K8S_156", "CKV_K8S_157", "CKV_K8S_158",
    "CKV2_K8S_1", "CKV2_K8S_2", "CKV2_K8S_3", "CKV2_K8S_4", "CKV2_K8S_5",
}  # fmt: skip
CORE = POD_SECURITY | RESOURCES | RBAC


def readme_skips() -> dict[str, tuple[set[str], str]]:
    """check id -> (frameworks, reason) from the chart README's skip table."""
    rows = re.findall(
        r"^\| (CKV2?_K8S_\d+) \| ([a-z, ]+) \| (.+) \|$",
        (CHART / "README.md").read_text(),
        re.MULTILINE,
    )
    return {
        check: ({f.strip() for f in frameworks.split(",")}, reason)
        for check, frameworks, reason in rows
    }


def skips_for(framework: str) -> list[str]:
    return sorted(
        check for check, (frameworks, _) in readme_skips().items() if framework in frameworks
    )


@functools.cache
def _run_checkov(
    checkov: str, framework: str, target: tuple[str, ...], skip: tuple[str, ...]
) -> str:
    """One real checkov run, cached for the session (each costs 3-6 s)."""
    # checkov's helm framework shells out to `helm`: use the project's pinned one.
    env = {**os.environ, "PATH": f"{CACHE_BIN}:{os.environ.get('PATH', '')}"}
    cmd = [checkov, "--skip-download", "--framework", framework, *target, "-o", "json"]
    if skip:
        cmd += ["--skip-check", ",".join(skip)]
    done = run(cmd, env=env)
    assert done.stdout.strip(), done.stderr
    return done.stdout


def run_checkov(checkov: str, framework: str, target: list[str], skip: list[str]) -> dict[str, Any]:
    report = json.loads(_run_checkov(checkov, framework, tuple(target), tuple(skip)))
    if isinstance(report, list):  # one report per framework
        (report,) = [r for r in report if r.get("check_type") == framework]
    assert report["summary"]["parsing_errors"] == 0
    return report


def failures(report: dict[str, Any]) -> list[str]:
    return [
        f"{c['check_id']} {c['check_name']} ({c['resource']})"
        for c in report["results"]["failed_checks"]
    ]


def test_every_skip_has_a_reason_and_none_is_a_pod_security_resource_or_rbac_check() -> None:
    skips = readme_skips()
    assert skips, "the README lists no skips: the table could not be parsed"
    for check, (frameworks, reason) in skips.items():
        assert frameworks <= {"kubernetes", "helm"}, check
        assert len(reason) > 40, f"{check} needs a real reason"
    assert set(skips) & CORE == set()


@pytest.mark.parametrize("values_set", VALUES_SETS)
def test_checkov_kubernetes_finds_no_failures_on_the_rendered_chart(
    checkov: str, rendered_dir: Path, values_set: str
) -> None:
    # One unskipped run per values set (shared with the tests below); the README's skips are
    # applied here, exactly as `--skip-check` would.
    report = run_checkov(
        checkov, "kubernetes", ["-f", str(rendered_dir / f"{values_set}.yaml")], []
    )
    skipped = set(skips_for("kubernetes"))
    assert [f for f in failures(report) if f.split()[0] not in skipped] == []
    assert report["summary"]["passed"] > 50  # it really ran


def test_the_pod_security_resource_and_rbac_checks_all_ran_and_passed(
    checkov: str, rendered_dir: Path
) -> None:
    passed: set[str] = set()
    for values_set in VALUES_SETS:
        report = run_checkov(
            checkov, "kubernetes", ["-f", str(rendered_dir / f"{values_set}.yaml")], []
        )
        passed |= {c["check_id"] for c in report["results"]["passed_checks"]}
        assert {c["check_id"] for c in report["results"]["failed_checks"]} & CORE == set()
    assert sorted(CORE - passed) == []


def test_a_pinned_digest_with_network_policies_passes_even_the_skipped_checks(
    checkov: str, rendered_dir: Path
) -> None:
    # The monitoring values pin the image by digest and enable the NetworkPolicies: the image and
    # NetworkPolicy skips are then unnecessary, which is what the README promises.
    report = run_checkov(checkov, "kubernetes", ["-f", str(rendered_dir / "monitoring.yaml")], [])
    assert failures(report) == []


def test_checkov_helm_finds_no_failures_on_the_chart(checkov: str) -> None:
    report = run_checkov(checkov, "helm", ["-d", str(CHART)], skips_for("helm"))
    assert failures(report) == []
    assert report["summary"]["passed"] > 50
