"""The local fleet's control loop: the operator's autoscaler driving local worker processes.

``workerfleet run POOL.yaml`` (:mod:`workerfleet_operator.local.cli`) and ``workerfleet demo``
build a :class:`FleetRunner` and call :meth:`FleetRunner.run`. Every polling interval it reads
the queue's stats through the broker's ``QueueProbe`` (Redis, RabbitMQ or SQS: the URL's
scheme picks it, :mod:`workerfleet_operator.local.brokers`), calls the same
:func:`autoscaling.decide` as the operator, applies the decision to a
:class:`fleet.ProcessFleet` (idle workers stopped first), and publishes the operator's
per-pool metrics (namespace ``local``) on a loopback port. Between polls it supervises the
processes (crash restarts, overdue drains). Each poll yields a :class:`Snapshot` for the live
view and the demo's chart. A pool serving an event subscription (``spec.queue.subscription``)
has it registered in the broker first, as the operator does, so events reach its queue before
any worker ran.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import prometheus_client

from worker_runtime import brokers as runtime_brokers
from worker_runtime.brokers import base
from workerfleet_operator import autoscaling, plan
from workerfleet_operator.local import brokers, manifest
from workerfleet_operator.local import fleet as fleet_mod
from workerfleet_operator.shell import metrics as operator_metrics

SUPERVISE_SECONDS = 0.2  # how often crashed workers and overdue drains are looked at
PROBE_SECONDS = 2.0  # a stats read that takes longer is a failed read (the loop must go on)


@dataclass(frozen=True)
class Snapshot:
    """What one poll saw and did: for the live view, the chart and the tests."""

    at: float  # seconds since the runner started
    pool: str
    queue: str
    queue_stats: base.QueueStats | None
    error: str | None
    decision: autoscaling.Decision
    replicas: int
    ready: int
    terminating: int
    last_change: autoscaling.Decision | None
    last_change_at: float | None
    counters: fleet_mod.FleetCounters
    events: tuple[fleet_mod.FleetEvent, ...]
    redis: str  # how to reach the broker, for the header (never a password: local URLs only)
    stopped: tuple[str, ...] = ()


@dataclass
class RunnerTotals:
    """Aggregates over the whole run (the demo's summary)."""

    polls: int = 0
    scale_ups: int = 0
    scale_downs: int = 0
    peak_replicas: int = 0
    stopped_pods: list[str] = field(default_factory=list)


class FleetRunner:
    """One pool run locally: queue probe, processes, scaler state, metrics.

    ``redis_url`` is the pool's broker URL, any scheme ``open_broker`` serves (the workers get it
    as ``WORKERFLEET_REDIS_URL``, which keeps its first name and takes every scheme).
    """

    def __init__(
        self,
        pool: manifest.LocalPool,
        *,
        redis_url: str,
        log_dir: pathlib.Path,
        app_path: pathlib.Path | None = None,
        metrics_port: int | None = None,
        poll_interval: float | None = None,
        redis_label: str = "",
        clock: Callable[[], float] = time.monotonic,
        decision_log: pathlib.Path | None = None,
        worker_env: Mapping[str, str] | None = None,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.started = clock()
        self.interval = poll_interval or pool.policy.polling_interval_seconds
        self.redis_label = redis_label or redis_url
        self.broker_url = redis_url
        self.queue_options = brokers.build_queue_options(pool.spec)
        self._queue: brokers.SyncQueue | None = None  # opened at the first poll, again after errors
        self.fleet = fleet_mod.ProcessFleet(
            pool, redis_url, log_dir=log_dir, app_path=app_path, extra_env=worker_env
        )
        self.state = autoscaling.ScalerState()
        self.registry = prometheus_client.CollectorRegistry()
        self.metrics = operator_metrics.OperatorMetrics(self.registry)
        self.labels = (manifest.LOCAL_NAMESPACE, pool.name, pool.queue)
        self.series = self.metrics.bind_pool(self.labels, broker=pool.spec.queue.broker)
        self.totals = RunnerTotals()
        self.last_change: autoscaling.Decision | None = None
        self.last_change_at: float | None = None
        self.last_snapshot: Snapshot | None = None
        self.decision_log = decision_log
        self.metrics_port: int | None = None
        self._server: Any = None
        self.subscription_error: str | None = None
        self._subscription_pending = pool.spec.queue.subscription is not None
        self.register_subscription()
        if metrics_port is not None:
            self._server, _ = prometheus_client.start_http_server(
                metrics_port, addr="127.0.0.1", registry=self.registry
            )
            self.metrics_port = int(self._server.server_address[1])

    # ---- one poll ------------------------------------------------------------------------

    def register_subscription(self) -> None:
        """Register the pool's subscription in the broker (idempotent) when it is pending;
        a failure is kept in :attr:`subscription_error` and retried at the next poll."""
        subscription = self.pool.spec.queue.subscription
        if not self._subscription_pending or subscription is None:
            return

        async def subscribe() -> None:
            broker = await runtime_brokers.open_broker(self.broker_url, self.pool.queue)
            try:
                if not isinstance(broker, base.Topics):
                    raise RuntimeError(f"{type(broker).__name__} has no topics")
                await broker.subscribe(subscription.topic, subscription.group)
            finally:
                await broker.close()

        try:
            asyncio.run(subscribe())
        except Exception as exc:  # shown by the view; the poll tries again
            self.subscription_error = f"{type(exc).__name__}: {exc}"
            return
        self.subscription_error = None
        self._subscription_pending = False

    def fetch_observation(self) -> autoscaling.Observation:
        """The queue's stats in one read of its probe; any failure is an observation error."""
        try:
            if self._queue is None:
                self._queue = brokers.SyncQueue(
                    self.broker_url, self.pool.queue, self.queue_options, timeout=PROBE_SECONDS
                )
            queue_stats = self._queue.fetch_stats()
        except Exception as exc:  # the scaler holds on any read failure and says why
            self._close_queue()  # a broker that went away is opened afresh next poll
            return autoscaling.Observation(None, f"{type(exc).__name__}: {exc}")
        if not self._queue.broker.capabilities.oldest_job_age:
            # as the operator does: the age signal is off, and says why (RabbitMQ, SQS)
            scheme = runtime_brokers.scheme_of(self.broker_url)
            return autoscaling.Observation(
                queue_stats, None, age_unavailable=plan.describe_age_unavailable(scheme)
            )
        return autoscaling.Observation(queue_stats)

    def _close_queue(self) -> None:
        queue, self._queue = self._queue, None
        if queue is not None:
            queue.close()

    def step(self) -> Snapshot:
        """Read, decide, apply, publish: one polling interval's work."""
        now = self.clock()
        self.fleet.reap(now)
        self.register_subscription()
        if self.subscription_error is None:
            observation = self.fetch_observation()
        else:  # as the operator does: the queue of an unregistered subscription is unobserved
            observation = autoscaling.Observation(
                None,
                f"subscription {self.pool.queue} is not registered: {self.subscription_error}",
            )
        decision = autoscaling.decide(
            self.pool.policy, observation, self.fleet.replicas, self.state, now
        )
        decision = self._hold_if_paused(decision, now)
        self.state = decision.state
        stopped: list[str] = []
        if decision.changed and not decision.dry_run:
            workers = observation.stats.workers if observation.stats is not None else ()
            heartbeat_now = observation.stats.now if observation.stats is not None else time.time()
            stopped = self.fleet.scale_to(decision.desired, workers, heartbeat_now, now)
        if decision.changed:
            self.last_change, self.last_change_at = decision, now - self.started
            if decision.desired > decision.current:
                self.totals.scale_ups += 1
            else:
                self.totals.scale_downs += 1
            self._log_decision(now, decision)
        self.totals.polls += 1
        self.totals.peak_replicas = max(self.totals.peak_replicas, self.fleet.replicas)
        self.totals.stopped_pods.extend(stopped)
        self.fleet.publish_targets()
        snapshot = self._build_snapshot(now, observation, decision, tuple(stopped))
        self._publish(snapshot, age_measured=observation.age_unavailable is None)
        self.last_snapshot = snapshot
        return snapshot

    def _hold_if_paused(self, decision: autoscaling.Decision, now: float) -> autoscaling.Decision:
        """As the operator's scaler does: a paused pool's signals are still read and shown, its
        replicas held (``workerfleet.io/paused``) or set (``paused-replicas``) by
        :func:`autoscaling.hold_paused`.

        A pool paused from its start is started at ``minReplicas`` and held there, as the
        operator creates a paused pool's Deployment (``plan.choose_replicas``). In ``disabled``
        mode only ``paused-replicas`` changes anything: the fixed count is held anyway.
        """
        pause = self.pool.pause
        if pause is None:
            return decision
        replicas = pause.replicas
        if replicas is None and self.pool.policy.mode != "builtin":
            return decision
        if replicas is None and self.totals.polls == 0:
            replicas = self.pool.policy.min_replicas
        return autoscaling.hold_paused(decision, self.state, replicas, now)

    def _build_snapshot(
        self,
        now: float,
        observation: autoscaling.Observation,
        decision: autoscaling.Decision,
        stopped: tuple[str, ...],
    ) -> Snapshot:
        pods = set(self.fleet.pod_names)
        if self._queue is not None and not self._queue.broker.capabilities.heartbeats:
            # RabbitMQ and SQS keep no worker heartbeats: a running process is all we know
            ready = len(self.fleet.running_pod_names)
        else:
            workers = observation.stats.workers if observation.stats is not None else ()
            ready = sum(1 for w in workers if w.pod_name in pods and not w.draining)
        return Snapshot(
            at=now - self.started,
            pool=self.pool.name,
            queue=self.pool.queue,
            queue_stats=observation.stats,
            error=observation.error,
            decision=decision,
            replicas=self.fleet.replicas,
            ready=ready,
            terminating=self.fleet.terminating,
            last_change=self.last_change,
            last_change_at=self.last_change_at,
            counters=self.fleet.counters,
            events=tuple(self.fleet.events[-8:]),
            redis=self.redis_label,
            stopped=stopped,
        )

    def _publish(self, snapshot: Snapshot, *, age_measured: bool) -> None:
        self.series.record_poll(
            snapshot.queue_stats,
            desired=snapshot.decision.desired,
            max_replicas=self.pool.policy.max_replicas,
            alert_threshold=self.pool.spec.dead_letter.alert_threshold,
            oldest_job_age_target=self.pool.spec.autoscaling.target_oldest_job_age_seconds,
            oldest_age_measured=age_measured,
        )
        self.series.record_replicas(snapshot.replicas, snapshot.ready)
        self.series.record_paused(self.pool.pause is not None)

    def _log_decision(self, now: float, decision: autoscaling.Decision) -> None:
        if self.decision_log is None:
            return
        entry = {
            "t": round(now - self.started, 3),
            "current": decision.current,
            "desired": decision.desired,
            "raw_desired": decision.raw_desired,
            "clamped_by": decision.clamped_by,
            "signals": dict(decision.signals),
            "reason": decision.reason,
            "explanation": autoscaling.explain_decision(decision),
        }
        with self.decision_log.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    # ---- the loop ------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        *,
        on_snapshot: Callable[[Snapshot], None] | None = None,
        max_seconds: float | None = None,
    ) -> None:
        """Poll every interval and supervise in between, until ``stop`` is set (or time is up)."""
        next_poll = self.clock()
        deadline = None if max_seconds is None else self.clock() + max_seconds
        while not stop.is_set():
            now = self.clock()
            if deadline is not None and now >= deadline:
                break
            if now >= next_poll:
                snapshot = self.step()
                if on_snapshot is not None:
                    on_snapshot(snapshot)
                next_poll = now + self.interval
            else:
                self.fleet.reap(now)
            stop.wait(max(0.0, min(SUPERVISE_SECONDS, next_poll - self.clock())))

    def close(self, *, drain_timeout: float | None = None) -> None:
        """Drain every worker (SIGTERM, bounded wait), then release Redis and the metrics port."""
        self.fleet.stop_all(timeout=drain_timeout)
        self._close_queue()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def run_together(
    runners: Sequence[FleetRunner],
    stop: threading.Event,
    *,
    on_snapshot: Callable[[Snapshot], None] | None = None,
    max_seconds: float | None = None,
    until: Callable[[], bool] | None = None,
) -> None:
    """:meth:`FleetRunner.run` for several pools at once, each on its own polling interval
    (one thread: the pools scale independently, as separate WorkerPools do in a cluster).

    Stops when ``stop`` is set, ``max_seconds`` pass, or ``until()`` (asked after each round
    of polls) returns True.
    """
    if not runners:
        return
    clock = runners[0].clock
    next_poll = [clock()] * len(runners)
    deadline = None if max_seconds is None else clock() + max_seconds
    while not stop.is_set():
        now = clock()
        if deadline is not None and now >= deadline:
            break
        polled = False
        for index, fleet_runner in enumerate(runners):
            if now >= next_poll[index]:
                snapshot = fleet_runner.step()
                if on_snapshot is not None:
                    on_snapshot(snapshot)
                next_poll[index] = now + fleet_runner.interval
                polled = True
            else:
                fleet_runner.fleet.reap(now)
        if polled and until is not None and until():
            break
        wait = min(next_poll) - clock()
        stop.wait(max(0.0, min(SUPERVISE_SECONDS, wait)))
