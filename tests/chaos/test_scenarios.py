"""The fault suite (``make chaos``): Redis and worker processes under faults, judged by history.

Each scenario runs its own redis-server and worker fleet (tests/chaos/harness.py), enqueues a
mix of jobs (quick, transiently failing, poison; half of them leave an ack marker) while it
injects one kind of fault, waits until every job has ended, and hands the recorded history to
the checker (tests/chaos/history.py). Every scenario must show lost=0, wrongly_dead=0, no
phantom, no double ack, and duplicates that its faults explain within their bound. The table
and the ``chaos: ...`` line are printed at the end (tests/chaos/conftest.py).

Sizes: ``CHAOS_JOBS`` (default 6,000) is shared among the scenarios by weight.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.chaos import harness, history, tasks
from tests.worker_runtime import workerproc
from worker_runtime.brokers.redis import scripts

pytestmark = pytest.mark.chaos

TOTAL_JOBS = int(os.environ.get("CHAOS_JOBS", "6000"))


def _jobs(share: float, least: int = 100) -> int:
    return max(least, int(TOTAL_JOBS * share))


def run_scenario(
    config: harness.Config,
    redis_factory: Callable[..., Any],
    tmp_path: Path,
    faults: Callable[[harness.Bed], None],
    server: Any = None,
) -> tuple[harness.Bed, history.Verdict]:
    """Run one scenario to its end, record its row, and assert every promise held."""
    if server is None:
        server = redis_factory(**config.redis_config)
    bed = harness.Bed(config, server, tmp_path)
    return bed, harness.run_bed(bed, faults)


_every = harness.every


# ---- worker faults ---------------------------------------------------------------------------


def test_worker_kill_9_every_second_and_a_half(
    redis_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # Given three workers (concurrency 8) and a stream of quick, failing and poison jobs
    config = harness.Config("worker-kill-9", jobs=_jobs(0.25), enqueue_seconds=8.0)

    # When a random worker is SIGKILLed every 1.5 s (and replaced) while they run
    def faults(bed: harness.Bed) -> None:
        _every(bed, 1.5, lambda _: bed.kill_worker(bed.rng.choice(bed.slots)), 40)

    # Then nothing is lost or wrongly dead, and each re-run is explained by a kill
    bed, _ = run_scenario(config, redis_factory, tmp_path, faults)
    assert bed.kills >= 3


def test_worker_sigstop_past_its_lease_with_free_slots(
    redis_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # Given two workers of 8 slots running slow jobs at a rate that keeps slots free
    config = harness.Config(
        "worker-sigstop-free-slots",
        jobs=_jobs(0.05),
        workers=2,
        lease_seconds=1.5,
        work_ms=(100.0, 600.0),
        enqueue_seconds=10.0,
        enqueue_batch=5,
    )

    # When one of them is SIGSTOPped for twice its lease, then continued, again and again
    def faults(bed: harness.Bed) -> None:
        _every(bed, 1.0, lambda i: bed.stop_worker(bed.slots[i % 2], 3.0), 4)

    # Then its jobs ran elsewhere; its own late results were discarded (no double ack)
    run_scenario(config, redis_factory, tmp_path, faults)


def test_sigstop_of_the_only_worker(redis_factory: Callable[..., Any], tmp_path: Path) -> None:
    # Given a single worker with free slots, running slow jobs
    config = harness.Config(
        "only-worker-sigstop",
        jobs=_jobs(0.03),
        workers=1,
        concurrency=16,
        lease_seconds=1.5,
        work_ms=(100.0, 500.0),
        enqueue_seconds=8.0,
        enqueue_batch=5,
    )

    # When it is SIGSTOPped past its lease and continued: its own held jobs expired meanwhile
    def faults(bed: harness.Bed) -> None:
        _every(bed, 1.5, lambda _: bed.stop_worker(bed.slots[0], 3.0, capacity=0), 3)

    # Then it runs each of them once: nobody else can take its jobs, and a worker never
    # reclaims its own held job (it renews it), so a stop explains no re-run at all
    run_scenario(config, redis_factory, tmp_path, faults)


def test_sigterm_drains_mixed_with_kills(redis_factory: Callable[..., Any], tmp_path: Path) -> None:
    # Given three workers with a short drain budget and jobs of up to 1.2 s
    config = harness.Config(
        "drains-and-kills",
        jobs=_jobs(0.1),
        work_ms=(10.0, 1200.0),
        drain_timeout=2.0,
        enqueue_seconds=8.0,
    )

    # When workers are drained with SIGTERM (unfinished jobs released) and killed in turn
    def faults(bed: harness.Bed) -> None:
        def act(i: int) -> None:
            slot = bed.slots[i % len(bed.slots)]
            (bed.drain_worker if i % 2 == 0 else bed.kill_worker)(slot)

        _every(bed, 1.0, act, 8)

    # Then released and killed jobs ran again, within the bound, and nothing was lost
    run_scenario(config, redis_factory, tmp_path, faults)


# ---- Redis faults ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fsync", "loses_writes"), [("always", False), ("everysec", True)], ids=["always", "everysec"]
)
def test_redis_kill_9_and_restart_on_its_aof(
    fsync: str, loses_writes: bool, redis_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # Given Redis with an append-only file (fsync always / every second) under a steady load
    config = harness.Config(
        f"redis-kill-9-aof-{fsync}",
        jobs=_jobs(0.08),
        enqueue_seconds=8.0,
        redis_config={"appendonly": "yes", "appendfsync": fsync},
    )

    # When Redis is SIGKILLed twice while jobs are enqueued and run, and restarted on its AOF
    def faults(bed: harness.Bed) -> None:
        _every(bed, 2.5, lambda _: bed.kill_redis(down_seconds=0.5, loses_writes=loses_writes), 2)

    # Then with fsync always no acknowledged write is lost; with everysec any loss is
    # reported apart and lies inside the fsync window before a kill (checked by the history)
    _, verdict = run_scenario(config, redis_factory, tmp_path, faults)
    if not loses_writes:
        assert verdict.writes_lost_to_fault == 0


@pytest.mark.parametrize("how", ["sigstop", "client_pause"])
def test_redis_stalled_longer_than_the_lease_under_long_jobs(
    how: str, redis_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # Given three workers holding jobs that outlast the lease (renewals keep them alive)
    config = harness.Config(
        f"redis-{how.replace('_', '-')}",
        jobs=_jobs(0.02),
        lease_seconds=1.5,
        work_ms=(800.0, 2000.0),
        enqueue_seconds=6.0,
        enqueue_batch=10,
    )

    # When Redis stalls for twice the lease (every lease looks expired when it resumes)
    def faults(bed: harness.Bed) -> None:
        _every(bed, 2.0, lambda _: bed.pause_redis(3.0, how=how), 2)

    # Then every job ends once, re-runs are within the fleet's held jobs, none is lost
    run_scenario(config, redis_factory, tmp_path, faults)


# ---- network faults (each worker behind its own TCP proxy on loopback) -------------------------


def _drop_replies(slot: harness.Slot) -> None:
    assert slot.proxy is not None
    slot.proxy.drop_reply_share = 0.05


def _latency(slot: harness.Slot) -> None:
    assert slot.proxy is not None
    slot.proxy.latency = 0.2


def _partition(slot: harness.Slot) -> None:
    assert slot.proxy is not None
    slot.proxy.partition()


def _cut_renewals(slot: harness.Slot) -> None:
    assert slot.proxy is not None
    slot.proxy.blackhole_marker = scripts.RENEW.sha.encode()


NET_FAULTS: dict[str, tuple[Callable[[harness.Slot], None], float]] = {
    # name: (what the proxy does, for how long)
    "dropped-replies": (_drop_replies, 3.0),
    "latency": (_latency, 3.0),
    "partition-one-worker": (_partition, 5.0),
}


@pytest.mark.parametrize("fault", sorted(NET_FAULTS))
def test_network_faults_between_a_worker_and_redis(
    fault: str, redis_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # Given three workers, each talking to Redis through its own TCP proxy
    config = harness.Config(
        f"net-{fault}",
        jobs=_jobs(0.05),
        lease_seconds=2.0,
        work_ms=(20.0, 400.0),
        enqueue_seconds=8.0,
        enqueue_batch=10,
        proxies=True,
    )
    apply, seconds = NET_FAULTS[fault]

    # When one worker after another suffers the fault (replies dropped after Redis ran the
    # command, every chunk delayed, or a partition longer than the lease), then it is healed
    def faults(bed: harness.Bed) -> None:
        def act(i: int) -> None:
            slot = bed.slots[i % len(bed.slots)]
            bed.net_fault(slot, f"net_{fault}", seconds, lambda: apply(slot))

        _every(bed, 0.5, act, 3)

    # Then nothing is lost or wrongly dead, a cut-off worker's late acks were rejected (no
    # double ack), and re-runs are explained by the fault on the worker that ran them first
    bed, _ = run_scenario(config, redis_factory, tmp_path, faults)
    if fault == "dropped-replies":
        assert sum(s.proxy.dropped_replies for s in bed.slots if s.proxy is not None) > 0


@pytest.mark.parametrize("workers", [1, 2], ids=["only-worker", "two-workers"])
def test_renewals_cut_while_fetches_work(
    workers: int, redis_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # Given workers behind proxies running jobs of up to twice the lease (renewals keep them)
    config = harness.Config(
        f"net-renewals-cut-{workers}w",
        jobs=_jobs(0.004, least=16 * workers),
        workers=workers,
        concurrency=4,
        lease_seconds=1.5,
        work_ms=(1000.0, 2500.0),
        max_deliveries=3,
        enqueue_seconds=6.0,
        enqueue_batch=4,
        proxies=True,
    )
    # (alone, a worker cut from its renewals has nobody to hand its jobs to, and it must
    # never reclaim its own held job: the cut explains no re-run at all)
    capacity = 0 if workers == 1 else config.concurrency

    # When the first worker's renewal connection is blackholed for longer than the lease while
    # its fetches and acks still get through (an asymmetric cut), twice
    def faults(bed: harness.Bed) -> None:
        slot = bed.slots[0]

        def act(_: int) -> None:
            bed.net_fault(slot, "net_renewals_cut", 3.0, lambda: _cut_renewals(slot), capacity)

        _every(bed, 1.0, act, 2)

    # Then every job ends once (or within the bound), none is wrongly dead-lettered
    run_scenario(config, redis_factory, tmp_path, faults)


# ---- bad input and operations under load -----------------------------------------------------


def _envelope(job_id: str, payload: bytes) -> bytes:
    now = str(time.time()).encode()
    return (
        b'{"v":1,"id":"'
        + job_id.encode()
        + b'","task":"chaos","payload":'
        + payload
        + b',"priority":"normal","enqueued_at":'
        + now
        + b',"headers":{}}'
    )


BAD_ENVELOPES: tuple[bytes, ...] = (
    _envelope("x", b'{"pad":"\xff\xfe not UTF-8"}'),  # one byte that is not UTF-8
    b"\x00\x01 not JSON at all",
    b'{"v": 99, "id": "x", "task": "chaos"}',  # a schema version nobody knows
    b'{"v": 1, "payload": {}}',  # no id, no task
    b"[1, 2, 3]",
)


def test_bad_bytes_and_oversized_payloads_in_the_streams(
    redis_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # Given three workers and a stream of ordinary jobs
    config = harness.Config("bad-bytes-and-oversized", jobs=_jobs(0.04), enqueue_seconds=6.0)

    # When envelopes that are not UTF-8, not JSON or not valid are written into the queue,
    # stream entries that name no job are added, and jobs with 1 MiB payloads are enqueued
    def faults(bed: harness.Bed) -> None:
        client = redis.Redis(port=bed.server.port, socket_timeout=10)
        try:
            for i in range(3):
                time.sleep(1.0)
                for raw in BAD_ENVELOPES:
                    bed.inject_raw(raw, stream=("high", "normal", "low")[i])
                bed.inject_stream_entry({b"j": uuid.uuid4().hex.encode()})
                bed.inject_stream_entry({b"\xff": b"\xfe"}, stream="high")
                payloads = [({"pad": "x" * (1 << 20), "work_ms": 5.0}, 0) for _ in range(2)]
                bed.enqueue(payloads, client)
        finally:
            client.close()

    # Then each bad job alone is dead-lettered for its envelope (its batch-mates run), no
    # worker dies, the oversized jobs complete, and nothing else is lost or wrongly dead
    _, verdict = run_scenario(config, redis_factory, tmp_path, faults)
    assert verdict.dead_lettered == config.poison + 3 * len(BAD_ENVELOPES)


def test_dlq_replay_under_load(redis_factory: Callable[..., Any], tmp_path: Path) -> None:
    # Given three workers under a steady load, and 60 jobs that fail until a dependency they
    # need is healed: they end in the DLQ after their attempts
    config = harness.Config("dlq-replay-under-load", jobs=_jobs(0.05), enqueue_seconds=10.0)
    healed: list[str] = []
    replayed: list[str] = []

    def faults(bed: harness.Bed) -> None:
        client = redis.Redis(port=bed.server.port, socket_timeout=10)
        try:
            payloads = [({"until_healed": True, "work_ms": 5.0}, history.POISON)] * 60
            healed.extend(bed.enqueue(payloads, client))
            workerproc.wait_until(
                lambda: all(client.hmget(bed.keys.dlq_data, healed)), 30, "all 60 in the DLQ"
            )
        finally:
            client.close()
        # When the dependency is healed and an operator replays the whole DLQ with the CLI
        # (20 jobs/s, attempts reset) while the load goes on and a worker is killed meanwhile
        (bed.dir / tasks.HEALED_FLAG).touch()
        command = [sys.executable, "-m", "worker_runtime", "dlq", "replay", "--all"]
        command += ["--reset-attempts", "--rate", "20", "--json"]
        command += ["--redis-url", bed.server.url, "--queue", bed.queue]
        cli = subprocess.Popen(
            command, cwd=workerproc.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            time.sleep(1.0)
            bed.kill_worker(bed.slots[0])
            out, err = cli.communicate(timeout=60)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait(10)
        assert cli.returncode == 0, err
        replayed.extend(json.loads(out)["job_ids"])

    # Then every healed job was replayed and completed; only the poison jobs stay dead
    bed, verdict = run_scenario(config, redis_factory, tmp_path, faults)
    assert set(healed) <= set(replayed)
    assert not set(healed) & set(bed.read_final().dead)
    assert verdict.dead_lettered == config.poison


def test_replica_promotion_with_lost_acknowledged_writes_accounted(
    redis_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # Given a primary with an in-sync replica, and three workers and the producer reaching
    # "the primary" through proxies (as a Sentinel-aware client would follow a failover)
    primary = redis_factory()
    replica = redis_factory()
    admin = redis.Redis(port=replica.port, decode_responses=True, socket_timeout=5)
    try:
        admin.execute_command("REPLICAOF", "127.0.0.1", str(primary.port))
        workerproc.wait_until(
            lambda: admin.info("replication").get("master_link_status") == "up",
            30,
            "the replica in sync",
        )
    finally:
        admin.close()
    config = harness.Config(
        "replica-promotion",
        jobs=_jobs(0.07),
        lease_seconds=2.0,
        work_ms=(10.0, 400.0),
        enqueue_seconds=8.0,
        enqueue_batch=5,
        proxies=True,
    )

    # When the replica is promoted while the old primary still takes writes for 1 s (the
    # time a failover takes to notice), then the old primary is killed and everyone follows
    def faults(bed: harness.Bed) -> None:
        time.sleep(3.0)
        bed.fail_over(replica, split_seconds=1.0)

    # Then the acknowledged writes lost are counted apart (only inside the failover's
    # window), nothing else is lost, no job is wrongly dead, and no late ack of a delivery
    # from before the failover is accepted twice (fencing across the failover)
    bed, _ = run_scenario(config, redis_factory, tmp_path, faults, server=primary)
    assert bed.kills == 1


def test_enqueue_replies_lost_and_re_sent_by_the_producer(
    redis_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # Given a producer on redis-py's defaults (a request whose reply times out is sent again)
    # behind a proxy, and three workers running quick jobs
    config = harness.Config(
        "producer-replies-lost",
        jobs=_jobs(0.04),
        enqueue_seconds=8.0,
        enqueue_batch=10,
        proxies=True,
        producer_resends=True,
    )

    # When a third of the enqueue replies are swallowed for a while: Redis ran the enqueue,
    # the producer times out after 1 s and sends it again (by then the job has run)
    def faults(bed: harness.Bed) -> None:
        proxy = bed.producer_proxy
        assert proxy is not None
        time.sleep(1.0)
        t0 = time.time()
        proxy.drop_hangs = True
        proxy.drop_reply_share = 0.3
        try:
            time.sleep(5.0)
        finally:
            proxy.drop_reply_share = 0.0
        bed.add_fault(history.Fault("producer_replies_lost", t0, time.time(), pid=harness.PRODUCER))
        assert proxy.dropped_replies > 0

    # Then a re-sent enqueue never runs a job again: the fault explains no re-run at all
    run_scenario(config, redis_factory, tmp_path, faults)
