"""Task module the local-fleet tests run in real worker subprocesses.

Imported by ``python -m worker_runtime worker local_fleet_tasks:app`` with this directory on
PYTHONPATH (the fleet's ``app_path``). Queue name: ``WORKERFLEET_QUEUE`` (set by the fleet).
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from worker_runtime import App, Reject

app = App(queue=os.environ.get("WORKERFLEET_QUEUE", "local-fleet"))


class Work(BaseModel):
    seconds: float = 0.0


@app.task("sleep")
async def sleep(payload: Work) -> None:
    """Hold a slot for ``seconds`` (what makes a worker busy in the tests)."""
    await asyncio.sleep(payload.seconds)


@app.task("poison")
async def poison(payload: Work) -> None:
    """Always rejected: straight to the dead-letter queue."""
    raise Reject("poison job")
