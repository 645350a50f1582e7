"""What a running worker exposes: /metrics, /healthz, /readyz, JSON logs, heartbeat records."""

from __future__ import annotations

import signal
import socket

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until

METRIC_NAMES = [
    "workerfleet_jobs_total",
    "workerfleet_job_duration_seconds_bucket",
    "workerfleet_jobs_in_flight",
    "workerfleet_job_retries_total",
    "workerfleet_dead_lettered_total",
    "workerfleet_fetch_errors_total",
    "workerfleet_redis_errors_total",
    "workerfleet_lease_renewals_total",
    "workerfleet_leases_lost_total",
    "workerfleet_worker_draining",
]


def test_a_worker_serves_its_metrics_probes_and_heartbeat_and_readyz_fails_while_draining(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker with its metrics port, a completed job, a retried job, a dead letter and
    # a long job in flight
    port = workerproc.free_port()
    worker = wf.spawn(concurrency=4, lease_seconds=1.5, metrics_port=port, drain_timeout=3.0)
    wf.producer.enqueue("order", {"order_id": 1, "amount": 2.0})
    wf.producer.enqueue("flaky", {"fail_times": 1})
    wf.producer.enqueue("reject", {})
    wf.producer.enqueue("sleep", {"seconds": 30.0})
    wait_until(
        lambda: wf.stats().completed_total == 2,
        20,
        "two completions",
    )
    # When the endpoints are scraped (the worker updates its metrics a moment after Redis
    # counts the ack, so scrape until the last ack shows)
    q = f'queue="{wf.queue}"'
    expected = [
        f'workerfleet_jobs_total{{outcome="completed",{q},task="order"}} 1.0',
        f'workerfleet_jobs_total{{outcome="retried",{q},task="flaky"}} 1.0',
        f'workerfleet_dead_lettered_total{{{q},reason="non_retryable"}} 1.0',
        f"workerfleet_jobs_in_flight{{{q}}} 1.0",
    ]
    wait_until(
        lambda: all(line in str(worker.http("/metrics")[1]) for line in expected),
        5,
        "the metrics of the finished jobs",
    )
    status, text = worker.http("/metrics")
    # Then every contract metric is there, labelled with the queue
    assert status == 200 and isinstance(text, str)
    for name in METRIC_NAMES:
        assert f"{name}{{" in text or f"{name} " in text, name
    for line in expected:
        assert line in text
    wait_until(
        lambda: f"workerfleet_lease_renewals_total{{{q}}} 0.0" not in worker.http("/metrics")[1],
        5,
        "a lease renewal",
    )
    assert worker.http("/healthz")[0] == 200
    assert worker.http("/readyz")[0] == 200
    # And the heartbeat record describes the worker for the autoscaler
    # (heartbeats are written every lease/3: wait for one written after the completions)
    beat = wait_until(
        lambda: [w for w in wf.stats().workers if w.in_flight == 1 and w.processed >= 3],
        5,
        "a heartbeat showing the long job alone in flight",
    )
    assert len(beat) == 1
    assert beat[0].pod_name == socket.gethostname()
    assert beat[0].concurrency == 4 and beat[0].in_flight == 1
    assert beat[0].processed >= 3 and beat[0].busy_seconds > 0
    assert beat[0].oldest_job_started_at is not None and not beat[0].draining
    # When it drains
    worker.send(signal.SIGTERM)
    # Then /readyz fails at once while /healthz stays green, and the heartbeat says draining
    wait_until(lambda: worker.http("/readyz")[0] == 503, 5, "readyz 503")
    assert worker.http("/healthz")[0] == 200
    assert f"workerfleet_worker_draining{{{q}}} 1.0" in str(worker.http("/metrics")[1])
    wait_until(
        lambda: any(w.draining for w in wf.stats().workers),
        5,
        "the draining heartbeat",
    )
    assert worker.wait(10) == 0
    assert wf.stats().workers == ()


def test_logs_are_json_lines_carrying_job_id_and_correlation_id_in_async_and_sync_handlers(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker writing JSON logs
    worker = wf.spawn(concurrency=2)
    # When an async and a sync handler log, and a job fails
    a = wf.producer.enqueue("log", {}, correlation_id="corr-async")
    b = wf.producer.enqueue("log-sync", {}, correlation_id="corr-sync")
    c = wf.producer.enqueue("flaky", {"fail_times": 1}, correlation_id="corr-fail")
    wait_until(
        lambda: wf.stats().completed_total == 3,
        20,
        "three completions",
    )
    worker.send(signal.SIGTERM)
    assert worker.wait(10) == 0
    records = worker.log_records()
    # Then every line is JSON, and records written for a job carry its ids
    assert all(isinstance(r, dict) for r in records)
    assert len(records) == len(worker.logs().splitlines())
    hello = {r["custom"]: r for r in records if r.get("msg") == "handler says hello"}
    assert hello["async"]["job_id"] == a.job_id
    assert hello["async"]["correlation_id"] == "corr-async"
    assert hello["sync"]["job_id"] == b.job_id
    assert hello["sync"]["correlation_id"] == "corr-sync"
    failed = [r for r in records if r.get("msg") == "job failed"]
    assert len(failed) == 1
    assert failed[0]["job_id"] == c.job_id and failed[0]["correlation_id"] == "corr-fail"
    assert failed[0]["error_type"] == "RuntimeError" and failed[0]["task"] == "flaky"
    assert {"ts", "level", "logger"} <= set(failed[0])


def test_every_dead_letter_is_logged_as_a_warning_even_at_log_level_warning(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker logging warnings and above only
    worker = wf.spawn(concurrency=2, extra_env={"WORKERFLEET_LOG_LEVEL": "warning"})
    # When a job is rejected, one fails with a non-retryable error, and one names no task
    rejected = wf.producer.enqueue("reject", {})
    broken = wf.producer.enqueue("non-retryable", {})
    unknown = wf.producer.enqueue("no-such-task", {})
    wait_until(lambda: wf.stats().dead_letter == 3, 20, "three dead letters")
    worker.send(signal.SIGTERM)
    assert worker.wait(10) == 0
    # Then each left one warning naming its job and why
    dead = {
        r["job_id"]: r
        for r in worker.log_records()
        if r.get("msg") == "job dead-lettered" and r.get("level") == "warning"
    }
    assert set(dead) == {rejected.job_id, broken.job_id, unknown.job_id}
    assert dead[rejected.job_id]["reason"] == "non_retryable"  # Reject: never retried
    assert dead[broken.job_id]["reason"] == "non_retryable"
    assert dead[broken.job_id]["error_type"] == "KeyError"


def test_a_worker_whose_metrics_port_is_taken_says_so_and_still_runs_jobs(
    wf: workerproc.Testbed,
) -> None:
    # Given a port something else already listens on
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        # When a worker is started with it as its metrics port, and a job is queued
        worker = wf.spawn(concurrency=2, metrics_port=port)
        wf.producer.enqueue("order", {"order_id": 1, "amount": 2.0})
        # Then it runs the job anyway
        wait_until(lambda: wf.stats().completed_total == 1, 20, "the job")
    finally:
        taken.close()
    # And its log says what failed, in words, and what to set
    [record] = [
        r for r in worker.log_records() if str(r.get("msg")).startswith("cannot serve metrics")
    ]
    assert record["error"].startswith("OSError: ") and "address already in use" in record["error"]
    assert "WORKERFLEET_METRICS_PORT" in record["hint"]
    worker.send(signal.SIGTERM)
    assert worker.wait(15) == 0
