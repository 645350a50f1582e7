"""One workerfleet worker process draining no-op jobs from a private RabbitMQ node.

Run by hand: ``.venv/bin/python bench/rabbitmq_worker_throughput.py [N] [CONCURRENCY]
[quorum|classic]``. Enqueues N no-op jobs through the RabbitMQ broker, waits until the
management API counts them, starts one worker process (tests/worker_runtime/workerproc.py, the
fixture app's ``noop`` task) and times until the queue is empty, worker start included. The
end is read from the management API (sampled every 0.5 s on the test node), so short runs
overstate the time by up to that much.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time

from tests.support import rabbitmq_server
from tests.worker_runtime import workerproc
from worker_runtime import envelope
from worker_runtime.brokers import base
from worker_runtime.brokers.rabbitmq import broker as rabbitmq_broker


async def main(n: int, concurrency: int, queue_type: str) -> None:
    server = rabbitmq_server.RabbitMQServer()
    server.start()
    queue = workerproc.new_queue("tput")
    b = rabbitmq_broker.RabbitMQBroker(
        server.url, queue, management_port=server.management_port, queue_type=queue_type
    )
    try:
        for start in range(0, n, 500):
            await b.enqueue_many(
                [
                    base.EnqueueRequest(envelope.build_envelope("noop", {}))
                    for _ in range(min(500, n - start))
                ]
            )
        for _ in range(300):
            if (await b.fetch_stats()).backlog == n:
                break
            await asyncio.sleep(0.2)
        started = time.monotonic()
        worker = workerproc.WorkerProc(
            f"{server.url}?queue_type={queue_type}",
            queue,
            concurrency=concurrency,
            log_dir=tempfile.mkdtemp(prefix="wf-bench-"),
        )
        try:
            for _ in range(6000):
                stats = await b.fetch_stats()
                if stats.backlog == 0 and stats.in_flight == 0 and time.monotonic() - started > 1:
                    break
                await asyncio.sleep(0.1)
            seconds = time.monotonic() - started
        finally:
            worker.stop()
        print(
            f"rabbitmq {queue_type}: {n} no-op jobs, one worker, concurrency {concurrency}: "
            f"{seconds:.1f} s, {n / seconds:.0f} jobs/s",
            flush=True,
        )
    finally:
        await b.close()
        server.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(
        main(
            int(args[0]) if args else 3000,
            int(args[1]) if len(args) > 1 else 8,
            args[2] if len(args) > 2 else "quorum",
        )
    )
