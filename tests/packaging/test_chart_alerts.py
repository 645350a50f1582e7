"""The alert rules (deploy/alerts/workerfleet-alerts.yaml): valid, unit-tested, documented.

`promtool check rules` on the source and its generated fast variant; `promtool test rules` on
every suite in deploy/alerts/tests/; every alert of the product contract exists once, fires in a
suite and stays quiet in one, carries severity/summary/description/runbook, and uses only the
series docs/architecture.md lists.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_support import ROOT, run

pytestmark = pytest.mark.chart

ALERTS_DIR = ROOT / "deploy" / "alerts"
RULES = ALERTS_DIR / "workerfleet-alerts.yaml"
FAST_RULES = ALERTS_DIR / "workerfleet-alerts.fast.yaml"
SUITES = sorted((ALERTS_DIR / "tests").glob("*.yaml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"

PRODUCT_ALERTS = (
    "WorkerPoolDeadLetterGrowing",
    "WorkerPoolDeadLetterBacklog",
    "WorkerPoolBacklogGrowingAtMaxReplicas",
    "WorkerPoolOldestJobTooOld",
    "WorkerPoolHighFailureRate",
    "WorkerPoolQueueUnreachable",
    "WorkerPoolDrainKilled",
    "WorkerfleetOperatorDown",
    "WorkerfleetOperatorReconcileErrors",
)
# Alerts whose value is not a count worth quoting: 0/1 reachability and absent().
NO_VALUE_IN_DESCRIPTION = {"WorkerPoolQueueUnreachable", "WorkerfleetOperatorDown"}


def _rules(path: Path = RULES) -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(path.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "an alert is defined twice"
    return {rule["alert"]: rule for rule in rules}


@pytest.mark.parametrize("path", [RULES, FAST_RULES], ids=["rules", "fast-rules"])
def test_promtool_check_rules_is_clean(promtool: str, path: Path) -> None:
    done = run([promtool, "check", "rules", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(PRODUCT_ALERTS)} rules found" in done.stdout


@pytest.mark.parametrize("suite", SUITES, ids=[s.stem for s in SUITES])
def test_promtool_unit_tests_pass(promtool: str, suite: Path) -> None:
    done = run([promtool, "test", "rules", str(suite)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_exactly_the_product_alerts_are_defined() -> None:
    assert sorted(_rules()) == sorted(PRODUCT_ALERTS)


def _cases() -> list[tuple[str, bool]]:
    """(alertname, fires) for every alert_rule_test case of every suite."""
    cases = []
    for suite in SUITES:
        for test in yaml.safe_load(suite.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.append((case["alertname"], bool(case.get("exp_alerts"))))
    return cases


@pytest.mark.parametrize("alert", PRODUCT_ALERTS)
def test_every_alert_has_a_suite_where_it_fires_and_one_where_it_stays_quiet(alert: str) -> None:
    cases = _cases()
    assert (alert, True) in cases, f"{alert} never fires in deploy/alerts/tests"
    assert (alert, False) in cases, f"{alert} is never shown to stay quiet"


@pytest.mark.parametrize("alert", PRODUCT_ALERTS)
def test_every_alert_carries_severity_summary_description_command_and_runbook(alert: str) -> None:
    rule = _rules()[alert]
    assert rule["labels"]["severity"] in {"warning", "critical"}
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    description = annotations["description"]
    if alert.startswith("WorkerPool"):
        for label in ("namespace", "pool", "queue"):
            assert f"$labels.{label}" in description, f"{alert} description lacks {label}"
    if alert not in NO_VALUE_IN_DESCRIPTION:
        assert "$value" in description, f"{alert} description lacks the current value"
    # The command to inspect, ready to paste.
    assert re.search(r"`(kubectl|workerfleet) [^`]+`", description), alert
    if "DeadLetter" in alert:
        assert "workerfleet dlq ls --queue {{ $labels.queue }}" in description


def _runbook_anchors() -> set[str]:
    headings = re.findall(r"^#+ (.+)$", RUNBOOKS.read_text(), re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("alert", PRODUCT_ALERTS)
def test_every_runbook_url_points_at_a_section_of_docs_runbooks(alert: str) -> None:
    url = _rules()[alert]["annotations"]["runbook_url"]
    page, _, anchor = url.partition("#")
    assert page.endswith("/docs/runbooks.md")
    assert anchor == alert.lower()
    assert anchor in _runbook_anchors(), f"docs/runbooks.md has no section for {alert}"


def _architecture_metrics() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return set(re.findall(r"`(workerfleet_(?:pool|operator)_[a-z_]+)", text))


def test_the_rules_use_only_the_operator_series_from_the_architecture_and_up() -> None:
    allowed = _architecture_metrics() | {"up"}
    assert "workerfleet_pool_dead_letter_alert_threshold" in allowed  # the contract was parsed
    for alert, rule in _rules().items():
        names = set(re.findall(r"\b(workerfleet_[a-z_]+|up)\b", rule["expr"]))
        assert names, alert
        assert names <= allowed, f"{alert} uses {sorted(names - allowed)}"


def test_the_dead_letter_threshold_comes_from_the_pool_spec_metric() -> None:
    expr = _rules()["WorkerPoolDeadLetterBacklog"]["expr"]
    assert "workerfleet_pool_dead_letter_alert_threshold" in expr
    assert not re.search(r">=\s*\d", expr), "the threshold must not be hard-coded"


def test_the_fast_rules_shorten_every_window_for_the_demo() -> None:
    fast = _rules(FAST_RULES)
    normal = _rules()
    assert sorted(fast) == sorted(normal)
    for alert, rule in fast.items():
        assert re.fullmatch(r"\d+s", rule["for"]), (alert, rule["for"])
        assert int(rule["for"][:-1]) <= 45
        assert not re.search(r"\[\d+m\]", rule["expr"]), alert
        assert rule["annotations"] == normal[alert]["annotations"]


FAST_SUITE = """
rule_files: [{rules}]
evaluation_interval: 1s
tests:
  - interval: 1s
    input_series:
      - series: >-
          workerfleet_pool_jobs_dead_lettered_total{{namespace="local",pool="demo",queue="demo"}}
        values: 0x10 2x60
    alert_rule_test:
      - {{eval_time: 9s, alertname: WorkerPoolDeadLetterGrowing, exp_alerts: []}}
      # Then the alert fires within seconds of the first dead letter
      - eval_time: 13s
        alertname: WorkerPoolDeadLetterGrowing
        exp_alerts:
          - exp_labels: {{severity: warning, namespace: local, pool: demo, queue: demo}}
            exp_annotations:
              summary: Jobs of pool local/demo are being dead-lettered.
              description: >-
                2 jobs of queue demo (WorkerPool local/demo) went to the dead-letter queue in the
                last 5 minutes. They will not run again until replayed. Inspect them with
                `kubectl -n local exec deploy/demo -- workerfleet dlq ls --queue demo` and
                `workerfleet dlq show` for the error history.
              runbook_url: {runbook}
      # And it resolves 15 s (5 min / 20) after the last one
      - {{eval_time: 40s, alertname: WorkerPoolDeadLetterGrowing, exp_alerts: []}}
"""


def test_the_demo_sees_dead_letter_growing_fire_within_30_seconds(
    promtool: str, tmp_path: Path
) -> None:
    # Given the fast rules, scraped and evaluated every second as in `workerfleet demo`
    # When 2 jobs are dead-lettered 10 s after the operator's first scrape
    runbook = _rules()["WorkerPoolDeadLetterGrowing"]["annotations"]["runbook_url"]
    path = tmp_path / "fast-suite.yaml"
    path.write_text(FAST_SUITE.format(rules=FAST_RULES, runbook=runbook))
    done = run([promtool, "test", "rules", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr
