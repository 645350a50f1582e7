"""The Grafana dashboard reads the counters mirrored from Redis as the alert rules do: growth from
the window's lowest value, never rate()/increase().

The operator's ``workerfleet_pool_*_total`` series (docs/architecture.md, "counters mirrored from
Redis") are re-read from Redis on every poll, so they step back when Redis does (a failover to a
lagging replica, a restore from an older snapshot). rate() and increase() read any step back as
a counter reset and add the whole counter: a spike of thousands of jobs a second on the
Throughput panel, and a meaningless Failure ratio, right when on-call looks. The panels' queries
are run by promtool on such a step back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging_support import ROOT, run

pytestmark = pytest.mark.chart

DASHBOARD = ROOT / "deploy" / "grafana" / "workerfleet-dashboard.json"
COUNTER_FUNCTIONS = ("rate", "irate", "increase", "resets", "delta", "idelta", "deriv")


def _mirrored_counters() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    start = text.index("counters mirrored from Redis:")
    section = text[start : text.index("A mirrored counter still steps back", start)]
    return set(re.findall(r"`(workerfleet_[a-z_]+)`", section))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _queries() -> dict[str, str]:
    """'panel title / refId' -> query."""
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        f"{panel['title']} / {target['refId']}": target["expr"]
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    }


def test_no_panel_applies_a_counter_function_to_a_counter_mirrored_from_redis() -> None:
    mirrored = _mirrored_counters()
    assert "workerfleet_pool_jobs_completed_total" in mirrored  # the contract was parsed
    assert "workerfleet_pool_workers_killed_total" in mirrored
    functions = "|".join(COUNTER_FUNCTIONS)
    for title, expr in _queries().items():
        for counter in mirrored:
            pattern = rf"\b({functions})\(\s*{counter}\b"
            assert not re.search(pattern, expr), f"{title}: {expr}"


def _selector_free(expr: str) -> str:
    """The query as Grafana sends it for every namespace and pool (rate windows of 5 minutes)."""
    return expr.replace("$namespace", ".*").replace("$pool", ".*").replace("$__rate_interval", "5m")


def _query_of(queries: dict[str, str], title: str) -> str:
    """The first query of the panel whose title starts with ``title``."""
    (expr,) = [e for name, e in queries.items() if name.startswith(title) and name.endswith("/ A")]
    return _selector_free(expr)


POOL = 'namespace="shop",pool="thumbs",queue="thumbs"'


def _run_suite(promtool: str, path: Path, test: dict[str, Any]) -> None:
    path.write_text(
        yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": [test]})
    )
    done = run([promtool, "test", "rules", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_operator_restart_does_not_start_the_panels_windows_again(
    promtool: str, tmp_path: Path
) -> None:
    queries = _queries()
    dead_lettered = _selector_free(queries["Dead-lettered per 5 minutes / A"])
    old_pod = f'{POOL},job="workerfleet-operator",pod="workerfleet-operator-7d9f8-a1b2c"'
    new_pod = f'{POOL},job="workerfleet-operator",pod="workerfleet-operator-7d9f8-x9y8z"'
    # Given a pool enqueuing 1 job/s and dead-lettering one job a minute, whose operator pod is
    # replaced at minute 10: the new pod exports the same counters, read from Redis, from minute
    # 11 on, and the old pod's series ends
    test = {
        "interval": "1m",
        "input_series": [
            {
                "series": f"workerfleet_pool_jobs_enqueued_total{{{old_pod}}}",
                "values": "1000+60x10 stale",
            },
            {
                "series": f"workerfleet_pool_jobs_enqueued_total{{{new_pod}}}",
                "values": "_x11 1660+60x10",
            },
            {
                "series": f"workerfleet_pool_jobs_dead_lettered_total{{{old_pod}}}",
                "values": "50+1x10 stale",
            },
            {
                "series": f"workerfleet_pool_jobs_dead_lettered_total{{{new_pod}}}",
                "values": "_x11 61+1x10",
            },
        ],
        # When the panels are read 2.5 minutes after the new pod's first scrape (between two
        # evaluation steps, where Prometheus versions agree on which samples a window holds)
        # Then they show the pool's pace, as before the restart (the window's lowest value is
        # the old pod's at minute 9: 240 jobs over 300 s, 4 dead letters), not the new pod's
        # 2.5 minutes alone (120 jobs, 2 dead letters)
        "promql_expr_test": [
            {
                "expr": _query_of(queries, "Throughput"),
                "eval_time": "13m30s",
                "exp_samples": [{"labels": f"{{{POOL}}}", "value": 0.8}],
            },
            {
                "expr": dead_lettered,
                "eval_time": "13m30s",
                "exp_samples": [{"labels": f"{{{POOL}}}", "value": 4}],
            },
        ],
    }
    _run_suite(promtool, tmp_path / "restart-suite.yaml", test)


def test_a_redis_failover_that_steps_the_counters_back_reads_as_the_jobs_after_it(
    promtool: str, tmp_path: Path
) -> None:
    queries = _queries()
    enqueued = _query_of(queries, "Throughput")
    ratio = _query_of(queries, "Failure ratio")
    labels = f'{POOL},job="workerfleet-operator"'
    # Given a pool enqueuing, completing and failing at a steady pace (1 job/s enqueued and
    # completed, 1 failed attempt every 6 s), whose Redis fails over at minute 11 to a replica
    # that lagged by 9 minutes: every mirrored counter steps back by 9 minutes of jobs
    suite = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": f"workerfleet_pool_jobs_enqueued_total{{{labels}}}",
                        "values": "10000+60x10 10060+60x10",
                    },
                    {
                        "series": f"workerfleet_pool_jobs_completed_total{{{labels}}}",
                        "values": "9000+60x10 9060+60x10",
                    },
                    {
                        "series": f"workerfleet_pool_jobs_failed_total{{{labels}}}",
                        "values": "500+10x10 510+10x10",
                    },
                ],
                "promql_expr_test": [
                    # When the panels are read 4 minutes after the failover (5 samples since it)
                    # Then the throughput is the jobs after it over the 5 minutes: 240/300 a
                    # second, not the whole counter's 10,300 read as a reset
                    {
                        "expr": enqueued,
                        "eval_time": "15m",
                        "exp_samples": [{"labels": f"{{{POOL}}}", "value": 0.8}],
                    },
                    # And the failure ratio is the attempts after it: 40 of 40 + 240
                    {
                        "expr": ratio,
                        "eval_time": "15m",
                        "exp_samples": [{"labels": f"{{{POOL}}}", "value": 40 / 280}],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "dashboard-suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    done = run([promtool, "test", "rules", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr
