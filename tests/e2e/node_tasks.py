"""Tasks the real-node e2e tests run inside worker pods (`spec.app: node_tasks:app`).

scripts/build-images.sh adds this file as one layer on top of the example worker image
(image `e2e-worker`); tests/e2e/test_real_node.py enqueues these tasks. Each task writes what
it did to a Redis list of its own (`HISTORY_KEY`), so the tests judge by a history the worker
runtime under test does not keep: which job started, finished, on which pod, at what time.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import redis.asyncio

from worker_runtime import App, JobContext

app = App(queue=os.environ.get("WORKERFLEET_QUEUE", "node-e2e"))
# Not a runtime key (worker_runtime/brokers/redis/keys.py owns those): the tests' own record,
# one per queue.
HISTORY_KEY = f"e2e-history:{app.queue}"


async def record(ctx: JobContext, event: str) -> None:
    """Append {event, job, pod, deliveries, at} to the history (wall-clock seconds)."""
    entry = {
        "event": event,
        "job": ctx.job_id,
        "pod": os.environ.get("WORKERFLEET_POD_NAME", ""),
        "deliveries": ctx.deliveries,
        "at": time.time(),
    }
    client = redis.asyncio.Redis.from_url(os.environ["WORKERFLEET_REDIS_URL"])
    try:
        await client.rpush(HISTORY_KEY, json.dumps(entry))
    finally:
        await client.aclose()


@app.task("work", timeout=600)
async def work(payload: dict[str, float], ctx: JobContext) -> None:
    """Works for `payload["seconds"]`, recording its start and its end."""
    await record(ctx, "started")
    await asyncio.sleep(payload["seconds"])
    await record(ctx, "finished")


@app.task("stubborn", timeout=600)
async def stubborn(payload: dict[str, float], ctx: JobContext) -> None:
    """On its first delivery blocks its event loop: the worker cannot drain (a budget-ignoring
    worker); on a later delivery it finishes at once."""
    await record(ctx, "started")
    if ctx.deliveries == 1:
        time.sleep(payload["seconds"])  # noqa: ASYNC251 - blocks the loop on purpose: no drain
    await record(ctx, "finished")
