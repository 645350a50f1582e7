"""The fetch loop: fetch jobs into free slots, acknowledge finished ones with the next fetch.

Run by :meth:`worker_runtime.worker.core.Worker.run` on the job loop (main thread, asyncio). It
fetches at most as many jobs as there are free slots (one script call for the whole batch; the
engine folds promotion of due retries, reclaim of expired leases and poison detection into it),
hands each to the runner (:mod:`worker_runtime.worker.running`), and acknowledges the jobs the
settler queued as finished together with the next fetch (``ack_and_fetch``: one round trip per
cycle under load). A fetch whose reply was lost may still have leased jobs to this worker:
those are adopted before the next fetch. The drain interrupts a fetch waiting for work. Where
the broker allows it the loop runs as two lanes whose calls overlap (see :class:`FetchLoop`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
import typing
from collections.abc import Container
from typing import TYPE_CHECKING

from worker_runtime import errors, logs
from worker_runtime.brokers import base
from worker_runtime.worker import held as held_mod
from worker_runtime.worker import settling, transient

if TYPE_CHECKING:
    from worker_runtime.worker.core import Worker

log = logs.get_logger("worker")

FETCH_BLOCK_SECONDS = 1.0  # how long an idle fetch waits in the broker before the loop looks
# The smallest batch worth a lane of its own. Two lanes fetch at most half the slots each, and
# every call has a fixed cost in the worker: at concurrency 8 (lanes of 4) two lanes bought 12 %
# more no-op jobs/s for 45 % more worker CPU per job; at 16 (lanes of 8) 45 % more for 10 %.
MIN_LANE_BATCH = 8


@typing.runtime_checkable
class ConfirmsEmpty(typing.Protocol):
    """A broker whose empty :meth:`~worker_runtime.brokers.base.Broker.fetch` does not prove
    that no job is ready (SQS: long polls still out are skipped, short polls sample), with a
    fetch whose empty answer does: a burst's last look uses it before the burst ends."""

    async def fetch_confirming_empty(
        self, worker_id: str, count: int, *, holding: Container[tuple[str, base.Receipt]] = ()
    ) -> list[base.Delivery]:
        """Up to ``count`` jobs; none only when the queue has none ready."""
        ...


class FetchLoop:
    """The worker's fetch loop and the batch of acks that rides on its next fetch.

    With a broker that allows it (``Capabilities.overlapped_fetches``) and at least
    ``2 * MIN_LANE_BATCH`` slots the loop runs as two lanes, each with at most one call in
    flight and at most half the slots per fetch: while Redis runs one lane's ack-and-fetch, the
    worker runs the jobs the other lane brought. One lane alone alternates (the worker waits for
    Redis, then Redis for the worker); measured on no-op jobs the two spent about equal CPU per
    job, so the overlap is where the throughput is.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.wakes: set[asyncio.Event] = set()  # interrupt the fetches in flight (drain)
        self.ack_queue: list[held_mod.Held] = []  # finished jobs to ack with the next fetch
        self.unsure = False  # a fetch failed after it may have leased jobs to us
        self.lanes = 1
        self.in_flight = 0  # fetch calls out now (one per lane at most)
        self.blocking_lanes = 0  # of those, fetches waiting in the broker for new work
        # Slots the calls in flight will fill, net of the acks they carry (those slots are
        # still counted in ``in_use`` until the reply frees them); negative when a call
        # acknowledges more jobs than it asks for.
        self.promised = 0
        self._exported_dead_letters: collections.Counter[str] = collections.Counter()
        self._rng = random.Random()
        # Burst mode: how long the next fetch sent while nothing is held waits in the broker.
        # 0 (answered at once) until the queue's rate limit is seen to hold ready jobs back.
        self._burst_block = 0.0

    @property
    def blocking(self) -> bool:
        """No lane can carry an ack soon: every lane's call is out and one waits for work."""
        return self.blocking_lanes > 0 and self.in_flight >= self.lanes

    def interrupt(self) -> None:
        """End a blocking fetch at once (between script calls), e.g. when the drain starts."""
        for wake in self.wakes:
            wake.set()

    def queue_ack(self, h: held_mod.Held) -> None:
        """Acknowledge ``h`` with the next fetch (it is counted as finished then)."""
        h.ack_pending = True
        self.ack_queue.append(h)
        self.worker.poke()

    async def run(self) -> None:
        """Fetch until the drain starts; then send the acks still queued directly."""
        w = self.worker
        assert w.q is not None
        overlap = w.q.capabilities.overlapped_fetches and w.concurrency >= 2 * MIN_LANE_BATCH
        self.lanes = 2 if overlap else 1
        if self.lanes == 1:
            await self._lane()
        else:
            async with asyncio.TaskGroup() as lanes:
                for _ in range(self.lanes):
                    lanes.create_task(self._lane())
        self._flush_queued_acks()

    async def _lane(self) -> None:
        # Each cycle acknowledges the jobs that finished since the last one AND fetches jobs
        # for the slots they free, in one script call (ack_and_fetch); when nothing finished it
        # is a plain fetch that waits in the broker when the queue is empty (only while no
        # other lane's call is out: one waiting fetch per worker is enough). The drain
        # interrupts that wait (between script calls, never inside one).
        w = self.worker
        assert w.q is not None and w.wake is not None
        q = w.q
        start = w.runner.start
        batch = -(-w.concurrency // self.lanes)  # a lane fetches at most its share of slots
        failures = 0
        while not w.draining:
            if self.unsure:
                if self.in_flight:
                    # Adoption takes every job leased to this worker that it does not hold:
                    # it must wait until no other lane's fetch is out, or it would take (and
                    # run a second time) the jobs that fetch is bringing.
                    await self._wait_for_poke()
                    continue
                self.in_flight += 1  # the adoption is a call out too: the other lane waits
                try:
                    adopted = await self.adopt_orphans()
                finally:
                    self.in_flight -= 1
                    w.poke()
                if not adopted:
                    failures += 1
                    await self._sleep_unless_draining(self._error_delay(failures))
                    continue
            acks = self.ack_queue
            free = min(batch, w.concurrency - w.in_use() - self.promised + len(acks))
            if not acks and (free <= 0 or self.in_flight):
                await self._wait_for_poke()
                continue
            wake = asyncio.Event()
            if w.draining:
                break
            self.ack_queue = []
            promised = free - len(acks)
            self.wakes.add(wake)
            self.in_flight += 1
            self.promised += promised
            t0 = time.monotonic()
            try:
                if acks:
                    flags, jobs = await q.ack_and_fetch(
                        [h.job for h in acks],
                        w.worker_id,
                        free,
                        block=0.0,
                        wake=wake,
                        holding=w.held,
                    )
                    self.finish_acks(acks, flags)
                else:  # no other call is out (checked above): this one may wait for work
                    # Burst mode ends on an empty fetch sent while the worker held nothing: a
                    # job held when it was sent may still schedule a retry due at once.
                    settled = w.burst and not w.held
                    self.blocking_lanes += 1
                    try:
                        if settled and not self._burst_block and isinstance(q, ConfirmsEmpty):
                            # the burst's last look, where a plain fetch proves nothing (SQS)
                            jobs = await q.fetch_confirming_empty(w.worker_id, free, holding=w.held)
                        else:
                            jobs = await q.fetch(
                                w.worker_id,
                                free,
                                block=self._burst_block if settled else FETCH_BLOCK_SECONDS,
                                wake=wake,
                                holding=w.held,
                            )
                    finally:
                        self.blocking_lanes -= 1
                    if settled and not jobs:
                        block = await self._burst_wait_for_tokens()
                        if block is None:
                            w.end_burst()
                            break
                        self._burst_block = block
                    elif jobs:
                        self._burst_block = 0.0
            except Exception as exc:
                # Only a deliberate shutdown (cancellation) ends this loop: any other error,
                # foreseen (the broker) or not (a bug, a reply nobody expected), is retried with
                # backoff, so one bad reply can never stop a worker with jobs leased to it.
                # Acks are fenced, so sending them again is safe: they go back in the queue.
                if isinstance(exc, errors.BrokerPartlyApplied):
                    # The broker answered each ack and fetched nothing: only the acks it did
                    # not apply go again (nothing to adopt).
                    acks = self.finish_partly_applied(acks, exc)
                self.ack_queue[:0] = acks
                # Without a reply the script may still have run: adopt what it leased to us.
                # (An error reply, e.g. READONLY, is an answer, and a fetch that never got a
                # connection was never sent: nothing to adopt after either.) Its acks may have
                # landed too: the fence rejects their re-send then, which is no lost lease.
                if settling.may_have_landed(exc) and not isinstance(
                    exc, errors.BrokerPartlyApplied
                ):
                    self.unsure = True
                    w.settler.note_unanswered(acks)
                failures += 1
                w.metrics.fetch_errors.inc()
                delay = self._error_delay(failures)
                extra = {"error": transient.describe(exc), "retry_in_seconds": round(delay, 3)}
                if isinstance(exc, transient.BROKER_ERRORS):
                    w.metrics.redis_error("fetch")
                    log.warning("fetch failed; retrying", extra=extra)
                else:
                    log.error("fetch failed unexpectedly; retrying", extra=extra, exc_info=True)
                w.note_broker_failure(exc)  # a burst gives up after an outage this long
                await self._sleep_unless_draining(delay)
                continue
            finally:
                self.wakes.discard(wake)
                self.in_flight -= 1
                self.promised -= promised
                # Another lane may wait for this call to end (to fetch, or to adopt).
                w.poke()
            failures = 0
            w.health.redis_ok()
            w.note_broker_ok()
            if q.dead_lettered_by_fetch:
                self.export_fetch_dead_letters(q.dead_lettered_by_fetch)
            if jobs:
                start(jobs)
                # Give the tasks just created their first step before the next fetch: a handler
                # that finishes without waiting queues its ack now, so it rides on that fetch
                # (ack_and_fetch, one round trip that also refills its slot). Fetching at once
                # instead sent a blocking fetch first, and every job finishing meanwhile took a
                # separate ack call and held its slot until that returned: two round trips per
                # cycle, which under load caps the slots' turnover and grows the backlog.
                # The runner holds them now: this frame must not keep them (and their payloads)
                # alive through the next blocking fetch, which outlasts their separate acks.
                jobs = []
                await asyncio.sleep(0)
            elif not acks and not wake.is_set() and time.monotonic() - t0 < 0.005:
                # A fetch that came back empty at once (rate limited, answered early)
                # must not become a busy loop.
                await self._sleep_unless_draining(0.01)

    async def _burst_wait_for_tokens(self) -> float | None:
        """A burst's fetch sent while nothing was held came back empty: None when the queue
        has no job ready, else how long the next such fetch waits in the broker.

        An empty bucket of the queue's rate limit also answers a fetch with nothing (Redis'
        fetch script grants 0 and gives the time of the next token, which only a fetch that
        may wait acts on): that must not end the burst with ready jobs left. The queue's own
        stats say whether jobs are ready; a broker without stats is fetched once more, waiting
        one token's interval: a bucket refills a token in that time, so nothing then is none.
        """
        w = self.worker
        q = w.q
        limit = w.options.rate_limit
        if q is None or limit is None or not q.capabilities.rate_limit:
            return None  # no rate limit: an empty answer means nothing is ready
        if not isinstance(q, base.QueueProbe):
            if self._burst_block > 0:
                return None  # fetched again after a token's interval, and still nothing
            return limit.per_seconds / limit.jobs + 0.05
        try:
            stats = await asyncio.wait_for(q.fetch_stats(), timeout=FETCH_BLOCK_SECONDS + 2.0)
        except transient.BROKER_ERRORS as exc:
            log.info("cannot read whether jobs are ready", extra={"error": transient.describe(exc)})
            return FETCH_BLOCK_SECONDS  # unconfirmed: fetch again, waiting for a token
        if stats.backlog + stats.due_delayed == 0:
            return None
        return FETCH_BLOCK_SECONDS  # held back by the rate limit: wait for its next token

    async def _wait_for_poke(self) -> None:
        # Sleep until a slot frees, an ack is queued or another lane's call ends.
        w = self.worker
        assert w.wake is not None
        w.wake.clear()
        if not w.draining:
            await w.wake.wait()

    def _error_delay(self, failures: int) -> float:
        # Exponential backoff with jitter after consecutive failed fetch-loop calls.
        return min(5.0, 0.1 * 2.0 ** min(failures, 6)) * (0.5 + self._rng.random() / 2)

    async def adopt_orphans(self) -> bool:
        """Take over what a failed fetch may have leased to us; True when the broker answered."""
        # A fetch failed without a reply after it may have run: the jobs it leased to this
        # worker never arrived. Take them over now rather than let them wait out their lease
        # (counted as lost deliveries).
        w = self.worker
        assert w.q is not None
        try:
            jobs = await w.q.recover(w.worker_id, list(w.held))
        except Exception as exc:  # like the fetch itself: retried, never the end of the loop
            w.note_broker_failure(exc)
            if isinstance(exc, transient.BROKER_ERRORS):
                w.metrics.redis_error("adopt")
                log.warning(
                    "adopting after a failed fetch failed", extra={"error": transient.describe(exc)}
                )
            else:
                log.error(
                    "adopting failed unexpectedly",
                    extra={"error": transient.describe(exc)},
                    exc_info=True,
                )
            return False
        self.unsure = False
        w.note_broker_ok()  # an answer: the outage clock of a burst starts again from here
        if jobs:
            log.warning(
                "a failed fetch had leased jobs to this worker; adopted them",
                extra={"count": len(jobs)},
            )
        w.runner.start(jobs)
        return True

    def export_fetch_dead_letters(self, counts: collections.Counter[str]) -> None:
        """Count what the engine's fetch dead-lettered in this worker's metrics too."""
        # Poison jobs (max_deliveries) and unreadable envelopes are dead-lettered inside the
        # engine's fetch and never reach a handler.
        w = self.worker
        for reason, total in counts.items():
            delta = total - self._exported_dead_letters[reason]
            if delta > 0:
                w.metrics.dead_lettered.labels(w.queue_name, reason).inc(delta)
                self._exported_dead_letters[reason] = total

    def finish_acks(self, acks: list[held_mod.Held], flags: list[bool]) -> None:
        """Record the outcome of acks sent (flag False: the lease was lost) and free the slots."""
        w = self.worker
        completed: list[tuple[str, float]] = []
        finished: list[held_mod.Held] = []
        for h, ok in zip(acks, flags, strict=True):
            h.ack_pending = False
            if ok:
                name = h.spec.name if h.spec is not None else h.job.envelope.task
                completed.append((name, h.ran))
                finished.append(h)
            elif not w.settler.rejected(h):  # else held until the broker says what it was
                finished.append(h)
        if w.settler.unanswered:  # acks sent again after a call without a reply: answered now
            w.settler.answered(acks)
        w.forget_all(finished)
        w.metrics.jobs_completed(completed)  # one update per batch, not three locks per job

    def finish_partly_applied(
        self, acks: list[held_mod.Held], exc: errors.BrokerPartlyApplied
    ) -> list[held_mod.Held]:
        """An ``ack_and_fetch`` whose acks the broker applied in part (it fetched nothing):
        finish the acks it applied (landed) or answered gone (a lost lease), as a whole
        answer's flags would; return the others, to be sent again.

        Read as "may have landed" as a whole, every ack went again and the worker adopted
        after a fetch never sent: a deleted job's re-sent ack was answered False and asked of
        the broker (counted unconfirmed, not completed; and where the broker cannot tell, a
        gone lease too). An ack sent again that may have landed (no reply for it) is marked
        unanswered; one the broker does not name, or names twice (two deliveries of one job
        in the batch), goes again as one that may have landed.
        """
        finished: list[held_mod.Held] = []
        flags: list[bool] = []
        again: list[held_mod.Held] = []
        unanswered: list[held_mod.Held] = []
        answers = exc.answers_for([h.job.id for h in acks])
        for h, answer in zip(acks, answers, strict=True):
            if answer == "applied" or answer == "lost":
                finished.append(h)
                flags.append(answer == "applied")
                continue
            again.append(h)
            error = exc.refused[h.job.id] if answer == "refused" else None
            if error is None or settling.may_have_landed(error):
                unanswered.append(h)
        if finished:
            self.finish_acks(finished, flags)
        self.worker.settler.note_unanswered(unanswered)
        return again

    def _flush_queued_acks(self) -> None:
        # Acks queued for the next cycle when there will be none (drain): send them directly.
        acks, self.ack_queue = self.ack_queue, []
        for h in acks:
            h.task = asyncio.create_task(self._ack_directly(h))

    async def _ack_directly(self, h: held_mod.Held) -> None:
        w = self.worker
        assert w.q is not None
        q = w.q
        try:
            # not landed: the settle counted what it was (lost or unconfirmed); forgotten below
            if await w.settler.settle("ack", h, lambda: q.ack(h.job)):
                self.finish_acks([h], [True])
        finally:
            if h.ack_pending:  # it raised (the lease returns the job) or did not land
                h.ack_pending = False
                w.forget(h)

    async def _sleep_unless_draining(self, seconds: float) -> None:
        # Only the drain ends this sleep early (``interrupt`` sets every event in ``wakes``), not
        # a poke: with two lanes each failed call's end pokes the other lane, and a backoff that
        # a poke ended turned an outage into thousands of calls a second.
        if self.worker.draining:
            return
        stop = asyncio.Event()
        self.wakes.add(stop)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), seconds)
        finally:
            self.wakes.discard(stop)
