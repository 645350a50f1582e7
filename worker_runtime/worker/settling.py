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

A settle that got no reply may have landed, and then the fence rejects its re-send as stale just
as it rejects a lost lease. A stale answer to a first try is a lost lease; one that follows a try
without a reply is judged by the broker (:func:`~worker_runtime.brokers.base.fetch_delivery_fate`,
one read-only call, only then): settled by this worker (counted as it would have been), lost
(a lost lease), or unconfirmed (the job has left the queue, or the broker cannot tell:
``workerfleet_settles_unconfirmed_total``, never a lost lease).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from worker_runtime import app as app_mod
from worker_runtime import errors, logs
from worker_runtime.brokers import base
from worker_runtime.worker import held as held_mod
from worker_runtime.worker import policy as policy_mod
from worker_runtime.worker import transient

if TYPE_CHECKING:
    from worker_runtime.worker.core import Worker

log = logs.get_logger("worker")

CHECKS_TIMEOUT_SECONDS = 5.0
"""How long the worker's shutdown waits for the broker's answers about acks without a reply."""


def may_have_landed(exc: BaseException) -> bool:
    """Whether a broker call that raised ``exc`` may still have been applied: no reply came.

    An error reply (``BrokerRejected``) is an answer (nothing applied), and a call that never got
    a connection (``BrokerUnavailable`` with ``sent`` False) was never sent. A batch applied in
    part (``BrokerPartlyApplied``) was answered: it may have landed further only where an entry
    it did not apply got no reply.
    """
    if isinstance(exc, errors.BrokerPartlyApplied):
        return any(may_have_landed(e) for e in exc.refused.values())
    if isinstance(exc, errors.BrokerRejected):
        return False
    return not (isinstance(exc, errors.BrokerUnavailable) and not exc.sent)


class Settler:
    """Acks, retries and dead-letters held jobs on the worker's queue."""

    def __init__(self, worker: Worker, policy: policy_mod.RetryPolicy) -> None:
        self.worker = worker
        self.policy = policy
        # Jobs whose ack rode on an ack_and_fetch that got no reply (it may have landed): a
        # stale answer to the re-sent ack is asked of the broker before it counts as lost.
        self.unanswered: set[tuple[str, base.Receipt]] = set()
        self._asking: set[asyncio.Task[None]] = set()  # ask_broker for the fetch loop's acks

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
            "ack", h, lambda: q.ack(h.job, done_key=done_key, done_ttl_seconds=done_ttl)
        )
        if ok:
            w.metrics.job_finished(spec.name, "completed", seconds)

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
                "dead_letter", h, lambda: q.dead_letter(job, reason, failure=failure)
            )
            outcome = "dead_lettered"
        else:
            delay = decision.delay_seconds
            ok = await self.settle("retry", h, lambda: q.retry(job, failure, delay_seconds=delay))
            outcome = "retried"
            if ok:
                w.metrics.retried(spec.name)
        if not ok:
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
            if not await self.settle("ack", h, lambda: q.ack(h.job)):
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
            "dead_letter", h, lambda: q.dead_letter(h.job, reason, failure=failure, attempt=False)
        )
        task = h.job.envelope.task if h.spec is not None else "<unknown>"
        if ok:
            w.metrics.dead_letter(str(reason))
            w.metrics.job_finished(task, "dead_lettered", None)
            log.warning("job dead-lettered", extra={"reason": str(reason), "error": message[:500]})
        return ok

    async def settle(
        self, op: str, h: held_mod.Held, make_call: Callable[[], Awaitable[bool]]
    ) -> bool:
        """Send a settling call of ``h``, retrying queue errors within the lease; True when it
        landed. False when it did not land here, already counted: a lost lease (rejected as
        stale, or given up) or an unconfirmed settle (see :meth:`ask_broker`)."""
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
        # True once a try got no reply: that try may have landed, and then the fence rejects
        # every later one as stale, as it rejects a lost lease. (An ack the fetch loop sent
        # without a reply and sends again here starts so.)
        unanswered = False
        if self.unanswered:
            key = (h.job.id, h.job.receipt)
            unanswered = key in self.unanswered
            self.unanswered.discard(key)
        while True:
            try:
                result = bool(await make_call())
            except transient.BROKER_ERRORS as exc:
                w.metrics.redis_error(op)
                unanswered = unanswered or may_have_landed(exc)
                attempt += 1
                if time.monotonic() > deadline:
                    if expires:
                        log.warning(
                            "giving up a settle; the job returns after its lease",
                            extra={"op": op, "error": transient.describe(exc)},
                        )
                        self.stale(h)
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
            if result:
                return True
            if not unanswered:
                self.stale(h)  # a first try rejected: the lease was lost
                return False
            return await self.ask_broker(op, h)

    async def ask_broker(self, op: str, h: held_mod.Held) -> bool:
        """A settle of ``h`` was answered stale after a try of it got no reply; True when the
        broker says that try had landed.

        One read-only call, in this rare case only (:func:`base.fetch_delivery_fate`): settled
        (True: counted as the settle it was), lost (a lost lease, as a stale first try is), or
        gone or unknown (the job left the queue, or the broker cannot tell: counted in
        ``workerfleet_settles_unconfirmed_total``, not as a lost lease; so is held, which the
        stale answer rules out).
        """
        w = self.worker
        assert w.q is not None
        try:
            fate = await base.fetch_delivery_fate(w.q, h.job)
        except Exception as exc:  # a check: it never fails the settle it judges
            log.warning(
                "could not ask the broker what became of a delivery",
                extra={"op": op, "error": transient.describe(exc)},
            )
            fate = base.DeliveryFate.UNKNOWN
        if fate is base.DeliveryFate.SETTLED:
            log.info("settle confirmed: a try without a reply had landed", extra={"op": op})
            return True
        if fate is base.DeliveryFate.LOST:
            self.stale(h)
            return False
        w.metrics.settle_unconfirmed(op)
        log.warning(
            "settle unconfirmed: a try got no reply and its re-send was rejected as stale; the "
            "broker cannot tell whether that try landed, so the outcome is unknown (not "
            "counted as a lost lease)",
            extra={"op": op, "fate": str(fate)},
        )
        return False

    def note_unanswered(self, hs: Iterable[held_mod.Held]) -> None:
        """Acks of these jobs rode on an ``ack_and_fetch`` that got no reply and may have
        landed: a stale answer to their re-send is asked of the broker."""
        self.unanswered.update((h.job.id, h.job.receipt) for h in hs)

    def answered(self, hs: Iterable[held_mod.Held]) -> None:
        """The fetch loop's acks of these jobs got a reply (called while any is unanswered)."""
        for h in hs:
            self.unanswered.discard((h.job.id, h.job.receipt))

    def rejected(self, h: held_mod.Held) -> bool:
        """The fetch loop's ack of ``h`` was answered stale: a lost lease, or after an ack
        without a reply, asked of the broker in a task of its own (the loop goes on). True in
        that case: ``h`` stays held (its slot taken, the burst not over) until the broker has
        answered, and the task forgets it then, counted by the verdict (a LOST one is no
        processed job)."""
        key = (h.job.id, h.job.receipt)
        if key not in self.unanswered:
            self.stale(h)
            return False
        self.unanswered.discard(key)
        task = asyncio.get_running_loop().create_task(self._ask_broker_for_ack(h))
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)
        return True

    async def _ask_broker_for_ack(self, h: held_mod.Held) -> None:
        try:
            if await self.ask_broker("ack", h):
                name = h.spec.name if h.spec is not None else h.job.envelope.task
                self.worker.metrics.jobs_completed([(name, h.ran)])
        finally:
            self.worker.forget(h)

    async def finish_checks(self, within_seconds: float = CHECKS_TIMEOUT_SECONDS) -> None:
        """Wait (at most ``within_seconds``) for the fetch loop's acks still asked of the
        broker; called before the broker closes, so each verdict is counted, not raced by the
        close ("could not ask"). One still unanswered then is cancelled and its job forgotten
        (the broker keeps it as it is: the check changes nothing)."""
        if not self._asking:
            return
        _, pending = await asyncio.wait(set(self._asking), timeout=within_seconds)
        if pending:
            log.warning(
                "the broker did not say in time what became of acks without a reply; "
                "their outcome is unknown",
                extra={"count": len(pending), "within_seconds": within_seconds},
            )
            for task in pending:
                task.cancel()
                # never answered: an unconfirmed ack, as a check that could not ask counts
                self.worker.metrics.settle_unconfirmed("ack")
            await asyncio.wait(pending, timeout=1.0)

    def stale(self, h: held_mod.Held) -> None:
        """The settle was rejected: the lease was lost and the result is discarded."""
        w = self.worker
        if not h.lost:
            h.lost = True
            w.metrics.leases_lost.inc()
        log.warning("settle rejected: the lease was lost; result discarded")
