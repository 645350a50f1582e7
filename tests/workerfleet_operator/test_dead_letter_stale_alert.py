"""WorkerPoolDeadLetterStale in a real Prometheus: fires for an old dead letter, quiet otherwise.

Real redis-server, the real engine dead-lettering real jobs, the operator's per-pool series
(``shell.metrics``) fed from the real one-round-trip stats and served over HTTP, and a real
Prometheus (``local.demo.Prometheus``, 1 s scrape and evaluation) loading the generated fast
rules (``for: 5m`` → 15 s). Redis server time cannot be moved, so the old dead letter is
re-dated in the DLQ's sorted set to what a dead-lettering two days ago would have written.
"""

from __future__ import annotations

import asyncio
import pathlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from prometheus_client import exposition
from workerfleet_operator.local import demo
from workerfleet_operator.shell import metrics

from tests.support import engine as es
from tests.support.redis_servers import RedisServer
from worker_runtime.brokers.redis import keys, stats

FAST_RULES = (
    pathlib.Path(__file__).resolve().parents[2] / "deploy/alerts/workerfleet-alerts.fast.yaml"
)
ALERT = "WorkerPoolDeadLetterStale"
TWO_DAYS_MS = 2 * 86_400 * 1000

pytestmark = pytest.mark.slow


async def _dead_letter_one(url: str, queue: str, *, days_ago_ms: int = 0) -> None:
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        engine = es.make_engine(client, queue)
        await engine.enqueue(es.request())
        (job,) = await engine.fetch("w", 1)
        assert await engine.dead_letter(job, "non_retryable", failure=es.failure())
        if days_ago_ms:
            dlq = keys.build_keys(queue).dlq
            score = float(await client.zscore(dlq, job.id) or 0.0)
            assert await client.zadd(dlq, {job.id: score - days_ago_ms}, xx=True, ch=True) == 1
    finally:
        await client.aclose()


class _Exporter:
    """The operator's per-pool series for some queues, refreshed from real stats every 0.5 s."""

    def __init__(self, url: str, pools: dict[str, str]) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.metrics = metrics.OperatorMetrics()
        self.series = {q: self.metrics.bind_pool(("shop", pool, q)) for q, pool in pools.items()}
        self.stop = threading.Event()
        self.server, _ = exposition.start_http_server(0, "127.0.0.1", self.metrics.registry)
        self.port = int(self.server.server_port)
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.is_set():
            for queue, series in self.series.items():
                series.record_poll(
                    stats.fetch_queue_stats_sync(self.client, queue),
                    desired=1,
                    max_replicas=1,
                    alert_threshold=100,
                    oldest_job_age_target=0.0,
                )
            self.stop.wait(0.5)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.server.shutdown()
        self.client.close()


@pytest.fixture
def prometheus_for(tmp_path: pathlib.Path) -> Iterator[Any]:
    started: list[demo.Prometheus] = []

    def start(port: int) -> demo.Prometheus:
        prom = demo.Prometheus(tmp_path / "prometheus", FAST_RULES, port)
        started.append(prom)
        prom.start(timeout=60.0)
        return prom

    try:
        yield start
    finally:
        for prom in started:
            prom.stop()


def test_an_old_dead_letter_fires_the_stale_alert_and_young_or_no_dead_letters_stay_quiet(
    redis_server: RedisServer, prometheus_for: Any
) -> None:
    # Given three pools: one whose DLQ holds a dead letter from two days ago (and a new one),
    # one with only a dead letter from now, and one with an empty DLQ
    stale, young, empty = (f"q-{name}-{time.time_ns() % 10**9}" for name in ("s", "y", "e"))
    asyncio.run(_dead_letter_one(redis_server.url, stale, days_ago_ms=TWO_DAYS_MS))
    asyncio.run(_dead_letter_one(redis_server.url, stale))
    asyncio.run(_dead_letter_one(redis_server.url, young))
    exporter = _Exporter(redis_server.url, {stale: "stale", young: "young", empty: "empty"})
    try:
        # When a real Prometheus scrapes their series and evaluates the rules
        prom = prometheus_for(exporter.port)
        seen: dict[str, set[str]] = {"stale": set(), "young": set(), "empty": set()}

        def stale_fires() -> bool:
            for alert in prom.fetch_alerts():
                if alert["labels"].get("alertname") == ALERT:
                    seen[alert["labels"]["pool"]].add(alert["state"])
            return "firing" in seen["stale"]

        deadline = time.monotonic() + 90.0
        while not stale_fires():
            assert time.monotonic() < deadline, f"the stale alert never fired: {seen}"
            time.sleep(0.5)
        # Then it fired for the pool with the two-day-old dead letter only (after pending),
        # and the pools with a young or no dead letter never had it, not even pending
        assert seen == {"stale": {"pending", "firing"}, "young": set(), "empty": set()}
        firing = [a for a in prom.fetch_alerts() if a["labels"].get("alertname") == ALERT]
        assert [a["labels"]["queue"] for a in firing] == [stale]
        assert "was dead-lettered 2d" in firing[0]["annotations"]["description"]

        # When the old entry is purged (the young one stays)
        old_id = exporter.client.zrange(keys.build_keys(stale).dlq, 0, 0)[0]
        assert exporter.client.zrem(keys.build_keys(stale).dlq, old_id) == 1
        # Then the alert resolves
        deadline = time.monotonic() + 60.0
        while any(a["labels"].get("alertname") == ALERT for a in prom.fetch_alerts()):
            assert time.monotonic() < deadline, "the stale alert did not resolve"
            time.sleep(0.5)
    finally:
        exporter.close()
