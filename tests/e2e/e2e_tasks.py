"""Tasks the e2e tests run in real worker processes (`workerfleet worker tests.e2e.e2e_tasks:app`).

The worker pods on kwok nodes run nothing, so the autoscaling test starts real workers on the
host that claim those pods' names (WORKERFLEET_POD_NAME): their heartbeats are what the operator
reads to pick idle pods for scale-in. The queue name comes from WORKERFLEET_QUEUE.
"""

from __future__ import annotations

import asyncio
import os

from worker_runtime import App

app = App(queue=os.environ.get("WORKERFLEET_QUEUE", "e2e"))


@app.task("quick")
async def quick(payload: object) -> None:
    """Finishes at once: a backlog of these drains in seconds."""


@app.task("slow", timeout=600)
async def slow(payload: object) -> None:
    """Holds its worker busy for the whole test (released back to the queue on drain)."""
    await asyncio.sleep(600)
