"""The local fleet end to end: real redis-server, real worker subprocesses, the real decide()."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import time
import urllib.request

import local_fleet_support as support
import pytest

from tests.workerfleet_operator.conftest import wait_until

pytestmark = pytest.mark.slow


def test_a_backlog_burst_scales_the_fleet_up_then_back_to_zero_with_every_job_settled(
    tmp_path: pathlib.Path,
) -> None:
    with support.driven_fleet(tmp_path, "burst") as fleet:
        # Given an idle pool at zero replicas
        assert fleet.poll().replicas == 0
        # When a burst of 40 short jobs and 3 poison jobs arrives
        fleet.enqueue("sleep", 40, seconds=0.3)
        fleet.enqueue("poison", 3)
        # Then the fleet scales up to maxReplicas
        fleet.drive_until(lambda s: s.replicas == 3, timeout=10, message="scale up to max")
        # And every job is completed or dead-lettered
        settled = fleet.drive_until(
            lambda s: (
                s.queue_stats is not None
                and s.queue_stats.completed_total == 40
                and s.queue_stats.dead_letter == 3
            ),
            timeout=60,
            message="all jobs settled",
        )
        idle_at = settled.at
        # And once the scale-down window has passed with nothing to do, the fleet goes to zero
        fleet.drive_until(lambda s: s.replicas == 0, timeout=30, message="scale to zero")
        last_busy = max(
            s.at
            for s in fleet.snapshots
            if s.queue_stats is not None and (s.queue_stats.backlog or s.queue_stats.in_flight)
        )
        window = fleet.runner.pool.policy.scale_down.stabilization_window_seconds
        # A step down waits a full window after the last recommendation for the peak ...
        last_peak_wanted = max(s.at for s in fleet.snapshots if s.decision.raw_desired >= 3)
        first_peak = min(s.at for s in fleet.snapshots if s.replicas == 3)
        first_down = min(
            s.at
            for s in fleet.snapshots
            if s.at > first_peak and s.decision.desired < s.decision.current
        )
        assert first_down > last_peak_wanted + window
        # ... and the step to zero a full window after the queue was last busy.
        first_zero = min(
            s.at for s in fleet.snapshots if s.at > first_peak and s.decision.desired == 0
        )
        assert first_zero > last_busy + window
        assert last_busy <= idle_at
        counters = fleet.runner.fleet.counters
        # And no worker was killed: every one drained and exited 0
        fleet.drive_until(
            lambda s: s.terminating == 0, timeout=20, message="stopped workers exited"
        )
        assert counters.killed == 0
        assert counters.stopped_cleanly == counters.started == 3
        assert set(counters.exit_codes) == {0}
        assert sorted({r["deliveries"] for r in fleet.ran()}) == [1]
        assert fleet.runner.totals.peak_replicas == 3


def test_scale_in_stops_idle_workers_and_lets_the_busy_one_finish_its_job(
    tmp_path: pathlib.Path,
) -> None:
    with support.driven_fleet(
        tmp_path, "scalein", targetBacklogPerReplica=1, maxReplicas=3
    ) as fleet:
        # Given three workers, one of them running a long job and the others idle
        fleet.enqueue("sleep", 1, seconds=8.0)
        fleet.enqueue("sleep", 4, seconds=0.1)
        fleet.drive_until(lambda s: s.replicas == 3, timeout=10, message="three replicas")

        def busy_pod() -> str | None:
            s = fleet.poll().queue_stats
            if s is None or s.backlog:
                return None
            busy = [w.pod_name for w in s.workers if w.in_flight > 0]
            return busy[0] if len(busy) == 1 and s.completed_total == 4 else None

        long_runner = wait_until(busy_pod, timeout=20, message="one worker busy")
        # When the autoscaler scales in
        fleet.drive_until(lambda s: s.replicas == 1, timeout=20, message="scale in to one")
        # Then the busy worker is the one that stays, and its job completes on its first delivery
        assert long_runner in fleet.runner.fleet.pod_names
        assert long_runner not in fleet.runner.totals.stopped_pods
        scaled_in = [s for s in fleet.snapshots if s.stopped]
        # (the first step in may also be held at the highest recommendation of the window,
        # when the short jobs ended across two polls and one recommended 2 before 1)
        assert scaled_in[0].decision.clamped_by in {
            "inFlightWork",
            None,
            "scaleDownStep",
            "scaleDownStabilization",
        }
        fleet.drive_until(
            lambda s: s.queue_stats is not None and s.queue_stats.completed_total == 5,
            timeout=20,
            message="long job done",
        )
        long_job = [r for r in fleet.ran() if r["pod"] == long_runner]
        assert long_job and all(r["deliveries"] == 1 for r in fleet.ran())
        assert fleet.runner.fleet.counters.killed == 0


def test_a_crashed_worker_is_restarted_under_the_same_pod_name(tmp_path: pathlib.Path) -> None:
    with support.driven_fleet(tmp_path, "crash", minReplicas=1) as fleet:
        # Given one running worker
        fleet.drive_until(lambda s: s.ready == 1, timeout=15, message="one ready worker")
        pod, pid = next(iter(fleet.runner.fleet.pids.items()))
        # When it is killed outright
        os.kill(pid, signal.SIGKILL)
        # Then the fleet restarts it, keeping the replica count
        fleet.drive_until(
            lambda s: s.counters.restarted >= 1, timeout=15, message="crashed worker restarted"
        )
        assert fleet.runner.fleet.counters.crashed >= 1
        assert fleet.runner.fleet.replicas == 1
        new_pid = wait_until(
            lambda: fleet.runner.fleet.pids.get(pod), timeout=5, message="new process"
        )
        assert new_pid != pid
        assert any(e.kind == "Crashed" and e.pod == pod for e in fleet.runner.fleet.events)


def test_a_worker_that_outlives_its_drain_budget_is_killed_and_counted(
    tmp_path: pathlib.Path,
) -> None:
    with support.driven_fleet(tmp_path, "stuck", minReplicas=1, drain_seconds=1) as fleet:
        # Given one worker that cannot react to signals (stopped by SIGSTOP)
        fleet.drive_until(lambda s: s.ready == 1, timeout=15, message="one ready worker")
        pod, pid = next(iter(fleet.runner.fleet.pids.items()))
        os.kill(pid, signal.SIGSTOP)
        try:
            # When the fleet stops it
            started = time.monotonic()
            fleet.runner.fleet.stop_all()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        # Then it is killed after drain budget + margin, and the kill is counted and logged
        waited = time.monotonic() - started
        grace = fleet.runner.fleet.grace_seconds
        assert grace <= waited < grace + 5
        assert fleet.runner.fleet.counters.killed == 1
        assert any(e.kind == "Killed" and e.pod == pod for e in fleet.runner.fleet.events)
        assert fleet.runner.fleet.replicas == 0


def test_when_redis_becomes_unreachable_the_fleet_holds_its_workers_and_says_why(
    tmp_path: pathlib.Path,
) -> None:
    from workerfleet_operator.local import embedded_redis

    server = embedded_redis.EmbeddedRedis(tmp_path / "redis").start()
    try:
        with support.driven_fleet(tmp_path, "outage", redis_server=server, metrics_port=0) as fleet:
            # Given two replicas working through long jobs
            fleet.enqueue("sleep", 10, seconds=5.0)
            fleet.drive_until(lambda s: s.replicas == 2, timeout=10, message="two replicas")
            # When Redis goes away
            server.stop()
            # Then the fleet holds two replicas, with the reason and the metric saying so
            held = fleet.drive_until(
                lambda s: s.queue_stats is None, timeout=10, message="queue unreachable"
            )
            for _ in range(4):
                held = fleet.poll()
                assert held.replicas == 2
                assert held.decision.clamped_by == "metricFailureHold"
                assert "queue unreadable" in held.decision.reason
            body = _scrape(fleet.runner.metrics_port)
            labels = '{namespace="local",pool="outage",queue="outage",reason="QueueUnreachable"}'
            assert f"workerfleet_pool_queue_reachable{labels} 0.0" in body
            assert 'reason="QueueRead"' not in body  # the reason before the outage is gone
    finally:
        server.stop()


def test_the_fleet_serves_the_operator_per_pool_metrics_under_namespace_local(
    tmp_path: pathlib.Path,
) -> None:
    with support.driven_fleet(tmp_path, "metrics", metrics_port=0) as fleet:
        fleet.enqueue("poison", 2)
        fleet.drive_until(
            lambda s: s.queue_stats is not None and s.queue_stats.dead_letter == 2,
            timeout=20,
            message="poison jobs dead-lettered",
        )
        body = _scrape(fleet.runner.metrics_port)
        labels = '{namespace="local",pool="metrics",queue="metrics"}'
        for series in (
            "workerfleet_pool_backlog",
            "workerfleet_pool_in_flight",
            "workerfleet_pool_replicas_desired",
            "workerfleet_pool_replicas_current",
            "workerfleet_pool_replicas_max",
            "workerfleet_pool_workers_expired",
            "workerfleet_pool_oldest_job_age_target_seconds",
            "workerfleet_pool_jobs_enqueued_total",
        ):
            assert f"{series}{labels}" in body, series
        reachable = labels.replace('"}', '",reason="QueueRead"}')
        assert f"workerfleet_pool_queue_reachable{reachable} 1.0" in body
        assert f"workerfleet_pool_dead_letter{labels} 2.0" in body
        assert f"workerfleet_pool_jobs_dead_lettered_total{labels} 2.0" in body
        assert f"workerfleet_pool_dead_letter_alert_threshold{labels} 1.0" in body


def _scrape(port: int | None) -> str:
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())
