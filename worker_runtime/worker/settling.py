"""Settling a job's outcome: ack it, or ask the retry policy and retry or dead-letter it.

Called by the runner (:mod:`worker_runtime.worker.running`) when a handler finished, failed or
never started (unknown task, invalid payload, expired). A completed job is normally queued for
the fetch loop's next ``ack_and_fetch`` (one round trip per cycle under load); a failed one goes
to the worker's :class:`worker_runtime.worker.policy.RetryPolicy` for the retry-or-DLQ decision.

Every settle is fenced by the delivery's token: a job whose lease was lost (renewal said so, or
the engine rejected the settle as stale) is never acknowledged, and its result is discarded. A
settle that fails on a queue error is retried until the lease would have run out; after that the
job simply returns to the queue when its lease expires (at-least-once). On a broker whose leases
do not expire by time (``Capabilities.lease_expiry`` False: RabbitMQ) it is retried until it
lands or the delivery is no longer the worker's.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from worker_runtime import app as app_mod
from worker_runtime import logs
from worker_runtime.brokers import base
from worker_runtime.worker import held as held_mod
from worker_runtime.worker import policy as policy_mod
from worker_runtime.worker import transient

if TYPE_CHECKING:
    from worker_runtime.worker.core import Worker

log = logs.get_logger("worker")


class Settler:
    """Acks, retries and dead-letters held jobs on the worker's queue."""

    def __init__(self, worker: Worker, policy: policy_mod.RetryPolicy) -> None:
        self.worker = worker
        self.policy = policy

    def ran_for(self, h: held_mod.Held) -> float:
        """Seconds the handler ran (added to the worker's busy time)."""
        seconds = time.perf_counter() - h.started
        self.worker.busy_seconds += seconds
        return seconds

    async def completed(self, h: held_mod.Held, spec: app_mod.TaskSpec) -> None:
        """The handler returned: acknowledge the job (with the next fetch when possible)."""
        w = self.worker
        seconds = self.ran_for(h)
        if h.released:
            return
        if h.lost:
            return
        assert w.q is not None
        h.settling = True
        done_key, done_ttl = h.ctx.done_key if h.ctx is not None else (None, None)
        fetcher = w.fetcher
        if done_key is None and not w.draining and not fetcher.blocking:
            # The common case under load: the fetch loop acks it with its next fetch, in one
            # call. (While the loop waits in a blocking fetch — the queue is empty — the ack
            # goes out directly instead, so it neither waits nor interrupts that fetch.)
            h.ran = seconds
            fetcher.queue_ack(h)
            return
        q = w.q
        ok = await self.settle(
            "ack", lambda: q.ack(h.job, done_key=done_key, done_ttl_seconds=done_ttl)
        )
        if ok:
            w.metrics.job_finished(spec.name, "completed", seconds)
        else:
            self.stale(h)

    async def failed(
        self, h: held_mod.Held, spec: app_mod.TaskSpec, exc: BaseException, timed_out: bool
    ) -> None:
        """The attempt failed: retry the job or dead-letter it, as the policy decides."""
        w = self.worker
        seconds = self.ran_for(h)
        if h.released or h.lost:
            return
        assert w.q is not None
        h.settling = True
        q = w.q
        job = h.job
        failure = base.build_failure(exc, worker_id=w.worker_id)
        decision = await self.policy.decide(job, spec, exc)
        if isinstance(decision, policy_mod.DeadLetter):
            reason = decision.reason
            ok = await self.settle(
                "dead_letter", lambda: q.dead_letter(job, reason, failure=failure)
            )
            outcome = "dead_lettered"
        else:
            delay = decision.delay_seconds
            ok = await self.settle("retry", lambda: q.retry(job, failure, delay_seconds=delay))
            outcome = "retried"
            if ok:
                w.metrics.retried(spec.name)
        if not ok:
            self.stale(h)
            w.metrics.job_finished(spec.name, "failed", seconds)
            return
        if outcome == "dead_lettered":
            w.metrics.dead_letter(str(reason))
        w.metrics.job_finished(spec.name, "timeout" if timed_out else outcome, seconds)
        extra = {
            "error_type": failure.error_type,
            "error": failure.message[:500],
            "outcome": outcome,
            "timed_out": timed_out,
        }
        if outcome == "dead_lettered":
            # a job that will not run again is a warning, like every other dead letter: at
            # --log-level warning (common in production) it left no line at all
            log.warning("job dead-lettered", extra={"reason": str(reason), **extra})
        else:
            log.info("job failed", extra=extra)

    async def fetch_previous_delay(self, job: base.Delivery) -> float | None:
        """The delay the job's previous retry waited (None when unreadable right now)."""
        w = self.worker
        assert w.q is not None
        try:
            return await w.q.fetch_previous_delay(job.id)
        except transient.BROKER_ERRORS as exc:
            # the retry itself is what matters: without the history, jitter restarts at base
            w.metrics.redis_error("history")
            log.warning(
                "could not read the previous retry delay", extra={"error": transient.describe(exc)}
            )
            return None

    async def expired(self, h: held_mod.Held, spec: app_mod.TaskSpec, late: float) -> None:
        """The job's deadline passed before it started: drop it or dead-letter it."""
        w = self.worker
        # The handler never runs; the task says whether the job is kept (DLQ) or dropped.
        message = f"not started: its deadline passed {late:.3f}s before a worker took it"
        if spec.on_expire == "drop":
            assert w.q is not None
            q = w.q
            h.settling = True
            if not await self.settle("ack", lambda: q.ack(h.job)):
                self.stale(h)
                return
            w.metrics.job_expired(spec.name, "dropped")
            log.info("expired job dropped", extra={"late_seconds": round(late, 3)})
            return
        if await self.dead_letter(
            h, base.DeadLetterReason.EXPIRED, error_type="Expired", message=message
        ):
            w.metrics.job_expired(spec.name, "dead_lettered")

    async def dead_letter(
        self, h: held_mod.Held, reason: base.DeadLetterReason, *, error_type: str, message: str
    ) -> bool:
        """Dead-letter a job whose handler never ran (True when the lease still held)."""
        w = self.worker
        assert w.q is not None
        h.settling = True
        failure = base.Failure(error_type=error_type, message=message, worker_id=w.worker_id)
        q = w.q
        # Not a handler failure (the handler never ran): recorded in the history, but it
        # spends no attempt and does not count in failed_total.
        ok = await self.settle(
            "dead_letter", lambda: q.dead_letter(h.job, reason, failure=failure, attempt=False)
        )
        task = h.job.envelope.task if h.spec is not None else "<unknown>"
        if ok:
            w.metrics.dead_letter(str(reason))
            w.metrics.job_finished(task, "dead_lettered", None)
            log.warning("job dead-lettered", extra={"reason": str(reason), "error": message[:500]})
        else:
            self.stale(h)
        return ok

    async def settle(self, op: str, make_call: Callable[[], Awaitable[bool]]) -> bool:
        """Send a settling call, retrying queue errors within the lease; its reply (or False)."""
        w = self.worker
        # A settle that fails on a broker error is retried until the lease would have run out:
        # settles are fenced by the delivery's token, so a retry of one that did land is
        # rejected as stale instead of being applied twice. After that the job simply returns
        # to the queue when its lease expires (at-least-once).
        # Where leases do not expire by time (RabbitMQ: a delivery stays this worker's while
        # its connection lives), giving up would leave the delivery held by nobody for as long
        # as the connection lives: the settle is retried until it lands or the broker answers
        # that the delivery is no longer this worker's (its connection closed: it is back in
        # its queue).
        expires = w.q is None or w.q.capabilities.lease_expiry
        deadline = time.monotonic() + w.settings.lease_seconds
        attempt = 0
        while True:
            try:
                result = bool(await make_call())
            except transient.BROKER_ERRORS as exc:
                w.metrics.redis_error(op)
                attempt += 1
                if time.monotonic() > deadline:
                    if expires:
                        log.warning(
                            "giving up a settle; the job returns after its lease",
                            extra={"op": op, "error": transient.describe(exc)},
                        )
                        return False
                    if deadline != math.inf:
                        log.warning(
                            "a settle still fails after the lease time; retrying while the "
                            "broker holds the delivery",
                            extra={"op": op, "error": transient.describe(exc)},
                        )
                        deadline = math.inf
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
                continue
            w.health.redis_ok()
            return result

    def stale(self, h: held_mod.Held) -> None:
        """The settle was rejected: the lease was lost and the result is discarded."""
        w = self.worker
        if not h.lost:
            h.lost = True
            w.metrics.leases_lost.inc()
        log.warning("settle rejected: the lease was lost; result discarded")
