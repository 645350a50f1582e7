"""Every query of the Grafana dashboard returns data from a live local fleet that has failures.

No screenshot: the demo (``local.demo.run_demo``: embedded Redis, real worker processes running
examples/demo_tasks.py with flaky and poison jobs, the autoscaler, a real Prometheus scraping
the fleet's per-pool series and every worker's own /metrics) runs, and while it runs each panel
query of deploy/grafana/workerfleet-dashboard.json is sent to that Prometheus with the
dashboard's variables set to the demo's pool. A query that never returns a series fails.

The local fleet is not the operator: it has no reconciles and no conditions. The queries of
those series are sent to a real operator (API emulator, real Redis) scraped by a real
Prometheus instead.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Callable
from typing import Any

import pytest
from workerfleet_operator.local import demo, manifest, runner

from tests.workerfleet_operator.conftest import (
    NAMESPACE,
    OperatorRunner,
    OperatorTargets,
    QueueRedis,
    build_pool,
    given_a_running_pool,
    wait_until,
)
from tests.workerfleet_operator.emulator import Emulator

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "workerfleet-dashboard.json"
# Series only the operator exports (the local fleet neither reconciles nor has conditions).
OPERATOR_ONLY = re.compile(r"workerfleet_operator_reconcile_(total|errors_total)|_pool_condition")
# Series only a pool serving an event subscription (queue <topic>:<group>) has; the demo pool
# serves an ordinary queue.
SUBSCRIPTION_ONLY = re.compile(r"workerfleet_pool_subscription_")


def build_panel_queries(namespace: str, pool: str) -> dict[str, str]:
    """'panel title / refId' -> the query as Grafana sends it for this pool."""
    dashboard = json.loads(DASHBOARD.read_text())
    values = {
        "$namespace": namespace,
        "$pool": pool,
        # Grafana's floor for rate windows is 4 scrape intervals (1 s here); 10 s has room.
        "$__rate_interval": "10s",
    }
    queries = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in values.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"unknown variable in {expr}"
            queries[f"{panel['title']} / {target['refId']}"] = expr
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            selector = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
            assert selector, variable["definition"]
            expr = selector[1].replace("$namespace", namespace)
            queries[f"variable {variable['name']}"] = expr
    return queries


@pytest.mark.timeout(150)
def test_every_dashboard_query_returns_data_from_a_local_fleet_with_failures(
    tmp_path: pathlib.Path,
) -> None:
    # Given the demo pool with flaky and poison jobs, scraped by a real Prometheus
    pool = manifest.fetch_pool(demo.DEFAULT_POOL).name
    every = build_panel_queries(manifest.LOCAL_NAMESPACE, pool)
    queries = {
        k: q
        for k, q in every.items()
        if not OPERATOR_ONLY.search(q) and not SUBSCRIPTION_ONLY.search(q)
    }
    assert len(queries) > 25
    answered: dict[str, list[dict[str, object]]] = {}
    last_probe = [0.0]

    def probe(snapshot: runner.Snapshot, prometheus: demo.Prometheus) -> None:
        # When every query is sent while the fleet runs (from 12 s on, every 2 s, until each
        # has answered once)
        if snapshot.at < 12 or snapshot.at - last_probe[0] < 2:
            return
        last_probe[0] = snapshot.at
        for key, expr in queries.items():
            if key not in answered:
                result = prometheus.fetch_query(expr)
                if result:
                    answered[key] = result

    result = demo.run_demo(seconds=40, out_dir=tmp_path / "out", probe=probe)
    # Then the run had failures to show, and every query returned at least one series
    assert result.prometheus.startswith("ran on 127.0.0.1:"), result.prometheus
    assert result.dead_lettered > 0 and result.retried > 0
    missing = sorted(set(queries) - set(answered))
    assert missing == [], "\n".join(f"{k}: {queries[k]}" for k in missing)
    # And the worker panels are filtered to the pool by the labels the fleet's discovery adds
    failed = answered["Failed attempts by task and outcome / A"]
    assert {str(s["metric"]["task"]) for s in failed} == {"thumbnail"}  # type: ignore[index]
    reasons = {str(s["metric"]["reason"]) for s in answered["Dead letters by reason (5m) / A"]}  # type: ignore[index]
    assert reasons


def test_the_operator_only_dashboard_queries_return_data_from_a_live_operator(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    prometheus: tuple[demo.Prometheus, OperatorTargets],
) -> None:
    # Given a running pool whose operator Prometheus scrapes
    server, targets = prometheus
    given_a_running_pool(emulator, queue_redis, lambda **_: targets.start_pod(operator, "op-a"))
    queries = {
        k: q for k, q in build_panel_queries(NAMESPACE, "emails").items() if OPERATOR_ONLY.search(q)
    }
    assert len(queries) >= 3

    # When the queries of the operator-only panels are sent
    # Then each returns a series (bounded: a few scrapes and a rate window)
    def unanswered() -> list[str]:
        return [k for k, q in queries.items() if not server.fetch_query(q)]

    wait_until(lambda: unanswered() == [], timeout=30, interval=1.0, message="no data")
    assert unanswered() == []


def test_the_subscription_lag_queries_return_data_from_an_operator_serving_a_subscription(
    emulator: Emulator,
    queue_redis: QueueRedis,
    operator: Callable[..., OperatorRunner],
    prometheus: tuple[demo.Prometheus, OperatorTargets],
) -> None:
    # Given a running pool whose queue is subscription email of shop.order.placed, scraped
    server, targets = prometheus
    body = build_pool("order-emails", queue="shop.order.placed:email")
    given_a_running_pool(
        emulator, queue_redis, lambda **_: targets.start_pod(operator, "op-a"), body
    )
    queries = {
        k: q
        for k, q in build_panel_queries(NAMESPACE, "order-emails").items()
        if SUBSCRIPTION_ONLY.search(q)
    }
    assert len(queries) >= 2

    # When the subscription panels' queries are sent
    # Then each returns the pool's series labelled with the topic and group (bounded wait)
    def answered() -> dict[str, list[dict[str, Any]]]:
        return {k: server.fetch_query(q) for k, q in queries.items()}

    results = wait_until(
        lambda: (r := answered()) and all(r.values()) and r,
        timeout=30,
        interval=1.0,
        message="no subscription data",
    )
    for series in results.values():
        assert [(s["metric"]["topic"], s["metric"]["group"]) for s in series] == [
            ("shop.order.placed", "email")
        ]
