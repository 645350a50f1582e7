"""What the demo's summary claims: only what was checked, with links that still answer."""

from __future__ import annotations

import dataclasses
import pathlib

from workerfleet_operator.local import demo, embedded_redis

from tests.workerfleet_operator import scaling_fixtures
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker
from worker_runtime.brokers.sqs import broker as sqs_broker


def test_workers_lost_without_drain_are_not_claimed_zero_on_a_broker_without_heartbeats() -> None:
    # Given final stats that report 0 lost workers, as RabbitMQ's and SQS's always do
    stats = scaling_fixtures.queue_stats(0.0)
    # When the demo counts the workers lost without a drain on each broker
    on_redis = demo.count_workers_lost(
        dataclasses.replace(stats, workers_lost_total=1, workers_expired=1), base.FULL_CONTRACT
    )
    on_rabbitmq = demo.count_workers_lost(stats, rabbitmq_broker.CAPABILITIES)
    on_sqs = demo.count_workers_lost(stats, sqs_broker.STANDARD_CAPABILITIES)
    # Then Redis' heartbeats count them, and the others have no number to give
    assert on_redis == 2
    assert on_rabbitmq is None and on_sqs is None
    # And the summary says why there is none
    summary = demo.build_summary(demo.DemoResult(broker="rabbitmq", workers_lost=on_rabbitmq))
    assert "lost without drain n/a (the broker keeps no heartbeats)" in summary
    assert "lost without drain 0" in demo.build_summary(demo.DemoResult(workers_lost=0))


def test_the_summary_names_where_prometheus_ran_and_no_link_to_it_once_stopped(
    tmp_path: pathlib.Path,
) -> None:
    # Given the demo's Prometheus, started with the fast rules (as run_demo does)
    prometheus = demo.Prometheus(
        tmp_path / "prometheus", demo.FAST_RULES, embedded_redis.fetch_free_port()
    )
    started, said = demo.start_prometheus(prometheus)
    assert started is prometheus
    # When the demo stops it, before its summary is printed
    prometheus.stop()
    summary = demo.build_summary(demo.DemoResult(prometheus=said))
    # Then the summary says where it ran and that it stopped, and offers no dead link
    assert f"ran on 127.0.0.1:{prometheus.port} with workerfleet-alerts.fast.yaml" in summary
    assert "stopped with the demo" in summary
    assert "http://" not in summary
