"""The App of the cold-start tests (tests/worker_runtime/test_cold_start.py).

A Redis worker's typical application module: a pydantic payload and one async task, nothing
else imported. Its task reports, from the worker process at its first job, the modules loaded by
then and whether the garbage collector runs: one JSON document pushed to the Redis list
``test:{queue}:started`` with a plain client of its own.
"""

from __future__ import annotations

import gc
import json
import os
import sys

import redis
from pydantic import BaseModel

from worker_runtime import App, JobContext

app = App(queue=os.environ.get("WORKERFLEET_QUEUE", "cold-start"))


class Ping(BaseModel):
    n: int = 0


@app.task("report-start")
async def report_start(payload: Ping, ctx: JobContext) -> None:
    state = {"modules": sorted(sys.modules), "gc_enabled": gc.isenabled()}
    client = redis.Redis.from_url(os.environ["WORKERFLEET_REDIS_URL"])
    try:
        client.rpush(f"test:{ctx.queue}:started", json.dumps(state))
    finally:
        client.close()
