"""The alerts on the real control plane: a real Prometheus scraping the real operator process.

The operator runs as the chart's ServiceAccount (tests/e2e/workerfleet_support.py) and watches a
namespace of its own; Prometheus (the demo's :class:`demo.Prometheus`) loads the fast alert rules
(every window divided by 20) and scrapes it every second as job ``workerfleet-operator`` with
``honor_labels``, as the chart's ServiceMonitor does. Targets come from a discovery file, so an
operator restart is a new target (new ``instance`` and ``pod``) and the old one's series go stale,
as with Kubernetes discovery.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from workerfleet_operator.local import demo, fleet

from tests.e2e import kubecluster
from tests.e2e import workerfleet_support as wf
from tests.support.redis_servers import RedisServer
from worker_runtime.brokers.redis import keys

pytestmark = pytest.mark.e2e

FAST_RULES = wf.REPO / "deploy" / "alerts" / "workerfleet-alerts.fast.yaml"
FOR_SECONDS = 6  # WorkerPoolQueueUnreachable's for: 2m, divided by 20


class ScrapedOperators:
    """Operator processes, each listed in Prometheus' discovery file as its own pod."""

    def __init__(
        self, cluster: kubecluster.KubeCluster, account: str, namespace: str, workdir: Path
    ) -> None:
        self.cluster, self.account, self.workdir = cluster, account, workdir
        self.namespace = namespace
        self.targets = workdir / "operator-targets.json"
        self.running: dict[str, wf.Operator] = {}
        self._publish()
        assert demo.Prometheus.available(), "prometheus not installed: run `make deps`"
        self.prometheus = demo.Prometheus(
            workdir / "prometheus",
            FAST_RULES,
            0,
            scrape_configs=[
                {
                    "job_name": "workerfleet-operator",
                    "honor_labels": True,
                    "file_sd_configs": [{"files": [str(self.targets)], "refresh_interval": "1s"}],
                }
            ],
        )

    def start(self, pod: str) -> wf.Operator:
        self.running[pod] = wf.start_operator(
            self.cluster, self.account, (self.namespace,), self.workdir / pod
        )
        self._publish()
        return self.running[pod]

    def stop(self, pod: str) -> None:
        self.running.pop(pod).stop()
        self._publish()

    def _publish(self) -> None:
        groups = [
            {"targets": [f"127.0.0.1:{op.metrics_port}"], "labels": {"pod": pod}}
            for pod, op in self.running.items()
        ]
        fleet.write_file_targets(self.targets, json.dumps(groups))

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.prometheus.fetch_alerts()
            if a["labels"].get("alertname") == alertname and a["state"] == "firing"
        ]


@pytest.fixture
def operators(
    kube_cluster: kubecluster.KubeCluster,
    workerfleet_chart: str,
    redis_server: RedisServer,
    namespace: str,
    tmp_path: Path,
) -> Iterator[ScrapedOperators]:
    kube_cluster.kubectl(
        "create", "secret", "generic", "redis", "-n", namespace,
        f"--from-literal=url={redis_server.url}",
    )  # fmt: skip
    scraped = ScrapedOperators(kube_cluster, workerfleet_chart, namespace, tmp_path)
    try:
        scraped.prometheus.start()
        yield scraped
    finally:
        scraped.prometheus.stop()
        for pod in list(scraped.running):
            scraped.stop(pod)


def given_a_scraped_pool(
    cluster: kubecluster.KubeCluster, operators: ScrapedOperators, name: str
) -> wf.Operator:
    """Operator pod op-a runs pool ``name``, whose queue Prometheus sees as reachable."""
    running = operators.start("op-a")
    pool = wf.build_pool(
        name, f"e2e-{name}", {"minReplicas": 0, "maxReplicas": 1, "pollingIntervalSeconds": 1}
    )
    cluster.kubectl("apply", "-n", operators.namespace, "-f", "-", input=json.dumps(pool))
    kubecluster.poll_until(
        "the reachable queue scraped",
        lambda: operators.prometheus.fetch_query(
            f'workerfleet_pool_queue_reachable{{pool="{name}"}}'
        ),
        lambda result: bool(result) and result[0]["value"][1] == "1",
        timeout_seconds=60,
    )
    return running


def given_scraped_dead_letters(
    cluster: kubecluster.KubeCluster,
    operators: ScrapedOperators,
    redis_server: RedisServer,
    name: str,
    count: int,
) -> str:
    """Pool ``name`` (queue e2e-NAME) with ``count`` dead letters in Redis, scraped for longer
    than the fast rules' 15 s growth window; returns the scraped series' selector."""
    client = redis.Redis.from_url(redis_server.url)
    client.hset(keys.build_keys(f"e2e-{name}").counters, "dead_lettered", count)
    given_a_scraped_pool(cluster, operators, name)
    series = f'workerfleet_pool_jobs_dead_lettered_total{{pool="{name}"}}'
    kubecluster.poll_until(
        f"{count} dead letters scraped",
        lambda: operators.prometheus.fetch_query(series),
        lambda result: bool(result) and result[0]["value"][1] == str(count),
    )
    time.sleep(16)
    return series


def test_a_deleted_secret_fires_queue_unreachable_after_its_for_with_the_reason(
    kube_cluster: kubecluster.KubeCluster, operators: ScrapedOperators
) -> None:
    # Given a pool whose queue the operator reads and Prometheus sees as reachable
    operator = given_a_scraped_pool(kube_cluster, operators, "alerting")
    # When its Secret is deleted
    deleted_at = time.monotonic()
    kube_cluster.kubectl("delete", "secret", "redis", "-n", operators.namespace)
    # Then WorkerPoolQueueUnreachable fires for the pool, not before its for:, with the reason;
    # the bound allows the operator's Secret cache (30 s by default) and a loaded machine
    firing = kubecluster.poll_until(
        "WorkerPoolQueueUnreachable firing",
        lambda: operators.firing("WorkerPoolQueueUnreachable"),
        bool,
        timeout_seconds=30 + FOR_SECONDS + 20,
    )
    assert time.monotonic() - deleted_at >= FOR_SECONDS
    [alert] = firing
    assert alert["labels"]["namespace"] == operators.namespace
    assert alert["labels"]["pool"] == "alerting"
    assert "pod" not in alert["labels"]
    assert "(reason: SecretNotFound)" in alert["annotations"]["description"]
    assert operator.forbidden_lines() == []


def test_an_operator_restart_during_dead_letter_growth_still_fires(
    kube_cluster: kubecluster.KubeCluster, operators: ScrapedOperators, redis_server: RedisServer
) -> None:
    # Given pod op-a exporting a pool with 10 dead letters, scraped past the 15 s growth window
    series = given_scraped_dead_letters(kube_cluster, operators, redis_server, "restart", 10)
    counters = keys.build_keys("e2e-restart").counters
    client = redis.Redis.from_url(redis_server.url)
    assert operators.firing("WorkerPoolDeadLetterGrowing") == []
    # When op-a stops, 3 jobs are dead-lettered while no operator runs, and op-b takes over
    operators.stop("op-a")
    client.hincrby(counters, "dead_lettered", 3)
    operators.start("op-b")
    # Then WorkerPoolDeadLetterGrowing fires for the pool with the 3 jobs of the restart
    firing = kubecluster.poll_until(
        "WorkerPoolDeadLetterGrowing firing",
        lambda: operators.firing("WorkerPoolDeadLetterGrowing"),
        bool,
        timeout_seconds=60,
    )
    [alert] = firing
    assert alert["labels"]["pool"] == "restart" and "pod" not in alert["labels"]
    assert alert["annotations"]["description"].startswith("3 jobs of queue e2e-restart")
    assert [s["metric"]["pod"] for s in operators.prometheus.fetch_query(series)] == ["op-b"]


def test_a_dead_letter_counter_that_steps_back_pages_nothing(
    kube_cluster: kubecluster.KubeCluster, operators: ScrapedOperators, redis_server: RedisServer
) -> None:
    # Given a pool whose Redis counts 5,000 dead letters, scraped past the 15 s growth window
    series = given_scraped_dead_letters(kube_cluster, operators, redis_server, "stepback", 5000)
    counters = keys.build_keys("e2e-stepback").counters
    client = redis.Redis.from_url(redis_server.url)
    # When the counter steps back, as after a failover to a replica that missed two writes
    client.hset(counters, "dead_lettered", 4998)
    kubecluster.poll_until(
        "the step back scraped",
        lambda: operators.prometheus.fetch_query(series),
        lambda result: bool(result) and result[0]["value"][1] == "4998",
    )
    # Then for longer than the growth window nothing pends or fires
    seen = []
    deadline = time.monotonic() + 18
    while time.monotonic() < deadline:
        seen += [
            a
            for a in operators.prometheus.fetch_alerts()
            if a["labels"].get("alertname") == "WorkerPoolDeadLetterGrowing"
        ]
        time.sleep(0.5)
    assert seen == []
