"""Micro-benchmark of the queue engine alone: fetch (batch 100) + ack throughput, no worker.

Run: .venv/bin/python bench/engine_micro.py [--jobs 50000] [--batch 100] [--url redis://...]
Without --url it starts its own redis-server on a free loopback port (temp dir, no persistence)
and stops it afterwards. Prints enqueue and fetch+ack rates; never asserts timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis.asyncio

from worker_runtime import envelope
from worker_runtime.brokers.redis import queue


@contextlib.contextmanager
def own_redis() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="wf-bench-")
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            tmp,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


async def run(url: str, jobs: int, batch: int, mode: str) -> None:
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    q = queue.QueueClient(client, "bench-micro", queue.QueueOptions(lease_seconds=60))
    await client.delete(*q.keys.script_keys())
    reqs = [queue.EnqueueRequest(envelope.build_envelope("noop", {"i": i})) for i in range(jobs)]
    t0 = time.perf_counter()
    await q.enqueue_many(reqs)
    t1 = time.perf_counter()
    print(f"enqueue_many: {jobs} jobs in {t1 - t0:.2f}s = {jobs / (t1 - t0):,.0f} jobs/s")

    done = 0
    t2 = time.perf_counter()
    previous: asyncio.Future[list[bool]] | None = None
    if mode == "combined":
        # ack the finished batch and fetch the next in one script call (ack_and_fetch)
        got = await q.fetch("bench-worker", batch)
        while got:
            done += len(got)
            _acked, got = await q.ack_and_fetch(got, "bench-worker", batch)
    while mode != "combined" and done < jobs:
        got = await q.fetch("bench-worker", batch)
        if not got:
            break
        acks = asyncio.gather(*(q.ack(j) for j in got))
        if mode == "sequential":
            # fetch a batch, then ack it as one batch (a worker with all slots free)
            await acks
        else:
            # ack batch k while fetching batch k+1 (what a busy worker's loop overlaps)
            if previous is not None:
                await previous
            previous = acks
        done += len(got)
    if previous is not None:
        await previous
    t3 = time.perf_counter()
    print(
        f"fetch+ack ({mode}, batch {batch}): {done} jobs in {t3 - t2:.2f}s = "
        f"{done / (t3 - t2):,.0f} jobs/s"
    )
    await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--url")
    ap.add_argument(
        "--mode", choices=["sequential", "overlapped", "combined"], default="sequential"
    )
    a = ap.parse_args()
    if a.url:
        asyncio.run(run(a.url, a.jobs, a.batch, a.mode))
        return
    with own_redis() as url:
        asyncio.run(run(url, a.jobs, a.batch, a.mode))


if __name__ == "__main__":
    main()
