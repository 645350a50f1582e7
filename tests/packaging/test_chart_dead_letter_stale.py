"""The staleness window of WorkerPoolDeadLetterStale is the chart value
prometheusRule.deadLetterStaleSeconds: the PrometheusRule the chart renders with another value
fires past that window (promtool, on the rendered rules), the default stays a day, and the schema
refuses a window too short to mean "nobody looks after this DLQ".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_support import CHART, NAMESPACE, RELEASE, Render, of_kind, run

pytestmark = pytest.mark.chart

ALERT = "WorkerPoolDeadLetterStale"
LABELS = 'namespace="shop",pool="stale",queue="q-stale",job="workerfleet-operator"'

# An hour-long window: a letter 5,000 s old is stale, one 3,000 s old is not.
ONE_HOUR_SUITE = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: workerfleet_pool_dead_letter_oldest_age_seconds{{{labels}}}
        values: 3000x5 5000x15
    alert_rule_test:
      # Under the hour until minute 6, then pending for 5 minutes: quiet at 10, firing at 13.
      - {{eval_time: 5m, alertname: {alert}, exp_alerts: []}}
      - {{eval_time: 10m, alertname: {alert}, exp_alerts: []}}
      - eval_time: 13m
        alertname: {alert}
        exp_alerts:
          - exp_labels: {{severity: warning, namespace: shop, pool: stale, queue: q-stale}}
            exp_annotations:
              summary: A dead letter of pool shop/stale has waited more than 1h 0m 0s.
              description: {description}
              runbook_url: {runbook}
"""


def _render_rule_file(render: Render, tmp_path: Path, *args: str) -> tuple[Path, dict[str, Any]]:
    """The chart's PrometheusRule as a plain rule file, and its WorkerPoolDeadLetterStale."""
    (rule,) = of_kind(render(None, "--set", "prometheusRule.enabled=true", *args), "PrometheusRule")
    path = tmp_path / "rendered-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if r.get("alert") == ALERT]
    (stale,) = alerts
    return path, stale


def test_a_one_hour_window_fires_for_a_letter_older_than_an_hour(
    render: Render, promtool: str, tmp_path: Path
) -> None:
    # Given the chart rendered with a staleness window of an hour
    rules, stale = _render_rule_file(
        render, tmp_path, "--set", "prometheusRule.deadLetterStaleSeconds=3600"
    )
    assert "86400" not in yaml.safe_dump(stale)
    # When a pool's oldest dead letter ages from 3,000 s to 5,000 s
    suite = tmp_path / "one-hour-suite.yaml"
    description = " ".join(stale["annotations"]["description"].split())
    description = (
        description.replace("{{ $labels.queue }}", "q-stale")
        .replace("{{ $labels.namespace }}", "shop")
        .replace("{{ $labels.pool }}", "stale")
        .replace("{{ $value | humanizeDuration }}", "1h 23m 20s")
    )
    suite.write_text(
        ONE_HOUR_SUITE.format(
            rules=rules,
            labels=LABELS,
            alert=ALERT,
            description=yaml.safe_dump(description, width=10**6).strip().removesuffix("..."),
            runbook=stale["annotations"]["runbook_url"],
        )
    )
    done = run([promtool, "test", "rules", str(suite)])
    # Then the alert fires past the hour, saying the window, and not before
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_default_window_is_a_day(render: Render, tmp_path: Path) -> None:
    _, stale = _render_rule_file(render, tmp_path)
    assert stale["expr"].strip().endswith("> 86400")
    assert "{{ humanizeDuration 86400.0 }}" in stale["annotations"]["summary"]


def test_the_schema_refuses_a_window_under_five_minutes(helm: str) -> None:
    done = run(
        [
            helm,
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "prometheusRule.deadLetterStaleSeconds=60",
        ]
    )
    assert done.returncode != 0
    assert "deadLetterStaleSeconds" in done.stderr


def test_the_window_changes_the_threshold_and_summary_and_leaves_the_labels_alone(
    render: Render, tmp_path: Path
) -> None:
    # Given an extra alert label whose value holds the digits of the default window
    _, stale = _render_rule_file(
        render,
        tmp_path,
        "--set",
        "prometheusRule.deadLetterStaleSeconds=3600",
        "--set-string",
        "prometheusRule.additionalRuleLabels.ticket=INC864000",
    )
    # Then the window changed the threshold and the summary, and the label kept its value
    assert stale["expr"].strip().endswith("> 3600")
    assert "{{ humanizeDuration 3600.0 }}" in stale["annotations"]["summary"]
    assert stale["labels"] == {"severity": "warning", "ticket": "INC864000"}


def _stale_lines(render: Render, *args: str) -> tuple[list[Any], dict[str, Any]]:
    """The red lines of the chart's Oldest dead letter age panel, and the whole dashboard."""
    (config_map,) = [
        m
        for m in of_kind(render(None, "--set", "grafanaDashboard.enabled=true", *args), "ConfigMap")
        if "workerfleet-dashboard.json" in m.get("data", {})
    ]
    dashboard: dict[str, Any] = json.loads(config_map["data"]["workerfleet-dashboard.json"])
    (panel,) = [p for p in dashboard["panels"] if p.get("title") == "Oldest dead letter age"]
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return [s["value"] for s in steps if s["color"] == "red"], dashboard


def test_the_dashboards_dead_letter_age_line_follows_the_window(render: Render) -> None:
    # Given the chart's dashboard rendered with the default window and with an hour
    default_lines, default = _stale_lines(render)
    hour_lines, hour = _stale_lines(render, "--set", "prometheusRule.deadLetterStaleSeconds=3600")
    # Then the panel draws its red line where the alert fires, and nothing else changed
    assert default_lines == [86400]
    assert hour_lines == [3600]
    assert default == json.loads(
        (CHART / "files" / "dashboards" / "workerfleet-dashboard.json").read_text()
    )
    assert json.dumps(hour).replace("3600", "86400") == json.dumps(default).replace("3600", "86400")
