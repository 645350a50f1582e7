"""Redis trouble under a running worker: killed connections, a stopped or crashed server.

The worker must reconnect by itself, lose nothing, acknowledge nothing twice, and say so in
``/healthz`` (red while Redis is gone, green again after) instead of reporting "fine".
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests.worker_runtime import workerproc
from tests.worker_runtime.workerproc import done_counts, wait_until
from worker_runtime import producer
from worker_runtime.brokers.redis import stats


def _health(worker: workerproc.WorkerProc) -> int | None:
    try:
        status, _ = worker.http("/healthz")
    except OSError:
        return None
    return status


def test_killed_connections_are_reopened_and_every_job_is_acknowledged_exactly_once(
    wf: workerproc.Testbed,
) -> None:
    # Given 400 queued jobs and a worker processing them
    n = 400
    for start in range(0, n, 100):
        wf.producer.enqueue_many(
            [
                producer.JobSpec(task="chaos", payload={"marker": str(i), "work_ms": 5})
                for i in range(start, start + 100)
            ]
        )
    worker = wf.spawn(concurrency=8, lease_seconds=3.0)
    # When every client connection is killed three times while it works (each time once the
    # worker has connected again)
    for round_ in range(3):
        wait_until(
            lambda r=round_: wf.stats().completed_total >= (r + 1) * 80,
            30,
            "progress",
        )
        wait_until(
            lambda: len(wf.client.client_list(_type="normal")) > 1, 10, "the worker connected"
        )
        killed = wf.client.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
    # Then the worker reconnects and finishes everything, each job acknowledged exactly once
    wait_until(
        lambda: wf.stats().completed_total >= n,
        60,
        "all jobs",
    )
    s = wf.stats()
    assert s.completed_total == n
    assert s.backlog == 0 and s.in_flight == 0 and s.dead_letter == 0
    counts = wf.done_counts()
    assert set(counts) == {str(i) for i in range(n)}  # nothing lost
    assert worker.alive()
    worker.send(signal.SIGTERM)
    assert worker.wait(15) == 0


@pytest.mark.parametrize("outage", ["stop", "kill"])
def test_a_redis_outage_turns_healthz_red_and_green_again_and_loses_nothing(
    outage: str,
    redis_factory: Callable[..., Any],
    wf: workerproc.Testbed,
) -> None:
    # Given a Redis that fsyncs every write, 200 queued jobs and a worker with /healthz
    server = redis_factory(appendonly="yes", appendfsync="always")
    client = workerproc.sync_client(server)
    p = producer.SyncProducer(client, wf.queue)
    n = 200
    p.enqueue_many(
        [
            producer.JobSpec(task="chaos", payload={"marker": str(i), "work_ms": 20})
            for i in range(n)
        ]
    )
    port = workerproc.free_port()
    worker = wf.spawn(redis_url=server.url, concurrency=4, lease_seconds=1.5, metrics_port=port)
    wait_until(lambda: _health(worker) == 200, 20, "healthz green")
    wait_until(
        lambda: stats.fetch_queue_stats_sync(client, wf.queue).completed_total >= 20,
        30,
        "progress",
    )
    # When Redis goes away (graceful stop, or SIGKILL)
    server.kill() if outage == "kill" else server.stop()
    # Then /healthz turns red within the staleness window (3 heartbeats = one lease)
    wait_until(lambda: _health(worker) == 503, 10, "healthz red")
    status, body = worker.http("/healthz")
    assert status == 503 and isinstance(body, dict)
    assert "Redis" in str(body["detail"])
    # When Redis comes back on the same port with its data
    server.start()
    # Then the worker reconnects, /healthz is green again, and every job completes
    wait_until(lambda: _health(worker) == 200, 30, "healthz green again")
    wait_until(
        lambda: stats.fetch_queue_stats_sync(client, wf.queue).completed_total >= n,
        60,
        "all jobs after the outage",
    )
    s = stats.fetch_queue_stats_sync(client, wf.queue)
    assert s.completed_total == n
    assert s.backlog == 0 and s.in_flight == 0
    assert set(done_counts(client, wf.queue)) == {str(i) for i in range(n)}
    assert worker.alive()
    worker.send(signal.SIGTERM)
    assert worker.wait(15) == 0
    client.close()


def test_an_idle_worker_cut_off_from_redis_says_its_heartbeat_failed_not_a_lease_renewal(
    redis_factory: Callable[..., Any],
    wf: workerproc.Testbed,
) -> None:
    # Given a worker holding no job
    server = redis_factory()
    worker = wf.spawn(redis_url=server.url, concurrency=2, lease_seconds=1.5)
    wait_until(
        lambda: any(r.get("msg") == "worker started" for r in worker.log_records()), 20, "start"
    )
    # When its Redis goes away for a few heartbeats
    server.stop()

    def failed_rounds() -> list[dict[str, Any]]:
        return [
            r
            for r in worker.log_records()
            if r.get("msg") in ("heartbeat failed", "lease renewal failed")
        ]

    wait_until(lambda: len(failed_rounds()) >= 2, 20, "failed heartbeats logged")
    server.start()
    # Then each failed round says the heartbeat failed, with nothing in flight: no lease was at
    # stake, and no log line sends anyone looking for one
    assert {(r["msg"], r["in_flight"]) for r in failed_rounds()} == {("heartbeat failed", 0)}
    assert worker.alive()
    worker.send(signal.SIGTERM)
    assert worker.wait(15) == 0


def test_a_worker_on_a_read_only_replica_waits_and_works_once_it_is_promoted(
    redis_factory: Callable[..., Any],
    wf: workerproc.Testbed,
) -> None:
    # Given a primary with 20 queued jobs and a replica of it (what a worker still points at
    # right after a failover, before the replica is promoted)
    primary = redis_factory()
    replica = redis_factory()
    primary_client = workerproc.sync_client(primary)
    replica_client = workerproc.sync_client(replica)
    n = 20
    producer.SyncProducer(primary_client, wf.queue).enqueue_many(
        [producer.JobSpec(task="chaos", payload={"marker": str(i)}) for i in range(n)]
    )
    replica_client.execute_command("REPLICAOF", "127.0.0.1", str(primary.port))
    wait_until(
        lambda: (
            replica_client.info("replication").get("master_link_status") == "up"
            and replica_client.exists("{wf:" + wf.queue + "}:counters")
        ),
        20,
        "the replica to sync",
    )
    # When a worker connects to the replica (every write answers READONLY)
    port = workerproc.free_port()
    worker = wf.spawn(redis_url=replica.url, concurrency=4, lease_seconds=1.5, metrics_port=port)
    # Then it does not crash; /healthz turns red because no Redis call succeeds
    wait_until(lambda: _health(worker) == 503, 15, "healthz red on a read-only replica")
    assert worker.alive()
    assert stats.fetch_queue_stats_sync(replica_client, wf.queue).completed_total == 0
    # When the replica is promoted
    replica_client.execute_command("REPLICAOF", "NO", "ONE")
    # Then the worker recovers by itself and runs every job
    wait_until(lambda: _health(worker) == 200, 20, "healthz green after promotion")
    wait_until(
        lambda: stats.fetch_queue_stats_sync(replica_client, wf.queue).completed_total == n,
        30,
        "all jobs on the promoted replica",
    )
    assert set(done_counts(replica_client, wf.queue)) == {str(i) for i in range(n)}
    assert "ReadOnlyError" in worker.logs()
    worker.send(signal.SIGTERM)
    assert worker.wait(15) == 0
    primary_client.close()
    replica_client.close()


def test_a_worker_whose_password_redis_refuses_says_so_and_works_once_it_is_accepted(
    redis_factory: Callable[..., Any],
    wf: workerproc.Testbed,
) -> None:
    # Given a Redis whose password was changed before the workers' copy of it (a rotation
    # done in the wrong order), with 20 queued jobs
    server = redis_factory()
    admin = redis.Redis(port=server.port, decode_responses=True, socket_timeout=10)
    admin.config_set("requirepass", "new-pass")
    admin.auth("new-pass")
    n = 20
    producer.SyncProducer(admin, wf.queue).enqueue_many(
        [producer.JobSpec(task="chaos", payload={"marker": str(i)}) for i in range(n)]
    )
    # When a worker starts with the old password
    port = workerproc.free_port()
    url = f"redis://:old-pass@127.0.0.1:{server.port}/0"
    worker = wf.spawn(redis_url=url, concurrency=4, lease_seconds=1.5, metrics_port=port)

    def refusals() -> list[dict[str, Any]]:
        return [
            r
            for r in worker.log_records()
            if r.get("msg") == "fetch failed; retrying"
            and "did not accept the user or password" in str(r.get("error"))
        ]

    # Then it keeps running and says, fetch after fetch, that Redis refused its password
    wait_until(lambda: len(refusals()) >= 3, 20, "three refused fetches logged")
    assert worker.alive()
    assert worker.http("/readyz")[0] == 503
    # And it never tries to adopt what a refused fetch cannot have leased to it
    messages = [str(r.get("msg")) for r in worker.log_records()]
    assert not [m for m in messages if m.startswith("adopting")], messages
    # And its start-up line names the server it uses, without the password
    [started] = [r for r in worker.log_records() if r.get("msg") == "worker started"]
    assert started["broker"] == f"redis://127.0.0.1:{server.port}/0"
    assert "old-pass" not in worker.logs()
    # When Redis accepts the old password as well (the rotation's first step, done late)
    admin.execute_command("ACL", "SETUSER", "default", "on", ">old-pass")
    # Then the worker runs every job, once
    wait_until(
        lambda: stats.fetch_queue_stats_sync(admin, wf.queue).completed_total == n,
        30,
        "all jobs once the password is accepted",
    )
    assert done_counts(admin, wf.queue) == {str(i): 1 for i in range(n)}
    worker.send(signal.SIGTERM)
    assert worker.wait(15) == 0
    admin.close()


def test_a_worker_started_before_its_redis_waits_without_adopting_and_then_works(
    redis_factory: Callable[..., Any],
    wf: workerproc.Testbed,
) -> None:
    # Given a Redis that is down (its port refuses connections)
    server = redis_factory()
    server.stop()
    # When a worker starts on it
    worker = wf.spawn(redis_url=server.url, concurrency=4, lease_seconds=1.5)

    def records(msg: str) -> list[dict[str, Any]]:
        return [r for r in worker.log_records() if str(r.get("msg")).startswith(msg)]

    # Then it keeps trying to fetch, saying that no connection could be opened
    wait_until(lambda: len(records("fetch failed")) >= 3, 20, "three failed fetches logged")
    assert all("no connection to redis for fetch" in str(r["error"]) for r in records("fetch"))
    # And it never tries to adopt after them: a fetch that was never sent leased nothing
    assert records("adopting") == []
    # When Redis starts and 20 jobs are queued
    server.start()
    client = workerproc.sync_client(server)
    n = 20
    producer.SyncProducer(client, wf.queue).enqueue_many(
        [producer.JobSpec(task="chaos", payload={"marker": str(i)}) for i in range(n)]
    )
    # Then the worker runs every one of them, once
    wait_until(
        lambda: stats.fetch_queue_stats_sync(client, wf.queue).completed_total == n,
        30,
        "all jobs once Redis is up",
    )
    assert done_counts(client, wf.queue) == {str(i): 1 for i in range(n)}
    assert worker.alive()
    worker.send(signal.SIGTERM)
    assert worker.wait(15) == 0
    client.close()
