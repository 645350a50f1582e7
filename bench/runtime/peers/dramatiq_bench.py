"""dramatiq peer for bench/runtime/driver.py: ``produce`` N no-op jobs, ``work`` runs them.

The worker is dramatiq's own CLI with ``--processes 1 --threads 8`` (BENCH_CONCURRENCY
overrides the threads): one worker process under dramatiq's supervisor, default middleware,
on Redis, or on RabbitMQ when BENCH_BROKER_URL is an ``amqp://`` URL (the broker phase).
dramatiq has no batch enqueue: the producer loops ``send``.
"""

from __future__ import annotations

import os
import sys
import time

import common
import dramatiq


def make_broker() -> dramatiq.Broker:
    if common.BROKER_URL.startswith("amqp"):
        # RabbitMQ: dramatiq's defaults (persistent messages, ack after the actor returns,
        # prefetch twice the worker's threads; no publisher confirms)
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=common.BROKER_URL)
    from dramatiq.brokers.redis import RedisBroker

    return RedisBroker(url=common.REDIS_URL)


broker = make_broker()
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=common.QUEUE, max_retries=0)
def noop(i: int) -> None:
    common.hit()


def produce() -> None:
    start = time.perf_counter()
    for i in range(common.JOBS):
        noop.send(i)
    common.report_enqueue(common.JOBS, time.perf_counter() - start)


def worker_command() -> list[str]:
    threads = str(common.CONCURRENCY or 8)
    args = [sys.executable, "-m", "dramatiq", "dramatiq_bench", "--processes", "1"]
    return [*args, "--threads", threads]


def work() -> None:
    os.execv(sys.executable, worker_command())


def argv() -> None:
    # For the cold-start test: the command to spawn directly (no wrapper process).
    common.report_command(worker_command(), {})


if __name__ == "__main__":
    actions = {"produce": produce, "work": work, "argv": argv}
    actions.get(sys.argv[1] if len(sys.argv) > 1 else "", lambda: common.usage("dramatiq_bench"))()
