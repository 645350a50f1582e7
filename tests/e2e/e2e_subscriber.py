"""The email subscription of the subscription-lag e2e test, run by a real worker process on
the host (`workerfleet worker tests.e2e.e2e_subscriber:app`).

The worker pods on kwok nodes run nothing, so tests/e2e/test_alerts_on_kube.py starts this
worker itself for the group that must keep up; the topic comes from ``E2E_TOPIC`` (each test
run has its own), the queue (``<topic>:email``) from ``WORKERFLEET_QUEUE``. The worker
registers the subscription when it starts.
"""

from __future__ import annotations

import os

import pydantic

from worker_runtime import App, JobContext

TOPIC = os.environ["E2E_TOPIC"]

app = App(queue=os.environ.get("WORKERFLEET_QUEUE", f"{TOPIC}:email"))


class OrderPlaced(pydantic.BaseModel):
    n: int


@app.subscribe(TOPIC, group="email")
async def send_email(order: OrderPlaced, ctx: JobContext) -> None:
    """Finishes at once: this group keeps up with any publisher the test runs."""
