"""The control thread: lease renewals, the heartbeat and the probe server, away from the job loop.

Started and stopped by :class:`worker_runtime.worker.core.Worker`. It runs its own event loop and
its own broker connection, so a handler that blocks the job loop's event loop, or a sync handler
hogging a thread, cannot stop lease renewal (a failure mode of several peers); ``/healthz``
reports the stalled job loop instead. Every ``lease/3`` one call renews the leases of all held
jobs and writes the worker's heartbeat; jobs whose lease was lost are marked so their results
are discarded. A worker whose last held job settles beats at once
(:meth:`ControlThread.report_idle`), and so does an idle one that takes a job
(:meth:`ControlThread.report_busy`): the autoscaler's scale-in ranking never works from a beat
up to ``lease/3`` old that calls a busy pod idle, or an idle one busy. As the heartbeat's only
writer it also removes the record on a clean stop (the job loop may never have opened the broker
at all: a worker drained while starting).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import TYPE_CHECKING

from worker_runtime import config, errors, health, logs
from worker_runtime.brokers import base
from worker_runtime.brokers.redis import eviction
from worker_runtime.worker import transient

if TYPE_CHECKING:
    from worker_runtime.worker.core import Worker

log = logs.get_logger("worker")

EVICTION_POLICY_CHECK_SECONDS = 300.0  # maxmemory-policy re-read (it can change at run time)


class ControlThread(threading.Thread):
    """Lease renewal, heartbeat and the probe server, on their own thread and event loop."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(name="wf-control", daemon=True)
        self.worker = worker
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_event: asyncio.Event | None = None
        self._stopping = False
        self.started_event = threading.Event()
        self.server: health.HealthServer | None = None
        self._reported_policy: str | None = None  # the maxmemory-policy last logged
        self.deregistered = False  # the heartbeat record was removed on stop (core reads it)
        # What the last beat said (jobs in flight or none): a change must be told early. Written
        # on the control thread, read on the job loop's (a stale read costs one beat, at most).
        self._beat_busy = False
        # The early beats ("idle", "busy") already asked for since the last periodic beat: one
        # of each per period at most, however often the worker flaps between a job and none.
        self._early_spent: set[str] = set()

    def wake(self) -> None:
        """Send a heartbeat now (thread-safe), e.g. to publish ``draining`` at once; nothing
        once the thread has stopped (a job settling after the stop must not raise)."""
        loop, event = self._loop, self._wake_event
        if loop is not None and event is not None:
            # A closed loop (the thread stopped) raises RuntimeError: there is nothing to wake.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def report_idle(self) -> None:
        """The worker holds no job now: beat at once if the last beat said it was busy.

        The scale-in ranking (pod-deletion-cost) reads heartbeats: a beat taken while a burst of
        quick jobs ran would rank the pod as holding them until the next periodic beat, so it
        could be kept and a pod with a long job removed. One early idle beat per beat period at
        most: a worker flapping between one job and none would otherwise beat once per job.
        """
        if self._beat_busy:
            self._beat_early("idle")

    def report_busy(self) -> None:
        """The worker took a job while holding none: beat at once if the last beat said idle.

        The other half of :meth:`report_idle`: a pod whose last beat (up to ``lease/3`` old)
        said idle would be ranked cheapest to delete at a scale-in while it runs a job that
        just arrived, and removed in place of a pod with nothing to do; its job would then wait
        out the drain or run again elsewhere. One early busy beat per beat period at most.
        """
        if not self._beat_busy:
            self._beat_early("busy")

    def _beat_early(self, kind: str) -> None:
        # At most one early beat of each kind per beat period (the periodic beat resets them).
        if kind not in self._early_spent:
            self._early_spent.add(kind)
            self.wake()

    def stop(self) -> None:
        """Stop after a last round (thread-safe)."""
        self._stopping = True
        self.wake()

    def run(self) -> None:
        asyncio.run(self._main())

    def build_beat(self) -> base.WorkerBeat:
        """The heartbeat record this worker publishes (read by the autoscaler)."""
        w = self.worker
        with w.held_lock:
            starts = [h.started_wall for h in w.held.values()]
            in_flight = len(w.held)
        return base.WorkerBeat(
            worker_id=w.worker_id,
            pod_name=w.settings.pod_name,
            concurrency=w.concurrency,
            in_flight=in_flight,
            processed=w.processed,
            busy_seconds=round(w.busy_seconds, 6),
            started_at=w.started_at,
            oldest_job_started_at=min(starts) if starts else None,
            draining=w.draining,
            ttl_seconds=w.settings.lease_seconds,
        )

    def snapshot_jobs(self) -> list[base.Delivery]:
        """The held jobs whose leases must be renewed."""
        w = self.worker
        with w.held_lock:
            return [h.job for h in w.held.values() if not h.lost and not h.released]

    def record_renewal(self, result: base.LeaseRenewal) -> None:
        """Mark jobs whose lease was lost; their results will be discarded."""
        w = self.worker
        if result.kept:
            w.metrics.lease_renewals.inc(len(result.kept))
        leased_until = time.time() + w.settings.lease_seconds
        with w.held_lock:
            for job in result.kept:
                h = w.held.get((job.id, job.receipt))
                if h is not None and h.ctx is not None:
                    h.ctx.leased_until = leased_until
            for job in result.lost:
                job_id = job.id
                h = w.held.get((job_id, job.receipt))
                # A job whose settle is on its way may already be acked (the snapshot raced
                # the ack): its settle's own result decides, not the renewal.
                if h is not None and not h.lost and not h.settling:
                    h.lost = True
                    if h.ctx is not None:
                        h.ctx.lease_lost = True
                    w.metrics.leases_lost.inc()
                    log.warning(
                        "lease lost: the job was handed to another worker; result discarded",
                        extra={"job_id": job_id},
                    )

    async def _check_eviction_policy(self, probe: base.QueueProbe) -> None:
        """Read Redis' maxmemory-policy; anything but noeviction is an ERROR and a metric.

        Under allkeys-* Redis may evict a queue's jobs, under volatile-* its idempotency and
        done markers: the at-least-once promise no longer holds, and nothing else would say so.
        Brokers that are not Redis report no policy, and nothing is checked.
        """
        w = self.worker
        try:
            policy = (await probe.fetch_stats()).maxmemory_policy
        except Exception as exc:  # a check, never a reason to stop renewing
            log.debug("maxmemory-policy check failed", extra={"error": transient.describe(exc)})
            return
        if policy is None:
            return  # not readable with this user's rights: unknown, not unsafe
        warning = eviction.build_eviction_warning(policy)
        w.metrics.eviction_policy(policy, warning is not None)
        if warning is not None and policy != self._reported_policy:
            log.error(warning, extra={"maxmemory_policy": policy})
        self._reported_policy = policy

    def _opening_failed(self, exc: BaseException) -> None:
        self.worker.metrics.redis_error("connect")
        log.warning(
            "cannot open the broker for renewals; retrying",
            extra={"error": transient.describe(exc)},
        )

    async def _main(self) -> None:
        w = self.worker
        self._loop = asyncio.get_running_loop()
        self._wake_event = asyncio.Event()
        interval = w.settings.heartbeat_interval_seconds
        if w.settings.metrics_port:
            self.server = health.HealthServer(
                w.health, w.metrics, w.settings.metrics_host, w.settings.metrics_port
            )
            try:
                await self.server.start()
            except OSError as exc:
                # the worker still works; without /healthz a kubelet's probes restart it
                log.error(
                    "cannot serve metrics/health; running without them",
                    extra={
                        "error": errors.describe_error(exc),
                        "hint": "set WORKERFLEET_METRICS_PORT to a free port (0: none)",
                    },
                )
                self.server = None
        self.started_event.set()
        failures = 0
        next_policy_check = 0.0
        q: base.Broker | None = None
        sent = False  # a heartbeat was sent (maybe written though its reply was lost)
        try:
            # Its own connection, with a short reply timeout: a renewal must not wait behind the
            # job loop's blocking fetch.
            q = await transient.open_until_ready(
                w.settings.redis_url,
                w.queue_name,
                options=w.options,
                settings={
                    "socket_timeout": max(config.RENEWAL_TIMEOUT_FLOOR_SECONDS, min(5.0, interval))
                },
                on_error=self._opening_failed,
                stopped=lambda: self._stopping,
                wake=self._wake_event,
            )
            periodic = True  # the first round, and each one the period (not a wake) began
            while q is not None and not self._stopping:
                # Cleared before the round, not after: a wake that arrives while the round is
                # on its way (a drain begun) is answered by the next one at once.
                self._wake_event.clear()
                if periodic:
                    self._early_spent.clear()
                beat = self.build_beat()
                self._beat_busy = beat.in_flight > 0
                sent = True
                jobs = self.snapshot_jobs()
                try:
                    result = await q.renew(w.worker_id, jobs, heartbeat=beat)
                except Exception as exc:  # never let the renewal thread die
                    failures += 1
                    w.metrics.redis_error("renew")
                    # Holding no job, only the heartbeat was at stake: say so (an on-call
                    # engineer reading "lease renewal failed" looks for a job that never was).
                    log.warning(
                        "lease renewal failed" if beat.in_flight else "heartbeat failed",
                        extra={"error": transient.describe(exc), "in_flight": beat.in_flight},
                    )
                    if isinstance(exc, errors.BrokerPartlyApplied):
                        # The leases it renewed and those it found lost are known: recorded
                        # now, or a lease refused at every round (for good) kept the others'
                        # outcome unrecorded for as long, and a lost lease was never noticed.
                        self.record_renewal(renewal_of_partly_applied(jobs, exc))
                    wait = min(interval, 0.25 * failures)
                else:
                    failures = 0
                    w.health.redis_ok()
                    self.record_renewal(result)
                    # Its reply names every job held when it was sent: drop it before waiting
                    # a period, or finished jobs (and their payloads) stay alive that long.
                    del result
                    wait = interval
                del jobs  # the snapshot too, for the same reason
                if (
                    failures == 0
                    and time.monotonic() >= next_policy_check
                    and isinstance(q, base.QueueProbe)
                ):
                    next_policy_check = time.monotonic() + EVICTION_POLICY_CHECK_SECONDS
                    await self._check_eviction_policy(q)
                if self._stopping:
                    break
                try:
                    await asyncio.wait_for(self._wake_event.wait(), wait)
                    periodic = False
                except TimeoutError:
                    periodic = True
        finally:
            if self.server is not None:
                await self.server.stop()
            if q is not None:
                if sent and self._stopping:
                    self.deregistered = await deregister(q, w.worker_id)
                with contextlib.suppress(*transient.BROKER_ERRORS):
                    await q.close()


def renewal_of_partly_applied(
    jobs: list[base.Delivery], exc: errors.BrokerPartlyApplied
) -> base.LeaseRenewal:
    """What a renewal of ``jobs`` that the broker applied in part found: the leases it renewed
    (``applied``) and those it answered lost (``lost``); a job it names twice (two deliveries
    of one job) or not at all is in neither, and is renewed again with the next round."""
    answers = exc.answers_for([j.id for j in jobs])
    return base.LeaseRenewal(
        kept=tuple(j for j, answer in zip(jobs, answers, strict=True) if answer == "applied"),
        lost=tuple(j for j, answer in zip(jobs, answers, strict=True) if answer == "lost"),
    )


async def deregister(q: base.Broker, worker_id: str) -> bool:
    """Remove a worker's heartbeat record (a clean exit, not a lost worker); False if it failed."""
    try:
        await asyncio.wait_for(q.deregister(worker_id), timeout=3.0)
    except transient.BROKER_ERRORS as exc:
        log.warning("deregister failed", extra={"error": transient.describe(exc)})
        return False
    return True
