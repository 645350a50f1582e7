"""The alerts on the real control plane: a real Prometheus scraping the real operator process.

The operator runs as the chart's ServiceAccount (tests/e2e/workerfleet_support.py) and watches a
namespace of its own; Prometheus (the demo's :class:`demo.Prometheus`) loads the fast alert rules
(every window divided by 20) and scrapes it every second as job ``workerfleet-operator`` with
``honor_labels``, as the chart's ServiceMonitor does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from workerfleet_operator.local import demo

from tests.conftest import RedisServer
from tests.e2e import kubecluster
from tests.e2e import workerfleet_support as wf

pytestmark = pytest.mark.e2e

NAMESPACE = "e2e-alerts"
FAST_RULES = wf.REPO / "deploy" / "alerts" / "workerfleet-alerts.fast.yaml"
FOR_SECONDS = 6  # WorkerPoolQueueUnreachable's for: 2m, divided by 20


@pytest.fixture
def scraped_operator(
    kube_cluster: kubecluster.KubeCluster,
    workerfleet_chart: str,
    redis_server: RedisServer,
    tmp_path: Path,
) -> Iterator[tuple[wf.Operator, demo.Prometheus]]:
    kube_cluster.kubectl("create", "namespace", NAMESPACE)
    kube_cluster.kubectl(
        "create", "secret", "generic", "redis", "-n", NAMESPACE,
        f"--from-literal=url={redis_server.url}",
    )  # fmt: skip
    running = wf.start_operator(kube_cluster, workerfleet_chart, (NAMESPACE,), tmp_path / "op")
    assert demo.Prometheus.available(), "prometheus not installed: run `make deps`"
    server = demo.Prometheus(
        tmp_path / "prometheus",
        FAST_RULES,
        running.metrics_port,
        scrape_configs=[
            {
                "job_name": "workerfleet-operator",
                "honor_labels": True,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{running.metrics_port}"],
                        "labels": {"pod": "workerfleet-operator-e2e"},
                    }
                ],
            }
        ],
    )
    try:
        server.start()
        yield running, server
    finally:
        server.stop()
        running.stop()
        kube_cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def test_a_deleted_secret_fires_queue_unreachable_after_its_for_with_the_reason(
    kube_cluster: kubecluster.KubeCluster,
    scraped_operator: tuple[wf.Operator, demo.Prometheus],
) -> None:
    # Given a pool whose queue the operator reads and Prometheus sees as reachable
    operator, server = scraped_operator
    pool = wf.build_pool(
        "alerting",
        "e2e-alerting",
        {"minReplicas": 0, "maxReplicas": 1, "pollingIntervalSeconds": 1},
    )
    kube_cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(pool))
    reachable = 'workerfleet_pool_queue_reachable{pool="alerting"}'
    kubecluster.poll_until(
        "the reachable queue scraped",
        lambda: server.fetch_query(reachable),
        lambda result: bool(result) and result[0]["value"][1] == "1",
        timeout_seconds=60,
    )
    # When its Secret is deleted
    deleted_at = time.monotonic()
    kube_cluster.kubectl("delete", "secret", "redis", "-n", NAMESPACE)
    # Then WorkerPoolQueueUnreachable fires for the pool, not before its for:, with the reason;
    # the bound allows the operator's Secret cache (30 s by default) and a loaded machine
    firing = kubecluster.poll_until(
        "WorkerPoolQueueUnreachable firing",
        lambda: [
            a
            for a in server.fetch_alerts()
            if a["labels"].get("alertname") == "WorkerPoolQueueUnreachable"
            and a["state"] == "firing"
        ],
        bool,
        timeout_seconds=30 + FOR_SECONDS + 20,
    )
    assert time.monotonic() - deleted_at >= FOR_SECONDS
    [alert] = firing
    assert alert["labels"]["namespace"] == NAMESPACE and alert["labels"]["pool"] == "alerting"
    assert "pod" not in alert["labels"]
    assert "(reason: SecretNotFound)" in alert["annotations"]["description"]
    assert operator.forbidden_lines() == []
