"""The tasks of ``workerfleet demo`` (and a small example of a worker_runtime App).

Run by the demo's local fleet as ``workerfleet worker demo_tasks:app`` (the fleet puts this
directory on the import path); the demo's load generator enqueues ``thumbnail`` jobs of three
kinds: most finish after a few hundred milliseconds, some fail their first attempt (a transient
error: retried with backoff), and a few are poison (they always fail: dead-lettered after
``retry.maxAttempts``).

When ``$DEMO_RECEIPTS_DIR`` is set (the demo sets it), each run also leaves a receipt there: the
demo proves that no job was lost from these receipts, the ids it enqueued and the dead-letter
queue, on every broker, rather than from the queue's own counters.
"""

from __future__ import annotations

import asyncio
import json
import os

from pydantic import BaseModel, Field

from worker_runtime import App, JobContext

app = App(queue=os.environ.get("WORKERFLEET_QUEUE", "thumbnails"))
RECEIPTS_DIR = os.environ.get("DEMO_RECEIPTS_DIR")
_receipts_fd: int | None = None


class Thumbnail(BaseModel):
    """One image to resize; the flags make the demo's failures deterministic."""

    image_id: int
    work_ms: int = Field(default=200, ge=0, le=60_000)
    fail_attempts: int = Field(default=0, ge=0, description="fail this many attempts first")
    poison: bool = False


class TransientError(RuntimeError):
    """A failure worth retrying (the storage backend timed out, say)."""


class CorruptImageError(ValueError):
    """A failure no retry fixes: the job ends in the dead-letter queue."""


@app.task("thumbnail", timeout=30)
async def thumbnail(payload: Thumbnail, ctx: JobContext) -> None:
    """Pretend to resize an image: wait ``work_ms``, failing as the payload asks."""
    await asyncio.sleep(payload.work_ms / 1000.0)
    if payload.poison:
        write_receipt(ctx, ok=False)
        raise CorruptImageError(f"image {payload.image_id}: cannot decode")
    if ctx.attempt <= payload.fail_attempts:
        write_receipt(ctx, ok=False)
        raise TransientError(f"image {payload.image_id}: storage timed out (attempt {ctx.attempt})")
    write_receipt(ctx, ok=True)


def write_receipt(ctx: JobContext, *, ok: bool) -> None:
    """Append this run to the demo's receipts (one ``write`` on an ``O_APPEND`` file per process,
    so a worker killed right after still leaves whole lines)."""
    global _receipts_fd
    if RECEIPTS_DIR is None:
        return
    if _receipts_fd is None:
        path = os.path.join(RECEIPTS_DIR, f"receipts-{os.getpid()}.jsonl")
        _receipts_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    line = json.dumps({"job_id": ctx.job_id, "attempt": ctx.attempt, "ok": ok}) + "\n"
    os.write(_receipts_fd, line.encode())
