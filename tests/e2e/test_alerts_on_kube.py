"""The alerts on the real control plane: a real Prometheus scraping the real operator process.

The operator runs as the chart's ServiceAccount (tests/e2e/workerfleet_support.py) and watches a
namespace of its own; Prometheus (the demo's :class:`demo.Prometheus`) loads the fast alert rules
(every window divided by 20) and scrapes it every second as job ``workerfleet-operator`` with
``honor_labels``, as the chart's ServiceMonitor does. Targets come from a discovery file, so an
operator restart is a new target (new ``instance`` and ``pod``) and the old one's series go stale,
as with Kubernetes discovery.

The subscription-lag test publishes real events onto two registered subscriptions of a topic,
one handled by a real worker process on the host (the pools' pods are on kwok nodes and run
nothing) and one handled by nobody, and watches WorkerPoolSubscriptionLagHigh fire for the
second only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from workerfleet_operator.local import demo, fleet

from tests.e2e import kubecluster
from tests.e2e import workerfleet_support as wf
from tests.support.redis_servers import RedisServer
from worker_runtime import App, JobContext
from worker_runtime.brokers.redis import keys, stats

pytestmark = pytest.mark.e2e

FAST_RULES = wf.REPO / "deploy" / "alerts" / "workerfleet-alerts.fast.yaml"
FOR_SECONDS = 6  # WorkerPoolQueueUnreachable's for: 2m, divided by 20
LAG_FOR_SECONDS = 15  # WorkerPoolSubscriptionLagHigh's for: 5m, divided by 20
LAG_THRESHOLD_SECONDS = 3  # the subscription pools' targetOldestJobAgeSeconds


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


# ---- subscription lag (events) ----------------------------------------------------------------


async def _not_run_here(data: dict[str, int], ctx: JobContext) -> None:
    """The handler of the deploy step's App: it only registers the groups, never runs them."""


async def _register_groups(url: str, topic: str, groups: tuple[str, ...]) -> None:
    """A deploy step registers the topic's groups before the first publish (docs/events.md)."""
    app = App(queue="e2e-deploy", redis_url=url)
    for group in groups:
        app.subscribe(topic, group=group)(_not_run_here)
    await app.register_subscriptions()
    await app.aclose()


class Publisher:
    """Publishes one event to ``topic`` every ``every`` seconds from a thread (at most
    ``limit``, until stopped); ``published`` counts the publishes that returned."""

    def __init__(self, url: str, topic: str, *, every: float = 0.5, limit: int = 400) -> None:
        self.url, self.topic, self.every, self.limit = url, topic, every, limit
        self.published = 0
        self.errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the publisher did not stop"
        assert self.errors == []

    def _run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    async def _publish(self) -> None:
        app = App(queue="e2e-publisher", redis_url=self.url)
        try:
            while self.published < self.limit and not self._stopping.is_set():
                await app.publish(self.topic, {"n": self.published})
                self.published += 1
                await asyncio.sleep(self.every)
        finally:
            await app.aclose()


@contextlib.contextmanager
def subscriber(url: str, topic: str, group: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real worker process serving subscription ``group`` (tests/e2e/e2e_subscriber.py),
    stopped by its PID at the end."""
    env = {
        "E2E_TOPIC": topic,
        "WORKERFLEET_REDIS_URL": url,
        "WORKERFLEET_QUEUE": f"{topic}:{group}",
        "WORKERFLEET_METRICS_PORT": "0",
        "WORKERFLEET_DRAIN_TIMEOUT_SECONDS": "1",
    }
    proc = wf.start_host_worker("tests.e2e.e2e_subscriber:app", env, log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _scraped(operators: ScrapedOperators, expr: str) -> dict[str, float]:
    """group -> value of each series ``expr`` returns now."""
    return {
        r["metric"]["group"]: float(r["value"][1]) for r in operators.prometheus.fetch_query(expr)
    }


def test_a_subscription_falling_behind_fires_lag_high_and_one_keeping_up_stays_quiet(
    kube_cluster: kubecluster.KubeCluster,
    operators: ScrapedOperators,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    # Given a topic with two registered groups, each served by a WorkerPool whose queue is the
    # subscription's (<topic>:<group>, targetOldestJobAgeSeconds 3 s) that operator pod op-a
    # polls and Prometheus scrapes; a real worker handles the email group's events, nothing
    # handles analytics' (the pools' pods are on kwok nodes and run nothing)
    topic = f"e2e{uuid.uuid4().hex[:8]}.order.placed"
    asyncio.run(_register_groups(redis_server.url, topic, ("analytics", "email")))
    publisher = Publisher(redis_server.url, topic)
    with subscriber(redis_server.url, topic, "email", tmp_path / "email-worker.log") as worker:
        operators.start("op-a")
        for group in ("analytics", "email"):
            pool = wf.build_pool(
                f"lag-{group}",
                f"{topic}:{group}",
                {
                    "minReplicas": 0,
                    "maxReplicas": 1,
                    "pollingIntervalSeconds": 1,
                    "targetOldestJobAgeSeconds": LAG_THRESHOLD_SECONDS,
                },
            )
            kube_cluster.kubectl(
                "apply", "-n", operators.namespace, "-f", "-", input=json.dumps(pool)
            )
        backlog = f'workerfleet_pool_subscription_backlog{{topic="{topic}"}}'
        kubecluster.poll_until(
            "both subscriptions' lag scraped",
            lambda: _scraped(operators, backlog),
            lambda groups: set(groups) == {"analytics", "email"},
            timeout_seconds=60,
        )
        # When an event is published every 0.5 s: analytics' backlog grows by 2 a second
        publisher.start()
        started = time.monotonic()
        # Then WorkerPoolSubscriptionLagHigh fires for analytics, not before the oldest event
        # is over the threshold plus the alert's for:, naming the topic and the group; and
        # it never pends or fires for email, which keeps up, while it is watched
        seen_for_email: list[dict[str, Any]] = []

        def lag_firing() -> list[dict[str, Any]]:
            alerts = [
                a
                for a in operators.prometheus.fetch_alerts()
                if a["labels"].get("alertname") == "WorkerPoolSubscriptionLagHigh"
            ]
            seen_for_email.extend(a for a in alerts if a["labels"].get("group") != "analytics")
            return [a for a in alerts if a["state"] == "firing"]

        firing = kubecluster.poll_until(
            "WorkerPoolSubscriptionLagHigh firing",
            lag_firing,
            bool,
            timeout_seconds=LAG_THRESHOLD_SECONDS + LAG_FOR_SECONDS + 60,
        )
        assert time.monotonic() - started >= LAG_THRESHOLD_SECONDS + LAG_FOR_SECONDS
        [alert] = firing
        assert {k: v for k, v in alert["labels"].items() if k != "alertname"} == {
            "namespace": operators.namespace,
            "pool": "lag-analytics",
            "queue": f"{topic}:analytics",
            "topic": topic,
            "group": "analytics",
            "severity": "warning",
        }
        assert f"workerfleet topic lag {topic}" in alert["annotations"]["description"]
        deadline = time.monotonic() + LAG_FOR_SECONDS + 5  # one more for: while publishing
        while time.monotonic() < deadline:
            lag_firing()
            time.sleep(0.5)
        assert seen_for_email == []
        ages = _scraped(
            operators,
            "namespace_pool_queue_topic_group:"
            f'workerfleet_pool_subscription_oldest_event_age_seconds:max{{topic="{topic}"}}',
        )
        assert ages["email"] < LAG_THRESHOLD_SECONDS < ages["analytics"]  # evaluated, low
        publisher.stop()
        assert worker.poll() is None, "the email worker died"

        # And the series say what `workerfleet topic lag` says, and every event reached both
        # groups: analytics holds all of them, the email worker completed all of them
        client = redis.Redis.from_url(redis_server.url)
        kubecluster.poll_until(
            "the email worker done",
            lambda: stats.fetch_queue_stats_sync(client, f"{topic}:email").completed_total,
            lambda done: done == publisher.published,
        )
        client.close()
        lag = json.loads(
            subprocess.run(
                [str(wf.WORKERFLEET), "topic", "lag", topic, "--json"],
                env={**os.environ, "WORKERFLEET_REDIS_URL": redis_server.url},
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        )
        rows = {row["group"]: row for row in lag}
        assert rows["analytics"]["backlog"] == publisher.published
        assert (rows["email"]["backlog"], rows["email"]["in_flight"]) == (0, 0)
        kubecluster.poll_until(
            "the scraped backlog equal to topic lag's",
            lambda: _scraped(operators, backlog),
            lambda groups: groups == {"analytics": publisher.published, "email": 0},
        )
