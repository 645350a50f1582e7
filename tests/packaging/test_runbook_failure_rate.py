"""Where the alerts cannot count failures, the runbook's failure-rate query counts them all.

docs/runbooks.md sends on-call from WorkerPoolHighFailureRate (silent on RabbitMQ and SQS) to
the workers' own `workerfleet_jobs_total`. A failed attempt is recorded under several outcomes
(docs/runtime.md: `retried`, `dead_lettered`, `timeout`, and `failed` only when nothing could
be recorded), so the runbook must name the outcomes the dashboard's failed-attempts panel sums;
`outcome="failed"` alone stays near 0 while every job fails.
"""

from __future__ import annotations

import json
import re

import pytest
from packaging_support import ROOT

pytestmark = pytest.mark.chart

OUTCOME = re.compile(r"workerfleet_jobs_total\{[^}]*outcome(=~?)\"([^\"]+)\"")


def _dashboard_failed_outcomes() -> set[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "workerfleet-dashboard.json").read_text())
    panels = [p for row in dashboard["panels"] for p in [row, *row.get("panels", [])]]
    (panel,) = [p for p in panels if p.get("title") == "Failed attempts by task and outcome"]
    ((_, matched),) = OUTCOME.findall(panel["targets"][0]["expr"])
    return set(matched.split("|"))


def test_the_runbooks_failure_rate_query_names_every_outcome_of_a_failed_attempt() -> None:
    failed = _dashboard_failed_outcomes()
    assert failed >= {"retried", "dead_lettered", "timeout", "failed"}
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    queries = OUTCOME.findall(runbooks)
    assert queries, "the runbook names no workerfleet_jobs_total query"
    for op, matched in queries:
        assert op == "=~" and set(matched.split("|")) == failed, (op, matched)
