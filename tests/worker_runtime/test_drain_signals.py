"""Graceful drain of real worker processes on real signals (SIGTERM/SIGINT, twice)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

import pytest
import redis

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until
from worker_runtime import producer
from worker_runtime.brokers.redis import keys, stats


@pytest.mark.parametrize(
    ("task", "concurrency"),
    [
        ("sleep", 1),
        ("sleep-sync", 1),
        ("sleep", 4),  # free slots: a blocking fetch is waiting when the signal comes
    ],
)
def test_sigterm_during_a_short_job_finishes_and_acks_it_fetches_nothing_new_and_exits_zero(
    task: str,
    concurrency: int,
    wf: workerproc.Testbed,
) -> None:
    # Given a worker running a job that needs one more second
    worker = wf.spawn(concurrency=concurrency, drain_timeout=5.0)
    short = wf.producer.enqueue(task, {"seconds": 1.0, "marker": "short"})
    wait_until(wf.starts, 20, "the short job to start")
    # When SIGTERM arrives and another job is enqueued during the drain
    t0 = time.monotonic()
    worker.send(signal.SIGTERM)
    later = wf.producer.enqueue("sleep", {"seconds": 0.1, "marker": "later"})
    rc = worker.wait(10)
    elapsed = time.monotonic() - t0
    # Then the short job completed and was acknowledged, the new one was never fetched,
    # and the worker exited 0 inside its 5 s budget
    assert rc == 0, worker.logs()[-3000:]
    assert elapsed < 5.0
    recorded = wf.events()
    assert [(e["event"], e["marker"]) for e in recorded] == [("start", "short"), ("done", "short")]
    assert recorded[0]["job"] == short.job_id
    s = wf.stats()
    assert s.completed_total == 1
    assert s.in_flight == 0
    assert s.backlog == 1  # the later job waits, undelivered
    # (had it been fetched and handed back, the release counter would show it)
    assert int(wf.client.hget(keys.build_keys(wf.queue).counters, "released") or 0) == 0
    assert later.created
    # And the worker deregistered instead of being counted as lost
    assert s.workers == ()
    assert s.workers_lost_total == 0


DRAIN_BOUNDS = ("draining", "worker stopped")


@pytest.mark.parametrize("task", ["sleep", "sleep-sync"])
def test_sigterm_during_a_long_job_releases_it_and_it_runs_exactly_once_more_elsewhere(
    task: str,
    wf: workerproc.Testbed,
) -> None:
    # Given a worker with a 2 s drain budget running a job that needs 30 s more
    first = wf.spawn(concurrency=2, drain_timeout=2.0)
    job = wf.producer.enqueue(task, {"seconds": 30.0, "later_seconds": 0.5, "marker": "long"})
    wait_until(wf.starts, 20, "the long job to start")
    # When SIGTERM arrives
    t0 = time.monotonic()
    first.send(signal.SIGTERM)
    rc = first.wait(10)
    elapsed = time.monotonic() - t0
    # Then the worker gives the job back and stops before its budget ends (timed by its
    # own log, from the signal's arrival), and the process is gone soon after
    assert rc == 0, first.logs()[-3000:]
    at = {r["msg"]: r["ts"] for r in first.log_records() if r.get("msg") in DRAIN_BOUNDS}
    assert at["worker stopped"] - at["draining"] < 2.0
    assert elapsed < 2.0 + 1.5  # signal delivery and interpreter exit on a busy machine
    # (and it does not count the job it gave back as processed)
    (stopped,) = [r for r in first.log_records() if r.get("msg") == "worker stopped"]
    assert stopped["processed"] == 0
    s = wf.stats()
    assert s.in_flight == 0 and s.backlog == 1
    assert int(wf.client.hget(keys.build_keys(wf.queue).counters, "released") or 0) == 1
    # When another worker starts (later deliveries of this job sleep only 0.5 s)
    second = wf.spawn(concurrency=2)
    wait_until(lambda: wf.stats().completed_total == 1, 20, "the rerun")
    # Then it ran exactly once more, with its attempt count unchanged
    starts = [e for e in wf.events() if e["event"] == "start"]
    assert len(starts) == 2
    assert [e["attempt"] for e in starts] == [1, 1]
    assert starts[1]["pid"] == second.pid
    assert starts[1]["job"] == job.job_id
    done = [e for e in wf.events() if e["event"] == "done"]
    assert len(done) == 1
    second.send(signal.SIGTERM)
    assert second.wait(10) == 0


def test_a_second_sigterm_shortens_the_drain_and_releases_at_once(
    wf: workerproc.Testbed,
) -> None:
    # Given a worker with a 60 s drain budget running a 60 s job
    worker = wf.spawn(concurrency=1, drain_timeout=60.0)
    wf.producer.enqueue("sleep", {"seconds": 60.0, "marker": "long"})
    wait_until(wf.starts, 20, "the job to start")
    # When SIGTERM arrives, and a second one a moment later
    worker.send(signal.SIGTERM)
    wait_until(
        lambda: any(w.draining for w in wf.stats().workers),
        5,
        "the heartbeat to say draining",
    )
    t0 = time.monotonic()
    worker.send(signal.SIGTERM)
    rc = worker.wait(15)
    # Then the worker releases the job and exits 0 within a few seconds, not 60
    assert rc == 0, worker.logs()[-3000:]
    assert time.monotonic() - t0 < 5.0
    s = wf.stats()
    assert s.backlog == 1 and s.in_flight == 0 and s.completed_total == 0


def test_sigint_drains_like_sigterm(
    wf: workerproc.Testbed,
) -> None:
    # Given an idle worker that registered its heartbeat
    worker = wf.spawn(concurrency=2, drain_timeout=5.0)
    wait_until(lambda: wf.stats().workers, 20, "the worker heartbeat")
    # When it gets SIGINT (Ctrl-C)
    worker.send(signal.SIGINT)
    # Then it exits 0 and deregisters
    assert worker.wait(10) == 0
    assert wf.stats().workers == ()


async def test_a_sigterm_that_arrives_while_the_worker_starts_becomes_an_immediate_drain(
    redis_server: Any, queue_name: str
) -> None:
    from pydantic import BaseModel

    from worker_runtime import App, config, worker

    class Empty(BaseModel):
        pass

    app = App(queue=queue_name)

    @app.task("noop", payload=Empty)  # a local model: name it explicitly
    async def noop(payload: Empty) -> None:
        return None

    client = redis.Redis(port=redis_server.port, decode_responses=True)
    producer.SyncProducer(client, queue_name).enqueue("noop", {})
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # Given the early handlers `workerfleet worker` installs before importing the app
        worker.install_early_signal_handlers()
        # When SIGTERM arrives before the worker's event loop handlers exist
        os.kill(os.getpid(), signal.SIGTERM)
        settings = config.WorkerSettings(redis_url=redis_server.url, metrics_port=0)
        w = worker.Worker(app, settings)
        rc = await asyncio.wait_for(w.run(), 20)
        # Then the worker drains at once: exit 0, nothing fetched, deregistered
        assert rc == 0 and w.draining and w.processed == 0
        s = stats.fetch_queue_stats_sync(client, queue_name)
        assert s.backlog == 1 and s.in_flight == 0 and s.workers == ()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        worker._early_signals.clear()
        client.close()


async def test_a_worker_drained_before_its_job_loop_opened_the_broker_leaves_no_heartbeat(
    redis_server: Any, queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker_runtime import App, config, worker
    from worker_runtime.worker import transient

    app = App(queue=queue_name)
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    real_open = transient.open_until_ready
    drain_sent = asyncio.Event()

    async def open_after_the_drain_request(*args: Any, **kwargs: Any) -> Any:
        # The control thread opens its own connection at once; the job loop's opening is held
        # until the drain has been requested (a slow start of the loop). Holding it only until
        # the heartbeat appeared raced the test's own request: the loop could open first.
        if threading.current_thread().name != "wf-control":
            await asyncio.wait_for(drain_sent.wait(), 20)
        return await real_open(*args, **kwargs)

    monkeypatch.setattr(transient, "open_until_ready", open_after_the_drain_request)
    try:
        # Given a worker whose control thread has written its heartbeat record while the job
        # loop has not opened the broker yet
        settings = config.WorkerSettings(redis_url=redis_server.url, metrics_port=0)
        w = worker.Worker(app, settings, install_signal_handlers=False)
        run = asyncio.create_task(w.run())
        deadline = time.monotonic() + 10
        while not stats.fetch_queue_stats_sync(client, queue_name).workers:
            assert time.monotonic() < deadline, "no heartbeat from the control thread"
            await asyncio.sleep(0.02)
        # When it is told to drain before the job loop's broker is open
        w.request_drain(int(signal.SIGTERM))
        drain_sent.set()
        rc = await asyncio.wait_for(run, 20)
        # Then it exits cleanly and its heartbeat record is gone: no phantom draining worker
        # is left for the autoscaler to count for a lease
        assert rc == 0 and w.q is None
        assert stats.fetch_queue_stats_sync(client, queue_name).workers == ()
    finally:
        client.close()
