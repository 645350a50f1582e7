"""Task module the local-fleet tests run in real worker subprocesses.

Imported by ``python -m worker_runtime worker local_fleet_tasks:app`` with this directory on
PYTHONPATH (the fleet's ``app_path``). Queue name: ``WORKERFLEET_QUEUE`` (set by the fleet).
Every finished ``sleep``/``hold`` job appends ``{job, pod, deliveries, attempt}`` to the Redis
list ``test:{queue}:ran`` so tests can see which worker ran what, and whether a job was ever
delivered twice, without trusting the fleet under test.
"""

from __future__ import annotations

import asyncio
import json
import os

import redis
from pydantic import BaseModel

from worker_runtime import App, JobContext, Reject

app = App(queue=os.environ.get("WORKERFLEET_QUEUE", "local-fleet"))
_client: redis.Redis | None = None


class Work(BaseModel):
    seconds: float = 0.0


def _record(ctx: JobContext) -> None:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["WORKERFLEET_REDIS_URL"])
    doc = {
        "job": ctx.job_id,
        "pod": os.environ.get("WORKERFLEET_POD_NAME", ""),
        "deliveries": ctx.deliveries,
        "attempt": ctx.attempt,
    }
    _client.rpush(f"test:{ctx.queue}:ran", json.dumps(doc))


@app.task("sleep")
async def sleep(payload: Work, ctx: JobContext) -> None:
    """Hold a slot for ``seconds`` (what makes a worker busy in the tests)."""
    await asyncio.sleep(payload.seconds)
    _record(ctx)


@app.task("poison")
async def poison(payload: Work) -> None:
    """Always rejected: straight to the dead-letter queue."""
    raise Reject("poison job")
