"""prometheusRule.additionalRuleLabels may add labels to the alerts, never replace who they are.

Prometheus sets a rule's labels over the labels of the series that fired it. An added
`namespace` (a routing label many setups use) would rename every pool's alert to that one
namespace: Alertmanager's inhibitions (`equal: [namespace, pool, queue]`) and routes would match
the wrong pools, and two pools of one name in two namespaces would become one label set, which
fails the whole rule's evaluation. The schema refuses the labels the alerts are identified by.
"""

from __future__ import annotations

import pytest
from packaging_support import CHART, Render, of_kind, run

pytestmark = pytest.mark.chart

IDENTITY_LABELS = ("namespace", "pool", "queue", "topic", "group", "alertname")


@pytest.mark.parametrize("label", IDENTITY_LABELS)
def test_an_added_label_that_would_replace_an_alerts_identity_is_refused(
    helm: str, label: str
) -> None:
    done = run(
        [
            helm, "template", "workerfleet", str(CHART),
            "--set", "prometheusRule.enabled=true",
            "--set", f"prometheusRule.additionalRuleLabels.{label}=platform",
        ]
    )  # fmt: skip
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr, done.stderr
    assert f"invalid propertyName '{label}'" in done.stderr, done.stderr


def test_other_added_labels_reach_every_alert_and_no_record(render: Render) -> None:
    (rule,) = of_kind(
        render(
            "default",
            "--set", "prometheusRule.enabled=true",
            "--set", "prometheusRule.additionalRuleLabels.team=platform",
        ),
        "PrometheusRule",
    )  # fmt: skip
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert all(r["labels"]["team"] == "platform" for r in rules if "alert" in r)
    assert not any("labels" in r for r in rules if "record" in r)
