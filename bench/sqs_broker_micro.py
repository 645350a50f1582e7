"""Micro-benchmark of the SQS broker alone on ElasticMQ: enqueue, then fetch + ack, no worker.

Run: .venv/bin/python bench/sqs_broker_micro.py [--jobs 5000] [--consumers 8] [--url sqs://...]
Without --url it starts its own in-memory ElasticMQ on free loopback ports (the test suite's
server helper, jars from `make deps`) and stops it afterwards. Each consumer fetches up to 10
jobs (SQS's batch) and acks them; acks made together leave as one DeleteMessageBatch. Prints
rates; never asserts timing. The numbers are ElasticMQ's on this machine, not AWS's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support import elasticmq
from worker_runtime import envelope
from worker_runtime.brokers import base
from worker_runtime.brokers.sqs import broker as sqs_broker


@contextlib.contextmanager
def own_elasticmq() -> Iterator[str]:
    server = elasticmq.ElasticMQServer()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


async def run(url: str, jobs: int, consumers: int) -> None:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    b = await sqs_broker.open_sqs_broker(url, queue, options=base.QueueOptions(lease_seconds=60))
    try:
        requests = [
            base.EnqueueRequest(envelope=envelope.build_envelope("noop", {"i": i}))
            for i in range(jobs)
        ]
        started = time.perf_counter()
        for start in range(0, jobs, 100):
            await b.enqueue_many(requests[start : start + 100])
        enqueue_s = time.perf_counter() - started
        done = 0

        async def consume() -> None:
            nonlocal done
            while done < jobs:
                got = await b.fetch("bench", 10, block=1.0)
                await asyncio.gather(*(b.ack(d) for d in got))
                done += len(got)

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(consume() for _ in range(consumers))), 600)
        consume_s = time.perf_counter() - started
        print(f"sqs broker on ElasticMQ: {jobs} jobs, {consumers} concurrent fetch+ack loops")
        print(f"  enqueue (batches of 10): {jobs / enqueue_s:,.0f} jobs/s")
        print(f"  fetch + ack:             {jobs / consume_s:,.0f} jobs/s")
    finally:
        await b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--consumers", type=int, default=8)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    if args.url:
        asyncio.run(run(args.url, args.jobs, args.consumers))
    else:
        with own_elasticmq() as url:
            asyncio.run(run(url, args.jobs, args.consumers))


if __name__ == "__main__":
    main()
