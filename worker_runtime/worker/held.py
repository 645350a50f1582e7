"""One job the worker holds, from fetch until its settle returned: the record every room shares.

Created by the runner (:mod:`worker_runtime.worker.running`) for each fetched job, read by the
settler, the fetch loop's batched acks, the drain and the control thread's lease renewals.
"""

from __future__ import annotations

import asyncio

from worker_runtime import app as app_mod
from worker_runtime.brokers import base


class Held:
    """One job this worker holds, from fetch until its settle returned.

    It doubles as the job's log context (:class:`worker_runtime.logs.JobLogFields`): the
    fields are read only when a record is actually written, so binding it costs nothing.
    """

    __slots__ = (
        "abandoned",
        "ack_pending",
        "ctx",
        "deadline",
        "job",
        "lost",
        "queue",
        "ran",
        "released",
        "settling",
        "spec",
        "started",
        "started_wall",
        "sync_returned",
        "task",
        "timed_out",
        "zombie",
    )

    def __init__(
        self, job: base.Delivery, spec: app_mod.TaskSpec | None, queue: str, now: float
    ) -> None:
        self.job = job
        self.spec = spec
        self.queue = queue
        self.ctx: app_mod.JobContext | None = None
        self.started_wall = now
        self.started = 0.0
        self.deadline = 0.0  # monotonic; 0 = not running a handler (yet)
        self.task: asyncio.Task[None] | None = None
        self.lost = False  # renewal found the lease gone: never settle
        self.released = False  # drain released it: the handler's result is discarded
        self.settling = False  # the handler finished; its settle call is on its way
        self.timed_out = False  # the watchdog cancelled it at its timeout
        self.abandoned = False  # it ignored that cancellation: settled without it, left to run
        self.ack_pending = False  # finished; waits for the fetch loop's next ack_and_fetch
        self.ran = 0.0  # handler seconds (for the duration metric at ack time)
        self.zombie = False  # a sync call given up on (timeout/drain) still running
        self.sync_returned = False  # its sync call's thread returned (seen on the loop thread)

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def task_name(self) -> str:
        return self.job.envelope.task

    @property
    def correlation_id(self) -> str | None:
        return self.job.envelope.correlation_id

    @property
    def causation_id(self) -> str | None:
        # the header name is events.CAUSATION_HEADER (not imported: held stays light)
        return self.job.envelope.headers.get("causation_id")

    @property
    def attempt(self) -> int:
        return self.job.attempts + 1
