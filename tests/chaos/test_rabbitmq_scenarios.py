"""The fault scenarios that apply to RabbitMQ, judged by the same history checker.

Each scenario runs a private rabbitmq-server of its own and a fleet of worker processes on
``amqp://`` (tests/chaos/rabbitmq_bed.py), enqueues quick, transiently failing and poison jobs
while it injects one kind of fault, waits until every job has ended and checks the history
(tests/chaos/history.py): lost=0, wrongly_dead=0, no phantom, no double ack, and re-runs that
the faults explain. On RabbitMQ a lease is the unacknowledged delivery: a killed or stopped
worker's jobs come back when its connection closes, not when a lease time passes. The
Redis-only scenarios (AOF fsync modes, CLIENT PAUSE, replica failover, network proxies) have no
counterpart here. Sizes: ``CHAOS_RABBITMQ_JOBS`` (default 600) is shared among the scenarios.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.chaos import harness, history, rabbitmq_bed

pytestmark = pytest.mark.chaos

TOTAL_JOBS = int(os.environ.get("CHAOS_RABBITMQ_JOBS", "600"))


def _jobs(share: float, least: int = 60) -> int:
    return max(least, int(TOTAL_JOBS * share))


def _config(name: str, **kwargs: Any) -> harness.Config:
    # RabbitMQ keeps no done markers: no job asks for one
    return harness.Config(f"rabbitmq-{name}", ack_marker_share=0.0, **kwargs)


def run_rabbitmq_scenario(
    config: harness.Config,
    rabbitmq_factory: Callable[[], Any],
    tmp_path: Path,
    faults: Callable[[harness.Bed], None],
    *,
    queue_type: str = "quorum",
) -> tuple[rabbitmq_bed.RabbitMQBed, history.Verdict]:
    """Run one scenario to its end, record its row, and assert every promise held."""
    bed = rabbitmq_bed.RabbitMQBed(config, rabbitmq_factory(), tmp_path, queue_type=queue_type)
    return bed, harness.run_bed(bed, faults)


_every = harness.every


def test_rabbitmq_worker_kill_9_every_two_seconds(
    rabbitmq_factory: Callable[[], Any], tmp_path: Path
) -> None:
    # Given three workers (concurrency 8) on RabbitMQ and a stream of quick, failing and poison jobs
    config = _config("worker-kill-9", jobs=_jobs(0.35), enqueue_seconds=8.0)

    # When a random worker is SIGKILLed every 2 s (and replaced) while they run
    def faults(bed: harness.Bed) -> None:
        _every(bed, 2.0, lambda _: bed.kill_worker(bed.rng.choice(bed.slots)), 10)

    # Then nothing is lost or wrongly dead: the killed worker's unacked jobs come back when its
    # connection closes, and each re-run is explained by a kill
    bed, _ = run_rabbitmq_scenario(config, rabbitmq_factory, tmp_path, faults)
    assert bed.kills >= 2


def test_rabbitmq_worker_sigstop_past_its_lease(
    rabbitmq_factory: Callable[[], Any], tmp_path: Path
) -> None:
    # Given two workers running slow jobs with a 2 s lease
    config = _config(
        "worker-sigstop",
        jobs=_jobs(0.1),
        workers=2,
        lease_seconds=2.0,
        work_ms=(100.0, 600.0),
        enqueue_seconds=8.0,
        enqueue_batch=5,
    )

    # When one of them is SIGSTOPped for twice its lease, then continued, again and again
    def faults(bed: harness.Bed) -> None:
        _every(bed, 1.0, lambda i: bed.stop_worker(bed.slots[i % 2], 4.0), 3)

    # Then nothing is lost: a stopped worker's connection lives (its deliveries stay its own,
    # AMQP leases do not expire by time), it finishes them when continued
    run_rabbitmq_scenario(config, rabbitmq_factory, tmp_path, faults)


def test_rabbitmq_sigterm_drains_mixed_with_kills(
    rabbitmq_factory: Callable[[], Any], tmp_path: Path
) -> None:
    # Given three workers with a short drain budget and jobs of up to 1.2 s
    config = _config(
        "drains-and-kills",
        jobs=_jobs(0.2),
        work_ms=(10.0, 1200.0),
        drain_timeout=2.0,
        enqueue_seconds=8.0,
    )

    # When workers are drained with SIGTERM (unfinished jobs released) and killed in turn
    def faults(bed: harness.Bed) -> None:
        def act(i: int) -> None:
            slot = bed.slots[i % len(bed.slots)]
            (bed.drain_worker if i % 2 == 0 else bed.kill_worker)(slot)

        _every(bed, 1.5, act, 6)

    # Then released and killed jobs ran again, within the bound, and nothing was lost
    run_rabbitmq_scenario(config, rabbitmq_factory, tmp_path, faults)


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_rabbitmq_node_kill_9_and_restart(
    rabbitmq_factory: Callable[[], Any], tmp_path: Path, queue_type: str
) -> None:
    # Given the pool on quorum queues (the default) or classic ones under a steady load
    # (enqueues go on for 60 s: a node takes ~10-20 s to boot here, the producer does not
    # retry an enqueue that failed while it was down, and jobs must come after the restarts)
    config = _config(
        f"node-kill-9-{queue_type}", jobs=_jobs(0.3), enqueue_seconds=60.0, enqueue_batch=10
    )

    # When the RabbitMQ node is SIGKILLed twice while jobs are enqueued and run, and restarted
    # in place (same node name, ports and data)
    def faults(bed: harness.Bed) -> None:
        assert isinstance(bed, rabbitmq_bed.RabbitMQBed)
        _every(bed, 3.0, lambda _: bed.kill_server(down_seconds=0.5), 2)

    # Then no confirmed enqueue is lost and nothing is wrongly dead: unacked jobs come back
    # with the restarted node, settles that were not committed are re-run
    bed, verdict = run_rabbitmq_scenario(
        config, rabbitmq_factory, tmp_path, faults, queue_type=queue_type
    )
    assert verdict.writes_lost_to_fault == 0
    # And the fleet served again after the last restart: jobs enqueued after it ended
    assert bed.kills == 2
    restarted = max(f.t1 for f in bed.faults)
    later = {e.job for e in bed.enqueues if e.answered and e.t > restarted}
    ended = {r.job for r in bed.read_runs() if r.ok} | set(bed.read_final().dead)
    assert later and later <= ended
