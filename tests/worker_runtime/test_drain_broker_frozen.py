"""A drain ends with exit 0 inside its budget while the broker does not answer.

A real worker process, a real SIGTERM, a redis-server frozen with SIGSTOP (a partition, a
stalled failover): the release, the control thread's last renewal, the deregistration and the
close each waited out their own timeouts, and a worker with a 5 s budget exited 20 s after the
signal, when Kubernetes' SIGKILL (budget + 15 s) comes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import redis

from tests.support import redis_servers
from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import wait_until
from worker_runtime import producer
from worker_runtime.brokers.redis import stats


def test_a_worker_draining_while_redis_is_frozen_exits_zero_within_its_budget(
    redis_factory: Callable[..., redis_servers.RedisServer], queue_name: str, tmp_path: object
) -> None:
    # Given a worker with a 5 s drain budget running a job that needs a minute more
    server = redis_factory()
    client = redis.Redis(port=server.port, decode_responses=True, socket_timeout=10)
    worker = workerproc.WorkerProc(
        server.url,
        queue_name,
        concurrency=2,
        lease_seconds=3.0,
        drain_timeout=5.0,
        log_dir=str(tmp_path),
    )
    try:
        job = producer.SyncProducer(client, queue_name).enqueue("sleep", {"seconds": 60.0})
        wait_until(lambda: workerproc.events(client, queue_name), 20, "the job to start")
        # When Redis stops answering and SIGTERM arrives
        os.kill(server.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            worker.send(signal.SIGTERM)
            try:
                rc: int | None = worker.wait(25)
            except subprocess.TimeoutExpired:
                rc = None
            elapsed = time.monotonic() - t0
        finally:
            os.kill(server.pid, signal.SIGCONT)
        # Then the worker exits 0 when its budget is spent, not at the grace period's SIGKILL
        assert rc == 0, f"exit {rc} after {elapsed:.1f}s; log: {worker.logs()[-3000:]}"
        assert worker.drained_seconds() < 5.0 + 0.5, worker.logs()[-3000:]
        # (timed from outside too: the signal's delivery and the exit take seconds on a loaded
        # machine, but stay far from the SIGKILL at budget + 15 s)
        assert elapsed < 5.0 + 5.0, f"exited after {elapsed:.1f}s"
        # And once Redis answers again the job is not lost: its lease runs out and it waits in
        # the queue for another worker, never acknowledged
        wait_until(
            lambda: (
                stats.fetch_queue_stats_sync(client, queue_name).backlog
                + stats.fetch_queue_stats_sync(client, queue_name).in_flight
                == 1
            ),
            10,
            "the job to be in the queue",
        )
        assert stats.fetch_queue_stats_sync(client, queue_name).completed_total == 0
        assert [e["job"] for e in workerproc.events(client, queue_name)] == [job.job_id]
    finally:
        worker.stop()
        client.close()
