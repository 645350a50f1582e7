"""The local fleet's control loop: the operator's autoscaler driving local worker processes.

``workerfleet run POOL.yaml`` (:mod:`workerfleet_operator.local.cli`) and ``workerfleet demo``
build a :class:`FleetRunner` and call :meth:`FleetRunner.run`. Every polling interval it reads
the queue's stats in one round trip, calls the same :func:`autoscaling.decide` as the operator,
applies the decision to a :class:`fleet.ProcessFleet` (idle workers stopped first), and
publishes the operator's per-pool metrics (namespace ``local``) on a loopback port. Between
polls it supervises the processes (crash restarts, overdue drains). Each poll yields a
:class:`Snapshot` for the live view and the demo's chart.
"""

from __future__ import annotations

import json
import pathlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import prometheus_client

from worker_runtime.brokers.redis import connection, stats
from workerfleet_operator import autoscaling
from workerfleet_operator.local import fleet as fleet_mod
from workerfleet_operator.local import manifest
from workerfleet_operator.shell import metrics as operator_metrics

SUPERVISE_SECONDS = 0.2  # how often crashed workers and overdue drains are looked at


@dataclass(frozen=True)
class Snapshot:
    """What one poll saw and did: for the live view, the chart and the tests."""

    at: float  # seconds since the runner started
    pool: str
    queue: str
    queue_stats: stats.QueueStats | None
    error: str | None
    decision: autoscaling.Decision
    replicas: int
    ready: int
    terminating: int
    last_change: autoscaling.Decision | None
    last_change_at: float | None
    counters: fleet_mod.FleetCounters
    events: tuple[fleet_mod.FleetEvent, ...]
    redis: str  # how to reach Redis, for the header (never a password: local URLs only)
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
    """One pool run locally: Redis client, processes, scaler state, metrics."""

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
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.started = clock()
        self.interval = poll_interval or pool.policy.polling_interval_seconds
        self.redis_label = redis_label or redis_url
        self.client = connection.fetch_client_sync(redis_url, socket_timeout=2.0, retries=0)
        self.fleet = fleet_mod.ProcessFleet(pool, redis_url, log_dir=log_dir, app_path=app_path)
        self.state = autoscaling.ScalerState()
        self.registry = prometheus_client.CollectorRegistry()
        self.metrics = operator_metrics.OperatorMetrics(self.registry)
        self.labels = (manifest.LOCAL_NAMESPACE, pool.name, pool.queue)
        self.series = self.metrics.bind_pool(self.labels)
        self.totals = RunnerTotals()
        self.last_change: autoscaling.Decision | None = None
        self.last_change_at: float | None = None
        self.last_snapshot: Snapshot | None = None
        self.decision_log = decision_log
        self.metrics_port: int | None = None
        self._server: Any = None
        if metrics_port is not None:
            self._server, _ = prometheus_client.start_http_server(
                metrics_port, addr="127.0.0.1", registry=self.registry
            )
            self.metrics_port = int(self._server.server_address[1])

    # ---- one poll ------------------------------------------------------------------------

    def fetch_observation(self) -> autoscaling.Observation:
        """The queue's stats in one round trip; any failure is an observation error."""
        try:
            return autoscaling.Observation(
                stats.fetch_queue_stats_sync(self.client, self.pool.queue)
            )
        except Exception as exc:  # the scaler holds on any read failure and says why
            return autoscaling.Observation(None, f"{type(exc).__name__}: {exc}")

    def step(self) -> Snapshot:
        """Read, decide, apply, publish: one polling interval's work."""
        now = self.clock()
        self.fleet.reap(now)
        observation = self.fetch_observation()
        decision = autoscaling.decide(
            self.pool.policy, observation, self.fleet.replicas, self.state, now
        )
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
        self._publish(snapshot)
        self.last_snapshot = snapshot
        return snapshot

    def _build_snapshot(
        self,
        now: float,
        observation: autoscaling.Observation,
        decision: autoscaling.Decision,
        stopped: tuple[str, ...],
    ) -> Snapshot:
        pods = set(self.fleet.pod_names)
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

    def _publish(self, snapshot: Snapshot) -> None:
        self.series.record_poll(
            snapshot.queue_stats,
            desired=snapshot.decision.desired,
            max_replicas=self.pool.policy.max_replicas,
            alert_threshold=self.pool.spec.dead_letter.alert_threshold,
            oldest_job_age_target=self.pool.spec.autoscaling.target_oldest_job_age_seconds,
        )
        self.series.replicas_current.set(snapshot.replicas)
        self.series.replicas_ready.set(snapshot.ready)

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
        self.client.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
