"""The task module the fault suite's worker processes run: ``tests.chaos.tasks:app``.

Worker subprocesses started by tests/chaos/harness.py import it. Its one task logs each run to
a file of its own process in ``CHAOS_HISTORY_DIR`` (one JSON line per event, written with a
single ``write`` on an ``O_APPEND`` descriptor, so a ``kill -9`` right after keeps it), never to
the Redis under test: Redis is killed, paused and failed over in some scenarios, and the
history must outlive that. A run may ask for an ack marker, ``{wf:Q}:done:chaos:<job>:<run>``,
which the ack script writes atomically with the ack, so it exists exactly when Redis accepted
that run's ack.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

from pydantic import BaseModel

from worker_runtime import App, JobContext, Retry, backoff

QUEUE = os.environ.get("WORKERFLEET_QUEUE", "chaos")
HISTORY_DIR = Path(os.environ.get("CHAOS_HISTORY_DIR", "."))
HEALED_FLAG = "healed"
"""While this file is missing from the history dir, ``until_healed`` jobs fail every attempt."""

MAX_ATTEMPTS = 4
ACK_MARKER_PREFIX = "chaos:"

app = App(queue=QUEUE)

_fd: int | None = None


def _log(event: dict[str, object]) -> None:
    global _fd
    if _fd is None:
        path = HISTORY_DIR / f"runs-{os.getpid()}.jsonl"
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_fd, (json.dumps(event) + "\n").encode())


class ChaosJob(BaseModel):
    fails: int = 0  # handler failures before it succeeds
    work_ms: float = 0.0
    ack_marker: bool = False
    until_healed: bool = False
    pad: str = ""  # makes the envelope as large as a scenario wants


@app.task(
    "chaos",
    retry=Retry(
        max_attempts=MAX_ATTEMPTS, backoff=backoff.Backoff(base_seconds=0.02, max_seconds=0.2)
    ),
)
async def chaos(payload: ChaosJob, ctx: JobContext) -> None:
    run = uuid.uuid4().hex[:12]
    base = {"job": ctx.job_id, "run": run, "pid": os.getpid()}
    _log({**base, "e": "start", "t": time.time(), "attempt": ctx.attempt, "d": ctx.deliveries})
    try:
        if payload.work_ms:
            await asyncio.sleep(payload.work_ms / 1000.0)
        if ctx.attempt <= payload.fails:
            raise RuntimeError("transient failure")
        if payload.until_healed and not (HISTORY_DIR / HEALED_FLAG).exists():
            raise RuntimeError("not healed yet")
    except asyncio.CancelledError:
        _log({**base, "e": "end", "t": time.time(), "ok": None})
        raise
    except Exception:
        _log({**base, "e": "end", "t": time.time(), "ok": False})
        raise
    if payload.ack_marker:
        ctx.mark_done_on_ack(f"{ACK_MARKER_PREFIX}{ctx.job_id}:{run}")
    _log({**base, "e": "end", "t": time.time(), "ok": True})
