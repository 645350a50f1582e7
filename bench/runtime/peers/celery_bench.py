"""celery peer for bench/runtime/driver.py: ``produce`` N no-op jobs, ``work`` runs them.

The benchmark allows ONE worker process per system, so celery's default prefork pool (a parent
plus one child per core) is out; BENCH_CELERY_POOL picks ``solo`` (default: one process runs
tasks inline, the fastest one-process pool for no-op tasks) or ``threads`` (BENCH_CONCURRENCY
threads, default 8). Results are ignored, gossip/mingle/heartbeat are off.

On Redis (the main table): prefetch multiplier celery's default 4, acks early (default).
On RabbitMQ or SQS (BENCH_BROKER_URL, the broker phase): the settings celery documents for many
short tasks and for at-least-once delivery, the promise workerfleet makes: ``task_acks_late``
(ack after the task returns, so a worker that dies mid-task loses nothing) and a prefetch
multiplier of 128 (BENCH_CELERY_PREFETCH; the optimizing guide's advice for short tasks). On
SQS, long polling (``wait_time_seconds`` 10 s) and ``polling_interval`` 0 (the default waits
1 s between empty polls). celery has no batch publish: the producer loops ``apply_async`` on
one held producer connection (without publisher confirms, celery's default).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import common
from celery import Celery


def broker_settings() -> tuple[str, dict[str, Any]]:
    """celery's broker URL and extra configuration for the broker under test."""
    url = common.BROKER_URL
    if not url:
        return common.REDIS_URL, {}
    at_least_once: dict[str, Any] = {
        "task_acks_late": True,
        "worker_prefetch_multiplier": int(os.environ.get("BENCH_CELERY_PREFETCH", "128")),
    }
    if url.startswith("amqp"):
        # "amqp://user:pass@host:port/" names the vhost "/" for aio-pika; kombu spells it "//"
        return url.rstrip("/") + "//", at_least_once
    # SQS on the local server: kombu takes the endpoint's host and port from the URL
    host = common.BROKER_ENDPOINT.removeprefix("http://")
    options = {
        "region": "us-east-1",
        "is_secure": False,
        "wait_time_seconds": 10,
        "polling_interval": 0,
        "visibility_timeout": 60,
    }
    return f"sqs://bench:bench@{host}", {**at_least_once, "broker_transport_options": options}


BROKER, EXTRA = broker_settings()
app = Celery("bench", broker=BROKER)
app.conf.update(
    task_ignore_result=True,
    task_default_queue=common.QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    **EXTRA,
)


@app.task(name="noop")
def noop(i: int) -> None:
    common.hit()


def produce() -> None:
    start = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(common.JOBS):
            noop.apply_async((i,), producer=producer)
    common.report_enqueue(common.JOBS, time.perf_counter() - start)


def work() -> None:
    pool = os.environ.get("BENCH_CELERY_POOL", "solo")
    argv = ["worker", f"--pool={pool}", "--loglevel=WARNING", "-Q", common.QUEUE]
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    if pool != "solo":
        argv.append(f"--concurrency={common.CONCURRENCY or 8}")
    app.worker_main(argv)


if __name__ == "__main__":
    actions = {"produce": produce, "work": work}
    actions.get(sys.argv[1] if len(sys.argv) > 1 else "", lambda: common.usage("celery_bench"))()
