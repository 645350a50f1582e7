"""The fault scenarios that apply to SQS, on ElasticMQ, judged by the same history checker.

Each scenario runs a persistent ElasticMQ of its own and a fleet of worker processes on
``sqs://`` (tests/chaos/sqs_bed.py), enqueues quick, transiently failing and poison jobs while
it injects one kind of fault, waits until every job has ended and checks the history
(tests/chaos/history.py): lost=0, wrongly_dead=0, no phantom, no double ack, and re-runs that
the faults explain. The Redis-only scenarios (AOF fsync modes, CLIENT PAUSE, replica failover,
network proxies) have no SQS counterpart here. Sizes: ``CHAOS_SQS_JOBS`` (default 600) is
shared among the scenarios by weight (SQS on ElasticMQ runs ~400 jobs/s on this machine).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.chaos import harness, history, sqs_bed
from tests.support import elasticmq

pytestmark = pytest.mark.chaos

TOTAL_JOBS = int(os.environ.get("CHAOS_SQS_JOBS", "600"))


def _jobs(share: float, least: int = 60) -> int:
    return max(least, int(TOTAL_JOBS * share))


def _config(name: str, **kwargs: object) -> harness.Config:
    # SQS keeps no done markers: no job asks for one
    return harness.Config(f"sqs-{name}", ack_marker_share=0.0, **kwargs)  # type: ignore[arg-type]


def run_sqs_scenario(
    config: harness.Config,
    elasticmq_factory: Callable[..., elasticmq.ElasticMQServer],
    tmp_path: Path,
    faults: Callable[[harness.Bed], None],
) -> tuple[sqs_bed.SqsBed, history.Verdict]:
    """Run one scenario on a persistent ElasticMQ of its own (harness.run_bed asserts)."""
    bed = sqs_bed.SqsBed(config, elasticmq_factory(persistent=True), tmp_path)
    return bed, harness.run_bed(bed, faults)


def test_sqs_worker_kill_9_every_two_seconds(
    elasticmq_factory: Callable[..., elasticmq.ElasticMQServer], tmp_path: Path
) -> None:
    # Given three workers (concurrency 8) on SQS and a stream of quick, failing and poison jobs
    config = _config("worker-kill-9", jobs=_jobs(0.35), enqueue_seconds=8.0)

    # When a random worker is SIGKILLed every 2 s (and replaced) while they run
    def faults(bed: harness.Bed) -> None:
        harness.every(bed, 2.0, lambda _: bed.kill_worker(bed.rng.choice(bed.slots)), 10)

    # Then nothing is lost or wrongly dead: the killed worker's jobs come back when their
    # visibility timeout ends, and each re-run is explained by a kill
    bed, _ = run_sqs_scenario(config, elasticmq_factory, tmp_path, faults)
    assert bed.kills >= 2


def test_sqs_worker_sigstop_past_its_visibility_timeout(
    elasticmq_factory: Callable[..., elasticmq.ElasticMQServer], tmp_path: Path
) -> None:
    # Given two workers running slow jobs with a 2 s lease (the visibility timeout)
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
        harness.every(bed, 1.0, lambda i: bed.stop_worker(bed.slots[i % 2], 4.0), 3)

    # Then its jobs ran elsewhere; its own late results were not counted twice
    run_sqs_scenario(config, elasticmq_factory, tmp_path, faults)


def test_sqs_sigterm_drains_mixed_with_kills(
    elasticmq_factory: Callable[..., elasticmq.ElasticMQServer], tmp_path: Path
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

        harness.every(bed, 1.5, act, 6)

    # Then released and killed jobs ran again, within the bound, and nothing was lost
    run_sqs_scenario(config, elasticmq_factory, tmp_path, faults)


def test_sqs_server_kill_9_and_restart_on_its_persistence(
    elasticmq_factory: Callable[..., elasticmq.ElasticMQServer], tmp_path: Path
) -> None:
    # Given ElasticMQ with its message store on disk under a steady load
    config = _config("elasticmq-kill-9", jobs=_jobs(0.2), enqueue_seconds=8.0)

    # When it is SIGKILLed twice while jobs are enqueued and run, and restarted on its data
    def faults(bed: harness.Bed) -> None:
        assert isinstance(bed, sqs_bed.SqsBed)
        harness.every(bed, 3.0, lambda _: bed.kill_server(down_seconds=0.5), 2)

    # Then no acknowledged enqueue is lost and nothing is wrongly dead
    _, verdict = run_sqs_scenario(config, elasticmq_factory, tmp_path, faults)
    assert verdict.writes_lost_to_fault == 0
